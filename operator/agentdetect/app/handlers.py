"""kopf wiring: which watch events lead to which reconcile. No logic of its own."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, cast

import kopf

from agentdetect.api.conditions import Reason
from agentdetect.api.models import GROUP, VERSION
from agentdetect.app.metrics import Metrics
from agentdetect.cluster.kube import (
    POLICY_PLURALS,
    PROFILE_PLURALS,
    TETRAGON_GROUP,
    TETRAGON_VERSION,
    ObjectKey,
    key_of,
)
from agentdetect.controller.reconcile import Outcome, Reconciler, reconcile_owed, restored_message
from agentdetect.controller.state import owner_of
from agentdetect.detection.rollup import DetectionRollup
from agentdetect.detection.service import DetectionService, prune_orphans
from agentdetect.detection.sources import RateLimitedLog
from agentdetect.policy.board import ProfileKey
from agentdetect.policy.render import (
    ANNOTATION_HASH,
    LABEL_MANAGED_BY,
    LABEL_PROFILE_KIND,
    LABEL_PROFILE_NAME,
    LABEL_PROFILE_NAMESPACE,
    MANAGED_BY,
    hostnames_of,
)

log = logging.getLogger(__name__)


def _first_in(index: Any, namespace: str, name: str) -> str | None:
    """The uid a kopf index holds for the pod, read from the flush thread: a miss (or the index
    changing under the read) falls back to a GET."""
    try:
        store = index.get((namespace, name))
        return next(iter(store), None) if store is not None else None
    except RuntimeError:
        return None


#: The kopf index of the policies each profile owns (:func:`owned_policy`), by this id.
OWNED_POLICIES = "owned_policies"
#: The kopf index of the profiles whose status owes a reconcile (reconcile_owed), by this id.
RECONCILE_OWED = "reconcile_owed"


def owned_policy(kind: str, body: Mapping[str, Any]) -> dict[ProfileKey, dict[str, Any]]:
    """One of our policies, under the profile its labels name, as much of it as the reconciler
    compares (kind, name, labels, content hash, owner, spec): the index it prunes and skips
    unchanged applies by, in place of a LIST per reconcile."""
    meta = body.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = meta.get("annotations") or {}
    owner = (
        str(labels.get(LABEL_PROFILE_KIND)),
        labels.get(LABEL_PROFILE_NAMESPACE),
        str(labels.get(LABEL_PROFILE_NAME)),
    )
    return {
        owner: {
            "kind": kind,
            "metadata": {
                "name": meta.get("name"),
                **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
                "labels": labels,
                "annotations": (
                    {ANNOTATION_HASH: annotations[ANNOTATION_HASH]} if ANNOTATION_HASH in annotations else {}
                ),
                "ownerReferences": list(meta.get("ownerReferences") or []),
            },
            "spec": body.get("spec"),
        }
    }


def index_reader(index: Mapping[ProfileKey, Any]) -> Callable[[ProfileKey], list[dict[str, Any]]]:
    """Reads kopf's index from a reconcile's worker thread while kopf's event loop updates it:
    the copy is made in one C call (no interpreter switch inside it); should a change still land
    mid-copy, it is taken again."""

    def read(key: ProfileKey) -> list[dict[str, Any]]:
        for _ in range(100):
            try:
                store = index.get(key)
                return list(store) if store is not None else []
            except RuntimeError:  # changed size during the copy
                continue
        raise RuntimeError(f"kopf's index of owned policies kept changing under a read of {key}")

    return read


#: A reconcile of one profile by key, from a fresh read: (kind, name, namespace, the policies
#: a LIST showed, the LIST's start, the standby count then) to the profile and the outcome, or
#: None if it is gone.
ReconcileByKey = Callable[
    [str, str, str | None, list[dict[str, Any]] | None, float | None, int | None],
    tuple[dict[str, Any], Outcome] | None,
]


def verify_policies(
    reconciler: Reconciler, reconcile_by_key: ReconcileByKey, namespaces: Sequence[str]
) -> None:
    """The sweep's check: profiles whose policies a LIST shows other than the watch did are
    reconciled from the LIST (Reconciler.unsettled); a policy someone else changed or deleted
    meanwhile (Reconciler.tampered) that this reconcile put back is said with PolicyRestored,
    as the watch path says what it sees. Not for a profile recreated under the same name (its
    old policies went with the old one), nor for what the watch path put back since the LIST
    (decided under the profile's lock: Outcome.restored_keys)."""
    began, epoch = reconciler.desired.now(), reconciler.desired.epoch
    listed = reconciler.cluster.list_ours(namespaces)
    tampered = reconciler.tampered(listed, began, namespaces, epoch)
    for kind, namespace, name in reconciler.unsettled(listed, namespaces):
        if reconciler.desired.epoch != epoch:
            # Stood by since the LIST: another replica may have written since, and a reconcile
            # from it would take what it shows as stored. The next pass lists again. A standby
            # after this check and before the reconcile reads the count under the profile's
            # lock: it does nothing, by the LIST's epoch. A standby after that read lets its
            # applies go out, as on the watch path, but what it stores counts for nothing.
            return
        log.info(
            "%s %s/%s: its policies are not as last applied (a watch event missed); reconciling from a list",
            kind,
            namespace or "-",
            name,
        )
        profile_key = (kind, namespace, name)
        uid = reconciler.reconciled.uid(profile_key)
        mine = [p for p in listed if owner_of(p) == profile_key]
        done = reconcile_by_key(kind, name, namespace, mine, began, epoch)
        found = tampered.get(profile_key, ())
        if done is None or not found or (done[0]["metadata"].get("uid") or "") != uid:
            continue  # gone, nothing tampered with, or a new profile of the same name
        for key, missing in found:
            if key not in done[1].restored_keys:
                continue  # not put back by this reconcile (pruned, failed, or restored already)
            # Missing from a LIST by our label, yet there for the apply: relabelled, a change.
            deleted = missing and key in done[1].recreated_keys
            if deleted and reconciler.emptied(key):
                continue  # the namespace controller emptied it
            reconciler.emit(
                done[0],
                "Warning",
                Reason.POLICY_RESTORED,
                restored_message(key, deleted, seen_by="a periodic list; the watch did not see it"),
            )


def watch_restored(key: ObjectKey, outcome: Outcome) -> bool:
    """Whether the watch path's PolicyRestored is to be posted for the policy its event named:
    its reconcile put it back, and was not the process's first look at the profile's policies
    that said so already (a tamper right after a start or a failover: the index showed it)."""
    return key in outcome.applied_keys and all(key != seen for seen, _ in outcome.restored_unseen)


#: Seconds between the sweep's questions to the peering gate while it waits for its next pass.
GATE_POLL = 5.0


class ResolveSweep:
    """Every interval, first the policies are checked against a LIST of all of them (the one
    place the operator lists them: a change or deletion the watch missed while it was down
    would otherwise wait for the profile's next reconcile), then profiles that name
    hostnames are reconciled again (hostnames move; their policies change only when the
    address set did), and so are those whose status still owes a reconcile (``owed``:
    reconcile_owed), whatever became of the retry kopf kept in another replica's memory.
    Not a kopf timer: kopf puts its finalizer on every object a timer runs for, and a profile
    must never hang on deletion while the operator is down. A standby replica (``active``
    says no) does none of it."""

    def __init__(
        self,
        reconciler: Reconciler,
        reconcile_by_key: Callable[[str, str, str | None], object],
        interval: float,
        verify: Callable[[], object] | None = None,
        active: Callable[[], bool] | None = None,
        owed: Callable[[], Iterable[ProfileKey]] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.reconcile_by_key = reconcile_by_key
        self.interval = interval
        self.verify = verify
        self.active = active
        self.owed = owed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentdetect-re-resolve", daemon=True)
        self._log = RateLimitedLog(log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._wait():
            self.sweep()

    def _wait(self) -> bool:
        """The interval, asking the peering gate every few seconds meanwhile: a replica that
        goes standby between two passes is told so (PeeringGate.on_standby) even when nothing
        else asks. True once stopped."""
        step = GATE_POLL if self.active is not None else self.interval
        ends = time.monotonic() + self.interval
        while (left := ends - time.monotonic()) > 0:
            if self._stop.wait(min(left, step)):
                return True
            if self.active is not None and left > step:
                try:
                    self.active()
                except Exception:  # the gate keeps its answer on errors; nothing to do here
                    log.debug("asking the peering gate failed", exc_info=True)
        return self._stop.is_set()

    def sweep(self) -> None:
        """One pass. A failure ends its part of the pass (the API server is likely away: the
        next pass tries again) and is logged once a minute, not once per profile per pass; a
        failed verify does not keep the hostnames from being resolved again."""
        if self.active is not None and not self.active():
            return
        if self.verify is not None:
            try:
                self.verify()
            except Exception as exc:
                self._log.warning(
                    "verify",
                    "checking the policies against a list failed (%s: %s); the next pass tries again",
                    type(exc).__name__,
                    str(exc)[:200],
                )
        _, states = self.reconciler.board.snapshot()
        keys: list[ProfileKey] = [
            (p.kind, p.namespace, p.name) for p in (s.profile for s in states) if hostnames_of(p.spec)
        ]
        if self.owed is not None:
            keys += sorted(set(self.owed()).difference(keys), key=str)
        for kind, namespace, name in keys:
            if self._stop.is_set():
                return
            try:
                self.reconcile_by_key(kind, name, namespace)
            except Exception as exc:
                self._log.warning(
                    "sweep",
                    "reconciling %s %s/%s failed (%s: %s); the next pass tries again",
                    kind,
                    namespace or "-",
                    name,
                    type(exc).__name__,
                    str(exc)[:200],
                )
                return


def build_registry(
    reconciler: Reconciler,
    detection: DetectionService | None = None,
    metrics: Metrics | None = None,
    diffbase: MemoryDiffBase | None = None,
    rollup: DetectionRollup | None = None,
    progress: MemoryProgress | None = None,
    active: Callable[[], bool] | None = None,
    namespaces: Sequence[str] = (),
) -> kopf.OperatorRegistry:
    """The operator's handlers; ``namespaces`` are the watched ones (none: the whole cluster)."""
    registry = kopf.OperatorRegistry()
    config = reconciler.config
    metrics = metrics or Metrics()

    for policy_kind, policy_plural in POLICY_PLURALS.items():

        @kopf.index(
            TETRAGON_GROUP,
            TETRAGON_VERSION,
            policy_plural,
            registry=registry,
            id=OWNED_POLICIES,
            labels={LABEL_MANAGED_BY: MANAGED_BY},
        )
        async def index_policy(
            body: kopf.Body, _kind: str = policy_kind, **_: Any
        ) -> dict[ProfileKey, dict[str, Any]]:
            """In the event loop, not a worker thread: it runs for every watch event of every
            policy of ours and does no I/O."""
            return owned_policy(_kind, body)

    @kopf.on.startup(registry=registry, id="owned-policies")
    def attach_owned_policies(**kwargs: Any) -> None:
        """The reconciler reads what each profile owns from the index from now on. kopf runs no
        resource handler (and so no reconcile: the sweep and the Detecting refresh reach only
        profiles a handler reconciled) before every watched resource's first listing is
        indexed (kopf's operator_indexed toggle, _core/reactor/processing.py), so no reconcile
        sees it half-filled, after a restart as at first start."""
        reconciler.owned = index_reader(kwargs[OWNED_POLICIES])

    if rollup is not None:

        @kopf.on.startup(registry=registry, id="start-rollup")
        def start_rollup(**_: Any) -> None:
            rollup.start()
            try:
                prune_orphans(reconciler.cluster)
            except Exception:  # best effort: the next start tries again
                log.exception("pruning AgentDetections of deleted profiles failed")

        @kopf.on.cleanup(registry=registry, id="stop-rollup")
        def stop_rollup(**_: Any) -> None:
            rollup.stop()

    if detection is not None:

        @kopf.index("", "v1", "pods", registry=registry, id="pod_uids")
        def pod_uids(namespace: str | None, name: str | None, uid: str | None, **_: Any) -> dict[Any, Any]:
            """Every pod's uid, for the owner reference of its AgentDetections: the pods are
            watched anyway (pod-deleted), so a GET per new (profile, pod) is not needed."""
            return {(namespace, name): uid}

        @kopf.on.startup(registry=registry, id="start-detection")
        def start_detection(**kwargs: Any) -> None:
            index = kwargs.get("pod_uids")
            if index is not None:
                detection.pod_uids = functools.partial(_first_in, index)
                detection.writer.pod_uids = detection.pod_uids
            detection.start()
            try:
                detection.prune_orphans()
            except Exception:  # best effort: the next start tries again
                log.exception("pruning AgentDetections of deleted profiles failed")

        @kopf.on.cleanup(registry=registry, id="stop-detection")
        def stop_detection(**_: Any) -> None:
            detection.stop()

        @kopf.on.event("", "v1", "pods", registry=registry, id="pod-deleted")
        def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            """A deleted pod's detections are dropped from memory; its AgentDetections go by GC."""
            if type == "DELETED":
                detection.pod_deleted(body.metadata.namespace or "", body.metadata.name or "")

    def measured(
        body: Any,
        owned: list[dict[str, Any]] | None = None,
        read_at: float | None = None,
        restored_since: float | None = None,
        listed_epoch: int | None = None,
    ) -> Outcome:
        with metrics.reconcile(body["kind"]) as record:
            outcome = reconciler.reconcile(body, owned, read_at, restored_since, listed_epoch)
            record.ready, record.reason = outcome.ready, outcome.reason
            record.skipped = outcome.reason in (Reason.DELETED, Reason.STOOD_BY)
            record.applied, record.pruned = outcome.applied, outcome.pruned
        if not record.skipped:
            meta = body["metadata"]
            metrics.set_ready((body["kind"], meta.get("namespace"), meta["name"]), outcome.ready)
        return outcome

    def reconcile(body: kopf.Body) -> None:
        try:
            outcome = measured(body)
        except Exception as exc:  # kopf retries; the Event says so where kubectl describe looks
            reconciler.failed(body, f"{type(exc).__name__}: {exc}")
            raise
        if outcome.retry_after is not None:
            raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)

    def reconcile_by_key(
        kind: str,
        name: str,
        namespace: str | None,
        owned: list[dict[str, Any]] | None = None,
        restored_since: float | None = None,
        listed_epoch: int | None = None,
    ) -> tuple[dict[str, Any], Outcome] | None:
        """The profile read afresh and reconciled: it and the outcome, or None if it is gone.
        Gone while the watch was away (kopf lists again after a gap but reports no deletion),
        it is forgotten here as its DELETED event would have: otherwise its policies keep
        counting against the policy-filter budget and its rules keep matching events."""
        uid = reconciler.reconciled.uid((kind, namespace, name))
        read_at = time.monotonic()
        body = reconciler.cluster.get_profile(kind, name, namespace)
        if body is None:
            if uid is not None:
                forget_profile(kind, name, namespace, uid, only_uid=True)
            return None
        return body, measured(body, owned, read_at, restored_since, listed_epoch)

    def verify() -> None:
        verify_policies(reconciler, reconcile_by_key, namespaces)

    owed_index: list[Mapping[ProfileKey, Any]] = []

    def owed() -> list[ProfileKey]:
        """The keys of kopf's index of profiles owing a reconcile, read from the sweep's thread
        (a change landing mid-copy: taken again)."""
        for _ in range(100):
            try:
                return [key for index in owed_index for key in list(index)]
            except RuntimeError:
                continue
        return []

    sweep = ResolveSweep(
        reconciler, reconcile_by_key, config.resolve_interval, verify=verify, active=active, owed=owed
    )

    @kopf.on.startup(registry=registry, id="reconcile-owed")
    def attach_owed(**kwargs: Any) -> None:
        owed_index.append(kwargs[RECONCILE_OWED])

    if detection is not None:
        reconciler.detecting = detection.detecting
        refresh_log = RateLimitedLog(log)

        def refresh_detecting() -> None:
            """Detection started or stopped reading Tetragon: profiles say so (rare: only on a
            change, and only those whose condition differs)."""
            for kind, namespace, name in reconciler.stale_detecting():
                try:
                    reconcile_by_key(kind, name, namespace)
                except Exception as exc:  # the next change, or the next reconcile, writes it
                    refresh_log.warning("detecting", "updating Detecting on %s failed: %s", name, exc)
                    return

        detection.on_detecting_change = lambda: threading.Thread(
            target=refresh_detecting, name="agentdetect-detecting", daemon=True
        ).start()

    @kopf.on.startup(registry=registry, id="start-re-resolve")
    def start_sweep(**_: Any) -> None:
        sweep.start()

    @kopf.on.cleanup(registry=registry, id="stop-re-resolve")
    def stop_sweep(**_: Any) -> None:
        sweep.stop()

    for kind, plural in PROFILE_PLURALS.items():

        @kopf.index(
            GROUP,
            VERSION,
            plural,
            registry=registry,
            id=RECONCILE_OWED,
            when=lambda body, **_: reconcile_owed(body),
        )
        async def index_owed(body: kopf.Body, _kind: str = kind, **_: Any) -> dict[ProfileKey, bool]:
            """In the event loop, no I/O: a profile leaves the index as its status settles
            (kopf drops an object its ``when`` no longer matches)."""
            return {(_kind, body.metadata.namespace, body.metadata.name or ""): True}

        @kopf.on.resume(GROUP, VERSION, plural, registry=registry, id="reconcile")
        @kopf.on.create(GROUP, VERSION, plural, registry=registry, id="reconcile")
        @kopf.on.update(GROUP, VERSION, plural, registry=registry, id="reconcile")
        def profile_changed(body: kopf.Body, **_: Any) -> None:
            reconcile(body)

        @kopf.on.event(GROUP, VERSION, plural, registry=registry, id="profile-deleted")
        async def profile_event(type: str | None, body: kopf.Body, _kind: str = kind, **_: Any) -> None:
            """Every event of every profile (each status write too): all but a deletion end
            here in the event loop, without kopf's hop to a worker thread."""
            if type == "DELETED":
                await asyncio.to_thread(profile_deleted, _kind, body)

    def profile_deleted(kind: str, body: kopf.Body) -> None:
        forget_profile(kind, body.metadata.name or "", body.metadata.namespace, body.metadata.uid)

    def forget_profile(
        kind: str, name: str, namespace: str | None, uid: str | None, only_uid: bool = False
    ) -> None:
        if not reconciler.forget(kind, name, namespace, uid, only_uid=only_uid):
            return  # one of the same name was reconciled since: it is not the one gone
        if diffbase is not None:
            diffbase.forget(uid)
        if progress is not None:
            progress.forget(uid)
        key = (kind, namespace, name)
        metrics.forget_profile(key)
        if detection is not None:
            detection.profile_deleted(key)
        if rollup is not None:
            rollup.forget_profile(key)
            # Their answers are to a question nobody asks any more (README: Detections).
            reconciler.cluster.delete_detections(kind, key[2], key[1])

    for plural in POLICY_PLURALS.values():

        @kopf.on.event(
            TETRAGON_GROUP,
            TETRAGON_VERSION,
            plural,
            id="policy-drift",
            registry=registry,
            labels={LABEL_MANAGED_BY: MANAGED_BY},
        )
        async def policy_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            """A rendered policy edited or deleted by hand is put back. Nearly every event is
            one of our own applies coming back in sync: that is checked here, in the event
            loop (from memory); only a drift goes to a thread."""
            owner = reconciler.drifted(type, body) if type is not None else None
            if owner is not None:
                await asyncio.to_thread(restore, type, body, owner)

    def restore(type: str | None, body: kopf.Body, owner: tuple[str, str, str | None]) -> None:
        key = key_of(dict(body))
        if type == "DELETED" and reconciler.emptied(key):
            return  # the namespace controller is emptying it: nothing to restore there
        log.info(
            "policy %s/%s drifted (%s); restoring",
            body.metadata.namespace or "-",
            body.metadata.name,
            (type or "").lower(),
        )
        done = reconcile_by_key(*owner)
        if done is not None and watch_restored(key, done[1]):
            # Not a transition of the profile's conditions, but news: someone changed what it
            # detects with.
            message = restored_message(key, deleted=type == "DELETED")
            reconciler.emit(done[0], "Warning", Reason.POLICY_RESTORED, message)

    @kopf.on.event("", "v1", "namespaces", registry=registry, id="namespace-selection")
    def namespace_event(type: str | None, body: kopf.Body, status: kopf.Status, **_: Any) -> None:
        """Namespaces that come, go or are relabelled change what cluster profiles select."""
        gone = type == "DELETED" or status.get("phase") == "Terminating"
        name = body.metadata.name or ""
        for profile in reconciler.cluster_profiles_affected_by(name, dict(body.metadata.labels), gone):
            reconcile_by_key("ClusterAgentDetectionProfile", profile, None)

    return registry


#: Handlers that run on every watch event of their kind (every pod in the cluster, every
#: namespace): kopf logs each run at INFO, which is noise; failures are still logged.
WATCH_EVENT_HANDLERS = ("pod-deleted", "profile-deleted", "policy-drift", "namespace-selection")


class QuietWatchEventHandlers(logging.Filter):
    """Drops kopf's "Handler 'pod-deleted' succeeded." lines for :data:`WATCH_EVENT_HANDLERS`."""

    _quiet = frozenset(f"Handler {hid!r} succeeded." for hid in WATCH_EVENT_HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and record.getMessage() in self._quiet)


def quiet_kopf_logs() -> None:
    """Idempotent: installs the filter on kopf's per-object logger once."""
    logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietWatchEventHandlers) for f in logger.filters):
        logger.addFilter(QuietWatchEventHandlers())


