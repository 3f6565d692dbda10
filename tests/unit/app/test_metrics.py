"""Metrics as Prometheus scrapes them: reconcile counters, and the pipeline's counters read at
scrape time (so the per-event path pays nothing for them)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentdetect.app.metrics import Metrics
from agentdetect.cluster.recorder import EventRecorder
from agentdetect.controller.reconcile import Config
from agentdetect.detection.service import DetectionService
from agentdetect.policy.board import ProfileBoard
from agentdetect.policy.resolve import StaticResolver
from tests.unit.detect_helpers import example, line, policy_of, state_of, static_hosts, ts
from tests.unit.detection.test_detections import FakeCluster


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_reconcile_counts_results_reasons_and_policies() -> None:
    metrics = Metrics()
    with metrics.reconcile("AgentDetectionProfile") as rec:
        rec.ready, rec.reason, rec.applied = True, "Applied", 3
    with metrics.reconcile("AgentDetectionProfile") as rec:
        rec.ready, rec.reason = False, "InvalidSpec"
    with metrics.reconcile("AgentDetectionProfile") as rec:
        rec.ready, rec.reason, rec.skipped = False, "StoodBy", True
    with pytest.raises(RuntimeError), metrics.reconcile("ClusterAgentDetectionProfile"):
        raise RuntimeError("API down")
    got = samples(metrics)
    kind = ("kind", "AgentDetectionProfile")
    assert got[("agentdetect_reconciles_total", (kind, ("reason", "Applied"), ("result", "applied")))] == 1
    assert got[("agentdetect_reconciles_total", (kind, ("reason", "InvalidSpec"), ("result", "failed")))] == 1
    assert got[("agentdetect_reconciles_total", (kind, ("reason", "StoodBy"), ("result", "skipped")))] == 1
    cluster = ("kind", "ClusterAgentDetectionProfile")
    assert got[("agentdetect_reconciles_total", (cluster, ("reason", "Exception"), ("result", "error")))] == 1
    assert got[("agentdetect_policies_applied_total", ())] == 3
    assert got[("agentdetect_reconcile_duration_seconds_count", (kind,))] == 3
    assert got[("agentdetect_reconcile_duration_seconds_count", (cluster,))] == 1


def test_pipeline_counters_are_read_at_scrape_time() -> None:
    llm = example("llm-egress.yaml")
    board = ProfileBoard()
    board.publish(state_of(llm))
    cfg = Config(resolver=StaticResolver(static_hosts()), detect=True)
    service = DetectionService(FakeCluster(), board, cfg, follow_logs=False)
    metrics = Metrics()
    metrics.watch_detection(service)
    policy = policy_of(llm, "tcp_connect")
    for i in range(4):
        service.pipeline.feed(
            line(
                hook="tcp_connect",
                policy=policy,
                namespace="support",
                pod=f"bot-{i % 2}",
                target="104.18.6.192",
                time=ts(i),
            )
        )
    service.pipeline.feed(b'{"process_kprobe": {')  # truncated
    service.pipeline.feed(b"not json")
    service.flush()

    got = samples(metrics)
    assert got[("agentdetect_events_read_total", ())] == 6
    assert got[("agentdetect_malformed_lines_total", (("reason", "truncated"),))] == 1
    assert got[("agentdetect_malformed_lines_total", (("reason", "malformed"),))] == 1
    assert got[("agentdetect_hook_events_total", (("outcome", "matched"),))] == 4
    rule = (
        ("hook", "tcp_connect"),
        ("kind", "AgentDetectionProfile"),
        ("profile", llm.name),
        ("profile_namespace", "support"),
        ("rule", "openai"),
    )
    assert got[("agentdetect_detection_events_total", rule)] == 4
    assert got[("agentdetect_pods_with_detections", ())] == 2
    top = (
        ("kind", "AgentDetectionProfile"),
        ("pod_name", "bot-0"),
        ("pod_namespace", "support"),
        ("profile", llm.name),
        ("profile_namespace", "support"),
    )
    assert got[("agentdetect_top_pod_events", top)] == 2
    assert got[("agentdetect_api_writes_total", (("kind", "AgentDetection"),))] == 2
    assert got[("agentdetect_api_writes_total", (("kind", "status"),))] == 1

    # A deleted pod leaves memory; the counter of what was detected does not go back.
    service.pod_deleted("support", "bot-0")
    got = samples(metrics)
    assert got[("agentdetect_pods_with_detections", ())] == 1
    assert got[("agentdetect_detection_events_total", rule)] == 4


#: Labels every target's series get from a ServiceMonitor scrape (the Prometheus Operator's
#: relabelling), plus job and instance: ours must not reuse them (they would become exported_*).
TARGET_LABELS = {"namespace", "pod", "service", "container", "endpoint", "job", "instance"}


def test_no_label_clashes_with_what_a_scrape_adds() -> None:
    llm = example("llm-egress.yaml")
    board = ProfileBoard()
    board.publish(state_of(llm))
    service = DetectionService(
        FakeCluster(), board, Config(resolver=StaticResolver(static_hosts()), detect=True), follow_logs=False
    )
    metrics = Metrics()
    metrics.watch_detection(service)
    metrics.watch_readiness()
    metrics.watch_policy_filter(lambda: 1, lambda: 64)
    metrics.watch_events(EventRecorder(lambda namespace, event: None, "agentdetect", "rc"))
    metrics.set_ready(("AgentDetectionProfile", "support", llm.name), True)
    service.pipeline.feed(
        line(
            hook="tcp_connect",
            policy=policy_of(llm, "tcp_connect"),
            namespace="support",
            pod="bot-0",
            target="104.18.6.192",
            time=ts(0),
        )
    )
    with metrics.reconcile("AgentDetectionProfile") as rec:
        rec.ready, rec.reason = True, "Applied"
    names = {label for name, labels in samples(metrics) for label, _ in labels}
    assert names and not names & TARGET_LABELS, names & TARGET_LABELS


def test_kubernetes_events_are_counted_by_result_at_scrape_time() -> None:
    """Every result exists from the start (an alert on abandoned Events needs the series at 0)."""
    gate = threading.Event()

    def create(namespace: str, event: dict[str, Any]) -> None:
        assert gate.wait(10)
        if event["reason"] == "Refused":
            raise ApiException(status=403, reason="Forbidden")

    recorder = EventRecorder(create, "agentdetect", "agentdetect.io/operator")
    metrics = Metrics()
    metrics.watch_events(recorder)
    body = {"kind": "AgentDetectionProfile", "metadata": {"name": "p", "namespace": "ns"}}
    assert samples(metrics)[("agentdetect_kubernetes_events_total", (("result", "abandoned"),))] == 0
    for reason in ("Applied", "Refused", "Applied"):
        recorder.record(body, "Normal", reason, "m")
    assert samples(metrics)[("agentdetect_kubernetes_events_queued", ())] == 3
    gate.set()
    assert recorder.flush(10)
    got = samples(metrics)
    assert got[("agentdetect_kubernetes_events_queued", ())] == 0
    assert {
        result: got[("agentdetect_kubernetes_events_total", (("result", result),))]
        for result in ("posted", "refused", "dropped", "abandoned")
    } == {"posted": 2, "refused": 1, "dropped": 0, "abandoned": 0}
    recorder.close()


def test_readiness_is_a_gauge_per_profile_and_errors_are_born_at_zero() -> None:
    """An alert on a profile that stays Ready=False needs a level, not a rate of reconciles (a
    profile without hostnames is reconciled once); an alert on errors needs the series to exist
    at 0 before the first one, or increase() never sees it."""
    metrics = Metrics()
    active = [True]
    metrics.watch_readiness(lambda: active[0])
    got = samples(metrics)
    for kind in ("AgentDetectionProfile", "ClusterAgentDetectionProfile"):
        key = (("kind", kind), ("reason", "Exception"), ("result", "error"))
        assert got[("agentdetect_reconciles_total", key)] == 0

    bad = ("AgentDetectionProfile", "team", "bad")
    metrics.set_ready(bad, False)
    metrics.set_ready(("ClusterAgentDetectionProfile", None, "good"), True)
    got = samples(metrics)

    def ready(kind: str, ns: str, name: str, condition: str) -> float:
        labels = (("condition", condition), ("kind", kind), ("profile", name), ("profile_namespace", ns))
        return got[("agentdetect_profile_ready_status", labels)]

    kind = "AgentDetectionProfile"
    assert (ready(kind, "team", "bad", "False"), ready(kind, "team", "bad", "True")) == (1, 0)
    assert ready("ClusterAgentDetectionProfile", "", "good", "True") == 1
    assert ready("ClusterAgentDetectionProfile", "", "good", "Unknown") == 0

    metrics.forget_profile(bad)
    assert not any(
        n == "agentdetect_profile_ready_status" and ("profile", "bad") in lbl for n, lbl in samples(metrics)
    )
    active[0] = False  # a standby's view is stale: none exported
    assert not any(n == "agentdetect_profile_ready_status" for n, _ in samples(metrics))
