"""What the Dockerfile does, done here (no container engine on these machines): build the
wheel, install it into a clean virtual environment without the source tree, run
`agentdetect --help`, and start the operator from it against the control plane the way the
image's entrypoint would, probed as the kubelet and Prometheus would probe it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentdetect.local.controlplane import ControlPlane
from tests.integration.helpers import apply_profile, wait_condition
from tests.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HOSTS = EXAMPLES / "static-hosts.yaml"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # As the Dockerfile's build stage: `pip wheel .` (build isolation, our wheel only).
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("agentdetect-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean virtual environment with the wheel and its dependencies, nothing else: no
    ``[local]`` extra, so nothing only the embedded control plane and the demo need."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        cwd=env_dir,  # not the repository: nothing may be imported from the source tree
    )
    yield env_dir / "bin" / "agentdetect"


def test_wheel_carries_templates_catalog_and_examples(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for hook in ("tcp_connect", "fd_install", "execve"):
        assert any(n.startswith("agentdetect/policy/templates/") and hook in n for n in names), hook
    assert "agentdetect/api/catalog.yaml" in names
    assert "agentdetect/local/examples/llm-egress.yaml" in names
    assert "agentdetect/local/examples/tetragon-events.jsonl" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_help_from_the_installed_wheel(installed: Path) -> None:
    out = subprocess.run([str(installed), "--help"], check=True, capture_output=True, text=True).stdout
    for command in ("run", "render", "validate", "replay", "demo"):
        assert command in out
    run_help = subprocess.run(
        [str(installed), "run", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for env in ("AGENTDETECT_PEERING", "AGENTDETECT_LOG_FORMAT", "AGENTDETECT_METRICS_PORT"):
        assert env in run_help


def test_render_from_the_installed_wheel_uses_bundled_templates(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(installed),
            "render",
            "-f",
            str(EXAMPLES / "llm-egress.yaml"),
            "--static-hosts",
            str(HOSTS),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kind: TracingPolicyNamespaced" in proc.stdout and "call: tcp_connect" in proc.stdout


def test_operator_from_the_wheel_starts_serves_probes_metrics_and_stops_on_sigterm(
    installed: Path,
    control_plane: ControlPlane,
    profile_crds: list[str],
    policy_kinds: bool,
    api: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    op = OperatorProcess(installed, control_plane.kubeconfig, tmp_path / "operator.log", "--log-format=json")
    with op:
        assert op.healthz()[0] == 200
        apply_profile(control_plane, namespace, "shells", "{processes: {presets: [shells]}}")
        wait_condition(api, "shells", namespace, "Applied")
        metrics = op.metrics()
        assert (
            'agentdetect_reconciles_total{kind="AgentDetectionProfile",reason="Applied",result="applied"}'
            in metrics
        )
        assert "agentdetect_policies_applied_total 1.0" in metrics
        assert "agentdetect_events_read_total" in metrics  # detection is on by default
        assert 'agentdetect_reconcile_duration_seconds_count{kind="AgentDetectionProfile"}' in metrics
    assert op.stop() == 0
    # Structured logs: every line a JSON object with a message and a severity.
    records = [json.loads(line) for line in op.output().splitlines() if line.strip()]
    assert records, "the operator logged nothing"
    assert all("message" in r and "severity" in r for r in records)
    assert any("applied 1" in r["message"] for r in records)


def test_the_runtime_install_leaves_out_what_only_local_needs(installed: Path) -> None:
    """`pip install agentdetect` (no [local] extra) does not pull in cryptography for the
    embedded control plane, and starting the CLI imports nothing of agentdetect.local."""
    python = installed.parent / "python"
    requires = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.requires('agentdetect'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed: list[str] = ast.literal_eval(requires)
    runtime = [r for r in listed if "extra ==" not in r]
    assert not any(r.startswith("cryptography") for r in runtime), runtime
    assert any(r.startswith("cryptography") and 'extra == "local"' in r for r in listed), listed
    loaded = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, agentdetect.app.cli, agentdetect.app.runner; "
            "print(sorted(m for m in sys.modules if m.startswith('agentdetect.local')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]", loaded
