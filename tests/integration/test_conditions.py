"""What the profile's Ready condition says when things are not simply fine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from agentdetect.app.runner import OperatorThread
from agentdetect.controller.reconcile import uses_policy_filter
from agentdetect.local.controlplane import ControlPlane
from agentdetect.policy.resolve import StaticResolver
from tests.integration.helpers import cluster_policies, policies, profile, ready, wait_condition
from tests.waiting import eventually

ENFORCING = """
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: sandbox, namespace: {ns}}}
spec:
  mode: Enforce
  processes:
    presets: [shells]
    binaries: [{{equal: /usr/bin/curl, enforce: true}}]
"""


@pytest.fixture
def enforcement_allowed(operator: OperatorThread) -> Iterator[None]:
    operator.cfg.allow_enforcement = True
    yield
    operator.cfg.allow_enforcement = False


def _touch(api: Any, name: str, namespace: str) -> None:
    """A label change is an update: the operator reconciles the profile again."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "agentdetect.io",
        "v1alpha1",
        namespace,
        "agentdetectionprofiles",
        name,
        {"metadata": {"labels": {"touched": "yes"}}},
        _content_type="application/merge-patch+json",
    )


def test_enforcement_needs_the_operator_to_allow_it(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    control_plane.kubectl("apply", "-f", "-", input=ENFORCING.format(ns=namespace))
    obj = wait_condition(api, "sandbox", namespace, "EnforcementNotAllowed")
    cond = ready(obj)
    assert cond is not None and cond["status"] == "False"
    assert "spec.processes.binaries[0]" in cond["message"] and "--allow-enforcement" in cond["message"]
    assert policies(api, namespace) == [], "nothing may be applied"

    operator.cfg.allow_enforcement = True
    try:
        _touch(api, "sandbox", namespace)
        wait_condition(api, "sandbox", namespace, "Applied")
        (exec_policy,) = policies(api, namespace)
        actions = {
            tuple(m["values"]): s["matchActions"][0]["action"]
            for s in exec_policy["spec"]["kprobes"][0]["selectors"]
            for m in s["matchArgs"]
        }
        assert actions[("/usr/bin/curl",)] == "Sigkill"
        assert "Post" in actions.values(), "preset rules stay observe-only"
    finally:
        operator.cfg.allow_enforcement = False


def test_spec_the_schema_cannot_catch_is_reported(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: wrong-tenant, namespace: {namespace}}}
spec:
  network:
    destinations: [{{name: aoai, provider: azure-openai, hostnames: [evil.example.com]}}]
""",
    )
    cond = ready(wait_condition(api, "wrong-tenant", namespace, "InvalidSpec"))
    assert cond is not None
    assert "spec.network.destinations[0]" in cond["message"] and ".openai.azure.com" in cond["message"]
    assert policies(api, namespace) == []


def test_hostnames_are_resolved_recorded_and_followed(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str, resolver: StaticResolver
) -> None:
    resolver.table["moving.example.com"] = ["10.9.0.1"]
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: moving, namespace: {namespace}}}
spec:
  network:
    destinations:
      - {{name: gateway, hostnames: [moving.example.com], ports: [443]}}
      - {{name: nowhere, hostnames: [unknown.example.com], ports: [443]}}
""",
    )
    obj = wait_condition(api, "moving", namespace, "ResolutionFailed")
    cond = ready(obj)
    assert cond is not None and "unknown.example.com" in cond["message"]
    resolved = {r["hostname"]: r for r in obj["status"]["resolved"]}
    assert resolved["moving.example.com"]["addresses"] == ["10.9.0.1"]
    assert resolved["moving.example.com"]["name"] == "gateway"
    assert resolved["unknown.example.com"]["addresses"] == [] and resolved["unknown.example.com"]["error"]

    def daddrs() -> list[str]:
        (net,) = policies(api, namespace)
        return [
            v
            for s in net["spec"]["kprobes"][0]["selectors"]
            for m in s["matchArgs"]
            if m["operator"] == "DAddr"
            for v in m["values"]
            if not v.startswith("::ffff:")  # each IPv4 address's twin (render.ipv4_mapped)
        ]

    assert daddrs() == ["10.9.0.1/32"]
    first_seen = resolved["moving.example.com"]["resolvedAt"]

    # The timer (every 2 s in tests) re-resolves; the policy follows the new address.
    resolver.table["moving.example.com"] = ["10.9.0.2"]
    eventually(lambda: daddrs() == ["10.9.0.2/32"], timeout=20, what="policy updated to the new address")
    resolver.table["unknown.example.com"] = ["10.9.9.9"]
    obj = wait_condition(api, "moving", namespace, "Applied", timeout=20)
    again = {r["hostname"]: r for r in obj["status"]["resolved"]}
    assert again["moving.example.com"]["addresses"] == ["10.9.0.2"]
    assert again["moving.example.com"]["resolvedAt"] >= first_seen
    assert eventually(lambda: sorted(daddrs()) == ["10.9.0.2/32", "10.9.9.9/32"], timeout=20)
    # Re-resolution is periodic, yet the profile carries no finalizer: deleting it never
    # depends on the operator being up (kopf timers would have added one).
    assert not profile(api, "moving", namespace)["metadata"].get("finalizers")


