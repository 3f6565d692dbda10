"""The reconciler's memory: each piece with one owner and one lock."""

from __future__ import annotations

import threading
from typing import Any

from agentdetect.cluster.kube import ObjectKey
from agentdetect.controller.state import EARLIER_FOR, MAX_EARLIER, AppliedPolicies, Reconciled, owned_by

ADP = "AgentDetectionProfile"


def _doc(name: str, profile: str) -> dict[str, Any]:
    labels = {"agentdetect.io/profile-kind": ADP, "agentdetect.io/profile-name": profile}
    labels["agentdetect.io/profile-namespace"] = "team"
    return {
        "kind": "TracingPolicyNamespaced",
        "metadata": {"name": name, "namespace": "team", "labels": labels},
    }


def test_applied_policies_forget_a_profiles_own_but_what_it_keeps() -> None:
    applied = AppliedPolicies()
    keys = [ObjectKey("TracingPolicyNamespaced", "team", n) for n in ("a1", "a2", "b1")]
    for key, profile in zip(keys, ("a", "a", "b"), strict=True):
        applied.record(key, _doc(key.name, profile))
    assert owned_by(_doc("a1", "a"), ADP, "a", "team") and not owned_by(_doc("b1", "b"), ADP, "a", "team")
    applied.forget_owner(ADP, "a", "team", keep={keys[0]})
    assert (
        applied.get(keys[0]) is not None and applied.get(keys[1]) is None and applied.get(keys[2]) is not None
    )
    assert applied.count(lambda d: True) == 2
    applied.discard(keys[2])
    assert applied.count(lambda d: True) == 1


def test_applied_policies_by_profile() -> None:
    applied = AppliedPolicies()
    a1, a2 = (ObjectKey("TracingPolicyNamespaced", "team", n) for n in ("a1", "a2"))
    applied.record(a1, _doc("a1", "a"))
    applied.record(a2, _doc("a2", "a"))
    assert applied.owned_keys(ADP, "a", "team") == {a1, a2}
    assert applied.owned_keys(ADP, "a", "other") == set() and applied.owned_keys(ADP, "b", "team") == set()
    applied.record(a2, _doc("a2", "b"))  # the same policy, rendered for another profile now
    assert applied.owned_keys(ADP, "a", "team") == {a1} and applied.owned_keys(ADP, "b", "team") == {a2}
    applied.discard(a1)
    applied.forget_owner(ADP, "b", "team")
    assert applied.owned_keys(ADP, "a", "team") == set() and applied.owned_keys(ADP, "b", "team") == set()
    assert applied.count(lambda d: True) == 0


def test_applied_policies_under_concurrent_writers() -> None:
    """The 16 reconcile workers write while a drift event or a scrape reads: one lock."""
    applied = AppliedPolicies()

    def writer(i: int) -> None:
        for j in range(500):
            key = ObjectKey("TracingPolicyNamespaced", "team", f"p{i}-{j}")
            applied.record(key, _doc(key.name, f"p{i}"))
            applied.count(lambda d: True)
            applied.forget_owner(ADP, f"p{(i + 1) % 8}", "team")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert applied.count(lambda d: True) <= 8 * 500


def test_reconciled_versions_detecting_and_forgotten_uids() -> None:
    r = Reconciled()
    r.settle((ADP, "team", "a"), "u1", 2, ("True", "Following"))
    r.settle((ADP, "team", "b"), "u2", 1, None)
    assert r.versions() == {(ADP, "team", "a", "u1", 2), (ADP, "team", "b", "u2", 1)}
    assert r.detecting_differs(("True", "Following")) == [(ADP, "team", "b")]
    r.forget((ADP, "team", "a"), "u1")
    assert r.is_forgotten("u1") and not r.is_forgotten("u2") and not r.is_forgotten(None)
    assert r.versions() == {(ADP, "team", "b", "u2", 1)}


def _version(spec_hash: str) -> dict[str, Any]:
    doc = _doc("net", "p")
    doc["metadata"]["annotations"] = {"agentdetect.io/spec-hash": spec_hash}
    return doc


