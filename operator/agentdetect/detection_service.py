"""Detection inside the operator: Tetragon's logs -> pipeline -> coalesced writes."""

from __future__ import annotations

import logging
import threading

from agentdetect.aggregate import Aggregator
from agentdetect.detect import Pipeline, ProfileBoard
from agentdetect.detections import DetectionWriter, FlushResult
from agentdetect.kube import Cluster
from agentdetect.reconcile import Config
from agentdetect.sources import TetragonLogSource

log = logging.getLogger(__name__)


class DetectionService:
    def __init__(self, cluster: Cluster, board: ProfileBoard, cfg: Config, follow_logs: bool = True) -> None:
        self.cfg = cfg
        self.pipeline = Pipeline(board, Aggregator(cfg.max_pods, cfg.max_rules_per_pod))
        self.writer = DetectionWriter(cluster, self.pipeline)
        self.source = (
            TetragonLogSource(
                cluster.api,
                self.pipeline.feed,
                cfg.tetragon_namespace,
                cfg.tetragon_selector,
                cfg.tetragon_container,
            )
            if follow_logs
            else None
        )
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="agentdetect-flush", daemon=True)
        self.last_flush = FlushResult()

    def start(self) -> DetectionService:
        if self.source is not None:
            self.source.start()
        self._flusher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop()
        self._flusher.join(10)
        self.flush()  # what arrived last is not lost on a clean stop

    def flush(self) -> FlushResult:
        try:
            self.last_flush = self.writer.flush()
        except Exception:  # the next flush retries; a failed flush must not end the loop
            log.exception("flushing detections failed")
        return self.last_flush

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.cfg.flush_interval):
            self.flush()

    def pod_deleted(self, namespace: str, name: str) -> None:
        with self.pipeline.lock:
            self.pipeline.aggregator.forget_pod(namespace, name)
        self.writer.forget_pod(namespace, name)
