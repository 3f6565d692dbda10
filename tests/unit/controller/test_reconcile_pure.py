"""The pure parts of reconciling: drift detection, conditions, targets, status, resolution."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from agentdetect.api.models import ProfileSpec
from agentdetect.controller.reconcile import (
    budget_condition,
    contains,
    describe_invalid,
    format_validation_error,
    in_sync,
    ready_condition,
    resolved_status,
    targets_for,
    uses_policy_filter,
)
from agentdetect.policy.profiles import parse_profile, previous_resolutions
from agentdetect.policy.render import ANNOTATION_HASH, Profile, Target, render
from agentdetect.policy.resolve import Resolution, ResolutionError, StaticResolver, as_cidr, resolve_all

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z", "2025-01-01T00:10:00Z"


def _profile(
    spec: dict[str, Any], kind: str = "AgentDetectionProfile", namespace: str | None = "team-a"
) -> Profile:
    return parse_profile({"kind": kind, "metadata": {"name": "prof", "namespace": namespace}, "spec": spec})


def _desired() -> dict[str, Any]:
    profile = _profile(
        {"network": {"destinations": [{"name": "gw", "cidrs": ["10.0.0.0/8"], "ports": [443]}]}}
    )
    (doc,) = render(profile, targets_for(profile, None), {})
    return doc


# ---- contains / in_sync ----------------------------------------------------------------------


def test_contains_tolerates_added_fields() -> None:
    assert contains({"a": 1}, {"a": 1, "b": 2})
    assert contains({"a": {"b": [{"c": 1}]}}, {"a": {"b": [{"c": 1, "d": 0}], "e": None}})
    assert contains({}, {"anything": True})
    assert contains([], [])


def test_contains_sees_changed_removed_and_extra() -> None:
    assert not contains({"a": 1}, {"a": 2})
    assert not contains({"a": 1}, {"b": 1})
    assert not contains({"a": {"b": 1}}, {"a": {}})
    assert not contains({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not contains({"a": [1, 2]}, {"a": [1]})
    assert not contains({"a": [1, 2]}, {"a": [2, 1]})
    assert not contains({"a": {"b": 1}}, {"a": "b"})
    assert not contains({"a": [1]}, {"a": {"0": 1}})
    assert not contains({"a": "443"}, {"a": 443})
    assert not contains({"a": 1}, None)


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` as the API server returns it: with server-side fields and defaults."""
    live = copy.deepcopy(desired)
    live["metadata"].update(
        uid="0b0b", resourceVersion="42", generation=1, creationTimestamp=T0, managedFields=[{"manager": "x"}]
    )
    live["metadata"]["labels"]["added-by"] = "someone"
    live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    live["spec"]["kprobes"][0]["return"] = False
    live["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["args"] = []
    live["status"] = {"state": "enabled"}
    return live


def test_in_sync_tolerates_server_added_fields() -> None:
    desired = _desired()
    assert in_sync(desired, copy.deepcopy(desired))
    assert in_sync(desired, _live(desired))


def test_missing_policy_is_not_in_sync() -> None:
    assert not in_sync(_desired(), None)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda d: d["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"].append("0.0.0.0/0"),
            id="extra-list-item",
        ),
        pytest.param(
            lambda d: d["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][1].update(values=["80"]),
            id="changed-port",
        ),
        pytest.param(
            lambda d: d["spec"]["kprobes"][0]["selectors"][0]["matchActions"][0].update(action="Sigkill"),
            id="changed-action",
        ),
        pytest.param(lambda d: d["spec"]["kprobes"][0]["selectors"][0].pop("matchArgs"), id="removed-key"),
        pytest.param(lambda d: d["spec"]["kprobes"].append(d["spec"]["kprobes"][0]), id="extra-kprobe"),
        pytest.param(lambda d: d.pop("spec"), id="no-spec"),
        pytest.param(lambda d: d["metadata"]["labels"].pop("agentdetect.io/hook"), id="removed-label"),
        pytest.param(
            lambda d: d["metadata"]["labels"].update({"agentdetect.io/profile-name": "x"}), id="changed-label"
        ),
        pytest.param(
            lambda d: d["metadata"]["annotations"].update({ANNOTATION_HASH: "0" * 16}), id="other-hash"
        ),
        pytest.param(lambda d: d["metadata"].pop("annotations"), id="no-annotations"),
    ],
)
def test_drift_is_detected(tamper: Any) -> None:
    desired = _desired()
    live = _live(desired)
    tamper(live)
    assert not in_sync(desired, live)
    assert in_sync(desired, _live(desired)), "the tampering must not leak into desired"


