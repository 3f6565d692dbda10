"""The dashboard and the alerts query only metrics the operator exports (a renamed metric
would otherwise leave an empty panel or an alert that never fires)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kubernetes import client
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentdetect.app.metrics import Metrics
from agentdetect.cluster.recorder import EventRecorder
from agentdetect.controller.reconcile import Config
from agentdetect.detection.service import DetectionService
from agentdetect.policy.board import ProfileBoard
from agentdetect.policy.resolve import StaticResolver
from tests.unit.detection.test_detections import FakeCluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "agentdetect"
METRIC = re.compile(r"\bagentdetect_[a-z_]+")


def exported() -> set[str]:
    metrics = Metrics()
    cluster = FakeCluster()
    cluster.api = client.ApiClient()  # the log source is built, never started: nothing connects
    board = ProfileBoard()
    service = DetectionService(cluster, board, Config(resolver=StaticResolver({})), follow_logs=True)
    metrics.watch_detection(service)
    metrics.watch_policy_filter(lambda: 0, lambda: 64)
    metrics.watch_readiness()
    metrics.watch_events(EventRecorder(lambda namespace, event: None, "agentdetect", "rc"))
    # From the families, not the samples: a labelled family with no data yet has no samples.
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
            family.type, ("",)
        )
        names.update(family.name + suffix for suffix in suffixes)
    return names


def queried(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "agentdetect.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    names = queried("\n".join(exprs))
    assert names and names <= exported(), names - exported()


def test_alerts_query_exported_metrics() -> None:
    names = queried((CHART / "templates" / "prometheusrule.yaml").read_text())
    assert names and names <= exported(), names - exported()


def test_exported_names_carry_their_type_suffixes() -> None:
    # Counters end in _total, the histogram has _bucket/_count/_sum: what the queries rely on.
    names = exported()
    assert "agentdetect_reconciles_total" in names
    assert "agentdetect_reconcile_duration_seconds_bucket" in names
    assert "agentdetect_detection_events_total" in names and "agentdetect_top_pod_events" in names
