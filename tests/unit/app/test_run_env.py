"""`agentdetect run` reads every environment variable the chart sets, and refuses bad ones by
name instead of a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentdetect.app import cli

DEPLOYMENT = Path(__file__).resolve().parents[3] / "charts" / "agentdetect" / "templates" / "deployment.yaml"


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentdetect.app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_every_variable_the_chart_sets_is_read_by_run() -> None:
    names = set(re.findall(r"name: (AGENTDETECT_[A-Z_]+)", DEPLOYMENT.read_text()))
    assert len(names) >= 14
    help_text = _run("run", "--help", env={"PATH": "/usr/bin:/bin"}).stdout
    missing = sorted(n for n in names if n not in help_text)
    assert not missing, f"the chart sets variables `agentdetect run` does not document: {missing}"


def test_variables_become_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "AGENTDETECT_NAMESPACES": "a, b",
        "AGENTDETECT_ALLOW_ENFORCEMENT": "true",
        "AGENTDETECT_DETECT": "false",
        "AGENTDETECT_FLUSH_INTERVAL": "2.5",
        "AGENTDETECT_MAX_PODS": "7",
        "AGENTDETECT_PEERING": "agentdetect",
        "AGENTDETECT_PRIORITY": "9",
        "AGENTDETECT_METRICS_PORT": "0",
        "AGENTDETECT_LOG_FORMAT": "json",
        "AGENTDETECT_LOG_LEVEL": "debug",
        "AGENTDETECT_TETRAGON_NAMESPACE": "tetragon",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = cli.build_parser().parse_args(["run"])
    assert args.namespace == ["a", "b"]
    assert args.allow_enforcement is True and args.detect is False
    assert (args.flush_interval, args.max_pods, args.priority, args.metrics_port) == (2.5, 7, 9, 0)
    assert (args.peering, args.log_format, args.log_level) == ("agentdetect", "json", "DEBUG")
    assert args.tetragon_namespace == "tetragon"
    # Flags still win over the environment.
    assert cli.build_parser().parse_args(["run", "--no-allow-enforcement"]).allow_enforcement is False


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("AGENTDETECT_MAX_PODS", "lots", "AGENTDETECT_MAX_PODS='lots' is not an integer"),
        ("AGENTDETECT_FLUSH_INTERVAL", "soon", "AGENTDETECT_FLUSH_INTERVAL='soon' is not a number"),
        ("AGENTDETECT_LOG_FORMAT", "xml", "--log-format (AGENTDETECT_LOG_FORMAT) must be text or json"),
        ("AGENTDETECT_LOG_LEVEL", "LOUD", "--log-level (AGENTDETECT_LOG_LEVEL) must be"),
        ("AGENTDETECT_FLUSH_INTERVAL", "0", "--flush-interval must be positive"),
    ],
)
def test_bad_variables_are_refused_by_name(name: str, value: str, said: str) -> None:
    proc = _run("run", "--kubeconfig=/nonexistent", env={"PATH": "/usr/bin:/bin", name: value})
    assert proc.returncode != 0
    assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
