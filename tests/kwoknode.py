"""kwok (sigs.k8s.io/kwok) as a fake kubelet for the embedded control plane.

kwok plays a Node: it moves pods bound to it to ``Running`` and serves the kubelet API
(``/containerLogs/...``) that kube-apiserver proxies ``GET .../pods/NAME/log`` to. A
container's log is a file we name in a ``Logs`` object (kwok.x-k8s.io/v1alpha1); kwok
reads it with the kubelet's own CRI log reader, so ``follow``, ``timestamps``,
``sinceSeconds``/``sinceTime``, ``tailLines`` and ``limitBytes`` behave as on a real node
and lines appended to the file reach followers at once (inotify, else a 1 s re-check).

What the API server needs: nothing beyond :class:`~agentdetect.local.controlplane.ControlPlane`'s
flags. It dials the Node's ``InternalIP`` (127.0.0.1; kwok reports no ``Hostname`` address
because we do not pass ``--node-name``) on ``daemonEndpoints.kubeletEndpoint.Port``; it
speaks HTTPS, and without ``--kubelet-certificate-authority`` it does not verify kwok's
self-signed certificate; kwok asks for no client certificate.

What to know (the helpers here make up for the first two and the last):

* The log file must be in the CRI format (``<RFC3339Nano> stdout F <text>``) or Docker's
  JSON format; use :func:`append_log_lines`. A file whose first line is neither ends every
  request with ``failed to get parse function: unsupported log format``.
* kwok never ends a followed stream by itself: its CRI stub answers ``ContainerStatus``
  with ``Unavailable``, which the reader takes for "still running", so deleting the pod
  leaves followers hanging. :meth:`KwokNode.delete_pod` therefore calls
  :func:`end_log_streams`, which makes kwok's reader fail and close the response; the
  stream then ends (cleanly, at the HTTP level) after one last text without a newline,
  ``failed to open log file "...": ... too many levels of symbolic links``.
* Append only. Truncating the file strands followers at their old offset (they print
  nothing more); rotating it (rename, then create a new file under the name) is followed
  as a kubelet would. A follow request on an empty file (or with nothing newer than
  ``sinceSeconds``) gets its response headers only with the first line, so
  ``read_namespaced_pod_log(..., _preload_content=False)`` blocks until then: the same
  as with a real kubelet, whose handler is the same code.
* The ServiceAccount admission plugin rejects pods whose ServiceAccount does not exist,
  even with ``automountServiceAccountToken: false``, and no controller creates
  ``default`` here: :meth:`KwokNode.create_pod` creates it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane, Process, free_port, load_yaml_documents, log_tail

KWOK_GROUP = "kwok.x-k8s.io"
KWOK_API_VERSION = "v1alpha1"
#: The stage set ``kwokctl`` uses by default (kustomize/stage/fast): nodes become Ready at
#: once and renew a Lease, pods become Running at once and are removed once deleted.
STAGE_DIRS = (
    "kustomize/stage/node/fast",
    "kustomize/stage/node/heartbeat-with-lease",
    "kustomize/stage/pod/fast",
)
#: kwok serves logs from these kinds once ``--enable-crds`` names them; the Logs CRD must exist.
LOG_KINDS = ("Logs", "ClusterLogs")
LOG_CRDS = (
    "kustomize/crd/bases/kwok.x-k8s.io_logs.yaml",
    "kustomize/crd/bases/kwok.x-k8s.io_clusterlogs.yaml",
)
NODE_IP = "127.0.0.1"
#: kwok's answers for a log file it will never serve (as opposed to a Logs object not yet seen).
PERMANENT_LOG_ERRORS = ("failed to get parse function", "failed to open log file")


class KwokUnavailable(RuntimeError):
    """The kwok binary or its module source (stages, CRDs) could not be found."""


class KwokError(RuntimeError):
    """kwok failed to start or a fake pod did not come up; the message carries kwok's log tail."""


# ---- locating kwok ---------------------------------------------------------------------------


