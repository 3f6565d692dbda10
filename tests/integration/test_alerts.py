"""The chart's alerts, judged by Prometheus' own promtool: the rules as Helm renders them pass
``promtool check rules``, and ``promtool test rules`` shows each alert firing when it should
and not when it should not, including the cases a rate() over a labelled counter misses (a
profile Ready=False that is never reconciled again; a single reconcile error)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentdetect.local import binaries
from tests.integration.test_chart import template

RELEASE, NAMESPACE = "agentdetect", "agentdetect-system"
JOB = 'job="agentdetect-metrics"'
RULE_VALUES = "--set=metrics.prometheusRule.enabled=true"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    _, tool = binaries.ensure_prometheus()
    return subprocess.run([str(tool), *args], cwd=cwd, capture_output=True, text=True)


def rendered_rules(*values: str) -> dict[str, Any]:
    (rule,) = [d for d in template(RELEASE, NAMESPACE, RULE_VALUES, *values) if d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def alert_annotations(rules: dict[str, Any], alert: str, **expanded: str) -> dict[str, str]:
    """The alert's annotations as promtool expects them: templated ones given expanded."""
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    return {**rule["annotations"], **expanded}


def test_every_alert_has_a_runbook_and_a_description() -> None:
    rules = rendered_rules()
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 8
    runbooks = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    for rule in alerts:
        assert rule["annotations"]["description"] and rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower() and f"## {rule['alert']}\n" in runbooks
        assert JOB in rule["expr"], rule["expr"]


def test_the_selector_can_be_set_for_other_ways_of_scraping() -> None:
    selector = 'job="kubernetes-pods",app="x"'
    rules = rendered_rules(f"--set-json=metrics.prometheusRule.selector={json.dumps(selector)}")
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert JOB not in rule["expr"] and 'job="kubernetes-pods",app="x"' in rule["expr"]


