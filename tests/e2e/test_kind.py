"""A real pod, a real Tetragon, the real operator: a connection to a listed destination and a
watched file opened show up as an AgentDetection."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from agentdetect.api.models import GROUP, VERSION
from tests.integration.helpers import wait_condition
from tests.waiting import eventually

IMAGE = "busybox:1.36"


def test_pod_activity_becomes_an_agentdetection(cluster: Any, e2e_namespace: str) -> None:
    core = client.CoreV1Api(cluster)
    # A destination every cluster has: the API server, by Service address and by endpoint.
    svc = core.read_namespaced_service("kubernetes", "default")
    assert svc.spec is not None and svc.spec.cluster_ip
    endpoints = core.read_namespaced_endpoints("kubernetes", "default")
    addresses = [svc.spec.cluster_ip] + [
        a.ip for s in endpoints.subsets or [] for a in s.addresses or [] if a.ip
    ]
    cidrs = sorted({f"{a}/32" for a in addresses})
    client.CustomObjectsApi(cluster).create_namespaced_custom_object(
        GROUP,
        VERSION,
        e2e_namespace,
        "agentdetectionprofiles",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentDetectionProfile",
            "metadata": {"name": "e2e", "namespace": e2e_namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "e2e-agent"}},
                "network": {"destinations": [{"name": "kube-api", "cidrs": cidrs, "ports": [443]}]},
                "files": {"paths": [{"prefix": "/etc/passwd"}]},
            },
        },
    )
    wait_condition(cluster, "e2e", e2e_namespace, "Applied", timeout=60)
    # Tetragon needs a moment to load the policy before the pod acts.
    connect = f"nc -w 2 {svc.spec.cluster_ip} 443 </dev/null"
    script = f"sleep 10; while true; do cat /etc/passwd >/dev/null; {connect}; sleep 5; done"
    core.create_namespaced_pod(
        e2e_namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="agent", labels={"app": "e2e-agent"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="agent", image=IMAGE, command=["sh", "-c", script])]
            ),
        ),
    )

    def detection() -> dict[str, Any] | None:
        got = client.CustomObjectsApi(cluster).list_namespaced_custom_object(
            GROUP, VERSION, e2e_namespace, "agentdetections"
        )
        assert isinstance(got, dict)
        for item in got["items"]:
            targets = item["summary"]["targets"]
            if item["pod"]["name"] == "agent" and "kube-api" in targets and "," in targets:
                return dict(item)
        return None

    found = eventually(detection, timeout=180, interval=2, what="an AgentDetection for the agent pod")
    assert found["summary"]["events"] >= 2
    (owner,) = found["metadata"]["ownerReferences"]
    assert owner["kind"] == "Pod" and owner["name"] == "agent"
