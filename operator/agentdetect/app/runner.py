"""Run the operator: in the foreground (``agentdetect run``) or in a thread (tests, local mode)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from agentdetect.api.models import GROUP
from agentdetect.app.handlers import (
    MemoryDiffBase,
    MemoryProgress,
    build_registry,
    quiet_kopf_logs,
    settings_for,
)
from agentdetect.app.metrics import Metrics
from agentdetect.cluster.kube import FIELD_MANAGER, Cluster, keepalive_options
from agentdetect.cluster.recorder import EventRecorder
from agentdetect.controller.reconcile import Config, Reconciler
from agentdetect.detection.peering import PeeringGate
from agentdetect.detection.rollup import DetectionRollup
from agentdetect.detection.service import DetectionService

log = logging.getLogger(__name__)


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
    # A connection whose peer vanished is noticed and closed, as client-go's are.
    cfg.socket_options = keepalive_options()
    return client.ApiClient(cfg)


@dataclass
class Runtime:
    """What one operator instance is made of; built afresh per start, as a new process would."""

    reconciler: Reconciler
    registry: kopf.OperatorRegistry
    detection: DetectionService | None
    metrics: Metrics
    diffbase: MemoryDiffBase
    #: Node mode: profile status from the node agents' AgentDetections.
    rollup: DetectionRollup | None = None
    progress: MemoryProgress | None = None
    #: Kubernetes Events, posted from a queue of their own; closed when the operator stops.
    events: EventRecorder | None = None


@dataclass
class ServeOptions:
    #: Watch only these namespaces; None is cluster-wide.
    namespaces: list[str] | None = None
    #: kopf peering object: replicas sharing it elect one active operator. None: standalone.
    peering: str | None = None
    #: Among peers the highest priority is active; equal priorities would pause them all, so
    #: replicas default to a random one.
    priority: int | None = None
    #: Seconds a silent peer still counts as live (kopf's ``peering.lifetime``; it renews 5-10 s
    #: before): how long a standby waits before it takes over from a replica that was killed.
    peering_lifetime: int = 20
    #: Port of /healthz (kopf's liveness endpoint, also the readiness probe). None: off.
    health_port: int | None = None
    #: Port of /metrics. None: off.
    metrics_port: int | None = None
    bind: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if self.peering is not None and self.priority is None:
            self.priority = random.randint(1, 2**31 - 1)


def build(cfg: Config, kubeconfig: Path | None = None, options: ServeOptions | None = None) -> Runtime:
    options = options or ServeOptions()
    cluster = Cluster(api_client(kubeconfig))
    events = EventRecorder(cluster.create_event, FIELD_MANAGER, f"{GROUP}/operator")
    reconciler = Reconciler(cluster, cfg, emit=events.record)
    gate = None
    if options.peering is not None and options.priority is not None:
        # kopf peers per namespace when it watches namespaces; the first one speaks for all.
        peering_ns = options.namespaces[0] if options.namespaces else None
        gate = PeeringGate(cluster.api, options.peering, options.priority, peering_ns)
        # Another replica writes while this one stands by: none of it is a tamper to report.
        gate.on_standby.append(reconciler.standby)
    detection, rollup = None, None
    if cfg.detect and cfg.detection_mode == "node":
        rollup = DetectionRollup(cluster, cfg.flush_interval, gate=gate)
    elif cfg.detect:
        detection = DetectionService(
            cluster, reconciler.board, cfg, gate=gate, settled=reconciler.settled_versions
        )
    metrics = Metrics()
    metrics.watch_policy_filter(reconciler.policy_filter_policies, lambda: cfg.policy_filter_budget)
    metrics.watch_readiness(gate)
    metrics.watch_events(events)
    if detection is not None:
        metrics.watch_detection(detection)
    diffbase = MemoryDiffBase()
    if rollup is not None:
        metrics.watch_rollup(rollup)
    progress = MemoryProgress()
    registry = build_registry(
        reconciler,
        detection,
        metrics,
        diffbase,
        rollup,
        progress,
        active=gate,
        namespaces=options.namespaces or (),
    )
    quiet_kopf_logs()
    kubeconfig_path = str(kubeconfig) if kubeconfig else None

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig_path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return kopf.login_with_service_account(**kwargs)
        if kubeconfig_path:
            os.environ["KUBECONFIG"] = kubeconfig_path
        return kopf.login_with_kubeconfig(**kwargs)

    return Runtime(reconciler, registry, detection, metrics, diffbase, rollup, progress, events)


async def serve(
    cfg: Config,
    kubeconfig: Path | None = None,
    options: ServeOptions | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    runtime: Runtime | None = None,
) -> None:
    options = options or ServeOptions()
    runtime = runtime or build(cfg, kubeconfig, options)
    metrics_server = None
    if options.metrics_port is not None:
        metrics_server, _ = start_http_server(
            options.metrics_port, options.bind, registry=runtime.metrics.registry
        )
        log.info("metrics on http://%s:%d/metrics", options.bind, options.metrics_port)
    try:
        await kopf.operator(
            registry=runtime.registry,
            settings=settings_for(
                peering_lifetime=options.peering_lifetime,
                diffbase=runtime.diffbase,
                progress=runtime.progress,
            ),
            standalone=options.peering is None,
            peering_name=options.peering,
            priority=options.priority,
            clusterwide=not options.namespaces,
            namespaces=options.namespaces or [],
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            liveness_endpoint=(
                f"http://{options.bind}:{options.health_port}/healthz"
                if options.health_port is not None
                else None
            ),
        )
    finally:
        if runtime.events is not None:
            await asyncio.to_thread(runtime.events.close)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


class OperatorThread:
    """The operator in a background thread with its own event loop; stops cleanly."""

    def __init__(
        self,
        cfg: Config,
        kubeconfig: Path,
        namespaces: list[str] | None = None,
        options: ServeOptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.kubeconfig = kubeconfig
        self.options = options or ServeOptions(namespaces=namespaces)
        self.runtime: Runtime | None = None
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.reconciler: Reconciler | None = None
        self.detection: DetectionService | None = None

    def _run(self) -> None:
        try:
            # Built per start, as a new process would: a restart keeps nothing in memory.
            self.runtime = build(self.cfg, self.kubeconfig, self.options)
            self.reconciler, self.detection = self.runtime.reconciler, self.runtime.detection
            asyncio.run(
                serve(
                    self.cfg, self.kubeconfig, self.options, self.stop_flag, self.ready, runtime=self.runtime
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