# ---- ready condition -------------------------------------------------------------------------


def test_ready_condition_is_added() -> None:
    (cond,) = ready_condition([], 3, True, "Applied", "1 policy applied", T0)
    assert cond == {
        "type": "Ready",
        "status": "True",
        "reason": "Applied",
        "message": "1 policy applied",
        "lastTransitionTime": T0,
        "observedGeneration": 3,
    }


def test_ready_condition_keeps_transition_time_while_status_holds() -> None:
    first = ready_condition([], 1, False, "TetragonNotInstalled", "install it", T0)
    (second,) = ready_condition(first, 2, False, "ResolutionFailed", "dns", T1)
    assert second["lastTransitionTime"] == T0
    assert (second["reason"], second["message"], second["observedGeneration"]) == (
        "ResolutionFailed",
        "dns",
        2,
    )


def test_ready_condition_moves_transition_time_when_status_flips() -> None:
    first = ready_condition([], 1, False, "TetragonNotInstalled", "install it", T0)
    (second,) = ready_condition(first, 1, True, "Applied", "ok", T1)
    assert (second["status"], second["lastTransitionTime"]) == ("True", T1)
    (third,) = ready_condition([second], 1, False, "ApplyFailed", "no", T2)
    assert (third["status"], third["lastTransitionTime"]) == ("False", T2)


def test_ready_condition_keeps_other_conditions() -> None:
    other = {"type": "Degraded", "status": "False", "reason": "Fine", "lastTransitionTime": T0}
    old_ready = {"type": "Ready", "status": "True", "reason": "Applied", "lastTransitionTime": T0}
    out = ready_condition([old_ready, other], 1, True, "Applied", "ok", T2)
    assert out[1] == other
    # In place: a reconcile that changes nothing leaves a list equal to the stored one.
    assert [c["type"] for c in out] == ["Ready", "Degraded"]
    assert out[0]["lastTransitionTime"] == T0
    assert ready_condition(out, 1, True, "Applied", "ok", T2) == out


# ---- targets ---------------------------------------------------------------------------------

FILES = {"files": {"presets": ["credentials"]}}
NAMESPACES = [("prod", {"env": "prod"}), ("dev", {"env": "dev"}), ("ai", {"env": "prod", "ai": "yes"})]


def test_namespaced_profile_targets_its_namespace_only() -> None:
    profile = _profile(FILES, namespace="team-a")
    assert targets_for(profile, None) == [Target("TracingPolicyNamespaced", "team-a")]
    assert targets_for(profile, NAMESPACES) == [Target("TracingPolicyNamespaced", "team-a")]


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_cluster_profile_without_selector_is_one_tracing_policy(selector: dict[str, Any] | None) -> None:
    spec = {**FILES, **({"namespaceSelector": selector} if selector is not None else {})}
    profile = _profile(spec, kind="ClusterAgentDetectionProfile", namespace=None)
    assert targets_for(profile, NAMESPACES) == [Target("TracingPolicy", None)]


def test_cluster_profile_with_selector_targets_matching_namespaces() -> None:
    spec = {**FILES, "namespaceSelector": {"matchLabels": {"env": "prod"}}}
    profile = _profile(spec, kind="ClusterAgentDetectionProfile", namespace=None)
    assert targets_for(profile, NAMESPACES) == [Target("TracingPolicy", None, ("ai", "prod"))]
    assert targets_for(profile, [("dev", {"env": "dev"})]) == []
    assert targets_for(profile, None) == []


def test_cluster_profile_selector_expressions() -> None:
    spec = {**FILES, "namespaceSelector": {"matchExpressions": [{"key": "ai", "operator": "DoesNotExist"}]}}
    profile = _profile(spec, kind="ClusterAgentDetectionProfile", namespace=None)
    assert [t.namespaces for t in targets_for(profile, NAMESPACES)] == [("dev", "prod")]


# ---- validation messages ---------------------------------------------------------------------


def test_format_validation_error_paths() -> None:
    with pytest.raises(ValidationError) as info:
        ProfileSpec.model_validate({"network": {"destinations": [{"name": "x", "ports": [0]}]}})
    text = format_validation_error(info.value)
    assert text.startswith("network.destinations[0].ports[0]: Input should be greater than or equal to 1")
    assert describe_invalid(info.value) == text


