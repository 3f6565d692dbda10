"""What one reconcile asks of the API server, and which Events it posts: against a fake cluster
whose policies a fake index (the policy watch's, in the operator) reports."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agentdetect.app.handlers import verify_policies, watch_restored
from agentdetect.cluster.kube import ObjectKey, key_of
from agentdetect.controller.reconcile import Config, Outcome, Reconciler
from agentdetect.controller.state import AppliedPolicies, owned_by
from agentdetect.policy.board import ProfileKey
from agentdetect.policy.render import ANNOTATION_HASH, LABEL_MANAGED_BY, MANAGED_BY
from agentdetect.policy.resolve import StaticResolver

ADP = "AgentDetectionProfile"
SPEC: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "chatbot"}},
    "network": {"destinations": [{"name": "vllm", "cidrs": ["10.20.0.0/16"], "ports": [8000]}]},
    "files": {"presets": ["serviceaccount-token"]},
    "processes": {"presets": ["shells"]},
}


class FakeCluster:
    """The calls a reconcile makes, and the policies they leave; ``lag`` keeps the index from
    showing what was applied (a watch that has not delivered yet)."""

    def __init__(self) -> None:
        self.live: dict[ObjectKey, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.tetragon = True
        self.lag = False
        self.indexed: dict[ObjectKey, dict[str, Any]] = {}
        self.terminating: set[str] = set()

    # what the reconciler calls
    def tetragon_installed(self) -> bool:
        self.calls.append(("discover", None))
        return self.tetragon

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        return []

    def list_owned(self, kind: str, name: str, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append(("list", (kind, namespace, name)))
        return [copy.deepcopy(d) for d in self.live.values() if owned_by(d, kind, name, namespace)]

    def apply(self, doc: dict[str, Any], owner: dict[str, Any]) -> bool:
        self.calls.append(("apply", key_of(doc)))
        created = key_of(doc) not in self.live
        live = copy.deepcopy(doc)
        live["metadata"]["ownerReferences"] = [owner]
        live["spec"].setdefault("options", [])  # a server default: not drift
        self.live[key_of(doc)] = live
        if not self.lag:
            self.indexed[key_of(doc)] = copy.deepcopy(live)
        return created

    def list_ours(self, namespaces: Any = ()) -> list[dict[str, Any]]:
        """The sweep's LIST, by the label agentdetect puts on its policies: the cluster as it
        is, not as the index says."""
        return [
            copy.deepcopy(d)
            for d in self.live.values()
            if d["metadata"].get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        ]

    def namespace_active(self, name: str) -> bool:
        return name not in self.terminating

    def delete(self, key: ObjectKey) -> None:
        self.calls.append(("delete", key))
        self.live.pop(key, None)
        self.indexed.pop(key, None)

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        self.calls.append(("status", sorted(status)))

    # the policy watch's index
    def index(self, profile: ProfileKey) -> list[dict[str, Any]]:
        kind, namespace, name = profile
        return [copy.deepcopy(d) for d in self.indexed.values() if owned_by(d, kind, name, namespace)]

    def api_calls(self) -> list[tuple[str, Any]]:
        """Without the discovery call (cached for a minute in the real Cluster)."""
        return [c for c in self.calls if c[0] != "discover"]


class Profile:
    """A profile as the API server holds it: its status is what the reconciler last patched."""

    def __init__(self, spec: dict[str, Any] | None = None, uid: str = "uid-1") -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "agentdetect.io/v1alpha1",
            "kind": ADP,
            "metadata": {"name": "chatbot", "namespace": "team", "uid": uid, "generation": 1},
            "spec": copy.deepcopy(spec or SPEC),
        }

    def change(self, spec: dict[str, Any]) -> None:
        self.body["spec"] = copy.deepcopy(spec)
        self.body["metadata"]["generation"] += 1


def no_events() -> list[tuple[str, str]]:
    """Where the reconciler's Events go: (type, reason)."""
    return []