def test_promtool_checks_and_tests_every_alert(tmp_path: Path) -> None:
    rules = rendered_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        inner = ",".join([JOB, *(f'{k}="{v}"' for k, v in labels.items())])
        return {"series": f"{name}{{{inner}}}", "values": values}

    bad = {"kind": "AgentDetectionProfile", "profile_namespace": "team", "profile": "bad"}
    error = {"kind": "AgentDetectionProfile", "result": "error", "reason": "Exception"}
    tests: list[dict[str, Any]] = [
        {  # the operator down, then up
            "interval": "1m",
            "input_series": [series("up", "0x15 1x15", instance="a")],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "AgentDetectOperatorDown", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "AgentDetectOperatorDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical"},
                            "exp_annotations": alert_annotations(rules, "AgentDetectOperatorDown"),
                        }
                    ],
                },
                {"eval_time": "28m", "alertname": "AgentDetectOperatorDown", "exp_alerts": []},
            ],
        },
        {  # one error, once: the counter exists at 0 before it (born at zero, as exported)
            "interval": "1m",
            "input_series": [series("agentdetect_reconciles_total", "0x5 1x30", **error)],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "AgentDetectReconcileErrors", "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": "AgentDetectReconcileErrors",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": alert_annotations(
                                rules,
                                "AgentDetectReconcileErrors",
                                description=(
                                    "1 reconcile(s) ended with an exception in the last 15 "
                                    "minutes; the operator's log has the traceback."
                                ),
                            ),
                        }
                    ],
                },
                {"eval_time": "30m", "alertname": "AgentDetectReconcileErrors", "exp_alerts": []},
            ],
        },
        {  # a profile Ready=False and never reconciled again; another Ready
            "interval": "1m",
            "input_series": [
                series("agentdetect_profile_ready_status", "1x30", condition="False", **bad),
                series("agentdetect_profile_ready_status", "0x30", condition="True", **bad),
                series(
                    "agentdetect_profile_ready_status",
                    "0x30",
                    condition="False",
                    kind="ClusterAgentDetectionProfile",
                    profile_namespace="",
                    profile="good",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "AgentDetectProfilesNotApplied", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "AgentDetectProfilesNotApplied",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", **bad},
                            "exp_annotations": alert_annotations(
                                rules,
                                "AgentDetectProfilesNotApplied",
                                summary="Profile team/bad is not Ready.",
                                description=(
                                    "AgentDetectionProfile team/bad has been Ready=False for 15 "
                                    "minutes; its Ready condition says why (kubectl describe)."
                                ),
                            ),
                        }
                    ],
                },
            ],
        },
        {  # the active replica follows nothing; a standby following nothing is fine
            "interval": "1m",
            "input_series": [
                series("agentdetect_detection_active", "1x20", instance="a"),
                series("agentdetect_streams", "0x20", instance="a"),
                series("agentdetect_detection_active", "0x20", instance="b"),
                series("agentdetect_streams", "0x20", instance="b"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "15m",
                    "alertname": "AgentDetectNoTetragonStreams",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": alert_annotations(rules, "AgentDetectNoTetragonStreams"),
                        }
                    ],
                }
            ],
        },
        {  # following Tetragon: no alert
            "interval": "1m",
            "input_series": [
                series("agentdetect_detection_active", "1x20", instance="a"),
                series("agentdetect_streams", "3x20", instance="a"),
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "AgentDetectNoTetragonStreams", "exp_alerts": []}
            ],
        },
        {  # over the policy-filter budget
            "interval": "1m",
            "input_series": [
                series("agentdetect_policy_filter_policies", "70x10"),
                series("agentdetect_policy_filter_budget", "64x10"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "8m",
                    "alertname": "AgentDetectPolicyFilterBudgetExceeded",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": alert_annotations(
                                rules, "AgentDetectPolicyFilterBudgetExceeded"
                            ),
                        }
                    ],
                }
            ],
        },
        {  # two reconnects a minute, and 5% of lines skipped
            "interval": "1m",
            "input_series": [
                series("agentdetect_stream_reconnects_total", "0+2x40"),
                series("agentdetect_malformed_lines_total", "0+5x40", reason="truncated"),
                series("agentdetect_events_read_total", "0+100x40"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": alert,
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": alert_annotations(rules, alert),
                        }
                    ],
                }
                for alert in ("AgentDetectStreamReconnects", "AgentDetectMalformedLines")
            ],
        },
        {  # one Event abandoned; refused ones do not count
            "interval": "1m",
            "input_series": [
                series("agentdetect_kubernetes_events_total", "0x5 1x30", result="abandoned"),
                series("agentdetect_kubernetes_events_total", "0x5 3x30", result="refused"),
                series("agentdetect_kubernetes_events_total", "0x35", result="dropped"),
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "AgentDetectKubernetesEventsLost", "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": "AgentDetectKubernetesEventsLost",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": alert_annotations(
                                rules,
                                "AgentDetectKubernetesEventsLost",
                                description=(
                                    "1 Event(s) on profiles (transitions, PolicyRestored) were dropped "
                                    "or given up in the last 15 minutes; the operator's log names each."
                                ),
                            ),
                        }
                    ],
                },
                {"eval_time": "30m", "alertname": "AgentDetectKubernetesEventsLost", "exp_alerts": []},
            ],
        },
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, width=1000
        )
    )
    tested = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert of the chart has a case above.
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cased = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert alerts == cased


@pytest.mark.parametrize("values", [(), (RULE_VALUES, "--set=metrics.serviceMonitor.honorLabels=true")])
def test_the_service_monitor_takes_honor_labels_and_relabelings(values: tuple[str, ...]) -> None:
    docs = template(
        RELEASE,
        NAMESPACE,
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=metrics.serviceMonitor.scrapeTimeout=5s",
        '--set-json=metrics.serviceMonitor.relabelings=[{"action":"labeldrop","regex":"container"}]',
        *values,
    )
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is ("--set=metrics.serviceMonitor.honorLabels=true" in values)
    assert endpoint["scrapeTimeout"] == "5s"
    assert endpoint["relabelings"] == [{"action": "labeldrop", "regex": "container"}]