def test_format_validation_error_root_and_value_error_prefix() -> None:
    with pytest.raises(ValidationError) as info:
        ProfileSpec.model_validate({})
    text = format_validation_error(info.value)
    assert text.startswith("(root): a profile must detect something")
    assert "Value error" not in text


def test_describe_invalid_passes_plain_value_errors_through() -> None:
    assert describe_invalid(ValueError("plain message")) == "plain message"


# ---- resolution status -----------------------------------------------------------------------


class _Flaky:
    """A resolver that fails for the hostnames in ``down``."""

    def __init__(self, table: dict[str, list[str]], down: set[str]) -> None:
        self.table, self.down = table, down

    def resolve(self, hostname: str) -> list[str]:
        if hostname in self.down:
            raise ResolutionError(f"{hostname}: SERVFAIL")
        return StaticResolver(self.table).resolve(hostname)


def test_resolve_all_first_answer_is_stamped_now() -> None:
    out = resolve_all(
        ["b.example.com", "a.example.com", "a.example.com"],
        _Flaky(
            {"a.example.com": ["10.0.0.2", "10.0.0.1"], "b.example.com": ["2001:db8::1", "10.0.0.3"]}, set()
        ),
        {},
        T0,
    )
    assert list(out) == ["a.example.com", "b.example.com"]
    assert out["a.example.com"] == Resolution(("10.0.0.1", "10.0.0.2"), T0)
    assert out["b.example.com"] == Resolution(("10.0.0.3", "2001:db8::1"), T0)


def test_resolve_all_keeps_previous_addresses_on_failure() -> None:
    previous = {"a.example.com": Resolution(("10.0.0.1",), T0)}
    out = resolve_all(["a.example.com"], _Flaky({}, {"a.example.com"}), previous, T1)
    assert out["a.example.com"] == Resolution(("10.0.0.1",), T0, "a.example.com: SERVFAIL")


def test_resolve_all_first_failure_has_no_addresses() -> None:
    out = resolve_all(["a.example.com"], StaticResolver({}), {}, T1)
    res = out["a.example.com"]
    assert (res.addresses, res.resolved_at) == ((), T1)
    assert res.error == "a.example.com: not in the static table"


def test_resolve_all_unchanged_addresses_keep_resolved_at() -> None:
    previous = {"a.example.com": Resolution(("10.0.0.1", "10.0.0.2"), T0)}
    out = resolve_all(
        ["a.example.com"], StaticResolver({"a.example.com": ["10.0.0.2", "10.0.0.1"]}), previous, T1
    )
    assert out["a.example.com"] is previous["a.example.com"]


def test_resolve_all_changed_addresses_move_resolved_at() -> None:
    previous = {"a.example.com": Resolution(("10.0.0.1",), T0)}
    out = resolve_all(["a.example.com"], StaticResolver({"a.example.com": ["10.0.0.9"]}), previous, T1)
    assert out["a.example.com"] == Resolution(("10.0.0.9",), T1)


def test_resolve_all_recovery_with_the_same_addresses_keeps_resolved_at() -> None:
    """resolvedAt is "when this set of addresses was first seen": a DNS blip in between (which
    kept the same set) does not make the set new."""
    previous = {"a.example.com": Resolution(("10.0.0.1",), T0)}
    blip = resolve_all(["a.example.com"], _Flaky({}, {"a.example.com"}), previous, T1)
    assert blip["a.example.com"].error
    back = resolve_all(["a.example.com"], StaticResolver({"a.example.com": ["10.0.0.1"]}), blip, T2)
    assert back["a.example.com"] == Resolution(("10.0.0.1",), T0)


def test_resolve_all_forgets_hostnames_no_longer_wanted() -> None:
    previous = {"old.example.com": Resolution(("10.0.0.1",), T0)}
    out = resolve_all(["new.example.com"], StaticResolver({"new.example.com": ["10.0.0.2"]}), previous, T1)
    assert list(out) == ["new.example.com"]


def test_as_cidr() -> None:
    assert as_cidr("10.0.0.1") == "10.0.0.1/32"
    assert as_cidr("2001:0db8::0001") == "2001:db8::1/128"


