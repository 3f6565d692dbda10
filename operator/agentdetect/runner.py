"""Run the operator: in the foreground (``agentdetect run``) or in a thread (tests, local mode)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import kopf
from kubernetes import client, config

from agentdetect.detection_service import DetectionService
from agentdetect.handlers import build_registry, emit_event, settings_for
from agentdetect.kube import Cluster
from agentdetect.reconcile import Config, Reconciler


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg
        )
    # Enough connections for every reconcile worker thread at once.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def build(
    cfg: Config, kubeconfig: Path | None = None
) -> tuple[Reconciler, kopf.OperatorRegistry, DetectionService | None]:
    cluster = Cluster(api_client(kubeconfig))
    reconciler = Reconciler(cluster, cfg, emit=emit_event)
    detection = DetectionService(cluster, reconciler.board, cfg) if cfg.detect else None
    registry = build_registry(reconciler, detection)
    kubeconfig_path = str(kubeconfig) if kubeconfig else None

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig_path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return kopf.login_with_service_account(**kwargs)
        if kubeconfig_path:
            os.environ["KUBECONFIG"] = kubeconfig_path
        return kopf.login_with_kubeconfig(**kwargs)

    return reconciler, registry, detection


async def serve(
    cfg: Config,
    kubeconfig: Path | None = None,
    namespaces: list[str] | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    liveness_endpoint: str | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    if registry is None:
        _, registry, _ = build(cfg, kubeconfig)
    await kopf.operator(
        registry=registry,
        settings=settings_for(),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
    )


class OperatorThread:
    """The operator in a background thread with its own event loop; stops cleanly."""

    def __init__(self, cfg: Config, kubeconfig: Path, namespaces: list[str] | None = None) -> None:
        self.cfg = cfg
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.reconciler: Reconciler | None = None
        self.detection: DetectionService | None = None

    def _run(self) -> None:
        try:
            # Built per start, as a new process would: a restart keeps nothing in memory.
            self.reconciler, registry, self.detection = build(self.cfg, self.kubeconfig)
            asyncio.run(
                serve(
                    self.cfg, self.kubeconfig, self.namespaces, self.stop_flag, self.ready, registry=registry
                )
            )
        except BaseException as exc:  # surfaced by start()/stop(), not lost in a thread
            self.error = exc
            self.ready.set()

    def start(self, timeout: float = 30.0) -> OperatorThread:
        """Start (or start again after :meth:`stop`: a restart, as after a crash or upgrade)."""
        self.ready.clear()
        self.stop_flag.clear()
        self.error = None
        self.thread = threading.Thread(target=self._run, name="agentdetect-operator", daemon=True)
        self.thread.start()
        if not self.ready.wait(timeout) or self.error is not None:
            raise RuntimeError(f"operator did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("operator thread did not stop")

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
