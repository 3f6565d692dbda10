"""Reconcile one profile: validate, resolve, render, apply what changed, prune, report.

Every entry point (create, update, resume, the re-resolution timer, a drifted policy, a
namespace that came or went) calls :meth:`Reconciler.reconcile` with the profile's body, so
there is one path to get right. Writes happen only for differences: a policy whose rendered
hash and live content already match is left alone, and the status is patched only when it
changed, which is what makes resumes and no-op reconciles free.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agentdetect.api.conditions import ConditionType, Reason
from agentdetect.api.models import ClusterProfileSpec, Mode, ResolvedDestination
from agentdetect.cluster.kube import Cluster, ObjectKey, ProfileVersion, key_of, owner_reference
from agentdetect.controller.state import (
    AppliedPolicies,
    NamespaceSelections,
    OwnedLookup,
    Reconciled,
    condition_states,
    owner_of,
)
from agentdetect.policy.board import ProfileBoard, ProfileKey, ProfileState
from agentdetect.policy.profiles import parse_profile, previous_resolutions
from agentdetect.policy.render import (
    ANNOTATION_HASH,
    LABEL_PROFILE_KIND,
    LABEL_PROFILE_NAME,
    LABEL_PROFILE_NAMESPACE,
    Profile,
    RenderError,
    Target,
    hostnames_of,
    render,
)
from agentdetect.policy.resolve import Resolution, Resolver, SystemResolver, resolve_all

log = logging.getLogger(__name__)
BUDGET_CONDITION = ConditionType.POLICY_FILTER_BUDGET
#: Whether Tetragon's events are read at all (detection on): a profile is Applied either way,
#: but a misconfigured Tetragon namespace or selector would otherwise be silent.
DETECTING_CONDITION = ConditionType.DETECTING

TETRAGON_INSTALL_HINT = (
    "Tetragon's TracingPolicy CRDs (cilium.io/v1alpha1) are not installed. Install Tetragon, e.g. "
    "`helm repo add cilium https://helm.cilium.io && helm install tetragon cilium/tetragon -n kube-system`; "
    "this profile is applied as soon as they appear"
)


@dataclass
class Config:
    allow_enforcement: bool = False
    template_dir: Path | None = None
    resolver: Resolver = field(default_factory=SystemResolver)
    resolve_interval: float = 300.0
    #: Retry delay while Tetragon is missing or the API server failed.
    retry_delay: float = 10.0
    #: Follow Tetragon's event export and write AgentDetections.
    detect: bool = False
    #: ``stream``: this operator follows every Tetragon pod's log through the API server.
    #: ``node``: node agents (``agentdetect node``) read the export file on each node and
    #: write the AgentDetections; this operator builds profile status from them.
    detection_mode: str = "stream"
    tetragon_namespace: str = "kube-system"
    tetragon_selector: str = "app.kubernetes.io/name=tetragon"
    tetragon_container: str = "export-stdout"
    #: At most one write per AgentDetection and one status patch per profile per interval.
    flush_interval: float = 10.0
    max_pods: int = 10_000
    max_rules_per_pod: int = 64
    #: Policies of ours that may use a slot of Tetragon's policy filter, which holds at most
    #: 128 per agent (POLICY_FILTER_MAX_POLICIES, bpf/process/policy_filter.h) for every tool
    #: on the node; beyond this, profiles say so in their PolicyFilterBudget condition.
    policy_filter_budget: int = 64


@dataclass
class Outcome:
    ready: bool
    reason: str
    message: str
    #: The policies this reconcile applied.
    applied_keys: frozenset[ObjectKey] = frozenset()
    #: Of those, the ones the API server was known to hold as last applied before
    #: ``restored_since`` (Reconciler.reconcile): put back after someone else's write.
    restored_keys: frozenset[ObjectKey] = frozenset()
    pruned: int = 0
    retry_after: float | None = None
    #: Of those, the ones this process's first reconcile of the profile found changed (False)
    #: or deleted (True) by someone else while no watch of this process could see it
    #: (:func:`changed_while_unwatched`): PolicyRestored was posted for each as it was put back.
    restored_unseen: tuple[tuple[ObjectKey, bool], ...] = ()
    #: Of ``restored_keys``, the ones whose apply created them (201): gone before it, where the
    #: rest were there, only not as applied (a LIST by label misses one relabelled).
    recreated_keys: frozenset[ObjectKey] = frozenset()

    @property
    def applied(self) -> int:
        return len(self.applied_keys)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = err["loc"]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        parts.append(f"{path or '(root)'}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def describe_invalid(exc: ValueError) -> str:
    return format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)


def targets_for(profile: Profile, namespaces: list[tuple[str, dict[str, str]]] | None) -> list[Target]:
    """A namespaced profile renders into its own namespace and nowhere else."""
    if profile.kind == "AgentDetectionProfile":
        assert profile.namespace is not None
        return [Target("TracingPolicyNamespaced", profile.namespace)]
    spec = profile.spec
    assert isinstance(spec, ClusterProfileSpec)
    if spec.namespace_selector is None or spec.namespace_selector.selects_all():
        return [Target("TracingPolicy", None)]
    selector = spec.namespace_selector
    selected = tuple(name for name, labels in sorted(namespaces or []) if selector.matches(labels))
    # One cluster-wide policy per hook, narrowed to these namespaces by its pod selector: one
    # policy-filter entry however many namespaces match (render.pod_selector), where a policy
    # per namespace would use one each, of at most 128 per agent.
    return [Target("TracingPolicy", None, selected)] if selected else []


def contains(desired: Any, live: Any) -> bool:
    """Whether ``live`` still holds everything we set: server defaults may add fields, but a
    changed or removed value, or a list of another length, is drift."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(contains, desired, live))
    return bool(desired == live)


