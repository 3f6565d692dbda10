"""Detection inside the operator: Tetragon's logs -> pipeline -> coalesced writes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agentdetect.aggregate import Aggregator
from agentdetect.detect import Pipeline, ProfileBoard
from agentdetect.detections import DetectionWriter, FlushResult
from agentdetect.kube import Cluster
from agentdetect.match import ProfileKey
from agentdetect.reconcile import Config
from agentdetect.sources import TetragonLogSource

log = logging.getLogger(__name__)


class DetectionService:
    """Follows Tetragon, aggregates, writes. With a peering ``gate``, only while this replica is
    the active one: on becoming active it starts afresh (the logs are read from their start,
    so counts are rebuilt, not added to); on becoming standby it stops following and writing."""

    def __init__(
        self,
        cluster: Cluster,
        board: ProfileBoard,
        cfg: Config,
        follow_logs: bool = True,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.follow_logs = follow_logs
        self.gate = gate
        self.pipeline = Pipeline(board, Aggregator(cfg.max_pods, cfg.max_rules_per_pod))
        self.writer = DetectionWriter(cluster, self.pipeline)
        self.source: TetragonLogSource | None = self._new_source() if gate is None else None
        self.active = gate is None
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="agentdetect-flush", daemon=True)
        self.last_flush = FlushResult()

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
        if self.active and self.source is not None:
            self.source.start()
        self._flusher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop()
        self._flusher.join(10)
        if self.active:
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
            with self.pipeline.lock:
                self.pipeline.aggregator = Aggregator(self.cfg.max_pods, self.cfg.max_rules_per_pod)
            self.writer = DetectionWriter(self.cluster, self.pipeline)
            self.source = self._new_source()
            if self.source is not None:
                self.source.start()
            self.active = True
            log.info("detection active: following Tetragon's export")
        elif not want and self.active:
            if self.source is not None:
                self.source.stop()
            self.active = False
            log.info("detection on standby: another replica is active")

    def flush(self) -> FlushResult:
        try:
            self.last_flush = self.writer.flush()
        except Exception:  # the next flush retries; a failed flush must not end the loop
            log.exception("flushing detections failed")
        return self.last_flush

    def _flush_loop(self) -> None:
        self._follow_peering()
        while not self._stop.wait(self.cfg.flush_interval):
            self._follow_peering()
            if self.active:
                self.flush()

    def profile_deleted(self, profile: ProfileKey) -> int:
        """Its detections are forgotten and its AgentDetections deleted: they answer a question
        nobody asks any more (README: Detections)."""
        with self.pipeline.lock:
            self.pipeline.aggregator.forget_profile(profile)
        self.writer.forget_profile(profile)
        kind, namespace, name = profile
        return self.cluster.delete_detections(kind, name, namespace)

    def prune_orphans(self) -> int:
        """AgentDetections whose profile was deleted while no operator ran."""
        deleted = 0
        for kind, namespace, name in sorted(self.cluster.detection_profiles(), key=str):
            if self.cluster.get_profile(kind, name, namespace) is None:
                deleted += self.cluster.delete_detections(kind, name, namespace)
        if deleted:
            log.info("deleted %d AgentDetections whose profile no longer exists", deleted)
        return deleted

    def pod_deleted(self, namespace: str, name: str) -> None:
        with self.pipeline.lock:
            self.pipeline.aggregator.forget_pod(namespace, name)
        self.writer.forget_pod(namespace, name)