def test_earlier_versions_are_kept_until_the_watch_catches_up_or_they_expire() -> None:
    now = [100.0]
    applied = AppliedPolicies(clock=lambda: now[0])
    key = ObjectKey("TracingPolicyNamespaced", "team", "net")
    v1, v2, v3 = _version("h1"), _version("h2"), _version("h3")
    applied.record(key, v1)
    assert applied.earlier(key) == []
    applied.record(key, v1)  # the same version again (an unchanged reconcile): nothing earlier
    assert applied.earlier(key) == []
    applied.record(key, v2)
    applied.record(key, v2)
    assert applied.earlier(key) == [v1]
    applied.record(key, v3)
    assert applied.earlier(key) == [v1, v2]
    applied.caught_up(key, v3)
    assert applied.earlier(key) == []

    applied.record(key, v1)  # v3 superseded at 100
    now[0] = 130.0
    applied.record(key, v2)  # v1 superseded at 130
    assert applied.earlier(key) == [v3, v1]
    now[0] = 100.0 + EARLIER_FOR
    assert applied.earlier(key) == [v1]  # v3's event is no longer waited for
    now[0] = 130.0 + EARLIER_FOR
    assert applied.earlier(key) == []
    applied.record(key, v2)  # the same version again: what ran out is let go
    assert key not in applied._earlier
    for i in range(10):
        applied.record(key, _version(f"x{i}"))
    assert len(applied.earlier(key)) == MAX_EARLIER
    applied.discard(key)
    assert applied.earlier(key) == []


def test_the_watch_showing_a_version_that_is_also_an_earlier_one_ends_no_wait() -> None:
    applied = AppliedPolicies(clock=lambda: 0.0)
    key = ObjectKey("TracingPolicyNamespaced", "team", "net")
    a, b = _version("a"), _version("b")
    applied.record(key, a)
    applied.record(key, b)
    applied.record(key, a)  # changed back
    assert applied.earlier(key) == [a, b]
    applied.caught_up(key, a)  # may be the first A's event: B's may follow
    assert applied.earlier(key) == [a, b]
    c = _version("c")
    applied.record(key, c)
    applied.caught_up(key, c)
    assert applied.earlier(key) == []


def test_when_the_server_held_the_current_version_is_kept_until_another_is_recorded() -> None:
    """What Reconciler.tampered reads: a LIST begun after this time shows someone else's write
    where it differs, never an apply of ours in flight."""
    now = [10.0]
    applied = AppliedPolicies(clock=lambda: now[0])
    key = ObjectKey("TracingPolicyNamespaced", "team", "a1")
    first = _version("1")
    applied.stored(key, first)
    assert applied.stored_at(key) is None  # not recorded: nothing to vouch for
    applied.record(key, first)
    assert applied.stored_at(key) is None  # recorded just before the apply, which may fail
    applied.stored(key, first)  # shown by the watch's index as it is
    now[0] = 20.0
    applied.stored(key, first)  # known already: the first time is kept
    assert applied.stored_at(key) == 10.0
    again = _version("1")
    applied.record(key, again)  # the same version (a reconcile that changes nothing)
    assert applied.stored_at(key) == 10.0
    applied.stored(key, again, applied=True)  # applied again (its owner reference was off)
    assert applied.stored_at(key) == 20.0
    second = _version("2")
    applied.record(key, second)  # a new version: not stored until its apply returns
    assert applied.stored_at(key) is None
    now[0] = 30.0
    applied.stored(key, again)  # a reader that compared against the old version
    applied.caught_up(key, again)
    assert applied.stored_at(key) is None
    applied.caught_up(key, second)  # the watch shows the new one
    assert applied.stored_at(key) == 30.0
    epoch = applied.epoch  # a reconcile reads the cluster, then the replica goes standby
    applied.forget_stored()  # gone standby
    assert applied.stored_at(key) is None and applied.get(key) is second
    applied.stored(key, second, applied=True, epoch=epoch)  # its apply returns after that
    assert applied.stored_at(key) is None
    applied.stored(key, second)
    applied.discard(key)
    assert applied.stored_at(key) is None
