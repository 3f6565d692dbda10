"""An embedded Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager
on loopback ports, for the test suite and for agentdetect's local mode.

The processes are real (RBAC on, admission on, garbage collection and namespace
deletion done by the real controllers), so what passes here passes on a cluster.
Every process is started in its own log file, bound to this Python process with
``PR_SET_PDEATHSIG`` so nothing outlives us even on SIGKILL, and stopped by PID in
reverse order (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from agentdetect.local.binaries import Binaries

ADMIN_USER = "agentdetect-admin"
#: A user that exists (it authenticates) but holds no RBAC rights at all.
UNPRIVILEGED_USER = "agentdetect-nobody"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"
CONTROLLERS = ("garbage-collector-controller", "namespace-controller")


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready; the message carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _write_service_account_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exited(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class ControlPlane:
    """Start with :meth:`start` (or as a context manager); always :meth:`stop`."""

    binaries: Binaries
    workdir: Path | None = None
    start_timeout: float = 60.0
    processes: list[Process] = field(default_factory=list)
    etcd_url: str = ""
    server: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    unprivileged_token: str = field(default_factory=lambda: secrets.token_hex(16))
    _owns_workdir: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.processes:
            raise ControlPlaneError("this control plane was already started; create a new one")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="agentdetect-cp-"))
            self._owns_workdir = True
        for sub in ("logs", "etcd", "pki", "kcm"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        begin = time.monotonic()
        try:
            self._start_etcd()
            self.timings["etcd"] = time.monotonic() - begin
            self._start_apiserver()
            self.timings["kube-apiserver"] = time.monotonic() - begin
            self._write_kubeconfigs()
            self._start_controller_manager()
            self.timings["kube-controller-manager"] = time.monotonic() - begin
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Idempotent; ``processes`` is kept so callers can check every PID is gone."""
        for proc in reversed(self.processes):
            proc.stop()
        if self._owns_workdir and self.workdir is not None and not os.environ.get("AGENTDETECT_KEEP_CP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(
        self, name: str, down_for: float = 0.0, while_down: Callable[[], object] | None = None
    ) -> float:
        """Stop one component (SIGTERM), keep it down ``down_for`` seconds (calling
        ``while_down`` first), start it again on the same port and data; returns the seconds
        until it answered again. For fault tests: an API server restart ends every watch and
        every proxied log stream, and its watch cache starts afresh, so a client resuming a
        watch from before is told to list again (410) and hears of no deletion meanwhile."""
        proc = next((p for p in self.processes if p.name == name), None)
        if proc is None:
            raise ControlPlaneError(f"no component named {name!r}")
        proc.stop()
        try:
            if while_down is not None:
                while_down()
            time.sleep(down_for)
        finally:
            began = time.monotonic()
            proc.start()
        probes = {
            "etcd": lambda: _http_json_ok(f"{self.etcd_url}/health", "health"),
            "kube-apiserver": lambda: self._get_ok(f"{self.server}/readyz"),
        }
        self._wait(proc, probes.get(name, lambda: True), "ready again after a restart")
        return time.monotonic() - began

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    # ---- paths -----------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        assert self.workdir is not None, "control plane not started"
        return self.workdir

    @property
    def ca_file(self) -> Path:
        # kube-apiserver writes its generated CA after the serving certificate in this file.
        return self.dir / "pki" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def unprivileged_kubeconfig(self) -> Path:
        return self.dir / "kubeconfig-unprivileged"

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # ---- components ------------------------------------------------------------------------

    def _launch(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, self.log(name))
        self.processes.append(proc)
        proc.start()
        return proc

    def _wait(self, proc: Process, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = proc.exited()
            if code is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with code {code} before {what}; "
                    f"last lines of {proc.log}:\n{log_tail(proc.log)}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{proc.name} not ready ({what}) after {self.start_timeout:.0f}s; "
            f"last lines of {proc.log}:\n{log_tail(proc.log)}"
        )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=agentdetect",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=agentdetect=http://127.0.0.1:{peer}",
                # A throwaway test store: durability is worth nothing, start-up and write speed a lot.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(proc, lambda: _http_json_ok(f"{self.etcd_url}/health", "health"), "/health")

    def _start_apiserver(self) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.dir / "pki"
        tokens = pki / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{self.unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n"
        )
        tokens.chmod(0o600)
        sa_key = pki / "service-account.key"
        _write_service_account_key(sa_key)
        proc = self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                # As on OpenShift: setting blockOwnerDeletion needs update on the owner's
                # finalizers, which the chart must grant (its RBAC is tested with this on).
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--allow-privileged=true",
                "--v=1",
            ],
        )
        self._wait(proc, lambda: self._get_ok(f"{self.server}/readyz"), "/readyz")

    def _start_controller_manager(self) -> None:
        port = free_port()
        kubeconfig = str(self.kubeconfig)
        proc = self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.dir / 'kcm'}",
                "--v=1",
            ],
        )
        # Its serving certificate is self-signed per start; the probe is loopback-only.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(proc, lambda: _get_ok(f"https://127.0.0.1:{port}/healthz", insecure, None), "/healthz")

    # ---- clients ---------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _get_ok(self, url: str) -> bool:
        """``url`` answers 200 to the admin, over TLS checked against the API server's own
        certificate. kube-apiserver writes that certificate as it starts: until the file is
        complete, loading it finds no certificate (ssl.SSLError), which is "not ready yet"
        (a CI run failed on that read)."""
        if not self.ca_file.exists():
            return False
        try:
            context = self._ssl()
        except ssl.SSLError:
            return False
        return _get_ok(url, context, self.admin_token)

    def _write_kubeconfigs(self) -> None:
        for path, user, token in (
            (self.kubeconfig, ADMIN_USER, self.admin_token),
            (self.unprivileged_kubeconfig, UNPRIVILEGED_USER, self.unprivileged_token),
        ):
            path.write_text(yaml.safe_dump(kubeconfig_dict(self.server, str(self.ca_file), user, token)))
            path.chmod(0o600)

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or the given kubeconfig)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=cfg
        )
        return client.ApiClient(cfg)

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    # ---- CRDs ------------------------------------------------------------------------------

    def install_crds(self, documents: Iterable[dict[str, Any]], timeout: float = 30.0) -> list[str]:
        """Server-side apply CRDs and wait until each is ``Established`` and its storage
        answers a list (right after Established it can still say 429 "storage is
        (re)initializing", which watchers would log as errors); returns their names."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.ApiextensionsV1Api(self.api_client())
        custom = client.CustomObjectsApi(api.api_client)
        names = []
        served: dict[str, tuple[str, str, str]] = {}
        for doc in documents:
            name = doc["metadata"]["name"]
            api.patch_custom_resource_definition(
                name,
                doc,
                field_manager="agentdetect",
                force=True,
                _content_type="application/apply-patch+yaml",
            )
            names.append(name)
            spec = doc["spec"]
            version = next((v["name"] for v in spec["versions"] if v.get("served", True)), None)
            if version is not None:
                served[name] = (spec["group"], version, spec["names"]["plural"])
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                crd = api.read_custom_resource_definition(name)
                conds = {c.type: c.status for c in ((crd.status and crd.status.conditions) or [])}
                if conds.get("Established") != "True":
                    continue
                if name in served:
                    try:
                        custom.list_cluster_custom_object(*served[name], limit=1)
                    except ApiException as exc:
                        if exc.status in (404, 429, 503):
                            continue
                        raise
                pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"CRDs not Established and served after {timeout:.0f}s: {sorted(pending)}"
                )
            if pending:
                time.sleep(0.1)
        return names


def kubeconfig_dict(server: str, ca_file: str, user: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "agentdetect", "cluster": {"server": server, "certificate-authority": ca_file}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "agentdetect", "context": {"cluster": "agentdetect", "user": user}}],
        "current-context": "agentdetect",
    }


def load_yaml_documents(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


def _get_ok(url: str, context: ssl.SSLContext | None, token: str | None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=context, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _http_json_ok(url: str, key: str) -> bool:
    import json

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(json.load(resp).get(key) in (True, "true"))
    except (urllib.error.URLError, OSError, ValueError):
        return False
