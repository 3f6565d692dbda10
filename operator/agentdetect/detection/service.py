"""Detection inside the operator: Tetragon's logs -> pipeline -> coalesced writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from agentdetect.api.conditions import Reason
from agentdetect.cluster.kube import Cluster, ProfileVersion, profile_version
from agentdetect.detection.aggregate import Aggregator, HostDetections, PodDetections, PodKey
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import host_record_of, record_of
from agentdetect.detection.sources import RateLimitedLog, TetragonLogSource, failure_reason
from agentdetect.detection.writer import DetectionWriter, FlushResult, PodUidLookup
from agentdetect.policy.board import ProfileBoard, ProfileKey

log = logging.getLogger(__name__)


def prune_orphans(cluster: Cluster) -> int:
    """AgentDetections whose profile was deleted while no operator ran."""
    deleted = 0
    for kind, namespace, name in sorted(cluster.detection_profiles(), key=str):
        if cluster.get_profile(kind, name, namespace) is None:
            deleted += cluster.delete_detections(kind, name, namespace)
    if deleted:
        log.info("deleted %d AgentDetections whose profile no longer exists", deleted)
    return deleted


class DetectionSettings(Protocol):
    """What detection reads of the operator's configuration (app's Config has these): a
    protocol, so this flow does not depend on the controller's."""

    @property
    def max_pods(self) -> int: ...
    @property
    def max_rules_per_pod(self) -> int: ...
    @property
    def flush_interval(self) -> float: ...
    @property
    def retry_delay(self) -> float: ...
    @property
    def tetragon_namespace(self) -> str: ...
    @property
    def tetragon_selector(self) -> str: ...
    @property
    def tetragon_container(self) -> str: ...


class DetectingState(NamedTuple):
    """The ``Detecting`` condition every profile carries while detection is on."""

    ok: bool
    reason: str
    message: str


