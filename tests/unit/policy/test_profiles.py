"""What the node agent reads back of a reconciled profile: the same rules, targets and
addresses the reconciler published when it rendered (policy.profiles.reconciled_state)."""

from __future__ import annotations

from typing import Any

from agentdetect.controller.reconcile import resolved_status, targets_for
from agentdetect.detection.match import Matcher
from agentdetect.policy.profiles import current, reconciled_state, selected_namespaces
from agentdetect.policy.render import hostnames_of, render
from agentdetect.policy.resolve import StaticResolver, resolve_all
from tests.unit.detect_helpers import NOW, example_doc, make_profile, static_hosts


def reconciled(
    doc: dict[str, Any], namespaces: list[tuple[str, dict[str, str]]] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The profile with the status the reconciler writes, and the policies it applies."""
    from agentdetect.policy.profiles import parse_profile

    profile = parse_profile(doc)
    resolved = resolve_all(hostnames_of(profile.spec), StaticResolver(static_hosts()), {}, NOW)
    docs = render(profile, targets_for(profile, namespaces), resolved)
    status = {
        "observedGeneration": 3,
        "policies": [{"kind": d["kind"], "name": d["metadata"]["name"]} for d in docs],
        "resolved": resolved_status(profile, resolved),
    }
    body = {**doc, "metadata": {**doc["metadata"], "generation": 3}, "status": status}
    return body, docs


def test_a_namespaced_profile_matches_as_the_reconciler_rendered_it() -> None:
    doc = {**example_doc("llm-egress.yaml"), "kind": "AgentDetectionProfile"}
    body, docs = reconciled(doc)
    state = reconciled_state(body, {})
    assert state is not None
    profile = state.profile
    resolved = resolve_all(hostnames_of(profile.spec), StaticResolver(static_hosts()), {}, NOW)
    assert dict(state.resolved) == resolved
    assert state.targets == tuple(targets_for(profile, None))
    assert Matcher([state]).policies() == {d["metadata"]["name"] for d in docs}
    assert current(body)
    assert not current({**body, "metadata": {**body["metadata"], "generation": 4}})


def test_a_cluster_profile_narrowed_to_namespaces_reads_them_from_its_policies() -> None:
    spec = {"namespaceSelector": {"matchLabels": {"team": "ml"}}, "processes": {"presets": ["shells"]}}
    profile = make_profile(spec, name="shells", kind="ClusterAgentDetectionProfile", namespace=None)
    doc = {"kind": profile.kind, "metadata": {"name": "shells"}, "spec": spec}
    namespaces = [("ml-a", {"team": "ml"}), ("ml-b", {"team": "ml"}), ("web", {"team": "web"})]
    body, docs = reconciled(doc, namespaces)
    (policy,) = docs
    assert selected_namespaces(policy) == ("ml-a", "ml-b")
    state = reconciled_state(body, {policy["metadata"]["name"]: selected_namespaces(policy)})
    assert state is not None
    assert state.targets == tuple(targets_for(profile, namespaces))
    # Before its policy is seen, its events are not turned away (Tetragon's filter narrows them).
    unseen = reconciled_state(body, {})
    assert unseen is not None and unseen.targets[0].namespaces is None


def test_nothing_to_match_without_policies_or_with_a_spec_it_cannot_read() -> None:
    doc = {**example_doc("llm-egress.yaml"), "kind": "AgentDetectionProfile"}
    body, _ = reconciled(doc)
    assert reconciled_state({**body, "status": {}}, {}) is None
    broken = {**body, "spec": {"network": {"providers": ["no-such-provider"]}}}
    assert reconciled_state(broken, {}) is None
