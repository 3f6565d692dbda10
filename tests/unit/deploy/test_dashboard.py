"""The Grafana dashboard against the rules of Grafana's dashboard-linter (lint/rules.go,
NewRuleSet; read from its source, since the Go module proxy refuses to serve the linter here:
403 "This module version is not available"). Each check below names the rule it follows. The
PromQL itself is checked by a real Prometheus in tests/integration/test_prometheus.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[3] / "charts" / "agentdetect" / "dashboards" / "agentdetect.json"
#: A subset of lint/rule_panel_units.go's validUnits: the ones a panel here may use.
VALID_UNITS = {
    "none",
    "short",
    "percent",
    "percentunit",
    "ops",
    "reqps",
    "rps",
    "cps",
    "opm",
    "s",
    "ms",
    "bytes",
}
#: Always exported by every replica from its start (metrics.watch_policy_filter), so the
#: variables have values on a fresh install; agentdetect_reconciles_total has none until a reconcile.
ALWAYS_EXPORTED = "agentdetect_policy_filter_budget"
SELECTOR = re.compile(r"\b((?:agentdetect_[a-z_]+|up))(\{[^}]*\})?")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def variable(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def test_template_datasource_rule() -> None:
    ds = variable("datasource")
    assert (ds["type"], ds["query"], ds["label"]) == ("datasource", "prometheus", "Data source")


@pytest.mark.parametrize("name", ["job", "instance"])
def test_template_job_and_instance_rules(name: str) -> None:
    """checkTemplate (lint/template_utils.go): the templated datasource, a query, labelled in
    title case, multi-select, allValue '.+'; and reloaded on time range change
    (template-on-time-change-reload-rule)."""
    v = variable(name)
    assert v["datasource"]["uid"] in ("$datasource", "${datasource}")
    assert v["type"] == "query" and v["label"] == name.title()
    assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".+"
    assert v["refresh"] == 2
    assert v["query"]["query"].startswith(f"label_values({ALWAYS_EXPORTED}")


def test_panel_datasource_title_description_units_and_targets_rules() -> None:
    for p in dashboard()["panels"]:
        assert p.get("title") and p.get("description"), p.get("title")
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in ("$datasource", "${datasource}"), p["title"]
        assert p.get("targets"), f"{p['title']} has no targets (panel-no-targets-rule)"
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit in VALID_UNITS, f"{p['title']}: unit {unit!r} (panel-units-rule)"


def test_target_job_instance_and_rate_interval_rules() -> None:
    for title, expr in targets():
        selectors = SELECTOR.findall(expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (title, metric, expr)
        for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", (title, expr)


def test_target_counter_agg_rule() -> None:
    """A counter (…_total) is only ever read through rate() or increase()."""
    for title, expr in targets():
        for counter in re.finditer(r"agentdetect_[a-z_]+_total\{[^}]*\}\[[^\]]+\]", expr):
            before = expr[: counter.start()]
            assert before.rstrip().endswith(("rate(", "increase(")), (title, expr)
        bare = re.findall(r"agentdetect_[a-z_]+_total\{[^}]*\}(?!\[)", expr)
        assert not bare, (title, expr)


def test_there_is_a_streams_panel() -> None:
    exprs = [e for _, e in targets()]
    assert any("agentdetect_streams" in e for e in exprs)
    assert any("agentdetect_profile_ready_status" in e for e in exprs)