def in_sync(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return False
    dmeta, lmeta = desired["metadata"], live.get("metadata", {})
    return (
        lmeta.get("annotations", {}).get(ANNOTATION_HASH) == dmeta["annotations"][ANNOTATION_HASH]
        and contains(dmeta["labels"], lmeta.get("labels", {}))
        and contains(desired["spec"], live.get("spec"))
    )


def changed_while_unwatched(doc: dict[str, Any], live: dict[str, Any] | None, listed: bool) -> bool | None:
    """A policy a new process finds on its first reconcile of the profile, which no watch of
    its own saw change: True if it is gone (``listed``: the profile's status lists it as
    applied, and the apply that put it back created it), False if it carries the content
    hash of ``doc`` (agentdetect wrote this very content last: render.spec_hash) but no
    longer the content (someone else's edit since), None otherwise. A policy whose hash is
    another is one agentdetect rendered otherwise before (a spec changed while no operator
    ran, a new template): an update, not a tamper."""
    if live is None:
        return True if listed else None
    written = (live.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_HASH)
    if written != doc["metadata"]["annotations"][ANNOTATION_HASH]:
        return None
    return None if in_sync(doc, live) else False


def listed_policies(status: Mapping[str, Any]) -> frozenset[ObjectKey]:
    """The policies a profile's status says were applied (its ``policies``)."""
    return frozenset(
        ObjectKey(str(ref.get("kind")), ref.get("namespace"), str(ref.get("name")))
        for ref in status.get("policies") or []
        if isinstance(ref, Mapping)
    )


#: How PolicyRestored says a change was found by a new process's first reconcile.
FOUND_AT_FIRST_RECONCILE = "this process's first reconcile of the profile; no watch of agentdetect saw it"


def restored_message(key: ObjectKey, deleted: bool, seen_by: str = "") -> str:
    """PolicyRestored's message: which policy, what was done to it, and, when not by the watch
    as it happened, how it was found."""
    where = f"{key.namespace}/" if key.namespace else ""
    how = f" (found by {seen_by})" if seen_by else ""
    what = "deleted" if deleted else "changed"
    return f"{key.kind} {where}{key.name} was {what} outside agentdetect; restored{how}"


def resolved_status(profile: Profile, resolved: Mapping[str, Resolution]) -> list[dict[str, Any]]:
    from agentdetect.api import catalog

    cat = catalog.load()
    net = profile.spec.network
    owners: dict[str, str] = {}
    if net:
        for name in net.providers:
            for h in cat.providers[name].hostnames:
                owners.setdefault(h, name)
        for d in net.destinations:
            hosts = d.hostnames or (cat.providers[d.provider].hostnames if d.provider and not d.cidrs else ())
            for h in hosts:
                owners.setdefault(h, d.name)
    return [
        ResolvedDestination(
            name=owners.get(host, host),
            hostname=host,
            addresses=list(r.addresses),
            resolved_at=r.resolved_at,
            error=r.error,
        ).dump()
        for host, r in sorted(resolved.items())
    ]


def set_condition(
    previous: list[dict[str, Any]],
    type_: str,
    generation: int | None,
    ok: bool,
    reason: str,
    message: str,
    now: str,
) -> list[dict[str, Any]]:
    """``previous`` with the condition ``type_`` set, in its place (an unchanged list compares
    equal, so no patch is sent); its transition time moves only when its status does."""
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now
    cond = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
    if old is None:
        return [*previous, cond]
    return [cond if c is old else c for c in previous]


def ready_condition(
    previous: list[dict[str, Any]], generation: int | None, ready: bool, reason: str, message: str, now: str
) -> list[dict[str, Any]]:
    return set_condition(previous, ConditionType.READY, generation, ready, reason, message, now)


def uses_policy_filter(doc: Mapping[str, Any]) -> bool:
    """Whether Tetragon's agent gives this policy a slot in its policy filter: a namespaced
    policy, or one with a pod or container selector (updatePolicyFilter, pkg/sensors/k8s.go,
    v1.7.0; pkg/sensors/handler.go, v1.6.0)."""
    spec = doc.get("spec") or {}
    return bool(
        doc.get("kind") == "TracingPolicyNamespaced"
        or spec.get("podSelector") is not None
        or spec.get("containerSelector") is not None
    )


def budget_condition(owned: int, budget: int) -> tuple[bool, str, str]:
    if owned <= budget:
        # No count here: the message stays the same as other profiles come and go, so an
        # unchanged profile costs no status write.
        return (
            True,
            Reason.WITHIN_BUDGET,
            f"agentdetect's policies are within its policy-filter budget of {budget}",
        )
    return (
        False,
        Reason.BUDGET_EXCEEDED,
        f"agentdetect owns {owned} policies that use Tetragon's policy filter, over its budget of "
        f"{budget}; each Tetragon agent holds at most 128 for all tools and refuses to load more. "
        "Merge profiles, narrow namespaceSelectors into one cluster profile, or raise "
        "--policy-filter-budget if no other tool uses the filter",
    )


#: The end of a ReconcileError Event's message: kopf retries the reconcile.
RETRYING = "; retrying"

#: Ready's reasons on an outcome with ``retry_after`` (Reconciler._reconcile): kopf retries it.
RETRIED_REASONS = frozenset({Reason.TETRAGON_NOT_INSTALLED, Reason.APPLY_FAILED})


def reconcile_owed(body: Mapping[str, Any]) -> bool:
    """Whether the profile's status says a reconcile is still owed: it does not describe the
    current spec (observedGeneration behind), or Ready is False for a reason kopf retries. That
    retry lives in the memory of the replica that failed (MemoryProgress): if it goes, the
    one taking over knows the spec as handled and runs nothing until the spec changes."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"):
        return True
    ready = condition_states(status.get("conditions") or []).get(ConditionType.READY)
    return ready is not None and ready[0] == "False" and ready[1] in RETRIED_REASONS


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        config: Config,
        emit: Callable[[dict[str, Any], str, str, str], None] | None = None,
        board: ProfileBoard | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        #: What each profile rendered (spec, targets, addresses): the event matcher reads it.
        self.board = board or ProfileBoard()
        self.emit = emit or (lambda body, type_, reason, message: None)
        #: One lock per profile: its reconciles never overlap (kopf, the sweep, drift repair).
        self._locks: dict[tuple[str, str | None, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: What was last applied, per policy (the drift cache).
        self.desired = AppliedPolicies()
        #: Cluster profiles with a namespace selector, and the namespaces they render into.
        self.cluster_selections = NamespaceSelections()
        #: The version of each profile last reconciled (detection waits for them) and the uids
        #: of deleted profiles, whose late reconciles must not publish them again.
        self.reconciled = Reconciled()
        #: Detection's current (ok, reason, message), or None while unknown; set when detection
        #: runs in this process. Each reconcile writes it as the Detecting condition.
        self.detecting: Callable[[], tuple[bool, str, str] | None] | None = None
        #: The policies each profile owns now, from the policy watch (kopf's index, set once it
        #: is filled: app/handlers.py). None: a reconcile lists them from the API server.
        self.owned: OwnedLookup | None = None
        #: Per profile, (uid, message) of the ReconcileError Event posted since its last
        #: reconcile that returned: kopf retries a failed one, and each retry failing alike
        #: is not news.
        self._failing: dict[tuple[str, str | None, str], tuple[str, str]] = {}
        self._failing_guard = threading.Lock()
        #: Per profile, the uid of the one whose policies this process has looked at as a
        #: whole (a reconcile went through its applies), and the standby count then
        #: (AppliedPolicies.epoch): until then, nothing this process watched covers what
        #: happened to them (it was not running, or stood by since), and its reconcile asks
        #: the policies themselves (:func:`changed_while_unwatched`).
        self._looked_at: dict[ProfileKey, tuple[str, int]] = {}

    def emptied(self, key: ObjectKey) -> bool:
        """Whether a namespaced policy's namespace is being deleted: the namespace controller,
        not someone, removes what is in it, and nothing is to be restored there."""
        return bool(key.namespace) and not self.cluster.namespace_active(str(key.namespace))

    def standby(self) -> None:
        """This replica went standby: another writes meanwhile, and what it knew of the
        policies (which were stored as applied, which profiles it looked at) no longer holds.
        A reconcile still running records its look under the count before (not current)."""
        self.desired.forget_stored()

    def settled_versions(self) -> set[ProfileVersion]:
        return self.reconciled.versions()

    def policy_filter_policies(self) -> int:
        """How many of the policies this operator owns take a slot in Tetragon's policy filter."""
        return self.desired.count(uses_policy_filter)

    def _lock(self, kind: str, namespace: str | None, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((kind, namespace, name), threading.Lock())

    def forget(
        self, kind: str, name: str, namespace: str | None, uid: str | None = None, only_uid: bool = False
    ) -> bool:
        """The profile is gone; its policies go with it by garbage collection. Under the
        profile's lock: a reconcile in flight (a re-resolution) must not publish it again.
        With ``only_uid``, only if the profile last reconciled under that name is the one with
        ``uid`` (a GET found it gone, and one of the same name may have been created since)."""
        with self._lock(kind, namespace, name):
            if only_uid and self.reconciled.uid((kind, namespace, name)) != uid:
                return False
            self.reconciled.forget((kind, namespace, name), uid)
            if kind == "ClusterAgentDetectionProfile":
                self.cluster_selections.drop(name)
            self.board.remove((kind, namespace, name))
            self.desired.forget_owner(kind, name, namespace)
            self._looked_at.pop((kind, namespace, name), None)
        with self._failing_guard:
            self._failing.pop((kind, namespace, name), None)
        return True

    def failed(self, body: Mapping[str, Any], error: str) -> None:
        """A reconcile raised and kopf will retry it: a Warning ReconcileError Event when the
        failure is news for this profile (the first since it last reconciled, or another
        message than the one posted), not one per retry."""
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace"), meta["name"])
        message = error[: 1024 - len(RETRYING)] + RETRYING
        with self._failing_guard:
            if self._failing.get(key) == (meta.get("uid") or "", message):
                return
            self._failing[key] = (meta.get("uid") or "", message)
        self.emit(dict(body), "Warning", Reason.RECONCILE_ERROR, message)

    # ---- the one entry point ---------------------------------------------------------------

    def reconcile(
        self,
        body: Mapping[str, Any],
        owned: list[dict[str, Any]] | None = None,
        read_at: float | None = None,
        restored_since: float | None = None,
        listed_epoch: int | None = None,
    ) -> Outcome:
        """Events are posted for transitions only: Ready's status or reason changed (its first
        report included), or PolicyFilterBudget turned False; a reconcile that changes neither
        posts none, whatever it applied. ``owned``: the profile's policies as a LIST just
        showed them, in place of the watch's view (see :meth:`unsettled`). ``read_at``: when
        ``body`` was read with a GET (time.monotonic), which shows every write finished before
        it; a body from kopf's watch may lag this process's own last write.
        ``restored_since``: a LIST's start (on the clock of ``desired``); the outcome names
        the policies applied that were known stored before it, decided under the profile's
        lock, so a restore by the watch path since the LIST is not counted again.
        ``listed_epoch``: the standby count when that LIST began (AppliedPolicies.epoch); if
        this replica stood by since, nothing is done (Reason.STOOD_BY)."""
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace"), meta["name"])
        with self._lock(*key):
            if self.reconciled.is_forgotten(meta.get("uid")):
                return Outcome(False, Reason.DELETED, "the profile was deleted")
            if meta.get("deletionTimestamp"):
                # Being deleted: in a foreground deletion (Argo CD's pruning, kubectl
                # --cascade=foreground) the garbage collector deletes its policies first, and
                # applying them again would fight it (and read as their restore).
                return Outcome(False, Reason.DELETED, "the profile is being deleted")
            epoch = self.desired.epoch
            if listed_epoch is not None and listed_epoch != epoch:
                # Stood by since the LIST: another replica may have written after it, and a
                # standby writes nothing. Whichever replica leads lists again.
                return Outcome(False, Reason.STOOD_BY, "stood by since the list to reconcile from")
            now = now_rfc3339()
            status = dict(body.get("status") or {})
            outcome, new_status = self._reconcile(body, status, now, owned, restored_since, epoch)
            new_status["observedGeneration"] = meta.get("generation")
            new_status["conditions"] = ready_condition(
                status.get("conditions") or [],
                meta.get("generation"),
                outcome.ready,
                outcome.reason,
                outcome.message,
                now,
            )
            budget_message = ""
            if outcome.ready or outcome.applied:
                within, reason, budget_message = budget_condition(
                    self.policy_filter_policies(), self.config.policy_filter_budget
                )
                new_status["conditions"] = set_condition(
                    new_status["conditions"],
                    BUDGET_CONDITION,
                    meta.get("generation"),
                    within,
                    reason,
                    budget_message,
                    now,
                )
            detecting = self._write_detecting(body, status, new_status, now)
            uid = meta.get("uid") or ""
            self.reconciled.settle(key, uid, meta.get("generation") or 0, detecting)
            changed = {k: v for k, v in new_status.items() if status.get(k) != v}
            if changed:
                self.cluster.patch_status(body["kind"], meta["name"], meta.get("namespace"), changed)
            # What the profile said before: what this process last wrote, which a body from the
            # watch may not show yet; else what the body says (after a restart, or a GET since
            # that write: another replica may have written after this one, before a failback).
            before = self.reconciled.reported(key, uid, read_at)
            if before is None:
                before = condition_states(status.get("conditions") or [])
            after = condition_states(new_status["conditions"])
            self.reconciled.report(key, uid, after)
            if after.get(ConditionType.READY) != before.get(ConditionType.READY):
                self.emit(
                    dict(body), "Normal" if outcome.ready else "Warning", outcome.reason, outcome.message
                )
            budget = after.get(BUDGET_CONDITION)
            if budget is not None and budget[0] == "False" and budget != before.get(BUDGET_CONDITION):
                self.emit(dict(body), "Warning", budget[1], budget_message)
            with self._failing_guard:
                self._failing.pop(key, None)  # a later failure is news again
            return outcome

    def _write_detecting(
        self, body: Mapping[str, Any], status: Mapping[str, Any], new_status: dict[str, Any], now: str
    ) -> tuple[str, str] | None:
        """Sets the Detecting condition when detection's state is known; returns the
        (status, reason) the profile carries after this reconcile."""
        meta = body["metadata"]
        generation = meta.get("generation")
        current = self.detecting() if self.detecting is not None else None
        seen: tuple[str, str] | None
        if current is not None:
            ok, reason, message = current
            new_status["conditions"] = set_condition(
                new_status["conditions"], DETECTING_CONDITION, generation, ok, reason, message, now
            )
            seen = ("True" if ok else "False", reason)
        else:  # unknown here (standby, starting): the profile keeps what it says
            conditions = status.get("conditions") or []
            old = next((c for c in conditions if c.get("type") == DETECTING_CONDITION), None)
            seen = (str(old.get("status")), str(old.get("reason"))) if old else None
        return seen

    def stale_detecting(self) -> list[tuple[str, str | None, str]]:
        """Profiles whose Detecting condition differs from detection's current state."""
        current = self.detecting() if self.detecting is not None else None
        if current is None:
            return []
        return self.reconciled.detecting_differs(("True" if current[0] else "False", current[1]))

    def _reconcile(
        self,
        body: Mapping[str, Any],
        status: dict[str, Any],
        now: str,
        owned: list[dict[str, Any]] | None,
        restored_since: float | None,
        epoch: int,
    ) -> tuple[Outcome, dict[str, Any]]:
        """``epoch``: the standby count this reconcile reads under (AppliedPolicies.epoch); a
        standby since makes what it stores and looks at count for nothing."""
        try:
            profile = parse_profile(body)
        except ValueError as exc:
            msg = describe_invalid(exc) + "; existing policies were left as they were"
            return Outcome(False, Reason.INVALID_SPEC, msg), {}

        enforcing = profile.spec.enforcing_rules()
        if profile.spec.mode == Mode.ENFORCE and enforcing and not self.config.allow_enforcement:
            msg = (
                f"spec.mode is Enforce and {', '.join(enforcing)} ask(s) for enforcement, but this "
                "operator runs without --allow-enforcement; nothing was applied"
            )
            return Outcome(False, Reason.ENFORCEMENT_NOT_ALLOWED, msg), {}

        if not self.cluster.tetragon_installed():
            return Outcome(
                False,
                Reason.TETRAGON_NOT_INSTALLED,
                TETRAGON_INSTALL_HINT,
                retry_after=self.config.retry_delay,
            ), {}

        resolved = resolve_all(
            hostnames_of(profile.spec), self.config.resolver, previous_resolutions(status), now
        )
        namespaces = self.cluster.namespaces() if profile.kind == "ClusterAgentDetectionProfile" else None
        targets = targets_for(profile, namespaces)
        try:
            docs = render(profile, targets, resolved, self.config.template_dir)
        except RenderError as exc:
            return Outcome(
                False, Reason.RENDER_FAILED, f"{exc}; existing policies were left as they were"
            ), {}

        owner = owner_reference(dict(body))
        profile_key = (profile.kind, profile.namespace, profile.name)
        uid = body["metadata"].get("uid") or ""
        first = self._looked_at.get(profile_key) != (uid, epoch)
        listed = listed_policies(status)
        found: list[tuple[ObjectKey, bool]] = []

        def put_back(key: ObjectKey, doc: dict[str, Any], live: dict[str, Any] | None, created: bool) -> None:
            """A policy not known stored, just applied: PolicyRestored if someone else changed
            or deleted it (:func:`changed_while_unwatched`; gone only if the apply created it,
            since an index still filling after a standby may not show one another replica
            made). Said as soon as its apply returns: a later failure (another apply, the
            status patch) must not lose it, and kopf's retry does not know it was put back."""
            deleted = changed_while_unwatched(doc, live, key in listed and created)
            if deleted is None:
                return
            try:
                emptied = deleted and self.emptied(key)
            except Exception:  # unknown: better a report too many than a tamper unsaid
                emptied = False
            if emptied:
                return
            found.append((key, deleted))
            message = restored_message(key, deleted, seen_by=FOUND_AT_FIRST_RECONCILE)
            self.emit(dict(body), "Warning", Reason.POLICY_RESTORED, message)

        try:
            applied_keys, restored, pruned = self._sync(
                profile,
                docs,
                owner,
                owned,
                restored_since,
                put_back if first else None,
                epoch,
            )
            self._looked_at[profile_key] = (uid, epoch)
        except ApiException as exc:
            reason = Reason.TETRAGON_NOT_INSTALLED if exc.status == 404 else Reason.APPLY_FAILED
            message = TETRAGON_INSTALL_HINT if exc.status == 404 else _api_message(exc)
            outcome = Outcome(
                False, reason, message, retry_after=self.config.retry_delay, restored_unseen=tuple(found)
            )
            return outcome, {"resolved": resolved_status(profile, resolved)}

        if profile.kind == "ClusterAgentDetectionProfile":
            spec = profile.spec
            assert isinstance(spec, ClusterProfileSpec)
            selects_all = spec.namespace_selector is None or spec.namespace_selector.selects_all()
            if selects_all:
                self.cluster_selections.drop(profile.name)
            else:
                self.cluster_selections.select(
                    profile.name, spec, {ns for t in targets for ns in t.namespaces or ()}
                )

        self.board.publish(ProfileState(profile, tuple(targets), dict(resolved)))
        refs = [
            {
                "kind": d["kind"],
                **({"namespace": d["metadata"]["namespace"]} if d["metadata"].get("namespace") else {}),
                "name": d["metadata"]["name"],
                "hook": d["metadata"]["labels"]["agentdetect.io/hook"],
            }
            for d in docs
        ]
        new_status = {
            "policies": refs,
            "policyCount": len(refs),
            "resolved": resolved_status(profile, resolved),
        }

        failed = {h: r for h, r in resolved.items() if r.error and not r.addresses}
        notes = []
        if profile.spec.mode == Mode.MONITOR and enforcing:
            notes.append(f"{len(enforcing)} rule(s) marked enforce are observed only (mode Monitor)")
        if not targets:
            notes.append("no namespace matches namespaceSelector")
        if failed:
            errors = "; ".join(r.error or "" for r in failed.values())
            ready, reason = False, Reason.RESOLUTION_FAILED
            message = (
                f"could not resolve {', '.join(sorted(failed))}: {errors}; {len(docs)} policies applied "
                f"without them, retrying every {self.config.resolve_interval:.0f}s"
            )
        else:
            ready, reason = True, Reason.APPLIED
            message = "; ".join([f"{len(docs)} {'policy' if len(docs) == 1 else 'policies'} applied", *notes])
        outcome = Outcome(
            ready,
            reason,
            message,
            applied_keys,
            frozenset(restored),
            pruned,
            restored_unseen=tuple(found),
            recreated_keys=frozenset(key for key, created in restored.items() if created),
        )
        return outcome, new_status

    def _owned_now(
        self, profile: Profile, listed: list[dict[str, Any]] | None
    ) -> dict[ObjectKey, dict[str, Any]]:
        """The profile's policies in the cluster: as given (listed), else from the policy
        watch's index when there is one (no API call), else listed now. Should the index hold
        two objects of one name (one deleted while the watch was down, one made since), the
        later is the one kept."""
        if listed is not None:
            found = listed
        elif self.owned is not None:
            found = self.owned((profile.kind, profile.namespace, profile.name))
        else:
            found = self.cluster.list_owned(profile.kind, profile.name, profile.namespace)
        return {key_of(obj): obj for obj in found}

    def _sync(
        self,
        profile: Profile,
        docs: list[dict[str, Any]],
        owner: dict[str, Any],
        listed: list[dict[str, Any]] | None = None,
        restored_since: float | None = None,
        put_back: Callable[[ObjectKey, dict[str, Any], dict[str, Any] | None, bool], None] | None = None,
        epoch: int | None = None,
    ) -> tuple[frozenset[ObjectKey], dict[ObjectKey, bool], int]:
        """Applies what is not as ``docs`` say and prunes the rest: what it applied, what of
        that it put back (Outcome.restored_keys) with whether the apply created it, and how
        many it pruned. ``put_back`` (until this process has looked at the profile's policies)
        hears of each policy not known stored as its apply returns: its key, doc, what the
        index showed and whether the apply created it."""
        live = self._owned_now(profile, listed)
        wanted = {key_of(d): d for d in docs}
        # Pruned: what the watch shows owned, and what this process applied for the profile,
        # which the watch may not have shown yet (applied, then dropped by a quick spec change).
        owned = live.keys() | self.desired.owned_keys(profile.kind, profile.name, profile.namespace)
        stale = owned - wanted.keys()
        applied: set[ObjectKey] = set()
        restored: dict[ObjectKey, bool] = {}
        for key, doc in wanted.items():
            stored_at = self.desired.stored_at(key)
            # Recorded first: a policy the server took before the call failed is still pruned
            # when a later spec drops it, and its watch event is checked against it.
            self.desired.record(key, doc)
            if not in_sync(doc, live.get(key)) or not _owner_ok(live.get(key), owner):
                # Not in the index yet is not in sync: an apply of what is there is a no-op.
                created = self.cluster.apply(doc, owner)
                applied.add(key)
                if restored_since is not None and stored_at is not None and stored_at < restored_since:
                    restored[key] = created
                self.desired.stored(key, doc, applied=True, epoch=epoch)
                if put_back is not None and stored_at is None:
                    # Not known stored as last applied (applied or seen by this process since
                    # it last stood by), so no watch or sweep of its own speaks for it.
                    put_back(key, doc, live.get(key), created)
            else:
                self.desired.stored(key, doc, epoch=epoch)  # the watch's index or the LIST shows it as it is
        pruned = 0
        for key in sorted(stale, key=str):
            # Forgotten before it is deleted: its DELETED watch event must not read as drift.
            self.desired.discard(key)
            self.cluster.delete(key)
            pruned += 1
        self.desired.forget_owner(profile.kind, profile.name, profile.namespace, keep=set(wanted))
        if applied or pruned:
            log.info(
                "profile %s/%s: applied %d, pruned %d",
                profile.namespace or "-",
                profile.name,
                len(applied),
                pruned,
            )
        return frozenset(applied), restored, pruned

    # ---- event-driven checks (no API calls unless something is off) ------------------------

    def drifted(
        self, event_type: str, obj: Mapping[str, Any], watched: bool = True
    ) -> tuple[str, str, str | None] | None:
        """The profile (kind, name, namespace) whose policy a watched event shows changed or
        gone, from what was applied, never from the edited object's own labels; else None.
        An object from the watch (``watched``) as this process applied it before its current
        version is its own earlier write coming back late, not drift; the watch's order tells
        when no such late write can follow any more. A LIST is a consistent read: an earlier
        version in it is an apply still in flight or someone's revert, and a reconcile of
        either posts no Event."""
        key = key_of(dict(obj))
        desired = self.desired.get(key)
        if desired is None:
            return None  # not ours (any more), or not reconciled yet: resume will see to it
        if event_type != "DELETED":
            live = dict(obj)
            if in_sync(desired, live):
                if watched:
                    self.desired.caught_up(key, desired)
                return None
            if watched and any(in_sync(doc, live) for doc in self.desired.earlier(key)):
                return None
        labels = desired["metadata"]["labels"]
        return (labels[LABEL_PROFILE_KIND], labels[LABEL_PROFILE_NAME], labels.get(LABEL_PROFILE_NAMESPACE))

    def unsettled(self, listed: list[dict[str, Any]], namespaces: Collection[str] = ()) -> list[ProfileKey]:
        """The profiles whose policies in ``listed`` (a LIST of all of ours, or with
        ``namespaces`` of the namespaced ones in those only) are not what this process applied:
        changed or missing ones, and ones of a profile it reconciled that the profile does not
        render. The watch shows all of that as it happens, unless it was down (an API server
        restart, a standby replica) when it happened: kopf lists again after such a gap but
        reports no deletion, and its index keeps what is gone. A reconcile given ``listed``
        (:meth:`reconcile`) puts them right."""
        out: set[ProfileKey] = set()
        seen: set[ObjectKey] = set()
        known = {(kind, namespace, name) for kind, namespace, name, _, _ in self.reconciled.versions()}
        for obj in listed:
            key = key_of(obj)
            seen.add(key)
            drifted = self.drifted("MODIFIED", obj, watched=False)
            if drifted is not None:
                out.add((drifted[0], drifted[2], drifted[1]))
            elif self.desired.get(key) is None and owner_of(obj) in known:
                out.add(owner_of(obj))
        for key, doc in self.desired.items():
            if key in seen or (namespaces and key.namespace and key.namespace not in namespaces):
                continue  # listed, or in a namespace the LIST did not cover: not known missing
            out.add(owner_of(doc))
        return sorted(out, key=str)

    def tampered(
        self,
        listed: list[dict[str, Any]],
        began: float,
        namespaces: Collection[str] = (),
        epoch: int | None = None,
    ) -> dict[ProfileKey, list[tuple[ObjectKey, bool]]]:
        """Per profile, its policies ``listed`` (a LIST begun at ``began``, on the clock of
        ``desired``) shows changed or gone, each with whether it is gone, among those the API
        server was known to hold as last applied before the LIST began: then no apply of ours
        was in flight, and the difference is someone else's write. A reconcile puts them back
        and the caller posts PolicyRestored, as the watch path does for what it sees; this is
        what the watch did not see (it was down, or kopf listed again after a gap and reports
        no deletion). A policy the LIST shows as last applied is known stored from then on
        (after a standby, nothing is known stored until something shows it): unless a standby
        came after ``epoch``, the standby count when the LIST began (AppliedPolicies.epoch),
        since another replica may have written since the LIST was read."""
        by_key = {key_of(obj): obj for obj in listed}
        out: dict[ProfileKey, list[tuple[ObjectKey, bool]]] = {}
        for key, doc in sorted(self.desired.items(), key=lambda item: str(item[0])):
            if namespaces and key.namespace and key.namespace not in namespaces:
                continue  # not covered by the LIST
            stored_at = self.desired.stored_at(key)
            live = by_key.get(key)
            if live is not None and in_sync(doc, live):
                self.desired.stored(key, doc, epoch=epoch)  # known stored from here on, if it was not
            elif stored_at is not None and stored_at < began:
                out.setdefault(owner_of(doc), []).append((key, live is None))
        return out

    def cluster_profiles_affected_by(
        self, namespace: str, labels: dict[str, str] | None, gone: bool
    ) -> list[str]:
        """Cluster profiles whose namespace selection changes because of this namespace."""
        out = []
        for name, (spec, selected) in self.cluster_selections.items():
            assert spec.namespace_selector is not None
            should = not gone and spec.namespace_selector.matches(labels or {})
            if should != (namespace in selected):
                out.append(name)
        return out


def _owner_ok(live: Mapping[str, Any] | None, owner: Mapping[str, Any]) -> bool:
    refs = (live or {}).get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == owner["uid"] and r.get("controller") for r in refs)


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return f"{exc.status} {exc.reason}"