def find_kwok_binary() -> Path:
    """Built once by the project (``agentdetect binaries --kwok``), or ``$KWOK_BINARY``."""
    try:
        return binaries.ensure_kwok().binary
    except binaries.BinariesError as exc:
        raise KwokUnavailable(str(exc)) from exc


def find_kwok_source() -> Path:
    """kwok's module source (``$KWOK_SOURCE``, else the Go module cache): stages and CRDs."""
    try:
        source = binaries.ensure_kwok().source
    except binaries.BinariesError as exc:
        raise KwokUnavailable(str(exc)) from exc
    missing = [rel for rel in (*STAGE_DIRS, *LOG_CRDS) if not (source / rel).exists()]
    if missing:
        raise KwokUnavailable(f"kwok source at {source} lacks {', '.join(missing)}")
    return source


def kustomize_resources(directory: Path) -> list[Path]:
    """The files a plain ``kustomization.yaml`` lists (resources only, recursively)."""
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    files: list[Path] = []
    for rel in doc.get("resources") or []:
        path = directory / rel
        files.extend(kustomize_resources(path) if path.is_dir() else [path])
    return files


def stage_documents(source: Path) -> list[dict[str, Any]]:
    files = [f for rel in STAGE_DIRS for f in kustomize_resources(source / rel)]
    return list(load_yaml_documents(files))


# ---- log files -------------------------------------------------------------------------------


def cri_timestamp(ns: int | None = None) -> str:
    """RFC 3339 with nanoseconds in UTC, as container runtimes write (and kubelets echo) it."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def append_log_lines(
    path: Path, lines: Iterable[str | bytes], stream: str = "stdout", timestamp_ns: int | None = None
) -> list[str]:
    """Append ``lines`` in the CRI log format in one write; returns the timestamps written.

    Each line gets its own timestamp (the current time unless ``timestamp_ns`` is given, then
    that one for all). The text must not contain a newline.
    """
    stamps: list[str] = []
    out = bytearray()
    for line in lines:
        text = line.encode() if isinstance(line, str) else line
        if b"\n" in text:
            raise ValueError(f"a log line cannot contain a newline: {text!r}")
        stamp = cri_timestamp(timestamp_ns)
        stamps.append(stamp)
        out += f"{stamp} {stream} F ".encode() + text + b"\n"
    with path.open("ab") as fh:
        fh.write(bytes(out))
    return stamps


def _real(path: Path) -> Path:
    """kwok resolves symbolic links in the path before watching its directory; so do we."""
    return Path(os.path.realpath(path.parent)) / path.name


def end_log_streams(path: Path) -> Path | None:
    """End every followed stream kwok serves from ``path``, as a stopped container would.

    The file is moved to ``<path>.ended`` (returned; ``None`` if there was no file) and a
    symbolic link to itself is created in its place. kwok's reader sees the name re-created,
    re-opens it, fails (ELOOP) and closes the response after writing that error as a last
    text without a newline; kube-apiserver then ends the client's response normally.
    New requests for the path fail the same way, with HTTP 400 from the kubelet API.
    """
    path = _real(path)
    if path.is_symlink():  # ended already (or not ours to move)
        return None
    aside = path.with_name(path.name + ".ended")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        path.symlink_to(path.name)
        return None
    path.symlink_to(path.name)
    return aside


# ---- the node --------------------------------------------------------------------------------


@dataclass
class FakePod:
    """A pod kwok runs; its containers' logs come from ``log_files``."""

    namespace: str
    name: str
    uid: str
    node: str
    log_files: dict[str, Path]

    def append_log(self, container: str, *lines: str | bytes, stream: str = "stdout") -> list[str]:
        """Append lines to the container's log file; returns their CRI timestamps."""
        return append_log_lines(self.log_files[container], lines, stream=stream)


def _wait(
    probe: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if probe():
            return
        if time.monotonic() > deadline:
            raise KwokError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.2)