def test_tetragon_missing_then_installed(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    namespace: str,
    tetragon_crd_docs: tuple[list[dict[str, Any]], str | None],
) -> None:
    ext = client.ApiextensionsV1Api(api)
    names = [d["metadata"]["name"] for d in tetragon_crd_docs[0]]
    for name in names:
        ext.delete_custom_resource_definition(name)

    def crds_gone() -> bool:
        return not any(
            c.metadata and c.metadata.name in names for c in ext.list_custom_resource_definition().items
        )

    eventually(crds_gone, what="Tetragon CRDs removed")
    try:
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: early, namespace: {namespace}}}
spec:
  files: {{presets: [ssh-keys]}}
""",
        )
        cond = ready(wait_condition(api, "early", namespace, "TetragonNotInstalled"))
        assert cond is not None and "helm install tetragon" in cond["message"]
    finally:
        control_plane.install_crds(tetragon_crd_docs[0])
    wait_condition(api, "early", namespace, "Applied", timeout=30)
    assert len(policies(api, namespace)) == 1
    assert profile(api, "early", namespace)["status"]["policyCount"] == 1


def test_policy_filter_budget_is_reported_not_silently_exceeded(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    """Tetragon's agent holds at most 128 policies with a pod selector or a namespace
    (POLICY_FILTER_MAX_POLICIES, bpf/process/policy_filter.h) and refuses to load more: beyond
    the operator's budget, profiles say so, with an Event and a metric."""
    doc = f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: many, namespace: {namespace}}}
spec:
  files: {{presets: [credentials]}}
  processes: {{presets: [shells]}}
