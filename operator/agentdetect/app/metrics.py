"""Prometheus metrics.

Reconcile metrics are updated where reconciles happen (a handful per minute). Everything
on the per-event path is read from the pipeline's own counters at scrape time instead, so
a million events cost nothing extra: the hot loop already keeps those counts.

Label names never clash with the labels a scrape adds to every series of a target (the
Prometheus Operator's ``namespace``, ``pod``, ``service``, ``container``, ``endpoint``,
plus ``job`` and ``instance``): with ``honorLabels: false`` Prometheus would rename ours to
``exported_*``. So a profile's namespace is ``profile_namespace`` and a workload pod is
``pod_namespace``/``pod_name``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agentdetect.cluster.recorder import EventRecorder
    from agentdetect.detection.nodeagent import NodeAgent
    from agentdetect.detection.pipeline import Pipeline
    from agentdetect.detection.rollup import DetectionRollup
    from agentdetect.detection.service import DetectionService
    from agentdetect.detection.writer import DetectionWriter

#: Per-pod series are limited to the busiest few: a label per pod would be unbounded.
TOP_PODS = 20
#: ParseStats fields that are reasons a line was skipped.
SKIP_REASONS = ("malformed", "truncated", "unknown", "oversized")


def pipeline_families(pipeline: Pipeline, writer: DetectionWriter, top_pods: bool = True) -> Iterator[Metric]:
    """The event pipeline's counters, as both the stream-mode operator and a node agent export
    them. Labels are bounded: profile, rule and hook; pods only in the top-N gauge, which a node
    agent leaves out (``top_pods``)."""
    with pipeline.lock:
        stats = pipeline.stats
        lines, events, ignored, unmatched = stats.lines, stats.events, stats.ignored, pipeline.unmatched
        skipped = {r: getattr(stats, r) for r in SKIP_REASONS}
        totals = pipeline.aggregator.rule_totals()
        host_totals = {profile: h.events for profile, h in pipeline.aggregator.host.items()}
        pods = len(pipeline.aggregator.pods)
        top = heapq.nlargest(TOP_PODS, pipeline.aggregator.pods.items(), key=lambda kp: kp[1].events)
        busiest_pods = [(key, p.events) for key, p in top] if top_pods else []
        agg = pipeline.aggregator.stats
        over_pod, over_rule, already = (
            agg.dropped_over_pod_cap,
            agg.dropped_over_rule_cap,
            agg.already_counted,
        )

    yield _counter("agentdetect_events_read", "Lines read from Tetragon's export.", lines)
    hooks = CounterMetricFamily(
        "agentdetect_hook_events", "Events of our hooks, by what became of them.", labels=["outcome"]
    )
    hooks.add_metric(["matched"], events - unmatched)
    hooks.add_metric(["unmatched"], unmatched)
    hooks.add_metric(["other"], ignored)
    yield hooks
    malformed = CounterMetricFamily(
        "agentdetect_malformed_lines", "Lines skipped, by reason.", labels=["reason"]
    )
    for reason, n in skipped.items():
        malformed.add_metric([reason], n)
    yield malformed
    yield _counter(
        "agentdetect_lines_already_counted",
        "Lines passed over because a record already counts them (read again after a restart).",
        already,
    )
    detections = CounterMetricFamily(
        "agentdetect_detection_events",
        "Events that matched a profile's rule and were stored (see agentdetect_detections_dropped).",
        labels=["kind", "profile_namespace", "profile", "rule", "hook"],
    )
    for ((kind, namespace, profile), rule, hook), n in sorted(
        totals.items(), key=lambda kv: (kv[0][0][0], kv[0][0][1] or "", kv[0][0][2], kv[0][1], kv[0][2])
    ):
        detections.add_metric([kind, namespace or "", profile, rule, hook], n)
    yield detections
    host = CounterMetricFamily(
        "agentdetect_host_process_events",
        "Events that matched a profile's rule from processes outside any pod (hostProcesses).",
        labels=["kind", "profile_namespace", "profile"],
    )
    for (kind, namespace, profile), n in sorted(host_totals.items(), key=lambda kv: str(kv[0])):
        host.add_metric([kind, namespace or "", profile], n)
    yield host
    yield GaugeMetricFamily(
        "agentdetect_pods_with_detections", "(profile, pod) entries held in memory.", value=pods
    )
    if top_pods:
        busiest = GaugeMetricFamily(
            "agentdetect_top_pod_events",
            f"Events counted for the {TOP_PODS} (profile, pod) entries with the most, while in memory.",
            labels=["pod_namespace", "pod_name", "kind", "profile_namespace", "profile"],
        )
        for ((kind, profile_ns, profile), namespace, pod), n in busiest_pods:
            busiest.add_metric([namespace, pod, kind, profile_ns or "", profile], n)
        yield busiest
    dropped = CounterMetricFamily(
        "agentdetect_detections_dropped", "Events not stored because a cap was reached.", labels=["cap"]
    )
    dropped.add_metric(["pods"], over_pod)
    dropped.add_metric(["rules"], over_rule)
    yield dropped
    writes = CounterMetricFamily("agentdetect_api_writes", "Detection writes to the API.", labels=["kind"])
    writes.add_metric(["AgentDetection"], writer.detection_writes)
    writes.add_metric(["status"], writer.status_writes)
    yield writes


class DetectionCollector(Collector):
    """Pipeline counters, read under the pipeline's lock when Prometheus scrapes."""

    def __init__(self, service: DetectionService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from pipeline_families(self.service.pipeline, self.service.writer)
        source = self.service.source
        # Always exported (0 while not following: standby, or before the records are read), so
        # a query or alert on them has a series from the start.
        yield _counter(
            "agentdetect_stream_reconnects",
            "Tetragon log streams reopened after a drop.",
            source.reconnects if source is not None else 0,
        )
        yield GaugeMetricFamily(
            "agentdetect_streams",
            "Tetragon pods whose log is followed.",
            value=source.followed if source is not None else 0,
        )
        yield GaugeMetricFamily(
            "agentdetect_detection_active",
            "1 on the replica that follows Tetragon and writes detections (once it has read the "
            "records back), 0 on a standby.",
            value=1 if self.service.active and self.service.begun.is_set() else 0,
        )


class NodeAgentCollector(Collector):
    """A node agent's /metrics: the pipeline's counters (no per-pod series), the export file
    and the etcd write budget."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        yield from pipeline_families(agent.pipeline, agent.writer, top_pods=False)
        follower = agent.follower
        yield _counter(
            "agentdetect_export_lines_skipped_long",
            "Lines of the export file longer than the pipeline reads, skipped.",
            follower.skipped_long,
        )
        yield GaugeMetricFamily(
            "agentdetect_export_files_seen",
            "Files of Tetragon's export (current and rotated) this agent has read or is reading.",
            value=follower.segments.count(),
        )
        yield _counter(
            "agentdetect_detection_writes_deferred",
            "Record writes held back by --count-refresh (only counts had moved).",
            agent.writer.deferred_total,
        )
        yield GaugeMetricFamily(
            "agentdetect_detection_active",
            "1 once this node agent has read its records back and follows the export file.",
            value=1 if agent.begun.is_set() else 0,
        )


class RollupCollector(Collector):
    """The operator in node mode: records indexed and status patches."""

    def __init__(self, rollup: DetectionRollup) -> None:
        self.rollup = rollup

    def collect(self) -> Iterator[Metric]:
        rollup = self.rollup
        writes = CounterMetricFamily(
            "agentdetect_api_writes", "Detection writes to the API.", labels=["kind"]
        )
        writes.add_metric(["status"], rollup.status_writes)
        yield writes
        yield _counter(
            "agentdetect_record_events",
            "AgentDetection changes seen (watched) to build profile status from.",
            rollup.record_events,
        )
        yield GaugeMetricFamily(
            "agentdetect_detection_active",
            "1 on the replica that builds profile status from AgentDetections, 0 on a standby.",
            value=1 if rollup.active else 0,
        )


#: A profile's Ready condition, as cert-manager's certmanager_certificate_ready_status.
READY_CONDITIONS = ("True", "False", "Unknown")


class ReadinessCollector(Collector):
    """One gauge per profile and condition value (1 on the current one), from what this
    replica last reconciled. A standby exports none: its view is stale by design."""

    def __init__(self, metrics: Metrics, active: Callable[[], bool] | None) -> None:
        self.metrics = metrics
        self.active = active

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "agentdetect_profile_ready_status",
            "A profile's Ready condition: 1 on the series of its current value (True, False, Unknown).",
            labels=["kind", "profile_namespace", "profile", "condition"],
        )
        if self.active is None or self.active():
            for (kind, namespace, name), ready in sorted(self.metrics.readiness().items(), key=str):
                current = "True" if ready else "False"
                for condition in READY_CONDITIONS:
                    value = 1 if condition == current else 0
                    family.add_metric([kind, namespace or "", name, condition], value)
        yield family


class EventsCollector(Collector):
    """What became of the Kubernetes Events the operator recorded (cluster/recorder.py)."""

    def __init__(self, recorder: EventRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        counts, queued = self.recorder.snapshot()
        family = CounterMetricFamily(
            "agentdetect_kubernetes_events",
            "Kubernetes Events the operator recorded, by result (posted; refused by the API server; "
            "dropped, the queue full; abandoned, every try failed or the operator stopped).",
            labels=["result"],
        )
        for result in ("posted", "refused", "dropped", "abandoned"):
            family.add_metric([result], getattr(counts, result))
        yield family
        yield GaugeMetricFamily(
            "agentdetect_kubernetes_events_queued",
            "Kubernetes Events recorded and not yet posted.",
            value=queued,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


@dataclass
class Metrics:
    """One registry per operator instance (tests run several in one process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _ready: dict[tuple[str, str | None, str], bool] = field(default_factory=dict)
    _ready_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "agentdetect_reconciles",
            "Profile reconciles, by kind and result (applied, failed: a status condition says why, "
            "skipped: nothing to reconcile, the profile deleted or this replica stood by, "
            "error: an exception).",
            ["kind", "result", "reason"],
            registry=self.registry,
        )
        # Born at 0, so the first error is an increase: a counter first seen at 1 is not.
        for kind in ("AgentDetectionProfile", "ClusterAgentDetectionProfile"):
            self.reconciles.labels(kind, "error", "Exception")
        self.reconcile_seconds = Histogram(
            "agentdetect_reconcile_duration_seconds",
            "Time to reconcile one profile.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.policies_applied = Counter(
            "agentdetect_policies_applied",
            "Tetragon policies created or updated by server-side apply.",
            registry=self.registry,
        )
        self.policies_pruned = Counter(
            "agentdetect_policies_pruned",
            "Tetragon policies deleted because their profile no longer renders them.",
            registry=self.registry,
        )

    def set_ready(self, key: tuple[str, str | None, str], ready: bool) -> None:
        with self._ready_lock:
            self._ready[key] = ready

    def forget_profile(self, key: tuple[str, str | None, str]) -> None:
        with self._ready_lock:
            self._ready.pop(key, None)

    def readiness(self) -> dict[tuple[str, str | None, str], bool]:
        with self._ready_lock:
            return dict(self._ready)

    def watch_readiness(self, active: Callable[[], bool] | None = None) -> None:
        self.registry.register(ReadinessCollector(self, active))

    def watch_events(self, recorder: EventRecorder) -> None:
        self.registry.register(EventsCollector(recorder))

    def watch_detection(self, service: DetectionService) -> None:
        self.registry.register(DetectionCollector(service))

    def watch_rollup(self, rollup: DetectionRollup) -> None:
        self.registry.register(RollupCollector(rollup))

    def watch_policy_filter(self, owned: Callable[[], int], budget: Callable[[], int]) -> None:
        """Gauges read when Prometheus scrapes: policies using Tetragon's policy filter, and the
        budget they are held to (each agent holds at most 128, for every tool on the node)."""
        used = Gauge(
            "agentdetect_policy_filter_policies",
            "Tetragon policies owned by agentdetect that take a slot in the agent's policy filter.",
            registry=self.registry,
        )
        used.set_function(lambda: float(owned()))
        limit = Gauge(
            "agentdetect_policy_filter_budget",
            "The most policy-filter policies agentdetect should own (--policy-filter-budget).",
            registry=self.registry,
        )
        limit.set_function(lambda: float(budget()))

    @contextmanager
    def reconcile(self, kind: str) -> Iterator[ReconcileRecord]:
        record = ReconcileRecord()
        start = time.perf_counter()
        try:
            yield record
        except Exception:
            self.reconciles.labels(kind, "error", "Exception").inc()
            raise
        else:
            result = "applied" if record.ready else "skipped" if record.skipped else "failed"
            self.reconciles.labels(kind, result, record.reason).inc()
            self.policies_applied.inc(record.applied)
            self.policies_pruned.inc(record.pruned)
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - start)


@dataclass
class ReconcileRecord:
    ready: bool = False
    reason: str = ""
    #: Nothing was reconciled (no status condition was written): not a failure.
    skipped: bool = False
    applied: int = 0
    pruned: int = 0
