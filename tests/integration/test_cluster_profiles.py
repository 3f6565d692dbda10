"""Cluster profiles follow namespaces as they come, go and are relabelled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from agentdetect.api.models import GROUP, VERSION
from agentdetect.app.runner import OperatorThread
from agentdetect.local.controlplane import ControlPlane
from agentdetect.policy.render import POD_NAMESPACE_LABEL
from tests.integration.helpers import cluster_policies, gone, policies, wait_condition
from tests.waiting import eventually


def _ns(core: client.CoreV1Api, name: str, labels: dict[str, str]) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))


@pytest.fixture
def label() -> str:
    return f"scope-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def core(api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def cleanup(api: Any, core: client.CoreV1Api) -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in made:
        if kind == "ns":
            core.delete_namespace(name)
        else:
            client.CustomObjectsApi(api).delete_cluster_custom_object(
                GROUP, VERSION, "clusteragentdetectionprofiles", name
            )


def _owned(api: Any, profile: str) -> set[str]:
    return {p["metadata"]["namespace"] for p in policies(api, None, f"agentdetect.io/profile-name={profile}")}


def _selected(api: Any, profile: str) -> set[str] | None:
    """The namespaces the profile's one TracingPolicy names in its pod selector; None without one."""
    found = cluster_policies(api, f"agentdetect.io/profile-name={profile}")
    if not found:
        return None
    (policy,) = found
    expressions = policy["spec"]["podSelector"]["matchExpressions"]
    (values,) = [e["values"] for e in expressions if e["key"] == POD_NAMESPACE_LABEL]
    return set(values)


def test_selected_namespaces_are_followed(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    core: client.CoreV1Api,
    label: str,
    cleanup: list[tuple[str, str]],
) -> None:
    """One TracingPolicy whatever the namespaces (one of Tetragon's 128 policy-filter slots),
    its pod selector kept to the namespaces the profile selects."""
    a, b = f"{label}-a", f"{label}-b"
    _ns(core, a, {"team": label})
    _ns(core, b, {})
    cleanup += [("ns", a), ("ns", b), ("cadp", label)]
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: ClusterAgentDetectionProfile
metadata: {{name: {label}}}
spec:
  namespaceSelector: {{matchLabels: {{team: {label}}}}}
  processes: {{presets: [shells]}}
""",
    )
    obj = wait_condition(api, label, None, "Applied")
    assert [(p["kind"], p.get("namespace")) for p in obj["status"]["policies"]] == [("TracingPolicy", None)]
    assert _selected(api, label) == {a}
    assert _owned(api, label) == set()  # no TracingPolicyNamespaced at all

    core.patch_namespace(b, {"metadata": {"labels": {"team": label}}})
    eventually(lambda: _selected(api, label) == {a, b}, timeout=15, what="the relabelled namespace selected")

    core.patch_namespace(a, {"metadata": {"labels": {"team": None}}})
    eventually(lambda: _selected(api, label) == {b}, timeout=15, what="the unlabelled namespace dropped")

    c = f"{label}-c"
    _ns(core, c, {"team": label})
    cleanup.append(("ns", c))
    eventually(lambda: _selected(api, label) == {b, c}, timeout=15, what="the new namespace selected")

    core.delete_namespace(c)
    cleanup.remove(("ns", c))
    eventually(lambda: _selected(api, label) == {b}, timeout=30, what="the deleted namespace dropped")

    core.patch_namespace(b, {"metadata": {"labels": {"team": None}}})
    eventually(
        lambda: _selected(api, label) is None, timeout=15, what="the policy pruned when none is selected"
    )


def test_selecting_every_namespace_renders_one_cluster_policy(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    label: str,
    cleanup: list[tuple[str, str]],
) -> None:
    cleanup.append(("cadp", label))
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: ClusterAgentDetectionProfile
metadata: {{name: {label}}}
spec:
  files: {{presets: [credentials]}}
""",
    )
    obj = wait_condition(api, label, None, "Applied")
    (ref,) = obj["status"]["policies"]
    assert ref["kind"] == "TracingPolicy" and "namespace" not in ref
    (live,) = cluster_policies(api, f"agentdetect.io/profile-name={label}")
    assert live["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert _owned(api, label) == set()

    cleanup.clear()
    client.CustomObjectsApi(api).delete_cluster_custom_object(
        GROUP, VERSION, "clusteragentdetectionprofiles", label
    )
    eventually(
        lambda: gone(
            lambda: client.CustomObjectsApi(api).get_cluster_custom_object(
                "cilium.io", "v1alpha1", "tracingpolicies", ref["name"]
            )
        ),
        what="cluster policy garbage-collected",
    )