"""
    control_plane.kubectl("apply", "-f", "-", input=doc)
    obj = wait_condition(api, "many", namespace, "Applied")
    within = next(c for c in obj["status"]["conditions"] if c["type"] == "PolicyFilterBudget")
    assert (within["status"], within["reason"]) == ("True", "WithinBudget")

    assert operator.reconciler is not None
    reconciler = operator.reconciler

    def settled() -> int | None:
        """The count once it is the cluster's: earlier tests' namespaces (and the profiles in
        them) may still be going away, and the count shrinks as their deletions arrive."""
        core = client.CoreV1Api(api)
        if any(ns.status and ns.status.phase == "Terminating" for ns in core.list_namespace().items):
            return None
        live = len(policies(api, None, "app.kubernetes.io/managed-by=agentdetect")) + sum(
            1
            for p in cluster_policies(api, "app.kubernetes.io/managed-by=agentdetect")
            if uses_policy_filter({**p, "kind": "TracingPolicy"})
        )
        counted = reconciler.policy_filter_policies()
        return counted if counted == live else None

    owned = eventually(settled, timeout=60, what="the operator's policy count matching the cluster's")
    assert owned >= 2
    operator.cfg.policy_filter_budget = owned - 1
    try:
        _touch(api, "many", namespace)

        def exceeded() -> dict[str, Any] | None:
            conds = profile(api, "many", namespace)["status"]["conditions"]
            c = next(c for c in conds if c["type"] == "PolicyFilterBudget")
            return c if c["reason"] == "BudgetExceeded" else None

        cond = eventually(exceeded, timeout=15, what="PolicyFilterBudget=False")
        assert cond["status"] == "False" and f"over its budget of {owned - 1}" in cond["message"]
        still = ready(profile(api, "many", namespace))
        assert still is not None and still["status"] == "True"  # still applied
        core = client.CoreV1Api(api)
        selector = "involvedObject.name=many,reason=BudgetExceeded"
        eventually(
            lambda: core.list_namespaced_event(namespace, field_selector=selector).items,
            timeout=10,
            what="a BudgetExceeded Event",
        )
        assert operator.runtime is not None
        registry = operator.runtime.metrics.registry
        assert registry.get_sample_value("agentdetect_policy_filter_policies") == owned
        assert registry.get_sample_value("agentdetect_policy_filter_budget") == owned - 1
    finally:
        operator.cfg.policy_filter_budget = 64


def test_re_resolution_posts_its_events_from_its_own_thread(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str, resolver: StaticResolver
) -> None:
    """The sweep runs outside kopf's handlers; its Events used to fail there (LookupError on
    kopf's settings context var) and count the reconcile as an error. Events are posted on
    transitions, so the sweep is given one: the hostname resolves only after the profile was
    first reconciled (Ready False, ResolutionFailed), and the sweep makes it Ready."""
    resolver.table.pop("drifting.example.com", None)
    doc = f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: drifting, namespace: {namespace}}}
spec:
  network: {{destinations: [{{name: gw, hostnames: [drifting.example.com], ports: [443]}}]}}
"""
    control_plane.kubectl("apply", "-f", "-", input=doc)
    wait_condition(api, "drifting", namespace, "ResolutionFailed")
    assert operator.runtime is not None
    registry = operator.runtime.metrics.registry
    errors_before = registry.get_sample_value(
        "agentdetect_reconciles_total",
        {"kind": "AgentDetectionProfile", "result": "error", "reason": "Exception"},
    )
    resolver.table["drifting.example.com"] = ["10.7.0.2"]  # the sweep (every 2 s here) notices
    core = client.CoreV1Api(api)

    def events() -> list[Any]:
        return list(
            core.list_namespaced_event(namespace, field_selector="involvedObject.name=drifting").items
        )

    wait_condition(api, "drifting", namespace, "Applied", timeout=20)
    applied = eventually(
        lambda: [e for e in events() if e.reason == "Applied"], timeout=10, what="the sweep's Event"
    )
    assert [(e.source.component, e.type) for e in applied] == [("agentdetect", "Normal")]
    assert [e.type for e in events() if e.reason == "ResolutionFailed"] == ["Warning"]
    assert (
        registry.get_sample_value(
            "agentdetect_reconciles_total",
            {"kind": "AgentDetectionProfile", "result": "error", "reason": "Exception"},
        )
        == errors_before
    )
    # The addresses move: the policy is applied again, Ready stays Applied, no Event.
    resolver.table["drifting.example.com"] = ["10.7.0.3"]
    eventually(
        lambda: "10.7.0.3/32" in str(policies(api, namespace)), timeout=20, what="the new address applied"
    )
    assert len([e for e in events() if e.reason == "Applied"]) == 1


def test_cluster_profile_events_are_where_kubectl_describe_looks(
    control_plane: ControlPlane, api: Any, operator: OperatorThread
) -> None:
    name = f"described-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: agentdetect.io/v1alpha1
kind: ClusterAgentDetectionProfile
metadata: {{name: {name}}}
spec: {{files: {{presets: [credentials]}}}}
""",
    )
    try:
        wait_condition(api, name, None, "Applied")

        def described() -> str | None:
            out = control_plane.kubectl("describe", "cadp", name).stdout
            return out if "Applied" in out.split("Events:")[-1] else None

        text = eventually(described, timeout=15, what="the Event in kubectl describe")
        events = text.split("Events:")[-1]
        assert "agentdetect" in events and "1 policy applied" in events
        assert "kopf" not in events, events  # reported by agentdetect, not by the framework
        # kopf's copy of the last-handled spec is kept in memory, not in an annotation.
        assert "last-handled-configuration" not in text, text
        # ... and a change to the spec is still seen and reconciled.
        control_plane.kubectl(
            "patch", "cadp", name, "--type=merge", "-p", '{"spec": {"files": {"presets": ["ssh-keys"]}}}'
        )
        updated = wait_condition(api, name, None, "Applied")
        assert updated["status"]["observedGeneration"] == 2
    finally:
        control_plane.kubectl("delete", "cadp", name, check=False)
