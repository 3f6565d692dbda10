"""Aggregated detections out to Kubernetes: AgentDetection objects and profile status.

Writes are coalesced: :meth:`DetectionWriter.flush` runs once per flush interval, writes only
the (profile, pod) entries that changed since the last flush, skips any whose content is what
was last written, and patches each affected profile's status at most once. So the number of
API writes depends on how many pods were active, never on how many events arrived.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException

from agentdetect.api.models import AgentDetection
from agentdetect.cluster.kube import Cluster
from agentdetect.detection.aggregate import PodKey
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import KUBELET, Positions, detection_object, profile_detections
from agentdetect.detection.sources import TRANSPORT_ERRORS, RateLimitedLog, failure_reason
from agentdetect.policy.board import ProfileKey

log = logging.getLogger(__name__)


def _shape(body: dict[str, Any]) -> bytes:
    """What a record says apart from how many, when and how far: its rules, targets and
    actions. A change here is written at the next flush; counts alone wait for the refresh."""
    summary = body["summary"]
    rules = sorted((d["rule"], d["hook"], d["action"]) for d in body.get("detections") or [])
    return orjson.dumps([rules, summary.get("action"), sorted(summary.get("targets", "").split(", "))])


@dataclass
class FlushResult:
    detections_written: int = 0
    statuses_written: int = 0
    pods_gone: int = 0
    #: Records whose counts changed but wait for the count refresh (the etcd write budget).
    deferred: int = 0

    @property
    def writes(self) -> int:
        return self.detections_written + self.statuses_written


#: (namespace, name) -> the pod's uid if known locally (a kopf index of pods), else None.
PodUidLookup = Callable[[str, str], str | None]


class DetectionWriter:
    def __init__(
        self,
        cluster: Cluster,
        pipeline: Pipeline,
        max_status_pods: int = 50,
        pod_uids: PodUidLookup | None = None,
        count_refresh: float = 0.0,
        positions: Positions = KUBELET,
        clock: Callable[[], float] = time.monotonic,
        statuses: bool = True,
    ) -> None:
        self.cluster = cluster
        #: Whether this writer patches profiles' status (stream mode). A node agent does not:
        #: the operator builds status from the AgentDetections of every node.
        self.statuses = statuses
        #: etcd is not a counter store: a record whose rules, targets and actions are what was
        #: last written is rewritten for its counts at most once per window of this many
        #: seconds of ``clock`` (0: at every flush, as the operator following logs does).
        self.count_refresh = count_refresh
        self.positions = positions
        self._clock = clock
        #: Per record: what it says apart from counts, times and positions, and when written.
        self._shape: dict[PodKey, bytes] = {}
        #: Per record, the count-refresh window it was last written in.
        self._written_window: dict[PodKey, int] = {}
        #: Consulted before a GET: the pods are watched already, so their uids are known.
        self.pod_uids = pod_uids
        #: GETs of pods made for an owner reference (what the index did not answer).
        self.pod_gets = 0
        self.pipeline = pipeline
        self.max_status_pods = max_status_pods
        self._written: dict[PodKey, bytes] = {}
        self._status_written: dict[ProfileKey, bytes] = {}
        self._pod_uids: dict[tuple[str, str], str] = {}
        #: Profiles whose status patch is owed (kept until one succeeds).
        self._status_owed: set[ProfileKey] = set()
        self.detection_writes = 0
        self.status_writes = 0
        #: Record writes held back by the count refresh, over the writer's life.
        self.deferred_total = 0
        self._log = RateLimitedLog(log)

    @property
    def total_writes(self) -> int:
        return self.detection_writes + self.status_writes

    def flush(self) -> FlushResult:
        result = FlushResult()
        agg = self.pipeline.aggregator
        with self.pipeline.lock:
            keys = agg.take_dirty()
            host_dirty = agg.take_host_dirty()
            docs = {k: detection_object(k, agg.pods[k], self.positions) for k in keys if k in agg.pods}
        known = self.pipeline.board.keys()
        #: Taken from the dirty set but not yet written, deferred or dropped on purpose: owed
        #: again if this flush ends early (the API server away: the client raises urllib3's
        #: errors, not ApiException), so no count waits for an event that may never come.
        unsettled = set(docs)
        try:
            for key, obj in docs.items():
                self._flush_one(key, obj, known, result)
                unsettled.discard(key)
        finally:
            if unsettled:
                with self.pipeline.lock:
                    for key in unsettled:
                        agg.mark_dirty(key)
        self.deferred_total += result.deferred
        if not self.statuses:
            self.detection_writes += result.detections_written
            return result
        self._status_owed.update(k[0] for k in keys)
        self._status_owed.update(host_dirty)
        self._status_owed &= known
        for profile in sorted(self._status_owed, key=str):
            with self.pipeline.lock:
                pods = [(k, p) for k, p in agg.pods.items() if k[0] == profile]
                summary = profile_detections(pods, self.max_status_pods, agg.host.get(profile)).dump()
            digest = orjson.dumps(summary, option=orjson.OPT_SORT_KEYS)
            if self._status_written.get(profile) == digest:
                self._status_owed.discard(profile)
                continue
            kind, namespace, name = profile
            try:
                self.cluster.patch_status(kind, name, namespace, {"detections": summary})
            except ApiException as exc:
                self._log.warning("status", "could not patch the status of %s %s: %s", kind, name, exc.reason)
                continue  # still owed: the next flush tries again
            self._status_written[profile] = digest
            self._status_owed.discard(profile)
            result.statuses_written += 1
        self.detection_writes += result.detections_written
        self.status_writes += result.statuses_written
        return result

    def flush_logged(self, failures: RateLimitedLog) -> FlushResult | None:
        """:meth:`flush` for a flush loop: the API server away is logged once a minute without
        a traceback, a bug once a minute with one, and neither ends the loop (what was not
        written stays owed). None when the flush failed."""
        try:
            return self.flush()
        except TRANSPORT_ERRORS as exc:
            failures.warning(
                "flush", "writing detections failed (%s); retrying each flush", failure_reason(exc)
            )
        except Exception:
            if failures.allow("flush-bug"):
                log.exception("flushing detections failed")
        return None

    def _flush_one(
        self, key: PodKey, obj: AgentDetection, known: set[ProfileKey], result: FlushResult
    ) -> None:
        agg = self.pipeline.aggregator
        if key[0] not in known:
            # Not on the board: deleted (its state is forgotten with it, so this is a no-op),
            # or off it for a moment (a node agent's profile between renders): owed still.
            with self.pipeline.lock:
                agg.mark_dirty(key)
            return
        body = obj.dump()
        digest = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if self._written.get(key) == digest:
            return
        shape = _shape(body)
        if (
            self.count_refresh > 0
            and self._shape.get(key) == shape
            and self._window() == self._written_window.get(key)
        ):
            # Only counts moved: they wait for the refresh; the record stays owed.
            with self.pipeline.lock:
                agg.mark_dirty(key)
            result.deferred += 1
            return
        try:
            uid = self._pod_uid(key[1], key[2])
        except ApiException as exc:
            self._log.warning("pod", "could not look up pod %s/%s: %s", key[1], key[2], exc.reason)
            with self.pipeline.lock:
                agg.mark_dirty(key)  # try again next flush
            return
        if uid is None:
            with self.pipeline.lock:
                agg.forget_pod(key[1], key[2])
            self._written.pop(key, None)
            result.pods_gone += 1
            return
        if not self.pipeline.board.has(key[0]):
            return  # deleted while this flush ran: do not write its record back
        try:
            self.cluster.apply_detection(
                body, {"apiVersion": "v1", "kind": "Pod", "name": key[2], "uid": uid}
            )
        except ApiException as exc:
            self._log.warning(
                "write",
                "could not write AgentDetection %s/%s: %s",
                key[1],
                body["metadata"]["name"],
                exc.reason,
            )
            with self.pipeline.lock:
                agg.mark_dirty(key)  # try again next flush
            return
        self._written[key] = digest
        self._shape[key] = shape
        self._written_window[key] = self._window()
        result.detections_written += 1

    def _window(self) -> int:
        """Count refreshes happen once per window of ``count_refresh`` seconds of the clock:
        with the wall clock, every record of every node refreshes in the same window, so the
        operator's status rollup sees them together and patches each profile once, however the
        events were spread."""
        return int(self._clock() // self.count_refresh) if self.count_refresh > 0 else 0

    def _pod_uid(self, namespace: str, name: str) -> str | None:
        uid = self._pod_uids.get((namespace, name))
        if uid is None and self.pod_uids is not None:
            uid = self.pod_uids(namespace, name)
        if uid is None:
            self.pod_gets += 1
            uid = self.cluster.pod_uid(namespace, name)
            if uid is None:
                return None
            if len(self._pod_uids) > 100_000:
                self._pod_uids.clear()
            self._pod_uids[(namespace, name)] = uid
        return uid

    def forget_profile(self, profile: ProfileKey) -> None:
        for key in [k for k in list(self._written) if k[0] == profile]:
            self._written.pop(key, None)
            self._shape.pop(key, None)
            self._written_window.pop(key, None)
        self._status_written.pop(profile, None)
        self._status_owed.discard(profile)

    def forget_pod(self, namespace: str, name: str) -> None:
        self._pod_uids.pop((namespace, name), None)
        for key in [k for k in list(self._written) if k[1] == namespace and k[2] == name]:
            del self._written[key]
            self._shape.pop(key, None)
            self._written_window.pop(key, None)