def _reconciler(cluster: FakeCluster, events: list[tuple[str, str]], **config: Any) -> Reconciler:
    def emit(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        events.append((type_, reason))

    reconciler = Reconciler(
        cluster,  # type: ignore[arg-type]
        Config(resolver=StaticResolver({}), **config),
        emit=emit,
    )
    reconciler.owned = cluster.index
    return reconciler


def _run(reconciler: Reconciler, cluster: FakeCluster, profile: Profile) -> None:
    """Reconcile, then store the patched status on the profile as the API server would."""
    original = cluster.patch_status

    def patch_status(kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        original(kind, name, namespace, status)
        profile.body["status"] = {**(profile.body.get("status") or {}), **copy.deepcopy(status)}

    cluster.patch_status = patch_status  # type: ignore[method-assign]
    try:
        reconciler.reconcile(copy.deepcopy(profile.body))
    finally:
        cluster.patch_status = original  # type: ignore[method-assign]


def test_a_reconcile_asks_the_index_not_the_api_server() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    verbs = [verb for verb, _ in cluster.api_calls()]
    assert verbs == ["apply", "apply", "apply", "status"]
    assert events == [("Normal", "Applied")]


def test_the_outcome_names_the_policies_it_applied() -> None:
    """What the sweep posts PolicyRestored for: only a policy it put back itself."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    outcome = reconciler.reconcile(copy.deepcopy(Profile().body))
    assert outcome.applied_keys == frozenset(cluster.live) and outcome.applied == 3
    gone = next(iter(cluster.live))
    del cluster.live[gone], cluster.indexed[gone]
    assert reconciler.reconcile(copy.deepcopy(Profile().body)).applied_keys == {gone}


def test_a_profile_being_deleted_is_not_reconciled() -> None:
    """In a foreground deletion (Argo CD's pruning, kubectl --cascade=foreground) the garbage
    collector deletes the policies while the profile is still there: a reconcile (a drift
    event of that deletion, the sweep) put them back, fought the collector, and posted
    PolicyRestored for what no one but the profile's owner did."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    profile.body["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    cluster.live.clear()
    cluster.indexed.clear()
    cluster.calls.clear()
    events.clear()
    outcome = reconciler.reconcile(copy.deepcopy(profile.body))
    assert (outcome.reason, outcome.applied) == ("Deleted", 0)
    assert cluster.api_calls() == [] and events == []


def test_without_an_index_a_reconcile_lists() -> None:
    """Outside the operator (no kopf, no watch) the reconciler still works: it lists."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    reconciler.owned = None
    _run(reconciler, cluster, Profile())
    assert [verb for verb, _ in cluster.api_calls()] == ["list", "apply", "apply", "apply", "status"]


def test_an_unchanged_re_reconcile_makes_no_call_and_posts_no_event() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    cluster.calls.clear()
    events.clear()
    _run(reconciler, cluster, profile)
    assert cluster.api_calls() == []
    assert events == []


def test_a_stale_body_does_not_repeat_the_event() -> None:
    """The body a handler gets may predate the status this process wrote: the status is written
    again (it differs from what the body shows) but the transition was reported already."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    stale = copy.deepcopy(profile.body)
    _run(reconciler, cluster, profile)
    events.clear()
    reconciler.reconcile(stale)
    assert events == []


def test_updates_and_drift_repairs_apply_without_an_event() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    events.clear()

    # A spec change re-renders the network policy: applied, Ready stays Applied.
    spec = copy.deepcopy(SPEC)
    spec["network"]["destinations"][0]["ports"] = [8001]
    profile.change(spec)
    cluster.calls.clear()
    _run(reconciler, cluster, profile)
    assert [v for v, _ in cluster.api_calls()] == ["apply", "status"]

    # Someone edits a policy: the index shows it, the reconcile puts it back.
    key = next(iter(cluster.indexed))
    cluster.indexed[key]["spec"]["kprobes"] = []
    cluster.calls.clear()
    _run(reconciler, cluster, profile)
    assert cluster.api_calls() == [("apply", key)]
    assert events == []


def test_transitions_post_one_event_each() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    cluster.tetragon = False
    _run(reconciler, cluster, profile)
    _run(reconciler, cluster, profile)
    assert events == [("Warning", "TetragonNotInstalled")]
    cluster.tetragon = True
    _run(reconciler, cluster, profile)
    _run(reconciler, cluster, profile)
    assert events == [("Warning", "TetragonNotInstalled"), ("Normal", "Applied")]


def test_budget_exceeded_is_posted_once_per_profile() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events, policy_filter_budget=2)
    profile = Profile()
    _run(reconciler, cluster, profile)
    _run(reconciler, cluster, profile)
    assert events == [("Normal", "Applied"), ("Warning", "BudgetExceeded")]


def test_a_policy_dropped_before_the_watch_showed_it_is_still_pruned() -> None:
    """Applied, then dropped by a quick spec change, all before the watch delivered it: what
    this process applied counts as owned too."""
    cluster, events = FakeCluster(), no_events()
    cluster.lag = True
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    assert len(cluster.live) == 3 and cluster.indexed == {}
    spec = copy.deepcopy(SPEC)
    del spec["processes"]
    profile.change(spec)
    cluster.calls.clear()
    _run(reconciler, cluster, profile)
    (deleted,) = [key for verb, key in cluster.api_calls() if verb == "delete"]
    assert _kinds(cluster) == ["file", "net"] and deleted.name.startswith("chatbot-exec-")


def _kinds(cluster: FakeCluster) -> list[str]:
    """The hook families of the live policies (named ``<profile>-<net|file|exec>-<hash>``)."""
    return sorted(k.name.split("-")[1] for k in cluster.live)


def test_after_a_restart_a_policy_of_an_old_spec_is_pruned_and_the_rest_left_alone() -> None:
    """A new process remembers nothing it applied: the index (filled before any reconcile)
    shows what the old spec left, and only what the new spec no longer renders goes."""
    cluster, events = FakeCluster(), no_events()
    profile = Profile()
    _run(_reconciler(cluster, events), cluster, profile)
    spec = copy.deepcopy(SPEC)
    del spec["processes"]
    profile.change(spec)  # while no operator runs

    cluster.calls.clear()
    _run(_reconciler(cluster, no_events()), cluster, profile)
    calls = cluster.api_calls()
    assert [verb for verb, _ in calls] == ["delete", "status"]
    assert calls[0][1].name.startswith("chatbot-exec-") and _kinds(cluster) == ["file", "net"]


def test_a_policy_owned_by_another_profile_is_not_touched() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    _run(reconciler, cluster, Profile())
    other = Profile(uid="uid-2")
    other.body["metadata"]["name"] = "other"
    cluster.calls.clear()
    _run(reconciler, cluster, other)
    assert [verb for verb, _ in cluster.api_calls()] == ["apply", "apply", "apply", "status"]
    assert len(cluster.live) == 6


@pytest.mark.parametrize("deleted", [True, False])
def test_a_profile_made_again_under_the_same_name_reports_afresh(deleted: bool) -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    _run(reconciler, cluster, Profile(uid="uid-1"))
    if deleted:
        reconciler.forget(ADP, "chatbot", "team", "uid-1")
    _run(reconciler, cluster, Profile(uid="uid-2"))
    assert events == [("Normal", "Applied"), ("Normal", "Applied")]


def _listed(cluster: FakeCluster) -> list[dict[str, Any]]:
    """What a LIST of all our policies returns: the cluster as it is, not as the index says."""
    return [copy.deepcopy(d) for d in cluster.live.values()]


PROFILE_KEY: ProfileKey = (ADP, "team", "chatbot")


def test_a_deletion_the_watch_missed_is_found_by_a_list_and_restored() -> None:
    """kopf lists again after a watch gap but reports no deletion, and its index keeps what is
    gone: the reconcile trusts it, the periodic LIST does not."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    gone = next(iter(cluster.live))
    del cluster.live[gone]  # deleted while the watch was down: the index still has it

    cluster.calls.clear()
    _run(reconciler, cluster, profile)
    assert cluster.api_calls() == []  # the index says all is there

    listed = _listed(cluster)
    assert reconciler.unsettled(listed) == [PROFILE_KEY]
    _run_listed(reconciler, cluster, profile, listed)
    assert cluster.api_calls() == [("apply", gone)]
    assert reconciler.unsettled(_listed(cluster)) == []


def _run_listed(
    reconciler: Reconciler, cluster: FakeCluster, profile: Profile, listed: list[dict[str, Any]]
) -> None:
    cluster.calls.clear()
    reconciler.reconcile(
        copy.deepcopy(profile.body), [d for d in listed if owned_by(d, ADP, "chatbot", "team")]
    )


def test_unsettled_sees_changes_and_strays_of_profiles_it_knows() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    assert reconciler.unsettled(_listed(cluster)) == []

    changed = _listed(cluster)
    changed[0]["spec"]["kprobes"] = []
    assert reconciler.unsettled(changed) == [PROFILE_KEY]

    stray = copy.deepcopy(changed[1])
    stray["metadata"]["name"] = "chatbot-net-0000"
    assert reconciler.unsettled([*_listed(cluster), stray]) == [PROFILE_KEY]
    _run_listed(reconciler, cluster, profile, [*_listed(cluster), stray])
    assert cluster.api_calls() == [("delete", key_of(stray))]

    # A policy of a profile this process never reconciled is the resume's to judge.
    other = copy.deepcopy(stray)
    other["metadata"]["labels"]["agentdetect.io/profile-name"] = "unknown"
    assert reconciler.unsettled([*_listed(cluster), other]) == []


def test_unsettled_judges_missing_policies_only_where_the_list_looked() -> None:
    """With watchNamespaces the LIST covers those namespaces only: a policy elsewhere is not
    known to be missing because that LIST did not show it."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    _run(reconciler, cluster, Profile())
    assert reconciler.unsettled([], ["team"]) == [PROFILE_KEY]  # listed there, and gone
    assert reconciler.unsettled([], ["elsewhere"]) == []
    assert reconciler.unsettled([]) == [PROFILE_KEY]


def _handled(reconciler: Reconciler, cluster: FakeCluster, profile: Profile) -> None:
    """As the kopf handler runs a reconcile (app/handlers.py): a failure is reported, kopf retries."""
    try:
        _run(reconciler, cluster, profile)
    except Exception as exc:
        reconciler.failed(profile.body, f"{type(exc).__name__}: {exc}")


def test_a_failure_retried_alike_posts_one_event_and_news_posts_again() -> None:
    cluster, events = FakeCluster(), no_events()
    messages: list[str] = []
    reconciler = _reconciler(cluster, events)
    emit = reconciler.emit

    def record(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        messages.append(message)
        emit(body, type_, reason, message)

    reconciler.emit = record
    profile = Profile()
    failure = [RuntimeError("the API server said 500")]

    def apply(doc: dict[str, Any], owner: dict[str, Any]) -> bool:
        raise failure[0]

    good_apply = cluster.apply
    cluster.apply = apply  # type: ignore[method-assign]
    for _ in range(3):  # kopf's retries, failing alike
        _handled(reconciler, cluster, profile)
    assert events == [("Warning", "ReconcileError")]
    assert messages == ["RuntimeError: the API server said 500; retrying"]

    failure[0] = RuntimeError("the API server said 503")  # another failure: news
    _handled(reconciler, cluster, profile)
    _handled(reconciler, cluster, profile)
    assert events == [("Warning", "ReconcileError")] * 2

    cluster.apply = good_apply  # type: ignore[method-assign]
    _handled(reconciler, cluster, profile)
    assert events[-1] == ("Normal", "Applied")

    cluster.apply = apply  # type: ignore[method-assign]
    profile.change({**SPEC, "processes": {"presets": ["shells", "agent-clis"]}})
    _handled(reconciler, cluster, profile)  # failing again after a success: news again
    _handled(reconciler, cluster, profile)
    assert events == [("Warning", "ReconcileError")] * 2 + [
        ("Normal", "Applied"),
        ("Warning", "ReconcileError"),
    ]
    assert len(messages[-1]) <= 1024


def test_a_profile_made_again_reports_its_failure_afresh() -> None:
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    first, second = Profile(uid="uid-1"), Profile(uid="uid-2")
    reconciler.failed(first.body, "RuntimeError: x")
    reconciler.failed(first.body, "RuntimeError: x")
    reconciler.failed(second.body, "RuntimeError: x")  # same name, another object
    assert events == [("Warning", "ReconcileError")] * 2
    reconciler.forget(ADP, "chatbot", "team", "uid-2")
    reconciler.failed(second.body, "RuntimeError: x")
    assert events == [("Warning", "ReconcileError")] * 3
    reconciler.failed(second.body, "E" * 5000)  # a long message is cut to Kubernetes' limit
    assert len(reconciler._failing[(ADP, "team", "chatbot")][1]) == 1024


def test_a_body_read_after_the_last_report_is_the_truth_for_events() -> None:
    """A body from kopf's watch may lag this process's own last status write, so a transition
    is judged from what it wrote; a body read (GET) after that write shows it, or another
    replica's later one (a failback), and is judged from its own status."""
    cluster, events = FakeCluster(), no_events()
    reconciler = _reconciler(cluster, events)
    profile = Profile()
    _run(reconciler, cluster, profile)
    assert events == [("Normal", "Applied")]
    read_before = time.monotonic()
    # Another replica, active meanwhile, failed the profile and wrote so.
    profile.body["status"]["conditions"] = [
        {**c, "status": "False", "reason": "ApplyFailed"} if c["type"] == "Ready" else c
        for c in profile.body["status"]["conditions"]
    ]
    reconciler.reconcile(copy.deepcopy(profile.body))  # as from the watch: no transition seen
    reconciler.reconcile(copy.deepcopy(profile.body), read_at=read_before)  # read before the write
    assert events == [("Normal", "Applied")]
    reconciler.reconcile(copy.deepcopy(profile.body), read_at=time.monotonic())
    assert events == [("Normal", "Applied")] * 2


class TwoApplies:
    """A profile reconciled at SPEC, then at a spec with another port, before the policy watch
    delivered either apply (the index lags): ``first`` and ``second`` are the network policy
    as each apply left it."""

    def __init__(self) -> None:
        self.cluster, self.events = FakeCluster(), no_events()
        self.cluster.lag = True
        self.reconciler = _reconciler(self.cluster, self.events)
        self.profile = Profile()
        _run(self.reconciler, self.cluster, self.profile)
        self.net = next(k for k in self.cluster.live if k.name.startswith("chatbot-net-"))
        self.first = copy.deepcopy(self.cluster.live[self.net])
        spec = copy.deepcopy(SPEC)
        spec["network"]["destinations"][0]["ports"] = [8001]
        self.profile.change(spec)
        _run(self.reconciler, self.cluster, self.profile)
        self.second = copy.deepcopy(self.cluster.live[self.net])
        assert self.first["spec"] != self.second["spec"]


def test_a_late_watch_event_of_an_earlier_apply_is_not_drift() -> None:
    """Review finding (c): a policy applied at one spec, then at the next before the watch
    delivered the first apply. That first event, arriving after the second apply, showed the
    policy unlike what was last applied and read as someone's edit: a restore (an apply) and
    a false PolicyRestored Warning. The watch delivers one object's changes in order, so once
    it shows the current version, the earlier one showing again is someone's doing."""
    t = TwoApplies()
    assert t.reconciler.drifted("MODIFIED", t.first) is None  # the first apply, delivered late
    assert t.reconciler.drifted("MODIFIED", t.second) is None  # the watch caught up
    # Now the first version again is someone putting it back.
    assert t.reconciler.drifted("MODIFIED", t.first) == (ADP, "chatbot", "team")
    edited = copy.deepcopy(t.second)
    edited["spec"]["kprobes"] = []
    assert t.reconciler.drifted("MODIFIED", edited) == (ADP, "chatbot", "team")


def test_a_list_showing_the_current_version_does_not_end_the_wait() -> None:
    """A LIST (the sweep's) may be ahead of the watch: the earlier apply's event may still come
    after it."""
    t = TwoApplies()
    assert t.reconciler.unsettled(_listed(t.cluster)) == []
    assert t.reconciler.drifted("MODIFIED", t.first) is None
    # A LIST is a consistent read: the earlier version in one is an apply in flight or a
    # revert, and the sweep reconciles it (which posts no Event).
    reverted = [t.first if key_of(d) == t.net else d for d in _listed(t.cluster)]
    assert t.reconciler.unsettled(reverted) == [PROFILE_KEY]


def test_a_spec_changed_and_changed_back_waits_for_every_late_event() -> None:
    """A, B, then A again, all before the watch delivered any: the first A's event matches the
    current version, and B's may still follow it."""
    t = TwoApplies()
    t.profile.change(SPEC)
    _run(t.reconciler, t.cluster, t.profile)
    assert t.reconciler.drifted("MODIFIED", t.first) is None  # the first A
    assert t.reconciler.drifted("MODIFIED", t.second) is None  # B, after it
    assert t.reconciler.drifted("MODIFIED", t.first) is None  # the second A


class Clocked:
    """A profile reconciled (its applies returned) at t=10 on the reconciler's clock."""

    def __init__(self) -> None:
        self.now = [10.0]
        self.cluster, self.events = FakeCluster(), no_events()
        self.reconciler = _reconciler(self.cluster, self.events)
        self.reconciler.desired = AppliedPolicies(clock=lambda: self.now[0])
        self.profile = Profile()
        _run(self.reconciler, self.cluster, self.profile)
        self.keys = sorted(self.cluster.live, key=str)
        self.now[0] = 20.0


def test_a_list_begun_after_the_applies_returned_shows_what_someone_else_did() -> None:
    """Review finding (a): a policy changed or deleted while the watch was away was put back by
    the sweep's LIST without a PolicyRestored Event; tampered() is what the sweep says it from."""
    t = Clocked()
    assert t.reconciler.tampered(_listed(t.cluster), began=15.0) == {}
    gone, edited = t.keys[0], t.keys[1]
    del t.cluster.live[gone]
    t.cluster.live[edited]["spec"]["kprobes"] = []
    found = t.reconciler.tampered(_listed(t.cluster), began=15.0)
    assert found == {PROFILE_KEY: sorted([(gone, True), (edited, False)], key=lambda f: str(f[0]))}
    # With watchNamespaces, only what the LIST covered is judged.
    assert t.reconciler.tampered([], began=15.0, namespaces=["elsewhere"]) == {}
    assert set(t.reconciler.tampered([], began=15.0, namespaces=["team"])[PROFILE_KEY]) == {
        (k, True) for k in t.keys
    }


def test_a_list_begun_before_an_apply_returned_is_not_someone_elses_doing() -> None:
    """The LIST may have been read before an apply of ours landed (the sweep and a reconcile run
    side by side): what it shows of that policy says nothing about anyone else."""
    t = Clocked()
    del t.cluster.live[t.keys[0]]
    assert t.reconciler.tampered(_listed(t.cluster), began=10.0) == {}  # not after the applies
    # A new version recorded, its apply not returned yet (or failed): not judged, whenever the
    # LIST began.
    t.cluster.live = {}
    newer = copy.deepcopy(t.reconciler.desired.get(t.keys[1]))
    assert newer is not None
    newer["metadata"]["annotations"] = {ANNOTATION_HASH: "another"}
    t.reconciler.desired.record(t.keys[1], newer)
    found = t.reconciler.tampered([], began=30.0)[PROFILE_KEY]
    assert (t.keys[1], True) not in found and (t.keys[0], True) in found


def test_policies_a_reconcile_finds_as_they_should_be_count_as_stored() -> None:
    """After a restart nothing in memory says what was applied; the first reconcile, finding the
    policies in sync in the watch's index, applies nothing and knows them stored from then."""
    t = Clocked()
    restarted = _reconciler(t.cluster, no_events())
    restarted.desired = AppliedPolicies(clock=lambda: t.now[0])
    t.cluster.calls.clear()
    _run(restarted, t.cluster, t.profile)
    assert [c for c in t.cluster.api_calls() if c[0] == "apply"] == []
    del t.cluster.live[t.keys[2]]
    assert restarted.tampered(_listed(t.cluster), began=25.0) == {PROFILE_KEY: [(t.keys[2], True)]}
    assert restarted.tampered(_listed(t.cluster), began=20.0) == {}


def restored_messages(reconciler: Reconciler) -> list[str]:
    """The messages of the PolicyRestored Events ``reconciler`` posts from now on, each
    checked to be a Warning (its Events still go where they went)."""
    restored: list[str] = []
    emit = reconciler.emit

    def capture(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        emit(body, type_, reason, message)
        if reason == "PolicyRestored":
            assert type_ == "Warning"
            restored.append(message)

    reconciler.emit = capture
    return restored


class Sweep(Clocked):
    """Clocked, with the sweep's check run as the operator runs it (handlers.verify_policies),
    its PolicyRestored messages kept."""

    def __init__(self) -> None:
        super().__init__()
        self.restored = restored_messages(self.reconciler)
        #: What happens between the sweep's LIST and its reconcile (the watch path, say).
        self.meanwhile: Callable[[], None] = lambda: None

    def reconcile_by_key(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        owned: list[dict[str, Any]] | None = None,
        restored_since: float | None = None,
        listed_epoch: int | None = None,
    ) -> tuple[dict[str, Any], Any]:
        self.meanwhile()
        body = copy.deepcopy(self.profile.body)
        return body, self.reconciler.reconcile(body, owned, None, restored_since, listed_epoch)

    def verify(self) -> None:
        verify_policies(self.reconciler, self.reconcile_by_key, [])

    def verify_with_a_standby_during_the_list(self) -> None:
        """verify(), this replica going standby while the sweep's LIST is under way."""
        list_ours = self.cluster.list_ours

        def list_then_standby(namespaces: Any = ()) -> list[dict[str, Any]]:
            listed = list_ours(namespaces)
            self.reconciler.standby()
            return listed

        setattr(self.cluster, "list_ours", list_then_standby)  # noqa: B010 (mypy: a method)
        try:
            self.verify()
        finally:
            delattr(self.cluster, "list_ours")  # the class's method again

    def rewritten_by_the_other_replica(self, key: ObjectKey) -> None:
        """What the replica that led meanwhile wrote: its own rendering, another spec-hash."""
        rewritten = self.cluster.live[key]
        rewritten["spec"]["kprobes"] = []
        rewritten["metadata"]["annotations"][ANNOTATION_HASH] = "the-other-replicas-rendering"


FOUND = "(found by a periodic list; the watch did not see it)"


def test_the_sweep_says_what_it_put_back_after_someone_deleted_or_changed_it() -> None:
    t = Sweep()
    gone, edited = t.keys[0], t.keys[1]
    del t.cluster.live[gone]
    t.cluster.live[edited]["spec"]["kprobes"] = []
    t.verify()
    assert t.restored == [
        f"TracingPolicyNamespaced team/{gone.name} was deleted outside agentdetect; restored {FOUND}",
        f"TracingPolicyNamespaced team/{edited.name} was changed outside agentdetect; restored {FOUND}",
    ]
    assert gone in t.cluster.live and t.cluster.live[edited]["spec"]["kprobes"] != []  # put back
    t.restored.clear()
    t.now[0] = 30.0
    t.verify()  # put back: nothing more to say
    assert t.restored == []


def test_the_sweep_says_nothing_of_what_the_watch_path_put_back_since_its_list() -> None:
    """The watch saw the deletion too and put it back (posting its own Event) between the
    sweep's LIST and its reconcile, which applies again from that stale LIST."""
    t = Sweep()
    gone = t.keys[0]
    del t.cluster.live[gone], t.cluster.indexed[gone]

    def watch_path() -> None:
        t.now[0] = 25.0
        assert gone in t.reconciler.reconcile(copy.deepcopy(t.profile.body)).applied_keys

    t.meanwhile = watch_path
    t.verify()
    assert t.restored == []
    assert ("apply", gone) in t.cluster.api_calls()  # the sweep did apply again: not said twice


def test_the_sweep_says_nothing_for_a_new_profile_of_the_same_name() -> None:
    """Deleted and created again while the watch was away: the old one's policies went with it."""
    t = Sweep()
    del t.cluster.live[t.keys[0]]
    t.profile.body["metadata"]["uid"] = "uid-2"
    t.verify()
    assert t.restored == [] and t.keys[0] in t.cluster.live


def test_a_list_read_before_a_standby_vouches_for_nothing_after_it() -> None:
    """The replica went standby while its sweep's LIST was under way: what the LIST showed in
    sync must not count as stored from then on, or the other replica's writes meanwhile read
    as someone's tamper once this one leads again."""
    t = Sweep()
    t.verify_with_a_standby_during_the_list()  # all in sync: nothing reconciled, nothing said
    t.rewritten_by_the_other_replica(t.keys[0])
    t.now[0] = 30.0
    t.verify()
    assert t.restored == []
    assert t.cluster.live[t.keys[0]]["spec"]["kprobes"] != []  # this one's rendering again


def test_a_list_read_before_a_standby_reconciles_nothing() -> None:
    """As above, with the profile unsettled by the LIST (one policy deleted): a reconcile from
    that LIST took its in-sync policies as stored (review finding), and the other replica's
    rewrite then read as a tamper. The sweep stops at the standby; the next pass, back in the
    lead, puts back the deleted one as the first look after a standby does, and says nothing
    of the rewritten one."""
    t = Sweep()
    gone = t.keys[1]
    del t.cluster.live[gone]
    t.verify_with_a_standby_during_the_list()
    assert gone not in t.cluster.live and t.restored == []  # nothing reconciled from that LIST
    t.rewritten_by_the_other_replica(t.keys[0])
    t.now[0] = 30.0
    t.verify()
    assert t.restored == [
        f"TracingPolicyNamespaced team/{gone.name} was deleted outside agentdetect; restored {FIRST}"
    ]
    assert gone in t.cluster.live and t.cluster.live[t.keys[0]]["spec"]["kprobes"] != []


def test_the_sweep_says_a_relabelled_policy_was_changed_not_deleted() -> None:
    """Someone removed agentdetect's label: the LIST by that label misses the policy, but the
    apply that puts the label back finds it there (200, not 201 Created)."""
    t = Sweep()
    relabelled = t.keys[0]
    del t.cluster.live[relabelled]["metadata"]["labels"][LABEL_MANAGED_BY]
    del t.cluster.indexed[relabelled]  # kopf's index is filtered by the label too
    t.verify()
    assert t.restored == [
        f"TracingPolicyNamespaced team/{relabelled.name} was changed outside agentdetect; restored {FOUND}"
    ]
    assert t.cluster.live[relabelled]["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY


def test_the_sweep_says_nothing_for_a_policy_it_did_not_put_back() -> None:
    t = Sweep()
    net = next(k for k in t.keys if k.name.startswith("chatbot-net-"))
    del t.cluster.live[net]
    spec = copy.deepcopy(SPEC)
    del spec["network"]
    t.profile.change(spec)  # no longer rendered
    t.verify()
    assert t.restored == [] and net not in t.cluster.live

    t = Sweep()
    del t.cluster.live[t.keys[0]]
    t.cluster.terminating.add("team")  # the namespace controller is emptying it
    t.verify()
    assert t.restored == []


# ---- a new process's first reconcile: what happened while no watch of its own saw ----------

FIRST = "(found by this process's first reconcile of the profile; no watch of agentdetect saw it)"


class Restart:
    """A profile reconciled by one process, then by a new one (a restart, a failover) that
    knows only the index and the profile's status; the new one's PolicyRestored messages kept."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.cluster = FakeCluster()
        self.profile = Profile(spec)
        _run(_reconciler(self.cluster, no_events()), self.cluster, self.profile)
        self.keys = sorted(self.cluster.live, key=str)
        self.by_kind = {k.name.split("-")[1]: k for k in self.keys}
        self.events: list[tuple[str, str]] = []
        self.reconciler = _reconciler(self.cluster, self.events)
        self.restored = restored_messages(self.reconciler)

    def delete(self, key: ObjectKey) -> None:
        """Deleted while no operator ran: gone from the cluster and so from the new index."""
        del self.cluster.live[key], self.cluster.indexed[key]

    def edit(self, key: ObjectKey, annotation: str | None = None) -> None:
        """A selector dropped, the content-hash annotation left as it was (or set)."""
        for store in (self.cluster.live, self.cluster.indexed):
            kprobe = store[key]["spec"]["kprobes"][0]
            kprobe["selectors"] = kprobe["selectors"][:1] if len(kprobe["selectors"]) > 1 else []
            if annotation is not None:
                store[key]["metadata"]["annotations"][ANNOTATION_HASH] = annotation

    def run(self) -> None:
        self.cluster.calls.clear()
        _run(self.reconciler, self.cluster, self.profile)


def test_a_new_process_says_what_was_changed_or_deleted_while_no_watch_saw() -> None:
    r = Restart()
    net, file = r.by_kind["net"], r.by_kind["file"]
    before = copy.deepcopy(r.cluster.live[net]["spec"])
    r.delete(file)
    r.edit(net)
    r.run()
    assert {k for verb, k in r.cluster.api_calls() if verb == "apply"} == {file, net}
    assert r.cluster.live[net]["spec"] == before and file in r.cluster.live  # put back
    assert sorted(r.restored) == sorted(
        [
            f"TracingPolicyNamespaced team/{file.name} was deleted outside agentdetect; restored {FIRST}",
            f"TracingPolicyNamespaced team/{net.name} was changed outside agentdetect; restored {FIRST}",
        ]
    )
    r.restored.clear()
    r.edit(net)  # again, and the index shows it: now the watch path's to say
    r.run()
    assert r.restored == [] and r.cluster.api_calls()[0] == ("apply", net)


def test_a_new_process_says_nothing_of_what_agentdetect_itself_rendered_otherwise() -> None:
    """The spec changed while no operator ran (or a new version renders it otherwise): the
    policies carry another content hash than the new rendering, and their update is no tamper.
    One whose annotation someone set along with the content reads the same way."""
    r = Restart()
    spec = copy.deepcopy(SPEC)
    spec["network"]["destinations"][0]["ports"] = [8001]
    r.profile.change(spec)
    r.edit(r.by_kind["file"], annotation="0123456789abcdef")
    r.run()
    assert ("apply", r.by_kind["net"]) in r.cluster.api_calls()
    assert ("apply", r.by_kind["file"]) in r.cluster.api_calls()
    assert r.restored == [] and r.events == []


def test_a_new_process_says_nothing_of_a_policy_the_status_never_listed() -> None:
    """Created while no operator ran, or its first reconcile never reached its status: a
    missing policy may never have been applied."""
    r = Restart()
    r.profile.body["status"].pop("policies")
    r.delete(r.by_kind["exec"])
    r.run()
    assert r.cluster.api_calls()[0] == ("apply", r.by_kind["exec"])
    assert r.restored == []


def test_a_new_process_says_nothing_in_a_namespace_being_emptied() -> None:
    r = Restart()
    r.delete(r.by_kind["exec"])
    r.cluster.terminating.add("team")
    r.run()
    assert r.cluster.api_calls()[0] == ("apply", r.by_kind["exec"]) and r.restored == []


def test_only_the_first_reconcile_in_a_process_looks_back() -> None:
    """After it, the process's own watch and sweep speak for what happens. Here the spec drops
    a policy (pruned) and takes it back, in a body whose status still lists it (the watch
    delivered the spec change before the status patch): missing, listed, and unknown to the
    process since it forgot it on pruning, yet pruned by this process, not by someone else."""
    r = Restart()
    r.run()
    assert r.cluster.api_calls() == [] and r.restored == []
    listed = copy.deepcopy(r.profile.body["status"])
    spec = copy.deepcopy(SPEC)
    del spec["processes"]
    r.profile.change(spec)
    r.run()
    assert r.cluster.api_calls()[0] == ("delete", r.by_kind["exec"])
    r.profile.change(SPEC)
    r.profile.body["status"] = listed
    r.run()
    assert r.cluster.api_calls()[0] == ("apply", r.by_kind["exec"]) and r.restored == []


def test_a_profile_made_again_unseen_says_nothing_of_its_predecessors_policies() -> None:
    """Deleted and made again while the watch was away: the first reconcile of the new one
    finds the old one's policies, which this process applied; whatever was done to them went
    with the old profile."""
    r = Restart()
    r.run()
    r.edit(r.by_kind["net"])
    r.profile.body["metadata"]["uid"] = "uid-2"
    r.profile.body.pop("status")
    r.profile.body["status"] = {
        "policies": [{"kind": k.kind, "namespace": k.namespace, "name": k.name} for k in r.keys]
    }
    r.run()
    assert ("apply", r.by_kind["net"]) in r.cluster.api_calls() and r.restored == []


@pytest.mark.parametrize(
    "error", [ApiException(status=500, reason="Internal Server Error"), TimeoutError("read timed out")]
)
def test_a_first_look_that_fails_partway_says_what_it_put_back_and_the_retry_the_rest(
    error: Exception,
) -> None:
    """An API error ends the reconcile with ApplyFailed, a timeout raises through it (kopf
    retries either): what was put back before is said at once, and the retry, which has not
    looked at every policy yet, says the rest."""
    r = Restart()
    r.delete(r.by_kind["exec"])
    r.delete(r.by_kind["net"])
    apply, tried = r.cluster.apply, list[ObjectKey]()

    def apply_then_fail(doc: dict[str, Any], owner: dict[str, Any]) -> bool:
        tried.append(key_of(doc))
        if len(tried) == 2:
            raise error
        return apply(doc, owner)

    r.cluster.apply = apply_then_fail  # type: ignore[method-assign]
    with contextlib.suppress(TimeoutError):
        r.run()
    assert len(tried) == 2 and tried[0] in r.cluster.live and tried[1] not in r.cluster.live
    assert [m.split(" was ")[0] for m in r.restored] == [f"TracingPolicyNamespaced team/{tried[0].name}"]
    r.cluster.apply = apply  # type: ignore[method-assign]
    r.run()
    assert tried[1] in r.cluster.live
    assert [m.split(" was ")[0] for m in r.restored] == [
        f"TracingPolicyNamespaced team/{k.name}" for k in tried
    ]


def test_what_a_first_look_put_back_is_said_though_the_status_patch_fails() -> None:
    r = Restart()
    r.delete(r.by_kind["exec"])
    r.profile.body["metadata"]["generation"] += 1  # a status to patch (observedGeneration)

    def patch_status(*args: Any) -> None:
        raise TimeoutError("read timed out")

    r.cluster.patch_status = patch_status  # type: ignore[method-assign,assignment]
    with pytest.raises(TimeoutError):
        r.reconciler.reconcile(copy.deepcopy(r.profile.body))
    assert len(r.restored) == 1 and r.by_kind["exec"].name in r.restored[0]


def test_a_reconcile_that_applies_nothing_leaves_the_first_look_to_the_next() -> None:
    """Tetragon not served yet (both restarted together, say): nothing was looked at."""
    r = Restart()
    r.delete(r.by_kind["exec"])
    r.cluster.tetragon = False
    r.run()
    assert all(verb == "status" for verb, _ in r.cluster.api_calls()) and r.restored == []
    r.cluster.tetragon = True
    r.run()
    assert len(r.restored) == 1 and r.by_kind["exec"].name in r.restored[0]


def test_a_replica_back_from_standby_looks_again() -> None:
    """It reconciled the profile before it stood by; another replica wrote meanwhile, and
    someone deleted a policy while neither watched (between the other's end and its return)."""
    r = Restart()
    r.run()
    r.reconciler.standby()
    r.delete(r.by_kind["file"])
    r.run()
    assert len(r.restored) == 1 and r.by_kind["file"].name in r.restored[0] and "deleted" in r.restored[0]


def test_the_watch_path_does_not_repeat_what_the_first_look_said() -> None:
    key = ObjectKey("TracingPolicyNamespaced", "team", "chatbot-net-0")
    other = ObjectKey("TracingPolicyNamespaced", "team", "chatbot-file-0")
    applied = Outcome(True, "Applied", "", frozenset({key, other}))
    assert watch_restored(key, applied)
    said = Outcome(True, "Applied", "", frozenset({key, other}), restored_unseen=((key, False),))
    assert not watch_restored(key, said) and watch_restored(other, said)
    assert not watch_restored(key, Outcome(True, "Applied", "", frozenset({other})))


def test_a_policy_a_lagging_index_does_not_show_is_not_called_deleted() -> None:
    """Back from standby, kopf's index may still be filling: a policy another replica made
    meanwhile is missing from it though the profile's status lists it. The apply that puts
    it back finds it there (the API server did not create it): nothing was deleted."""
    r = Restart()
    r.run()
    r.reconciler.standby()
    del r.cluster.indexed[r.by_kind["file"]]  # in the cluster, not (yet) in the index
    r.run()
    assert r.cluster.api_calls()[0] == ("apply", r.by_kind["file"]) and r.restored == []


def test_the_outcome_names_what_the_first_look_said() -> None:
    """The watch path leaves to it what its own reconcile's first look said
    (handlers.watch_restored)."""
    r = Restart()
    r.delete(r.by_kind["exec"])
    r.edit(r.by_kind["net"])
    outcome = r.reconciler.reconcile(copy.deepcopy(r.profile.body))
    assert sorted(outcome.restored_unseen, key=str) == sorted(
        [(r.by_kind["exec"], True), (r.by_kind["net"], False)], key=str
    )
    assert not watch_restored(r.by_kind["net"], outcome) and len(r.restored) == 2


def test_a_profile_made_again_is_looked_at_afresh() -> None:
    """This process looked at the old one's policies (and pruned one of them); the new one's,
    whose status another replica wrote listing that one, it has not."""
    r = Restart()
    listed = copy.deepcopy(r.profile.body["status"])
    spec = copy.deepcopy(SPEC)
    del spec["processes"]
    r.profile.change(spec)
    r.run()
    assert r.by_kind["exec"] not in r.cluster.live  # pruned: this process knows it no more
    r.profile.body["metadata"]["uid"] = "uid-2"
    r.profile.change(SPEC)
    r.profile.body["status"] = listed  # written by the other replica, which then lost it
    r.run()
    assert len(r.restored) == 1 and r.by_kind["exec"].name in r.restored[0] and "deleted" in r.restored[0]


def test_a_deletion_is_said_when_the_namespace_check_fails() -> None:
    r = Restart()
    r.delete(r.by_kind["exec"])

    def namespace_active(name: str) -> bool:
        raise TimeoutError("read timed out")

    r.cluster.namespace_active = namespace_active  # type: ignore[method-assign]
    r.run()
    assert len(r.restored) == 1 and r.by_kind["exec"].name in r.restored[0]


def test_a_standby_during_a_reconcile_still_leaves_the_next_one_a_first_look() -> None:
    """The gate says standby while a reconcile is applying: what that reconcile finishes
    after must not count as looked at, nor as stored, for the replica's return."""
    r = Restart()
    r.edit(r.by_kind["net"])
    apply = r.cluster.apply

    def apply_then_standby(doc: dict[str, Any], owner: dict[str, Any]) -> bool:
        created = apply(doc, owner)
        r.reconciler.standby()
        return created

    r.cluster.apply = apply_then_standby  # type: ignore[method-assign]
    r.run()
    r.cluster.apply = apply  # type: ignore[method-assign]
    r.restored.clear()
    r.delete(r.by_kind["net"])  # while another replica was active, and then none
    r.run()
    assert len(r.restored) == 1 and r.by_kind["net"].name in r.restored[0] and "deleted" in r.restored[0]


def test_a_first_look_whose_hostnames_do_not_resolve_still_names_what_it_said() -> None:
    """Ready False (ResolutionFailed), the policies applied without the addresses: the
    outcome names what the first look said, as an Applied one does."""
    r = Restart({**SPEC, "network": {**SPEC["network"], "providers": ["openai"]}})
    r.delete(r.by_kind["exec"])
    outcome = r.reconciler.reconcile(copy.deepcopy(r.profile.body))
    assert outcome.reason == "ResolutionFailed"
    assert outcome.restored_unseen == ((r.by_kind["exec"], True),) and len(r.restored) == 1


def test_a_standby_between_the_sweeps_check_and_its_reconcile_writes_nothing() -> None:
    """The window left by the check above: the replica stands by after the sweep's last check,
    before its reconcile reads the standby count (one profile GET apart), and the other replica
    writes meanwhile. A reconcile from that LIST took what it showed in sync as stored, and
    wrote over the other replica's policies; the LIST's own count, passed along, stops it as
    the check does. Back in the lead, the next pass puts back what is missing as a first look
    after a standby, and says nothing of the other replica's rendering."""
    t = Sweep()
    gone = t.keys[1]
    del t.cluster.live[gone]

    def standby_and_the_other_replica_writes() -> None:
        t.reconciler.standby()
        t.rewritten_by_the_other_replica(t.keys[0])

    t.meanwhile = standby_and_the_other_replica_writes
    calls = len(t.cluster.api_calls())
    t.verify()
    t.meanwhile = lambda: None
    assert t.cluster.api_calls()[calls:] == []  # no apply, no status patch (the LIST is not counted)
    assert t.restored == []
    assert t.cluster.live[t.keys[0]]["spec"]["kprobes"] == []  # the other replica's, left alone
    t.now[0] = 30.0
    t.verify()
    assert t.restored == [
        f"TracingPolicyNamespaced team/{gone.name} was deleted outside agentdetect; restored {FIRST}"
    ]
    assert gone in t.cluster.live and t.cluster.live[t.keys[0]]["spec"]["kprobes"] != []