class MemoryDiffBase(kopf.DiffBaseStorage):
    """kopf's record of the spec it last handled, kept in memory by object uid instead of in
    an annotation: no JSON copy of the spec in ``kubectl describe`` and no extra PATCH per
    change. After a restart every profile is seen as new and reconciled once, which the
    operator does at start-up anyway (the reconcile is idempotent)."""

    def __init__(self, kinds: Collection[str] = tuple(PROFILE_PLURALS)) -> None:
        """``kinds``: those with change handlers (create, update, resume): the profiles."""
        super().__init__()
        self.kinds = frozenset(kinds)
        self._essences: dict[str, kopf.BodyEssence] = {}
        self._lock = threading.Lock()

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence (spec, labels, some annotations) from a copy of only those: kopf's
        own build deep-copies the whole body first, status and managedFields included, for
        every event of every profile (12% of the operator's interpreter time in the
        benchmark). kopf builds it for every event of every watched object, policies (the
        largest) and namespaces too, where nothing reads it (no change handler, no daemon):
        those get an empty one. With extra fields asked for (no handler here does) kopf's way
        is kept."""
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        kind = body.get("kind")
        if kind is not None and kind not in self.kinds:
            return cast(kopf.BodyEssence, {})
        meta = body.get("metadata") or {}
        light: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        light["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, light)))

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            return self._essences.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        with self._lock:
            self._essences[body.metadata.uid or ""] = essence

    def forget(self, uid: str | None) -> None:
        with self._lock:
            self._essences.pop(uid or "", None)


class MemoryProgress(kopf.AnnotationsProgressStorage):
    """kopf's per-handler progress (started, retries, delays), kept in memory by object uid
    instead of in annotations: kopf's annotations storage writes its ``kopf-managed`` marker on
    every object's first change, a PATCH per new profile. Only the wake-up of a delayed retry
    still writes an annotation (``touch-dummy``: kopf needs a watch event to run the retry),
    and it is removed when the handler is done. After a restart retries start counting
    afresh, as every profile is reconciled again anyway (see :class:`MemoryDiffBase`)."""

    def __init__(self) -> None:
        super().__init__(prefix=GROUP)
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}
        self._lock = threading.Lock()  # kopf's loop reads and writes; a handler thread forgets

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        with self._lock:
            return self._records.get((body.metadata.uid or "", key))

    def store(
        self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch
    ) -> None:
        with self._lock:
            self._records[(body.metadata.uid or "", key)] = record

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        with self._lock:
            self._records.pop((body.metadata.uid or "", key), None)
        self.touch(body=body, patch=patch, value=None)  # a retry's wake-up annotation, if any

    def forget(self, uid: str | None) -> None:
        with self._lock:
            for record_key in [k for k in self._records if k[0] == (uid or "")]:
                del self._records[record_key]


def settings_for(
    max_workers: int = 16,
    peering_lifetime: int = 20,
    diffbase: MemoryDiffBase | None = None,
    progress: MemoryProgress | None = None,
) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's state stays in memory: the retry progress (MemoryProgress) and the last-handled
    # spec (MemoryDiffBase). Neither costs an API call per change.
    settings.persistence.progress_storage = progress or MemoryProgress()
    settings.persistence.diffbase_storage = diffbase or MemoryDiffBase()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Our own Events say what happened, exceptions included (from agentdetect, not kopf).
    settings.posting.enabled = False
    settings.execution.max_workers = max_workers
    settings.peering.lifetime = peering_lifetime
    return settings