def test_resolved_status_names_owners_and_round_trips() -> None:
    profile = _profile(
        {
            "network": {
                "providers": ["anthropic"],
                "destinations": [
                    {"name": "gw", "hostnames": ["gw.example.com"]},
                    {"name": "oai", "provider": "openai"},
                ],
            }
        }
    )
    resolved = {
        "api.anthropic.com": Resolution(("160.79.104.10",), T0),
        "api.openai.com": Resolution(("104.18.6.192", "104.18.7.192"), T1),
        "gw.example.com": Resolution((), T2, "gw.example.com: NXDOMAIN"),
    }
    status = resolved_status(profile, resolved)
    assert status == [
        {
            "name": "anthropic",
            "hostname": "api.anthropic.com",
            "addresses": ["160.79.104.10"],
            "resolvedAt": T0,
        },
        {
            "name": "oai",
            "hostname": "api.openai.com",
            "addresses": ["104.18.6.192", "104.18.7.192"],
            "resolvedAt": T1,
        },
        {
            "name": "gw",
            "hostname": "gw.example.com",
            "addresses": [],
            "resolvedAt": T2,
            "error": "gw.example.com: NXDOMAIN",
        },
    ]
    assert previous_resolutions({"resolved": status}) == resolved


def test_previous_resolutions_of_empty_status() -> None:
    assert previous_resolutions(None) == {}
    assert previous_resolutions({}) == {}
    assert previous_resolutions({"resolved": None}) == {}
    assert previous_resolutions({"resolved": [{"hostname": "h", "resolvedAt": T0}]}) == {
        "h": Resolution((), T0)
    }


# ---- Tetragon's policy filter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spec", "uses"),
    [
        ("TracingPolicyNamespaced", {}, True),
        ("TracingPolicy", {"podSelector": {"matchLabels": {"a": "b"}}}, True),
        ("TracingPolicy", {"containerSelector": {}}, True),
        ("TracingPolicy", {}, False),  # hostProcesses: no filter at all
    ],
)
def test_which_policies_take_a_policy_filter_slot(kind: str, spec: dict[str, Any], uses: bool) -> None:
    assert uses_policy_filter({"kind": kind, "spec": spec}) is uses


def test_budget_condition_names_the_limit_and_the_way_out() -> None:
    assert budget_condition(64, 64)[:2] == (True, "WithinBudget")
    # The same message whatever the count: no status write as other profiles come and go.
    assert budget_condition(3, 64) == budget_condition(60, 64)
    ok, reason, message = budget_condition(65, 64)
    assert (ok, reason) == (False, "BudgetExceeded")
    assert "65" in message and "64" in message and "128" in message and "--policy-filter-budget" in message


def test_drift_names_the_profile_from_what_was_applied_not_from_the_edited_labels() -> None:
    from agentdetect.cluster.kube import key_of
    from agentdetect.controller.reconcile import Config, Reconciler

    reconciler = Reconciler.__new__(Reconciler)
    Reconciler.__init__(reconciler, cluster=None, config=Config())  # type: ignore[arg-type]
    desired = _desired()
    reconciler.desired.record(key_of(desired), desired)
    edited = _live(desired)
    edited["metadata"]["labels"]["agentdetect.io/profile-name"] = "someone-else"
    owner = reconciler.drifted("MODIFIED", edited)
    assert owner == ("AgentDetectionProfile", "prof", "team-a")
    assert reconciler.drifted("MODIFIED", _live(desired)) is None
    assert reconciler.drifted("DELETED", _live(desired)) == owner


