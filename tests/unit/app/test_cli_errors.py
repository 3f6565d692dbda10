"""Bad input to the command line gets a message naming what is wrong and a non-zero exit,
never a traceback (issue: CLI polish). Each case here printed a traceback, or exited 0, before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentdetect.app import cli
from tests.unit.app.test_cli import GOOD, _hosts, _write

AGENTDETECT = [sys.executable, "-m", "agentdetect.app.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """As a user runs it: its own process, so a traceback would show on stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTDETECT_", "KUBE"))}
    return subprocess.run(
        [*AGENTDETECT, *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=60
    )


def refused(proc: subprocess.CompletedProcess[str], *says: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in says:
        assert text in proc.stderr, proc.stderr
    return proc.stderr


def test_run_without_a_kubeconfig(tmp_path: Path) -> None:
    refused(run("run", env={"HOME": str(tmp_path)}), "cannot use kubeconfig ~/.kube/config", "--kubeconfig")


def test_run_with_a_bad_kubeconfig(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\n")
    refused(run("run", f"--kubeconfig={bad}"), f"cannot use kubeconfig {bad}")
    refused(run("run", f"--kubeconfig={tmp_path / 'missing'}"), "cannot use kubeconfig")


def _kubeconfig(tmp_path: Path) -> Path:
    """A well-formed kubeconfig for a server nobody runs: enough to get past loading it."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_run_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(
            run("run", f"--kubeconfig={_kubeconfig(tmp_path)}", "--bind=127.0.0.1", f"--metrics-port={port}"),
            f"--metrics-port {port} on 127.0.0.1",
        )


def test_run_and_render_with_a_templates_directory_that_does_not_exist(tmp_path: Path) -> None:
    refused(
        run("run", f"--kubeconfig={_kubeconfig(tmp_path)}", "--templates=/nonexistent"),
        "--templates /nonexistent: no such directory",
    )
    refused(run("render", "-f", _write(tmp_path, "p.yaml", GOOD), "--templates=/nonexistent"), "--templates")


def test_crds_write_to_an_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(run("crds", f"--write={blocker / 'sub'}"), f"crds --write {blocker / 'sub'}")


def test_control_plane_checks_its_crds_before_starting(tmp_path: Path) -> None:
    began = refused(run("control-plane", f"--crds={tmp_path / 'missing.yaml'}"), "missing.yaml")
    assert "No such file" in began
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    refused(run("control-plane", f"--crds={other}"), "want CustomResourceDefinition documents only")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x00\x01\x02\xff" * 100, "none is a Tetragon JSON event"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n", "none is a Tetragon JSON event"),
        (b"", "is empty"),
    ],
)
def test_replay_of_something_that_is_not_tetragon_events(
    tmp_path: Path, content: bytes, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.json"
    events.write_bytes(content)
    profiles = _write(tmp_path, "p.yaml", GOOD)
    assert cli.main(["replay", str(events), "-f", profiles, "--static-hosts", _hosts(tmp_path)]) == 1
    assert says in capsys.readouterr().err


def test_replay_with_an_empty_profile_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "profiles").mkdir()
    events = tmp_path / "events.json"
    events.write_text('{"process_exec": {}, "node_name": "n", "time": "t"}\n')
    assert cli.main(["replay", str(events), "-f", str(tmp_path / "profiles")]) == 1
    assert "no AgentDetectionProfile or ClusterAgentDetectionProfile" in capsys.readouterr().err


def test_render_of_a_profile_whose_hostnames_all_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_hostnames = {
        **GOOD,
        "spec": {
            "network": {"destinations": [{"name": "gw", "hostnames": ["gw.example.com"], "ports": [443]}]}
        },
    }
    path = _write(tmp_path, "p.yaml", only_hostnames)
    assert cli.main(["render", "-f", path, "--static-hosts", _hosts(tmp_path, {})]) == 1
    assert "nothing rendered" in capsys.readouterr().err


def test_every_run_option_reads_the_environment_and_every_option_has_help() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"agentdetect {name} {action.option_strings or action.dest} has no help"
            if name == "run" and action.option_strings:
                assert "(" in action.help and (
                    "AGENTDETECT_" in action.help or "KUBECONFIG" in action.help
                ), f"run {action.option_strings[0]} names no environment variable: {action.help}"
    env = {"AGENTDETECT_MAX_RULES_PER_POD": "7", "AGENTDETECT_STATIC_HOSTS": "/x.yaml"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        args = cli.build_parser().parse_args(["run"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert (args.max_rules_per_pod, args.static_hosts) == (7, "/x.yaml")
