"""The reconciler's memory, each piece with one owner and one lock: what was applied (the drift
cache), which namespaces each selecting cluster profile renders into, which version of each
profile was last reconciled (what detection waits for) and what its conditions said (what its
Events are transitions of).

What each profile owns in the cluster now is not kept here: kopf's index of the policy watch
holds it (app/handlers.py, :data:`OwnedLookup`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agentdetect.api.models import ClusterProfileSpec
from agentdetect.cluster.kube import ObjectKey, ProfileVersion
from agentdetect.policy.board import ProfileKey
from agentdetect.policy.render import ANNOTATION_HASH


def owner_of(doc: Mapping[str, Any]) -> ProfileKey:
    """The profile (kind, namespace, name) a rendered policy's labels name."""
    labels = doc["metadata"]["labels"]
    return (
        str(labels.get("agentdetect.io/profile-kind")),
        labels.get("agentdetect.io/profile-namespace"),
        str(labels.get("agentdetect.io/profile-name")),
    )


def owned_by(doc: Mapping[str, Any], kind: str, name: str, namespace: str | None) -> bool:
    labels = doc["metadata"]["labels"]
    return bool(
        labels.get("agentdetect.io/profile-kind") == kind
        and labels.get("agentdetect.io/profile-name") == name
        and labels.get("agentdetect.io/profile-namespace") == namespace
    )


#: The policies a profile owns now, as the policy watch last saw them: each with its kind,
#: metadata (name, namespace, labels, the content-hash annotation, owner references) and spec.
OwnedLookup = Callable[[ProfileKey], list[dict[str, Any]]]
#: Per condition type, its (status, reason).
ConditionStates = dict[str, tuple[str, str]]


def condition_states(conditions: list[dict[str, Any]]) -> ConditionStates:
    return {str(c.get("type")): (str(c.get("status")), str(c.get("reason"))) for c in conditions}


#: How long a superseded policy's own watch event is still expected: the watch lags the
#: applies by far less (a lag past this is a broken watch, and kopf lists again after one).
EARLIER_FOR = 60.0
#: Superseded versions kept per policy while their watch events may still come.
MAX_EARLIER = 4


def _spec_hash(doc: Mapping[str, Any]) -> str | None:
    return (doc["metadata"].get("annotations") or {}).get(ANNOTATION_HASH)


class AppliedPolicies:
    """What was last applied (recorded just before the apply) or confirmed, per policy: drift
    events compare against it without a round trip to the API server. Kept by profile too, so
    a reconcile finds its own without going through every profile's.

    Also the versions applied before the current one, until the watch shows the current one:
    the watch can lag the applies (a burst of creates, a re-resolution right after a spec
    change), and the event of an earlier apply arriving after a later one is this process's
    own write, not someone's edit. The watch delivers one object's changes in order, so once it
    shows the current version no earlier one of ours can follow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._docs: dict[ObjectKey, dict[str, Any]] = {}
        self._by_owner: dict[ProfileKey, set[ObjectKey]] = {}
        #: Per policy, (superseded at, doc) of versions applied before the current one.
        self._earlier: dict[ObjectKey, list[tuple[float, dict[str, Any]]]] = {}
        #: Per policy, since when the API server is known to hold the current version (its
        #: last apply returned, or the watch, the index or a LIST showed it): a LIST begun after
        #: that time which shows it otherwise shows someone else's write, not one of ours in
        #: flight.
        self._stored_at: dict[ObjectKey, float] = {}
        #: Counts the standbys (forget_stored): a caller that read the cluster before one
        #: must not vouch for what it read after (its reconcile finished after the standby).
        self._epoch = 0
        self._clock = clock
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def record(self, key: ObjectKey, doc: dict[str, Any]) -> None:
        with self._lock:
            before = self._docs.get(key)
            earlier = self._earlier.get(key)
            stored_at = self._stored_at.get(key)
            self._drop(key)
            self._docs[key] = doc
            if stored_at is not None and before == doc:  # the same version recorded again
                self._stored_at[key] = stored_at
            self._by_owner.setdefault(owner_of(doc), set()).add(key)
            now = self._clock()
            kept = [(t, d) for t, d in earlier or () if now - t < EARLIER_FOR]
            if before is not None and _spec_hash(before) != _spec_hash(doc):
                kept = [*kept[max(0, len(kept) - (MAX_EARLIER - 1)) :], (now, before)]
            if kept:
                self._earlier[key] = kept

    def earlier(self, key: ObjectKey) -> list[dict[str, Any]]:
        """The versions applied before the current one whose watch events may still come."""
        if key not in self._earlier:  # the common case, without the lock
            return []
        with self._lock:
            now = self._clock()
            return [d for t, d in self._earlier.get(key, ()) if now - t < EARLIER_FOR]

    @property
    def epoch(self) -> int:
        return self._epoch

    def stored(
        self, key: ObjectKey, doc: dict[str, Any], applied: bool = False, epoch: int | None = None
    ) -> None:
        """The API server holds ``doc``, the current version: its apply returned just now
        (``applied``: the time moves to now), or the watch, the index or a LIST showed it (the
        first such time is kept). Not if another version was recorded meanwhile: a reader
        that compared against ``doc`` must not vouch for a version whose apply is in flight."""
        with self._lock:
            if self._docs.get(key) is not doc or (epoch is not None and epoch != self._epoch):
                return
            if applied:
                self._stored_at[key] = self._clock()
            else:
                self._stored_at.setdefault(key, self._clock())

    def forget_stored(self) -> None:
        """This replica went standby: what another writes meanwhile is not someone's tamper,
        and what this one knew stored no longer says anything about the cluster."""
        with self._lock:
            self._stored_at.clear()
            self._epoch += 1

    def stored_at(self, key: ObjectKey) -> float | None:
        """Since when the API server is known to hold the current version, if it is."""
        with self._lock:
            return self._stored_at.get(key)

    def caught_up(self, key: ObjectKey, shown: dict[str, Any]) -> None:
        """The watch showed ``shown``, the current version when the caller read it: no earlier
        one of ours can come after it. Unless the current version is also an earlier one (a
        spec changed and changed back): the event may be of that earlier apply, and what was
        applied between may still come, so those wait for their time to run out."""
        self.stored(key, shown)
        if key in self._earlier:
            with self._lock:
                doc = self._docs.get(key)
                current = _spec_hash(doc) if doc is not None else None
                if all(_spec_hash(d) != current for _, d in self._earlier.get(key, ())):
                    self._earlier.pop(key, None)

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        with self._lock:
            return self._docs.get(key)

    def items(self) -> list[tuple[ObjectKey, dict[str, Any]]]:
        with self._lock:
            return list(self._docs.items())

    def owned_keys(self, kind: str, name: str, namespace: str | None) -> set[ObjectKey]:
        with self._lock:
            return set(self._by_owner.get((kind, namespace, name), ()))

    def discard(self, key: ObjectKey) -> None:
        with self._lock:
            self._drop(key)

    def forget_owner(
        self, kind: str, name: str, namespace: str | None, keep: set[ObjectKey] | None = None
    ) -> None:
        """Drop the profile's policies, but those in ``keep``."""
        with self._lock:
            for key in list(self._by_owner.get((kind, namespace, name), ())):
                if not keep or key not in keep:
                    self._drop(key)

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        with self._lock:
            return sum(1 for doc in self._docs.values() if predicate(doc))

    def _drop(self, key: ObjectKey) -> None:
        """Under the lock."""
        self._earlier.pop(key, None)
        self._stored_at.pop(key, None)
        doc = self._docs.pop(key, None)
        if doc is None:
            return
        owner = owner_of(doc)
        keys = self._by_owner.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[owner]


