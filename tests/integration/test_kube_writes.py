"""Cluster's writes (apply, status patch, Event) go to the connection pool directly, not
through the generated methods: held here to what the API server stores and to the errors the
generated client raised, against the real API server."""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.api.models import GROUP, VERSION
from agentdetect.cluster.kube import FIELD_MANAGER, TETRAGON_GROUP, TETRAGON_VERSION, Cluster, owner_reference
from agentdetect.cluster.recorder import EventCounts, EventRecorder
from agentdetect.local.controlplane import ControlPlane

pytestmark = pytest.mark.usefixtures("profile_crds", "policy_kinds")

UID = "6a0c4d1e-0000-4000-8000-000000000001"
PROFILE = """
apiVersion: {group}/{version}
kind: AgentDetectionProfile
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: x}}}}
  processes: {{presets: [shells]}}
"""


def make_profile(cp: ControlPlane, api: Any, namespace: str, name: str) -> dict[str, Any]:
    cp.kubectl(
        "apply", "-f", "-", input=PROFILE.format(group=GROUP, version=VERSION, name=name, namespace=namespace)
    )
    got = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "agentdetectionprofiles", name
    )
    assert isinstance(got, dict)
    return got


@pytest.fixture
def owner(control_plane: ControlPlane, api: Any, namespace: str) -> dict[str, Any]:
    """A real profile's owner reference: with a made-up uid the garbage collector (a real
    kube-controller-manager runs) deletes what the test applied."""
    return owner_reference(make_profile(control_plane, api, namespace, "owner"))


def policy(namespace: str, name: str, call: str = "tcp_connect") -> dict[str, Any]:
    return {
        "apiVersion": f"{TETRAGON_GROUP}/{TETRAGON_VERSION}",
        "kind": "TracingPolicyNamespaced",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "x"}},
        "spec": {"kprobes": [{"call": call, "syscall": False}]},
    }


def read_policy(api: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        TETRAGON_GROUP, TETRAGON_VERSION, namespace, "tracingpoliciesnamespaced", name
    )
    assert isinstance(obj, dict)
    return obj


def test_apply_creates_then_takes_its_fields_back(api: Any, namespace: str, owner: dict[str, Any]) -> None:
    cluster = Cluster(api)
    assert cluster.apply(policy(namespace, "p1"), owner) is True  # 201: created
    stored = read_policy(api, namespace, "p1")
    assert stored["metadata"]["ownerReferences"] == [owner]
    assert [m["manager"] for m in stored["metadata"]["managedFields"]] == [FIELD_MANAGER]
    assert [m["operation"] for m in stored["metadata"]["managedFields"]] == ["Apply"]
    # Someone else changes a field we own; the next apply forces it back (force=true).
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        TETRAGON_GROUP,
        TETRAGON_VERSION,
        namespace,
        "tracingpoliciesnamespaced",
        "p1",
        {"spec": {"kprobes": [{"call": "fd_install", "syscall": False}]}},
        _content_type="application/merge-patch+json",
    )
    assert read_policy(api, namespace, "p1")["spec"]["kprobes"][0]["call"] == "fd_install"
    assert cluster.apply(policy(namespace, "p1"), owner) is False  # 200: it was there
    assert read_policy(api, namespace, "p1")["spec"]["kprobes"][0]["call"] == "tcp_connect"


def generated_apply(api: Any, body: dict[str, Any], owner: dict[str, Any]) -> None:
    """The apply as Cluster made it through the generated client before."""
    body = {**body, "metadata": {**body["metadata"], "ownerReferences": [owner]}}
    meta = body["metadata"]
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        TETRAGON_GROUP,
        TETRAGON_VERSION,
        meta["namespace"],
        "tracingpoliciesnamespaced",
        meta["name"],
        body,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


SPOILS: list[Any] = [
    # a wrong type in the spec: the API server answers 500 for a typed-patch failure
    lambda p: p["spec"]["kprobes"][0].update(syscall="not a boolean"),
    # a namespace that does not exist: 404
    lambda p: p["metadata"].update(namespace="no-such-namespace-x"),
    # a name the API server refuses: 422 (Invalid)
    lambda p: p["metadata"].update(name="Not_A_DNS_Name"),
]


@pytest.mark.parametrize("spoil", SPOILS, ids=["wrong-type", "no-namespace", "bad-name"])
def test_a_refused_apply_raises_what_the_generated_client_raised(
    api: Any, namespace: str, owner: dict[str, Any], policy_kinds: bool, spoil: Any
) -> None:
    bad = policy(namespace, "p2")
    spoil(bad)
    theirs = outcome(lambda: generated_apply(api, bad, owner))
    ours = outcome(lambda: Cluster(api).apply(bad, owner))
    assert ours == theirs
    if spoil is SPOILS[0] and not policy_kinds:
        return  # Tetragon's stand-in CRDs keep any spec: nothing to refuse
    assert theirs is not None


def outcome(call: Any) -> tuple[type, Any, Any, str | None] | None:
    """What a write raised, as the caller sees it; None when it succeeded."""
    try:
        call()
    except ApiException as exc:
        return type(exc), exc.status, exc.reason, exc.body
    return None