class DetectionService:
    """Follows Tetragon, aggregates, writes. With a peering ``gate``, only while this replica is
    the active one; on becoming standby it stops following and writing.

    The AgentDetection objects are the record. On becoming active (at start, or on taking
    over from another replica) it first waits until every profile that exists has been
    reconciled (``settled``: an event read before its profile is known would be counted as
    unmatched and lost), then starts from the records (counts, first seen, and how far into
    each Tetragon stream they go), and only then follows the logs: a line a record already
    counts is passed over, so counts neither go back nor count anything twice."""

    def __init__(
        self,
        cluster: Cluster,
        board: ProfileBoard,
        cfg: DetectionSettings,
        follow_logs: bool = True,
        gate: Callable[[], bool] | None = None,
        settled: Callable[[], set[ProfileVersion]] | None = None,
        settle_timeout: float = 120.0,
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.follow_logs = follow_logs
        self.gate = gate
        self.settled = settled
        self.settle_timeout = settle_timeout
        self.pipeline = Pipeline(board, Aggregator(cfg.max_pods, cfg.max_rules_per_pod))
        #: Set by the operator's wiring: pod uids from a kopf index instead of a GET each.
        self.pod_uids: PodUidLookup | None = None
        self.writer = DetectionWriter(cluster, self.pipeline)
        self.source: TetragonLogSource | None = None
        self.active = gate is None
        #: Set once this activation has restored the records and started following.
        self.begun = threading.Event()
        #: Which activation a begin thread serves: one that was overtaken (standby, then active
        #: again) must not start a second source. Guarded, with the source, by _source_lock.
        self._activation = 0
        self._source_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="agentdetect-flush", daemon=True)
        self.last_flush = FlushResult()
        self._failures = RateLimitedLog(log)
        #: Called (from the flush thread) when :meth:`detecting` changes: profiles say it.
        self.on_detecting_change: Callable[[], None] | None = None
        self._last_detecting: DetectingState | None = None

    def _new_source(self) -> TetragonLogSource | None:
        if not self.follow_logs:
            return None
        cfg = self.cfg
        return TetragonLogSource(
            self.cluster.api,
            self.pipeline.feed,
            cfg.tetragon_namespace,
            cfg.tetragon_selector,
            cfg.tetragon_container,
        )

    def start(self) -> DetectionService:
        if self.active:
            self._begin_soon()
        self._flusher.start()
        return self

    def _begin_soon(self) -> None:
        with self._source_lock:
            self._activation += 1
            activation = self._activation
            self.begun.clear()
        threading.Thread(
            target=self._begin, args=(activation,), name="agentdetect-begin", daemon=True
        ).start()

    def _current(self, activation: int) -> bool:
        return self.active and activation == self._activation and not self._stop.is_set()

    def _begin(self, activation: int) -> None:
        profiles = self._wait_for_profiles(activation)
        if not self._current(activation):
            return
        try:
            if profiles is None:
                profiles = self.cluster.list_profiles()
            records = [r for r in (record_of(d) for d in self.cluster.list_detections()) if r is not None]
            hosts = [h for h in (host_record_of(p) for p in profiles) if h is not None]
        except Exception as exc:  # without the records, counting from zero would overwrite them
            reason = failure_reason(exc)
            self._failures.warning(
                "records", "reading AgentDetections failed (%s); detection waits and tries again", reason
            )
            if not self._stop.wait(self.cfg.retry_delay) and self._current(activation):
                self._begin_soon()
            return
        with self._source_lock:
            if not self._current(activation):
                return
            self._restore(records, hosts)
            log.info("detection starts from %d AgentDetections", len(records))
            self.source = self._new_source()
            if self.source is not None:
                self.source.start()
            self.begun.set()

    def _wait_for_profiles(self, activation: int) -> list[dict[str, Any]] | None:
        """Until every profile's current version is reconciled; returns the last listing of the
        profiles (their status holds the host-process records), None if none was made."""
        if self.settled is None:
            return None
        deadline = time.monotonic() + self.settle_timeout
        profiles: list[dict[str, Any]] | None = None
        while self._current(activation):
            try:
                profiles = self.cluster.list_profiles()
                # A profile being deleted is not reconciled (its policies go first): not waited for.
                current = {profile_version(p) for p in profiles if not p["metadata"].get("deletionTimestamp")}
                missing = current - self.settled()
            except Exception:  # the API server may be briefly away; keep waiting
                log.warning("listing profiles failed while waiting for them to be reconciled")
                profiles, missing = None, {("?", None, "?", "", 0)}
            if not missing:
                return profiles
            if time.monotonic() > deadline:
                log.warning(
                    "starting detection with %d profile(s) not yet reconciled (e.g. %s): their events "
                    "read meanwhile are counted as unmatched",
                    len(missing),
                    sorted(missing, key=str)[0],
                )
                return profiles
            self._stop.wait(0.2)
        return profiles

    def _restore(
        self, records: list[tuple[PodKey, PodDetections]], hosts: list[tuple[ProfileKey, HostDetections]]
    ) -> None:
        """Load the records into a fresh aggregator and writer."""
        aggregator = Aggregator(self.cfg.max_pods, self.cfg.max_rules_per_pod)
        for key, pod in records:
            aggregator.restore(key, pod)
        for profile, host in hosts:
            aggregator.restore_host(profile, host)
        with self.pipeline.lock:
            self.pipeline.aggregator = aggregator
        self.writer = DetectionWriter(self.cluster, self.pipeline, pod_uids=self.pod_uids)

    def stop(self) -> None:
        self._stop.set()
        with self._source_lock:
            if self.source is not None:
                self.source.stop()
        self._flusher.join(10)
        if self.active and self.begun.is_set():
            self.flush()  # what arrived last is not lost on a clean stop

    def _follow_peering(self) -> None:
        if self.gate is None:
            return
        try:
            want = self.gate()
        except Exception:  # keep the current role whatever the transport did
            log.exception("checking the peering failed")
            return
        if want and not self.active:
            self.active = True
            log.info("detection active: starting from the records, then following Tetragon's export")
            self._begin_soon()
        elif not want and self.active:
            with self._source_lock:
                self.active = False
                self._activation += 1  # a begin thread still waiting gives up
                self.begun.clear()
                if self.source is not None:
                    self.source.stop()
                    self.source = None
            log.info("detection on standby: another replica is active")

    def detecting(self) -> DetectingState | None:
        """Whether Tetragon's events are read, as profiles' ``Detecting`` condition says it.
        None while unknown (a standby, before the first listing of Tetragon's pods)."""
        source = self.source
        if not self.active or source is None or source.found is None:
            return None
        cfg = self.cfg
        if source.found:
            return DetectingState(
                True, Reason.FOLLOWING, f"Tetragon's export is read in {cfg.tetragon_namespace}"
            )
        return DetectingState(
            False,
            Reason.NO_TETRAGON_PODS,
            f"no running pod in {cfg.tetragon_namespace} matches {cfg.tetragon_selector}: Tetragon's events "
            "are not read and nothing is detected (check --tetragon-namespace and --tetragon-selector)",
        )

    def _notice_detecting(self) -> None:
        now = self.detecting()
        if now is not None and now != self._last_detecting:
            self._last_detecting = now
            if self.on_detecting_change is not None:
                self.on_detecting_change()

    def flush(self) -> FlushResult:
        self.last_flush = self.writer.flush_logged(self._failures) or self.last_flush
        return self.last_flush

    def _flush_loop(self) -> None:
        self._follow_peering()
        while not self._stop.wait(self.cfg.flush_interval):
            self._follow_peering()
            if self.active and self.begun.is_set():
                self.flush()
                self._notice_detecting()

    def profile_deleted(self, profile: ProfileKey) -> int:
        """Its detections are forgotten and its AgentDetections deleted: they answer a question
        nobody asks any more (README: Detections)."""
        with self.pipeline.lock:
            self.pipeline.aggregator.forget_profile(profile)
        self.writer.forget_profile(profile)
        kind, namespace, name = profile
        return self.cluster.delete_detections(kind, name, namespace)

    def prune_orphans(self) -> int:
        return prune_orphans(self.cluster)

    def pod_deleted(self, namespace: str, name: str) -> None:
        with self.pipeline.lock:
            self.pipeline.aggregator.forget_pod(namespace, name)
        self.writer.forget_pod(namespace, name)