class NamespaceSelections:
    """Cluster profiles with a namespace selector, and the namespaces they render into now."""

    def __init__(self) -> None:
        self._by_profile: dict[str, tuple[ClusterProfileSpec, set[str]]] = {}
        self._lock = threading.Lock()

    def select(self, name: str, spec: ClusterProfileSpec, namespaces: set[str]) -> None:
        with self._lock:
            self._by_profile[name] = (spec, namespaces)

    def drop(self, name: str) -> None:
        with self._lock:
            self._by_profile.pop(name, None)

    def items(self) -> list[tuple[str, tuple[ClusterProfileSpec, set[str]]]]:
        with self._lock:
            return list(self._by_profile.items())


class Reconciled:
    """Per profile, the (uid, generation) last reconciled whatever the outcome, and the
    Detecting condition it carries; and the uids of profiles deleted, whose late reconciles
    must do nothing."""

    def __init__(self) -> None:
        self._versions: dict[ProfileKey, tuple[str, int]] = {}
        self._detecting: dict[ProfileKey, tuple[str, str] | None] = {}
        self._reported: dict[ProfileKey, tuple[str, ConditionStates, float]] = {}
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()

    def report(self, key: ProfileKey, uid: str, states: ConditionStates) -> None:
        """The conditions this process last wrote to the profile's status (written already:
        a read of the profile that starts after this shows them)."""
        with self._lock:
            self._reported[key] = (uid, dict(states), time.monotonic())

    def reported(self, key: ProfileKey, uid: str, read_at: float | None = None) -> ConditionStates | None:
        """What :meth:`report` last recorded for this very profile (a profile deleted and made
        again under the same name is another), or None if this process wrote nothing yet, or
        if the body was read (``read_at``, monotonic) after that report: such a read shows
        this process's write or a later one, another replica's among them, and is the truth."""
        with self._lock:
            got = self._reported.get(key)
            if got is None or got[0] != uid or (read_at is not None and read_at > got[2]):
                return None
            return dict(got[1])

    def settle(self, key: ProfileKey, uid: str, generation: int, detecting: tuple[str, str] | None) -> None:
        with self._lock:
            self._versions[key] = (uid, generation)
            self._detecting[key] = detecting

    def forget(self, key: ProfileKey, uid: str | None) -> None:
        with self._lock:
            self._versions.pop(key, None)
            self._detecting.pop(key, None)
            self._reported.pop(key, None)
            if uid:
                self._forgotten.add(uid)

    def is_forgotten(self, uid: str | None) -> bool:
        with self._lock:
            return bool(uid) and uid in self._forgotten

    def uid(self, key: ProfileKey) -> str | None:
        """The uid of the profile last reconciled under ``key``."""
        with self._lock:
            found = self._versions.get(key)
            return None if found is None else found[0]

    def versions(self) -> set[ProfileVersion]:
        with self._lock:
            return {(*key, uid, generation) for key, (uid, generation) in self._versions.items()}

    def detecting_differs(self, want: tuple[str, str]) -> list[ProfileKey]:
        with self._lock:
            return sorted((k for k, seen in self._detecting.items() if seen != want), key=str)
