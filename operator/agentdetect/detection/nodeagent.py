"""Detection for one node (``agentdetect node``, the DaemonSet of ``detection.mode: node``).

It reads Tetragon's export file on its node (detection.exportfile), matches against what the
operator rendered (each profile's status and policies, watched: policy.profiles), and writes
the AgentDetections of its node's pods. It never writes profile status: the operator builds
that from every node's AgentDetections (detection.rollup). So the API server sees what
changes (records, at most one count refresh per record per ``count_refresh``), not what
happens, and nothing here grows with the number of nodes.

The records are the state, as in stream mode: at start the agent reads back its node's
AgentDetections (their positions name a file by its first line and an offset in it), and
counts only lines after them, in whichever file (current, renamed, compressed) they now are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentdetect.cluster.informer import Informer
from agentdetect.cluster.kube import PROFILE_PLURALS, Cluster
from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.exportfile import ExportFileFollower, FilePositions
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import LABEL_NODE, record_of
from agentdetect.detection.sources import TRANSPORT_ERRORS, RateLimitedLog, failure_reason
from agentdetect.detection.writer import DetectionWriter, FlushResult
from agentdetect.policy.board import ProfileBoard, ProfileKey
from agentdetect.policy.profiles import current, reconciled_state, selected_namespaces
from agentdetect.policy.render import LABEL_MANAGED_BY, LABEL_PROFILE_NAME, MANAGED_BY

log = logging.getLogger(__name__)

#: Tetragon's Helm chart default (exportDirectory + exportFilename, helm/tetragon/values.yaml).
DEFAULT_EXPORT_FILE = Path("/var/run/cilium/tetragon/tetragon.log")


@dataclass
class NodeSettings:
    node: str
    export_file: Path = DEFAULT_EXPORT_FILE
    flush_interval: float = 10.0
    #: etcd write budget: a record's counts alone are rewritten at most this often (seconds).
    count_refresh: float = 60.0
    max_pods: int = 10_000
    max_rules_per_pod: int = 64
    retry_delay: float = 5.0
    #: Poll interval of the export file once its end is reached.
    poll: float = 0.2


def stream_of(node: str) -> str:
    """The stream a node agent's positions belong to, in a record's ``streams``."""
    return f"node/{node}"


class NodeAgent:
    def __init__(
        self, cluster: Cluster, settings: NodeSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.stream = stream_of(settings.node)
        self.board = ProfileBoard()
        self.pipeline = Pipeline(
            self.board, Aggregator(settings.max_pods, settings.max_rules_per_pod, node=settings.node)
        )
        self.follower = ExportFileFollower(settings.export_file, self._line, poll=settings.poll)
        self.positions = FilePositions(self.follower.segments)
        self.writer = DetectionWriter(
            cluster,
            self.pipeline,
            pod_uids=self._pod_uid,
            count_refresh=settings.count_refresh,
            positions=self.positions,
            clock=clock,
            statuses=False,
        )
        self._lock = threading.Lock()
        self._profiles: dict[ProfileKey, dict[str, Any]] = {}
        self._policy_namespaces: dict[str, tuple[str, ...] | None] = {}
        self._pods: dict[tuple[str, str], str] = {}
        self.informers = [
            Informer(
                "pods",
                cluster.list_call("pods", field_selector=f"spec.nodeName={settings.node}"),
                self._pod_event,
                kind="Pod",
            ),
            *(
                Informer(plural, cluster.list_call(plural), self._profile_event, kind=kind)
                for kind, plural in PROFILE_PLURALS.items()
            ),
            # Cluster-wide policies only: they say which namespaces a cluster profile selects.
            Informer(
                "tracingpolicies",
                cluster.list_call("tracingpolicies", label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"),
                self._policy_event,
                kind="TracingPolicy",
            ),
        ]
        self._stop = threading.Event()
        #: Set once the records are read back and the file is followed.
        self.begun = threading.Event()
        self.last_flush = FlushResult()
        self.restored = 0
        self._failures = RateLimitedLog(log)
        self._threads: list[threading.Thread] = []

    # ---- watched state ---------------------------------------------------------------------

    def _line(self, batch: list[tuple[bytes, int]]) -> None:
        self.pipeline.feed_stream(batch, self.stream)

    def _pod_uid(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def _pod_event(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        uid = meta.get("uid") or ""
        if type_ == "DELETED":
            with self._lock:
                if self._pods.get(key, uid) != uid:
                    return  # an earlier pod of that name: the one there now stays
                self._pods.pop(key, None)
            with self.pipeline.lock:
                self.pipeline.aggregator.forget_pod(*key)
            self.writer.forget_pod(*key)
            return
        with self._lock:
            self._pods[key] = uid

    def _profile_event(self, type_: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: ProfileKey = (str(body.get("kind")), meta.get("namespace"), str(meta.get("name")))
        if type_ == "DELETED":
            with self._lock:
                self._profiles.pop(key, None)
            self.board.remove(key)
            with self.pipeline.lock:
                self.pipeline.aggregator.forget_profile(key)
            self.writer.forget_profile(key)
            return
        with self._lock:
            self._profiles[key] = body
        self._publish(key)

    def _policy_event(self, type_: str, policy: dict[str, Any]) -> None:
        meta = policy.get("metadata") or {}
        name = meta.get("name") or ""
        with self._lock:
            if type_ == "DELETED":
                self._policy_namespaces.pop(name, None)
            else:
                self._policy_namespaces[name] = selected_namespaces(policy)
        owner = (meta.get("labels") or {}).get(LABEL_PROFILE_NAME)
        if owner:
            self._publish(("ClusterAgentDetectionProfile", None, owner))

    def _publish(self, key: ProfileKey) -> None:
        """What the operator last rendered for the profile goes on the board. While a new
        generation is not reconciled yet, the policies in place are the old ones: their rules
        stay until the status describes the new spec."""
        # Under the lock: the profile and the policy informers' threads both publish, and a
        # state built from what one saw must not overwrite the other's newer one.
        with self._lock:
            body = self._profiles.get(key)
            if body is None:
                return
            if not (body.get("status") or {}).get("policies"):
                self.board.remove(key)  # nothing rendered (yet, or any more): no events to match
                return
            if self.board.has(key) and not current(body):
                return
            state = reconciled_state(body, self._policy_namespaces)
            if state is not None:
                self.board.publish(state)

    # ---- running ---------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        for informer in self.informers:
            informer.start()
        self._spawn(self._begin, "agentdetect-node-begin")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _begin(self) -> None:
        """Profiles, policies and pods listed; the records read back; then the file followed."""
        for informer in self.informers:
            while not informer.synced.wait(0.2):
                if self._stop.is_set():
                    return
        while not self._stop.is_set():
            try:
                records = self._records()
                break
            except TRANSPORT_ERRORS as exc:
                # Counting from zero would overwrite the records: wait for them.
                reason = failure_reason(exc)
                self._failures.warning("records", "reading AgentDetections failed (%s); retrying", reason)
                self._stop.wait(self.settings.retry_delay)
        else:
            return
        # Fingerprints of the files on disk, in rotation order, before positions are decoded.
        self.follower.index_settled()
        aggregator = self.pipeline.aggregator
        with self.pipeline.lock:
            for obj in records:
                found = record_of(obj, self.positions)
                if found is None:
                    continue
                key, pod = found
                if self.stream not in pod.streams:
                    # Written in stream mode (kubelet timestamps): nothing here compares with
                    # them, so what it counts is passed over by event time instead.
                    pod.streams.clear()
                    pod.legacy = pod.events > 0
                pod.node = pod.node or self.settings.node
                aggregator.restore(key, pod)
                self.restored += 1
        log.info(
            "node %s: starting from %d AgentDetections; following %s",
            self.settings.node,
            self.restored,
            self.settings.export_file,
        )
        self._spawn(self.follower.run, "agentdetect-node-follow")
        self._spawn(self._flush_loop, "agentdetect-node-flush")
        self.begun.set()

    def _records(self) -> list[dict[str, Any]]:
        """This node's AgentDetections: by their node label, and those written before records
        carried it whose pod is on this node."""
        mine = self.cluster.list_detections(f"{LABEL_NODE}={self.settings.node[:63].rstrip('-._')}")
        unlabelled = self.cluster.list_detections(f"!{LABEL_NODE}")
        with self._lock:
            pods = set(self._pods)
        for obj in unlabelled:
            pod = obj.get("pod") or {}
            if (pod.get("namespace") or "", pod.get("name") or "") in pods:
                mine.append(obj)
        return mine

    def flush(self) -> FlushResult:
        self.last_flush = self.writer.flush_logged(self._failures) or self.last_flush
        return self.last_flush

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.settings.flush_interval):
            self.flush()

    def healthy(self) -> bool:
        """Alive: every thread that should run does (a dead follower reads nothing)."""
        return all(t.is_alive() for t in self._threads if t.name != "agentdetect-node-begin")

    def stop(self, flush: bool = True) -> None:
        """Stop reading; with ``flush``, write what was counted (a clean stop, as on SIGTERM)."""
        self._stop.set()
        self.follower.stop()
        for thread in self._threads:
            thread.join(10)
        if flush and self.begun.is_set():
            # Owed counts are written now, whatever the refresh budget says.
            self.writer.count_refresh = 0
            self.flush()
        for informer in self.informers:
            informer.stop()
