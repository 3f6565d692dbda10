"""Node mode, in the operator: each profile's ``status.detections`` from the AgentDetections
the node agents write. The records are watched (an Informer: a local index by profile), and
each profile whose records changed gets at most one status patch per flush interval. It
follows no logs: its cost grows with the records that change, not with events or nodes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException

from agentdetect.cluster.informer import Informer
from agentdetect.cluster.kube import Cluster
from agentdetect.detection.aggregate import PodDetections
from agentdetect.detection.records import profile_detections, record_of
from agentdetect.detection.sources import TRANSPORT_ERRORS, RateLimitedLog, failure_reason
from agentdetect.policy.board import ProfileKey
from agentdetect.policy.render import LABEL_MANAGED_BY, MANAGED_BY

log = logging.getLogger(__name__)


class DetectionRollup:
    def __init__(
        self,
        cluster: Cluster,
        flush_interval: float = 10.0,
        max_status_pods: int = 50,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.cluster = cluster
        self.flush_interval = flush_interval
        self.max_status_pods = max_status_pods
        self.gate = gate
        self._lock = threading.Lock()
        #: profile -> (pod namespace, pod name) -> the record, as the aggregator holds one.
        self._records: dict[ProfileKey, dict[tuple[str, str], PodDetections]] = {}
        self._dirty: set[ProfileKey] = set()
        self._written: dict[ProfileKey, bytes] = {}
        self.status_writes = 0
        self.record_events = 0
        #: When the last record change came: a flush waits (once) while a node agent's
        #: refresh is still arriving, so it becomes one patch rather than two.
        self._last_event = float("-inf")
        self._waited = False
        self.informer: Informer | None = None
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentdetect-rollup", daemon=True)
        self._failures = RateLimitedLog(log)

    def _new_informer(self) -> Informer:
        return Informer(
            "agentdetections",
            self.cluster.list_call("agentdetections", label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"),
            self.handle,
            kind="AgentDetection",
        )

    def handle(self, type_: str, obj: dict[str, Any]) -> None:
        found = record_of(obj)
        if found is None:
            return
        (profile, namespace, pod), detections = found
        with self._lock:
            self.record_events += 1
            self._last_event = time.monotonic()
            records = self._records.setdefault(profile, {})
            if type_ == "DELETED":
                if records.pop((namespace, pod), None) is None:
                    return
                if not records:
                    del self._records[profile]
            else:
                records[(namespace, pod)] = detections
            self._dirty.add(profile)

    def start(self) -> DetectionRollup:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.informer is not None:
            self.informer.stop()

    def _follow_gate(self) -> None:
        """Only the active replica watches and writes; one that becomes active starts from a
        fresh list, not from what it knew before its standby."""
        want = True
        if self.gate is not None:
            try:
                want = self.gate()
            except Exception:
                log.exception("checking the peering failed")
                return
        if want and not self.active:
            with self._lock:
                self._records.clear()
                self._dirty.clear()
                self._written.clear()
            self.informer = self._new_informer().start()
            self.active = True
        elif not want and self.active:
            self.active = False
            if self.informer is not None:
                self.informer.stop()
                self.informer = None

    def _loop(self) -> None:
        self._follow_gate()
        while not self._stop.wait(self.flush_interval):
            self._follow_gate()
            if self.active and self.informer is not None and self.informer.synced.is_set():
                quiet = min(1.0, self.flush_interval / 4)
                if not self._waited and time.monotonic() - self._last_event < quiet:
                    self._waited = True  # at most one interval late
                    continue
                self._waited = False
                self.flush()

    def forget_profile(self, profile: ProfileKey) -> None:
        with self._lock:
            self._records.pop(profile, None)
            self._dirty.discard(profile)
            self._written.pop(profile, None)

    def flush(self) -> int:
        """Patch the status of each profile whose records changed; the number patched."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            summaries = {
                p: profile_detections(
                    [((p, ns, name), d) for (ns, name), d in self._records.get(p, {}).items()],
                    self.max_status_pods,
                ).dump()
                for p in dirty
            }
        written = 0
        for profile in sorted(summaries, key=str):
            summary = summaries[profile]
            digest = orjson.dumps(summary, option=orjson.OPT_SORT_KEYS)
            if self._written.get(profile) == digest:
                continue
            kind, namespace, name = profile
            try:
                self.cluster.patch_status(kind, name, namespace, {"detections": summary})
            except TRANSPORT_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    continue  # the profile is gone; its records follow it
                reason = failure_reason(exc)
                self._failures.warning(
                    "status", "patching the status of %s %s failed: %s", kind, name, reason
                )
                with self._lock:
                    self._dirty.add(profile)
                continue
            self._written[profile] = digest
            written += 1
        self.status_writes += written
        return written
