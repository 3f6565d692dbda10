"""Detections end to end against the real API server: events in, AgentDetections and profile
status out, coalesced writes, garbage collection with the pod, and what kubectl shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kubernetes import client

from agentdetect.app.runner import OperatorThread
from agentdetect.controller.reconcile import Config
from agentdetect.local.controlplane import ControlPlane
from agentdetect.local.samples import kprobe_event
from agentdetect.policy.resolve import StaticResolver
from tests.integration.conftest import TEST_HOSTS
from tests.integration.helpers import gone, wait_condition
from tests.waiting import eventually

PROFILE = """
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: chatbot, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: chatbot}}}}
  network: {{providers: [openai, anthropic]}}
  files: {{presets: [serviceaccount-token]}}
  processes: {{presets: [shells]}}
"""


@pytest.fixture(scope="module")
def detecting_operator(
    control_plane: ControlPlane, profile_crds: list[str], policy_kinds: bool
) -> Iterator[OperatorThread]:
    """An operator with detection on; events are fed straight into its pipeline here (the
    Tetragon log source is exercised separately, with kwok as the node)."""
    cfg = Config(resolver=StaticResolver(TEST_HOSTS), detect=True, flush_interval=0.5, retry_delay=1.0)
    op = OperatorThread(cfg, control_plane.kubeconfig)
    op.start()
    assert op.detection is not None and op.detection.begun.wait(30)
    assert op.detection.source is not None
    op.detection.source.stop()  # no Tetragon DaemonSet in this control plane
    yield op
    op.stop()


def _pod(api: Any, namespace: str, name: str) -> str:
    core = client.CoreV1Api(api)
    if gone(lambda: core.read_namespaced_service_account("default", namespace)):
        # No serviceaccount controller runs in the test control plane.
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
    pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={"app": "chatbot"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="app", image="registry.example.com/app:1")]
            ),
        ),
    )
    assert pod.metadata is not None and pod.metadata.uid
    return pod.metadata.uid


def _detections(api: Any, namespace: str) -> list[dict[str, Any]]:
    resp = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "agentdetect.io", "v1alpha1", namespace, "agentdetections"
    )
    assert isinstance(resp, dict)
    return list(resp["items"])


def test_events_become_agentdetections_and_profile_status(
    control_plane: ControlPlane, api: Any, detecting_operator: OperatorThread, namespace: str
) -> None:
    op = detecting_operator
    service = op.detection
    assert service is not None
    control_plane.kubectl("apply", "-f", "-", input=PROFILE.format(ns=namespace))
    status = wait_condition(api, "chatbot", namespace, "Applied")["status"]
    policy = {p["hook"]: p["name"] for p in status["policies"]}
    uid = _pod(api, namespace, "chatbot-1")
    uid2 = _pod(api, namespace, "chatbot-2")
    # The pods' uids come from a kopf index of the pods the operator watches, not a GET each.
    lookup = service.pod_uids
    assert lookup is not None
    eventually(
        lambda: lookup(namespace, "chatbot-1") == uid and lookup(namespace, "chatbot-2") == uid2,
        what="both pods in the operator's pod index",
    )
    gets_before = service.writer.pod_gets

    def feed(pod: str, hook: str, target: str, port: int = 443, n: int = 1, second: int = 0) -> None:
        for i in range(n):
            service.pipeline.feed(
                orjson.dumps(
                    kprobe_event(
                        hook=hook,
                        policy=policy[hook],
                        namespace=namespace,
                        pod=pod,
                        target=target,
                        port=port,
                        binary="/usr/bin/python3",
                        workload="chatbot",
                        time=f"2026-11-23T12:00:{second:02d}.{i:09d}Z",
                    )
                )
            )

    feed("chatbot-1", "tcp_connect", "104.18.6.192", n=5)
    feed("chatbot-1", "fd_install", "/var/run/secrets/kubernetes.io/serviceaccount/token", n=2, second=1)
    feed("chatbot-2", "execve", "/bin/sh", n=3, second=2)
    feed("chatbot-2", "tcp_connect", "8.8.8.8")  # no rule for it: not a detection

    items = eventually(
        lambda: (lambda d: d if len(d) == 2 else None)(_detections(api, namespace)),
        what="two AgentDetections",
    )
    by_pod = {d["pod"]["name"]: d for d in items}
    one = by_pod["chatbot-1"]
    assert one["summary"] == {
        "rules": 2,
        "targets": "openai, serviceaccount-token",
        "events": 7,
        "lastSeen": "2026-11-23T12:00:01.000000001Z",
        "action": "Observed",
    }
    assert one["profile"] == {"kind": "AgentDetectionProfile", "namespace": namespace, "name": "chatbot"}
    (owner,) = one["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "chatbot-1", uid)
    assert service.writer.pod_gets == gets_before, "a pod was fetched although the index had it"
    openai = next(r for r in one["detections"] if r["rule"] == "openai")
    assert openai["count"] == 5 and openai["hook"] == "tcp_connect"
    assert openai["example"] == "/usr/bin/python3 connected to 104.18.6.192"

    def summary() -> dict[str, Any] | None:
        got = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "agentdetect.io", "v1alpha1", namespace, "agentdetectionprofiles", "chatbot"
        )
        assert isinstance(got, dict)
        det = got.get("status", {}).get("detections")
        return det if det and det["events"] == 10 else None

    det = eventually(summary, what="profile status with the detections summary")
    assert det["pods"] == 2 and det["truncated"] is False
    assert {p["pod"] for p in det["byPod"]} == {"chatbot-1", "chatbot-2"}

    rows = control_plane.kubectl("get", "agentdetections", "-A").stdout.splitlines()
    assert rows[0].split() == [
        "NAMESPACE",
        "NAME",
        "POD",
        "PROFILE",
        "RULES",
        "TARGETS",
        "EVENTS",
        "LAST",
        "SEEN",
        "ACTION",
    ]
    line = next(r for r in rows if " chatbot-1 " in r)
    assert "openai, serviceaccount-token" in line and line.split()[-1] == "Observed"
    assert " chatbot " in line and line.split()[0] == namespace

    # Coalescing: a burst of 2,000 events costs the same writes as one event would.
    writes_before = service.writer.total_writes
    feed("chatbot-1", "tcp_connect", "160.79.104.10", n=2000, second=3)
    eventually(
        lambda: (
            next(d for d in _detections(api, namespace) if d["pod"]["name"] == "chatbot-1")["summary"][
                "events"
            ]
            == 2007
        ),
        what="the burst counted",
    )
    eventually(
        lambda: service.writer.total_writes - writes_before == 2,
        timeout=5,
        what="one AgentDetection write and one status patch for the burst",
    )

    # The pod goes: its AgentDetection is garbage-collected, its state dropped from memory.
    client.CoreV1Api(api).delete_namespaced_pod("chatbot-1", namespace)
    eventually(
        lambda: [d["pod"]["name"] for d in _detections(api, namespace)] == ["chatbot-2"],
        what="AgentDetection collected with its pod",
    )
    eventually(
        lambda: not any(k[2] == "chatbot-1" for k in service.pipeline.aggregator.pods),
        what="pod state forgotten",
    )


def _detect(service: Any, policy: str, namespace: str, pod: str, n: int = 1) -> None:
    for i in range(n):
        service.pipeline.feed(
            orjson.dumps(
                kprobe_event(
                    hook="execve",
                    policy=policy,
                    namespace=namespace,
                    pod=pod,
                    target="/bin/sh",
                    time=f"2026-11-23T12:00:00.{i:09d}Z",
                )
            )
        )


def test_deleting_a_profile_deletes_its_agentdetections(
    control_plane: ControlPlane, api: Any, detecting_operator: OperatorThread, namespace: str
) -> None:
    """AgentDetections answer a profile's question: they go with the profile, not only with the
    pod; those of another profile stay."""
    service = detecting_operator.detection
    assert service is not None
    for name in ("asked", "kept"):
        control_plane.kubectl(
            "apply", "-f", "-", input=PROFILE.replace("name: chatbot,", f"name: {name},").format(ns=namespace)
        )
    policies = {}
    for name in ("asked", "kept"):
        status = wait_condition(api, name, namespace, "Applied")["status"]
        policies[name] = next(p["name"] for p in status["policies"] if p["hook"] == "execve")
    _pod(api, namespace, "chatbot-9")
    for name in ("asked", "kept"):
        _detect(service, policies[name], namespace, "chatbot-9", n=2)
    eventually(lambda: len(_detections(api, namespace)) == 2, what="an AgentDetection per profile")

    control_plane.kubectl("delete", "adp", "asked", "-n", namespace)
    eventually(
        lambda: [d["profile"]["name"] for d in _detections(api, namespace)] == ["kept"],
        timeout=15,
        what="the deleted profile's AgentDetection deleted",
    )
    # Late events of the deleted profile's policy write nothing back.
    _detect(service, policies["asked"], namespace, "chatbot-9", n=3)
    service.flush()
    assert [d["profile"]["name"] for d in _detections(api, namespace)] == ["kept"]


def test_agentdetections_of_profiles_deleted_while_no_operator_ran_are_pruned(
    control_plane: ControlPlane, api: Any, detecting_operator: OperatorThread, namespace: str
) -> None:
    service = detecting_operator.detection
    assert service is not None
    custom = client.CustomObjectsApi(api)
    orphan = {
        "apiVersion": "agentdetect.io/v1alpha1",
        "kind": "AgentDetection",
        "metadata": {
            "name": "pod-1.adp-gone-abcdef",
            "labels": {
                "app.kubernetes.io/managed-by": "agentdetect",
                "agentdetect.io/profile-kind": "AgentDetectionProfile",
                "agentdetect.io/profile-name": "gone",
                "agentdetect.io/profile-namespace": namespace,
            },
        },
        "pod": {"kind": "Pod", "namespace": namespace, "name": "pod-1"},
        "profile": {"kind": "AgentDetectionProfile", "namespace": namespace, "name": "gone"},
        "summary": {"rules": 0, "targets": "", "events": 0, "action": "Observed"},
    }
    custom.create_namespaced_custom_object("agentdetect.io", "v1alpha1", namespace, "agentdetections", orphan)
    assert service.prune_orphans() == 1
    assert _detections(api, namespace) == []