@dataclass
class KwokNode:
    """One fake Node served by one kwok process; :meth:`start`, then always :meth:`stop`.

    ``control_plane`` must be started. kwok runs with the control plane's admin kubeconfig,
    serves the kubelet API on ``127.0.0.1:<port>`` and manages only the Node ``name``, so
    several KwokNodes (each with its own name) can share one control plane.
    """

    control_plane: ControlPlane
    binary: Path
    name: str = "kwok-node"
    source: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 90.0
    pod_timeout: float = 90.0
    port: int = 0
    process: Process | None = None
    pods: dict[tuple[str, str], FakePod] = field(default_factory=dict)
    _api: Any = None

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> KwokNode:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self.control_plane.api_client()
        return self._api

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def workdir(self) -> Path:
        return self.control_plane.dir / "kwok" / self.name

    @property
    def log(self) -> Path:
        return self.control_plane.log(f"kwok-{self.name}")

    @property
    def server(self) -> str:
        """kwok's kubelet API (it serves HTTPS with a throwaway certificate and plain HTTP)."""
        return f"https://{NODE_IP}:{self.port}"

    def argv(self, config: Path) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.control_plane.kubeconfig}",
            f"--config={config}",
            f"--manage-single-node={self.name}",
            f"--node-ip={NODE_IP}",
            f"--node-port={self.port}",
            f"--server-address={NODE_IP}:{self.port}",
            f"--enable-crds={','.join(LOG_KINDS)}",
            "--node-lease-duration-seconds=40",
        ]

    def start(self) -> None:
        if self.process is not None:
            raise KwokError("this kwok node was already started; create a new one")
        source = self.source or find_kwok_source()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kwok.yaml"
        config.write_text(yaml.safe_dump_all(stage_documents(source)))
        self.control_plane.install_crds(load_yaml_documents([source / rel for rel in LOG_CRDS]))
        self._register_node()
        self.port = self.port or free_port()
        self.process = Process(f"kwok-{self.name}", self.argv(config), self.log)
        try:
            self.process.start()
            _wait(self._healthy, self.start_timeout, f"kwok /healthz on port {self.port}", self._alive)
            _wait(self._node_ready, self.start_timeout, f"Node {self.name} Ready", self._alive)
        except BaseException as exc:
            self.process.stop()
            if isinstance(exc, KwokError):
                raise KwokError(f"{exc}; last lines of {self.log}:\n{log_tail(self.log)}") from None
            raise

    def stop(self) -> None:
        """Remove the pods this node still runs (forcefully), stop kwok, delete the Node."""
        for pod in list(self.pods.values()):
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
            for path in pod.log_files.values():
                with contextlib.suppress(OSError):
                    end_log_streams(path)
        self.pods.clear()
        if self.process is not None:
            self.process.stop()
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.name)
        if self._api is not None:
            self._api.close()
            self._api = None

    def restart(self, down_for: float = 0.0) -> None:
        """kwok stopped and started again, as a kubelet restart: every followed log stream it
        serves ends; pods and their log files stay."""
        if self.process is None:
            raise KwokError("this kwok node was not started")
        self.process.stop()
        time.sleep(down_for)
        self.process.start()
        _wait(self._healthy, self.start_timeout, f"kwok /healthz on port {self.port}", self._alive)
        _wait(self._node_ready, self.start_timeout, f"Node {self.name} Ready", self._alive)

    def _alive(self) -> None:
        code = self.process.exited() if self.process else None
        if code is not None:
            raise KwokError(f"kwok exited with code {code}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{NODE_IP}:{self.port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _node_ready(self) -> bool:
        node = self.core.read_node(self.name)
        conds = {c.type: c.status for c in (node.status.conditions or [])}
        endpoint = node.status.daemon_endpoints and node.status.daemon_endpoints.kubelet_endpoint
        return conds.get("Ready") == "True" and bool(endpoint and endpoint.port == self.port)

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "type": "kwok",
                    **self.labels,
                },
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    # ---- pods ----------------------------------------------------------------------------

    def _ensure_service_account(self, namespace: str, name: str) -> None:
        try:
            self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def create_pod(
        self,
        namespace: str,
        name: str,
        containers: Sequence[str],
        log_files: Mapping[str, Path],
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        timeout: float | None = None,
    ) -> FakePod:
        """Create a pod bound to this node and return once it is Running and its logs are served.

        ``log_files`` maps container names (a subset of ``containers``) to log files; missing
        files are created empty. Give each container its own file: :meth:`delete_pod` ends
        the streams of every pod reading a file it ends.
        """
        unknown = set(log_files) - set(containers)
        if unknown:
            raise ValueError(f"log files for containers the pod lacks: {sorted(unknown)}")
        files = {c: _real(Path(p)) for c, p in log_files.items()}
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        self._ensure_service_account(namespace, service_account)
        pod = self.core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                "spec": {
                    "nodeName": self.name,
                    "serviceAccountName": service_account,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": c, "image": f"kwok.invalid/{c}:fake"} for c in containers],
                },
            },
        )
        fake = FakePod(namespace, name, pod.metadata.uid, self.name, files)
        self.pods[(namespace, name)] = fake
        if files:
            self._create_logs(fake)
        timeout = self.pod_timeout if timeout is None else timeout
        try:
            _wait(
                lambda: self._running(namespace, name),
                timeout,
                f"pod {namespace}/{name} Running",
                self._alive,
            )
            for container in files:
                _wait(
                    functools.partial(self._logs_served, namespace, name, container),
                    timeout,
                    f"logs of {namespace}/{name}/{container} served",
                    self._alive,
                )
        except KwokError as exc:
            raise KwokError(f"{exc}; last lines of {self.log}:\n{log_tail(self.log)}") from None
        return fake

    def _create_logs(self, pod: FakePod) -> None:
        """A Logs object named after the pod, owned by it (the garbage collector removes it)."""
        body: dict[str, Any] = {
            "apiVersion": f"{KWOK_GROUP}/{KWOK_API_VERSION}",
            "kind": "Logs",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": True}
                ],
            },
            "spec": {
                "logs": [
                    {"containers": [c], "logsFile": str(path), "follow": True}
                    for c, path in pod.log_files.items()
                ]
            },
        }
        custom = client.CustomObjectsApi(self.api)
        try:
            custom.create_namespaced_custom_object(KWOK_GROUP, KWOK_API_VERSION, pod.namespace, "logs", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            old: Any = custom.get_namespaced_custom_object(
                KWOK_GROUP, KWOK_API_VERSION, pod.namespace, "logs", pod.name
            )
            body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            custom.replace_namespaced_custom_object(
                KWOK_GROUP, KWOK_API_VERSION, pod.namespace, "logs", pod.name, body
            )

    def _running(self, namespace: str, name: str) -> bool:
        pod = self.core.read_namespaced_pod(name, namespace)
        conds = {c.type: c.status for c in (pod.status.conditions or [])}
        return bool(pod.status.phase == "Running" and conds.get("Ready") == "True")

    def _logs_served(self, namespace: str, name: str, container: str) -> bool:
        """kwok learns Logs objects through a watch: probe until it serves this container.

        ``limitBytes=1`` makes kwok parse the first line, so a file in neither the CRI nor
        the Docker JSON format fails here rather than in the test.
        """
        try:
            self.core.read_namespaced_pod_log(name, namespace, container=container, limit_bytes=1)
        except ApiException as exc:
            message = str(exc.body or exc.reason)
            if any(m in message for m in PERMANENT_LOG_ERRORS):
                raise KwokError(f"kwok cannot serve {namespace}/{name}/{container}: {message}") from None
            return False  # "no logs found for container ...": the Logs object is not synced yet
        return True

    def delete_pod(
        self, namespace: str, name: str, end_streams: bool = True, timeout: float | None = None
    ) -> None:
        """Delete the pod, wait until kwok has removed it, then (by default) end its log streams."""
        timeout = self.pod_timeout if timeout is None else timeout
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, namespace)
        _wait(lambda: self._gone(namespace, name), timeout, f"pod {namespace}/{name} removed", self._alive)
        fake = self.pods.pop((namespace, name), None)
        if end_streams and fake is not None:
            for path in fake.log_files.values():
                end_log_streams(path)

    def _gone(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False
