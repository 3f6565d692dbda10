"""No API call but a watch or a log follow can hold its thread for good: against a server that
takes the connection, reads the request and never answers, every call of Cluster (and the
peering gate's) ends with a read timeout. The server is a real socket: what is checked is what
urllib3 does with the timeouts the calls carry, not that an argument was passed."""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client

from agentdetect.app.runner import api_client
from agentdetect.cluster.kube import KEEPALIVE_IDLE, Cluster, ObjectKey, keepalive_options
from agentdetect.detection import sources
from agentdetect.detection.peering import PeeringGate

#: Short enough for a test, long enough that a call cut by it did start its request.
READ = 0.2
PROFILE = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "AgentDetectionProfile",
    "metadata": {"name": "p", "namespace": "team", "uid": "u-1"},
}
POLICY = {
    "apiVersion": "cilium.io/v1alpha1",
    "kind": "TracingPolicyNamespaced",
    "metadata": {"name": "p-net", "namespace": "team"},
    "spec": {},
}
DETECTION = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "AgentDetection",
    "metadata": {"name": "d", "namespace": "team"},
}
#: Every public method of Cluster that talks to the API server, with arguments.
CALLS: dict[str, Callable[[Cluster], Any]] = {
    "tetragon_installed": lambda c: c.tetragon_installed(),
    "list_owned": lambda c: c.list_owned("AgentDetectionProfile", "p", "team"),
    "list_ours": lambda c: c.list_ours(),
    "apply": lambda c: c.apply(POLICY, {"uid": "u-1"}),
    "delete": lambda c: c.delete(ObjectKey("TracingPolicyNamespaced", "team", "p-net")),
    "apply_detection": lambda c: c.apply_detection(DETECTION, {"uid": "u-2"}),
    "delete_detections": lambda c: c.delete_detections("AgentDetectionProfile", "p", "team"),
    "list_detections": lambda c: c.list_detections(),
    "list_call": lambda c: c.list_call("agentdetectionprofiles")(),
    "list_profiles": lambda c: c.list_profiles(),
    "detection_profiles": lambda c: c.detection_profiles(),
    "pod_uid": lambda c: c.pod_uid("team", "pod"),
    "create_event": lambda c: c.create_event("team", {"metadata": {"name": "e"}}),
    "get_profile": lambda c: c.get_profile("AgentDetectionProfile", "p", "team"),
    "patch_status": lambda c: c.patch_status("AgentDetectionProfile", "p", "team", {}),
    "namespace_active": lambda c: c.namespace_active("team"),
    "namespaces": lambda c: c.namespaces(),
}


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, list[bytes]]]:
    """A port that accepts, reads what it is sent (kept, to show a request arrived) and never
    answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    def drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                received.append(data)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], received
    finally:
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


def outcome(call: Callable[[], Any], limit: float = 20.0) -> BaseException | None:
    """What ``call`` raised, from a thread given ``limit`` seconds: a call that hangs fails the
    test instead of hanging the suite."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the outcome is what is asserted
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert result, f"still waiting after {limit} s: the call has no timeout"
    return result[0]


def is_read_timeout(exc: BaseException | None) -> bool:
    if isinstance(exc, urllib3.exceptions.MaxRetryError):  # a GET is tried again first
        exc = exc.reason
    return isinstance(exc, urllib3.exceptions.ReadTimeoutError)


def test_the_table_names_every_method_that_calls_the_api_server() -> None:
    public = {name for name, _ in inspect.getmembers(Cluster, inspect.isfunction) if not name.startswith("_")}
    assert public == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_call_to_a_server_that_never_answers_ends_with_a_read_timeout(name: str) -> None:
    with silent_server() as (port, received):
        api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
        cluster = Cluster(api, request_timeout=(2.0, READ), event_timeout=(2.0, READ))
        began = time.monotonic()
        exc = outcome(lambda: CALLS[name](cluster))
        took = time.monotonic() - began
    assert is_read_timeout(exc), repr(exc)
    assert received, "no request reached the server"
    # A GET is tried again up to three times (urllib3's default Retry), a write not at all.
    assert READ <= took < 4 * READ + 5.0


def test_the_peering_gate_keeps_its_role_when_the_server_never_answers() -> None:
    with silent_server() as (port, received):
        api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
        gate = PeeringGate(api, "agentdetect", priority=100, namespace="agentdetect")
        gate.custom._timeout = (2.0, READ)  # the default is a minute: the call itself is checked
        answers: list[bool] = []
        assert outcome(lambda: answers.append(gate())) is None
    assert answers == [False]
    assert received


def test_the_node_agents_listing_of_tetragon_pods_ends_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sources, "REQUEST_TIMEOUT", (2.0, READ))
    with silent_server() as (port, received):
        api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
        source = sources.TetragonLogSource(api, sink=lambda *_: None, rediscover_every=0.05).start()
        try:
            deadline = time.monotonic() + 20
            while "listing Tetragon pods failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            source.stop()
    assert "listing Tetragon pods failed" in caplog.text
    assert "ReadTimeoutError" in caplog.text or "timed out" in caplog.text
    assert source.found is None and received


def test_the_operators_connections_use_tcp_keepalive(tmp_path: Any) -> None:
    """A connection whose peer is gone without a word is closed, as client-go's are: checked on
    a socket the client's own pool opened."""
    with silent_server() as (port, _):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        )
        api = api_client(kubeconfig)
        pool = api.rest_client.pool_manager.connection_from_url(api.configuration.host)
        conn: Any = pool._get_conn()  # the pool's own kind of connection, with its socket options
        conn.connect()
        try:
            sock = conn.sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # urllib3's own kept
        finally:
            conn.close()
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in keepalive_options()
