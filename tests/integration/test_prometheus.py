"""A real Prometheus (Debian's, fetched by the test command) scrapes a running operator the way
the Prometheus Operator does: the target carries namespace, pod, service, container and
endpoint labels and ``honor_labels`` is false. Every dashboard query and every alert expression
is evaluated through its HTTP API: each must parse, the per-pod panels must name the workload's
pods (not the operator's, and no ``exported_*`` label), and the readiness alert must select the
profile that is Ready=False."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane, free_port
from agentdetect.local.samples import kprobe_event
from tests.integration.helpers import apply_profile, wait_condition
from tests.integration.test_alerts import rendered_rules
from tests.kwoknode import KwokNode
from tests.operator_process import OperatorProcess
from tests.waiting import eventually

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "agentdetect" / "dashboards" / "agentdetect.json"
AGENTDETECT = Path(sys.executable).parent / "agentdetect"
JOB = "agentdetect-metrics"
#: What a ServiceMonitor target adds to every series (the operator's own pod, not a workload).
TARGET_LABELS = {
    "namespace": "agentdetect-system",
    "pod": "agentdetect-5f7c9d-x2x9k",
    "service": "agentdetect-metrics",
    "container": "operator",
    "endpoint": "http-metrics",
}
WORKLOAD_PODS = ("agent-a", "agent-b")


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "honor_labels": False,
                    "static_configs": [{"targets": [target], "labels": TARGET_LABELS}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary, _ = binaries.ensure_prometheus()
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the reason
            return json.load(exc)

    def query(self, expr: str) -> list[dict[str, Any]]:
        got = self.api("query", query=expr)
        assert got["status"] == "success", f"{expr}: {got}"
        result: list[dict[str, Any]] = got["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dashboard_queries() -> list[tuple[str, str]]:
    """Each panel's queries with Grafana's variables as an all-selecting dashboard sets them."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "15s")
                .replace("$__range", "5m")
                .replace('"$job"', '".+"')
                .replace('"$instance"', '".+"')
            )
            out.append((panel["title"], expr))
    return out


def test_dashboard_and_alerts_through_a_real_prometheus(
    control_plane: ControlPlane,
    api: Any,
    profile_crds: list[str],
    policy_kinds: bool,
    kwok_node: KwokNode,
    tetragon_ns: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    operator = OperatorProcess(
        AGENTDETECT,
        control_plane.kubeconfig,
        tmp_path / "operator.log",
        f"--tetragon-namespace={tetragon_ns}",
        "--flush-interval=0.5",
    )
    with operator:
        apply_profile(control_plane, namespace, "shells", "{processes: {presets: [shells]}}")
        # Enforce without --allow-enforcement: Ready=False, EnforcementNotAllowed, reconciled once.
        apply_profile(
            control_plane,
            namespace,
            "enforcing",
            "{mode: Enforce, processes: {binaries: [{equal: /usr/bin/nc, enforce: true}]}}",
        )
        status = wait_condition(api, "shells", namespace, "Applied")["status"]
        wait_condition(api, "enforcing", namespace, "EnforcementNotAllowed")
        (policy,) = [p["name"] for p in status["policies"]]
        for pod in WORKLOAD_PODS:
            kwok_node.create_pod(namespace, pod, ["app"], {})
        tetragon = kwok_node.create_pod(
            tetragon_ns,
            "tetragon-p",
            ["tetragon", "export-stdout"],
            {"export-stdout": tmp_path / "export.log"},
            labels={"app.kubernetes.io/name": "tetragon"},
        )
        lines = [
            orjson.dumps(
                kprobe_event(
                    hook="execve",
                    policy=policy,
                    namespace=namespace,
                    pod=pod,
                    target="/bin/sh",
                    time=f"2026-11-24T12:00:0{i}.000000000Z",
                )
            )
            for i, pod in enumerate(WORKLOAD_PODS * 2)
        ]
        tetragon.append_log("export-stdout", *lines)

        prometheus = Prometheus(tmp_path, f"127.0.0.1:{operator.metrics_port}")
        try:
            eventually(
                lambda: len(prometheus.query('agentdetect_top_pod_events{job="agentdetect-metrics"}')) == 2,
                timeout=60,
                what=f"two workload pods scraped (prometheus log: {prometheus.log})",
            )
            time.sleep(3)  # a few more scrapes, so rate() has samples

            # Every dashboard query parses and runs.
            answers = {title: prometheus.query(expr) for title, expr in dashboard_queries()}
            top = answers["Top pods (events while tracked)"]
            assert {r["metric"]["pod_name"] for r in top} == set(WORKLOAD_PODS), top
            assert {r["metric"]["pod_namespace"] for r in top} == {namespace}
            # Nothing of ours was renamed by the target's labels.
            everything = prometheus.query('{job="agentdetect-metrics"}')
            renamed = {k for r in everything for k in r["metric"] if k.startswith("exported_")}
            assert not renamed, renamed
            assert answers["Operators up"][0]["value"][1] == "1"
            assert answers["Tetragon pods followed"][0]["value"][1] == "1"
            assert answers["Profiles not Ready"][0]["value"][1] == "1"
            rates = answers["Detection events per second, by profile and rule"]
            assert [r["metric"]["profile"] for r in rates] == ["shells"], rates

            # Every alert expression parses, and the rule evaluator has them all healthy.
            rules = [r for g in rendered_rules()["groups"] for r in g["rules"]]
            fired = {r["alert"]: prometheus.query(r["expr"]) for r in rules}
            not_applied = fired["AgentDetectProfilesNotApplied"]
            assert [r["metric"]["profile"] for r in not_applied] == ["enforcing"], not_applied
            assert not_applied[0]["metric"]["profile_namespace"] == namespace
            for quiet in (
                "AgentDetectOperatorDown",
                "AgentDetectReconcileErrors",
                "AgentDetectNoTetragonStreams",
            ):
                assert fired[quiet] == [], (quiet, fired[quiet])

            def healthy() -> bool:
                groups = prometheus.api("rules")["data"]["groups"]
                evaluated = [r for g in groups for r in g["rules"]]
                return len(evaluated) == len(rules) and all(r["health"] == "ok" for r in evaluated)

            eventually(healthy, timeout=15, what="every rule evaluated by Prometheus, health ok")
        finally:
            prometheus.stop()
        for pod in WORKLOAD_PODS:
            kwok_node.delete_pod(namespace, pod)
        kwok_node.delete_pod(tetragon_ns, "tetragon-p")