def test_an_api_outage_ends_the_sweep_pass_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Not one traceback per profile per pass while the API server is away."""
    import logging

    from agentdetect.app.handlers import ResolveSweep
    from agentdetect.controller.reconcile import Config, Reconciler
    from agentdetect.policy.board import ProfileBoard, ProfileState

    reconciler = Reconciler(cluster=None, config=Config(), board=ProfileBoard())  # type: ignore[arg-type]
    for i in range(20):
        spec = {"network": {"destinations": [{"name": "gw", "hostnames": [f"h{i}.example.com"]}]}}
        reconciler.board.publish(ProfileState(_profile(spec, namespace=f"ns{i}"), (), {}))
    calls: list[str] = []

    def unreachable(kind: str, name: str, namespace: str | None) -> None:
        calls.append(name)
        raise ConnectionRefusedError("connection refused")

    sweep = ResolveSweep(reconciler, unreachable, interval=3600)
    with caplog.at_level(logging.WARNING, logger="agentdetect.app.handlers"):
        for _ in range(5):
            sweep.sweep()
    assert len(calls) == 5  # each pass stops at the first failure
    assert len(caplog.records) == 1 and "the next pass tries again" in caplog.records[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_the_sweep_lists_first_and_a_standby_replica_sweeps_nothing(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agentdetect.app.handlers import ResolveSweep
    from agentdetect.controller.reconcile import Config, Reconciler
    from agentdetect.policy.board import ProfileBoard, ProfileState

    reconciler = Reconciler(cluster=None, config=Config(), board=ProfileBoard())  # type: ignore[arg-type]
    spec = {"network": {"destinations": [{"name": "gw", "hostnames": ["h.example.com"]}]}}
    reconciler.board.publish(ProfileState(_profile(spec), (), {}))
    calls: list[str] = []
    active = [False]

    def verify() -> None:
        calls.append("verify")
        if len(calls) > 3:
            raise ConnectionRefusedError("connection refused")

    sweep = ResolveSweep(
        reconciler,
        lambda kind, name, namespace: calls.append(name),
        interval=3600,
        verify=verify,
        active=lambda: active[0],
    )
    sweep.sweep()
    assert calls == []  # standby: another replica does this
    active[0] = True
    sweep.sweep()
    assert calls == ["verify", "prof"]
    with caplog.at_level(logging.WARNING, logger="agentdetect.app.handlers"):
        for _ in range(3):
            sweep.sweep()
    # A failed list is logged once a minute and does not keep the hostnames from being resolved
    # again (with watchNamespaces, an older build's cluster-wide LIST was refused every pass).
    assert calls == ["verify", "prof", "verify", "prof", "verify", "prof", "verify", "prof"]
    assert len(caplog.records) == 1 and "the next pass tries again" in caplog.records[0].getMessage()


def test_the_sweep_asks_the_peering_gate_while_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that goes standby between two passes is told so (PeeringGate.on_standby: it
    forgets which policies it knew stored) even with nothing else asking the gate."""
    import threading

    from agentdetect.app import handlers
    from agentdetect.controller.reconcile import Config, Reconciler
    from agentdetect.policy.board import ProfileBoard

    monkeypatch.setattr(handlers, "GATE_POLL", 0.02)
    reconciler = Reconciler(cluster=None, config=Config(), board=ProfileBoard())  # type: ignore[arg-type]
    asked = threading.Semaphore(0)

    def active() -> bool:
        asked.release()
        return False

    sweep = handlers.ResolveSweep(reconciler, lambda *_: None, interval=3600, active=active)
    sweep.start()
    try:
        for _ in range(5):
            assert asked.acquire(timeout=5), "the gate was not asked while the sweep waited"
    finally:
        sweep.stop()
    assert not sweep._thread.is_alive()


def test_reconcile_owed_reads_the_status_as_kopf_cannot() -> None:
    from agentdetect.controller.reconcile import reconcile_owed

    def body(observed: int | None, reason: str, status: str = "False") -> dict[str, Any]:
        ready = {"type": "Ready", "status": status, "reason": reason}
        return {
            "metadata": {"generation": 2},
            "status": {"observedGeneration": observed, "conditions": [ready]},
        }

    assert reconcile_owed({"metadata": {"generation": 1}})  # never reconciled
    assert reconcile_owed(body(1, "Applied", "True"))  # the spec changed since
    assert not reconcile_owed(body(2, "Applied", "True"))
    assert reconcile_owed(body(2, "ApplyFailed"))  # kopf retries these ...
    assert reconcile_owed(body(2, "TetragonNotInstalled"))
    assert not reconcile_owed(body(2, "InvalidSpec"))  # ... not these: a new spec is needed
    assert not reconcile_owed(body(2, "EnforcementNotAllowed"))


def test_the_sweep_reconciles_what_is_owed_once_and_after_the_hostnames() -> None:
    from agentdetect.app.handlers import ResolveSweep
    from agentdetect.controller.reconcile import Config, Reconciler
    from agentdetect.policy.board import ProfileBoard, ProfileState

    reconciler = Reconciler(cluster=None, config=Config(), board=ProfileBoard())  # type: ignore[arg-type]
    spec = {"network": {"destinations": [{"name": "gw", "hostnames": ["h.example.com"]}]}}
    reconciler.board.publish(ProfileState(_profile(spec), (), {}))
    calls: list[str] = []
    owed = [("AgentDetectionProfile", "team-a", "prof"), ("ClusterAgentDetectionProfile", None, "failed")]
    sweep = ResolveSweep(
        reconciler, lambda kind, name, namespace: calls.append(name), interval=3600, owed=lambda: owed
    )
    sweep.sweep()
    assert calls == ["prof", "failed"]