def test_status_patch_merges_and_a_missing_profile_is_not_an_error(
    control_plane: ControlPlane, api: Any, namespace: str
) -> None:
    make_profile(control_plane, api, namespace, "plain")
    cluster = Cluster(api)
    cluster.patch_status("AgentDetectionProfile", "plain", namespace, {"observedGeneration": 1})
    cluster.patch_status("AgentDetectionProfile", "plain", namespace, {"policyFilterPolicies": 0})
    got = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "agentdetectionprofiles", "plain"
    )
    assert isinstance(got, dict)
    assert got["status"]["observedGeneration"] == 1  # merged, not replaced
    cluster.patch_status("AgentDetectionProfile", "gone", namespace, {"observedGeneration": 1})


def _recorder(api: Any, **kwargs: Any) -> EventRecorder:
    return EventRecorder(Cluster(api).create_event, FIELD_MANAGER, f"{GROUP}/operator", **kwargs)


def test_event_is_stored_as_kubectl_describe_reads_it(api: Any, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDetectionProfile",
        "metadata": {"name": "budget-profile", "namespace": namespace, "uid": UID},
    }
    recorder = _recorder(api)
    recorder.record(body, "Warning", "BudgetExceeded", "m" * 2000)
    assert recorder.flush(10)
    recorder.close()
    assert recorder.counts == EventCounts(posted=1)
    (event,) = client.CoreV1Api(api).list_namespaced_event(namespace).items
    assert event.metadata is not None and event.source is not None
    assert (event.metadata.name or "").startswith("budget-profile.")
    ref = event.involved_object
    assert (ref.kind, ref.name, ref.namespace, ref.uid) == (
        "AgentDetectionProfile",
        "budget-profile",
        namespace,
        UID,
    )
    assert (event.type, event.reason, event.count, event.source.component) == (
        "Warning",
        "BudgetExceeded",
        1,
        FIELD_MANAGER,
    )
    assert event.message == "m" * 1024
    assert event.first_timestamp is not None and event.first_timestamp == event.last_timestamp


def test_a_refused_event_is_logged_and_not_tried_again(api: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A 404 (no such namespace) is the API server's answer, and would be again."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "no-such-ns-y"}}
    recorder = _recorder(api, retry_after=0.01)
    recorder.record(body, "Normal", "Applied", "x")
    assert recorder.flush(10)
    recorder.close()
    assert recorder.counts == EventCounts(refused=1)
    assert "could not post Event Applied on Pod p: Not Found (refused; not tried again)" in caplog.text


def test_an_event_to_an_api_server_that_is_away_is_tried_again_then_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection error (urllib3's, not an ApiException) is tried again, then given up."""
    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:1"  # nothing listens on port 1
    cfg.retries = 0
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
    recorder = _recorder(client.ApiClient(cfg), max_tries=3, retry_after=0.01)
    recorder.record(body, "Normal", "Applied", "x")
    assert recorder.flush(10)
    recorder.close()
    assert recorder.counts == EventCounts(abandoned=1)
    assert "could not post Event Applied on Pod p:" in caplog.text
    assert "(try 2 of 3; again in 0.0 s)" in caplog.text and "(gave up after 3 tries)" in caplog.text


class _Forwarder:
    """A TCP port that refuses connections until :meth:`open`, then relays them to ``target``:
    the API server away, then back, without restarting the one the other tests share. TLS
    goes through it end to end (the certificate names 127.0.0.1, whatever the port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for end in (src, dst):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_an_event_recorded_while_the_api_server_is_away_is_stored_when_it_is_back(
    api: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding (d): the Event of a transition whose POST failed was lost, since the
    status already showed the new state. Now the POST is tried again until the server is back."""
    server = urlsplit(api.configuration.host)
    forwarder = _Forwarder((server.hostname or "127.0.0.1", server.port or 443))
    cfg = copy.copy(api.configuration)
    cfg.host = f"https://127.0.0.1:{forwarder.port}"
    # The kubeconfig loader's hook loads the kubeconfig again before a request, host included.
    cfg.refresh_api_key_hook = None
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDetectionProfile",
        "metadata": {"name": "away", "namespace": namespace, "uid": UID},
    }
    recorder = _recorder(client.ApiClient(cfg), retry_after=0.2, jitter=lambda: 1.0)
    try:
        recorder.record(body, "Normal", "Applied", "3 policies applied")
        for _ in range(500):
            if "(try 1 of 12; again in 0.2 s)" in caplog.text:
                break
            time.sleep(0.01)
        assert "(try 1 of 12; again in 0.2 s)" in caplog.text  # refused: nothing listens yet
        forwarder.open()
        assert recorder.flush(30)
    finally:
        recorder.close()
        forwarder.close()
    assert recorder.counts == EventCounts(posted=1)
    (event,) = client.CoreV1Api(api).list_namespaced_event(namespace).items
    got = (event.involved_object.name, event.reason, event.message)
    assert got == ("away", "Applied", "3 policies applied")
