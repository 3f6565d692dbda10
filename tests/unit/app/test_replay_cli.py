"""`agentdetect replay`: saved Tetragon events through the pipeline, offline."""

from __future__ import annotations

import gc
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from agentdetect.api.models import AgentDetection
from agentdetect.app import cli
from agentdetect.detection.records import detection_name
from tests.unit.detect_helpers import EXAMPLES, STATIC_HOSTS, example, line, policy_of, ts

LLM_EGRESS = str(EXAMPLES / "llm-egress.yaml")
HOSTS = str(STATIC_HOSTS)
POD1 = "support-bot-6f7c9-abcde"
POD2 = "support-bot-6f7c9-fghij"
HEADER = ["NAMESPACE", "POD", "PROFILE", "RULES", "TARGETS", "EVENTS", "LAST SEEN", "ACTION"]


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    """`replay` tunes the collector for a long run (gc.freeze, higher thresholds): undo it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _llm_lines() -> list[bytes]:
    profile = example("llm-egress.yaml")
    net = policy_of(profile, "tcp_connect")

    def conn(pod: str, target: str, port: int, second: int, killed: bool = False) -> bytes:
        return line(
            hook="tcp_connect",
            policy=net,
            namespace="support",
            pod=pod,
            workload="support-bot",
            target=target,
            port=port,
            time=ts(second),
            killed=killed,
        )

    return [
        conn(POD1, "104.18.6.192", 443, 1),
        conn(POD1, "104.18.7.192", 443, 5),
        conn(POD1, "104.18.6.192", 443, 3),
        conn(POD1, "160.79.104.10", 443, 2),
        conn(POD1, "10.42.7.7", 8000, 4),
        conn(POD1, "10.42.8.8", 8000, 6),
        conn(POD2, "10.8.0.10", 443, 7),
        conn(POD2, "20.119.28.1", 443, 8, killed=True),
        # hook events that match no rule / no profile
        conn(POD1, "1.1.1.1", 443, 9),
        line(
            hook="execve",
            policy="somebody-elses-exec-0badf00d",
            namespace="support",
            pod=POD1,
            target="/bin/sh",
        ),
    ]


def _junk_lines() -> list[bytes]:
    real = line(hook="tcp_connect", policy="x", namespace="support", pod=POD1, target="104.18.6.192")
    exec_event = orjson.dumps({"process_exec": {"process": {"binary": "/bin/sh"}}, "time": ts(0)})
    host = orjson.loads(line(hook="execve", policy="x", namespace="support", pod=POD1, target="/bin/sh"))
    del host["process_kprobe"]["process"]["pod"]
    return [
        b"not json",
        b"",
        b"[1, 2]",
        real[: len(real) // 2],
        exec_event,
        orjson.dumps(host),
        orjson.dumps({"mystery_event": {}, "time": ts(0)}),
    ]


def _events_file(tmp_path: Path, lines: list[bytes], name: str = "events.json") -> str:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _table(out: str) -> list[list[str]]:
    return [re.split(r" {3,}", row) for row in out.splitlines()]


def test_replay_prints_the_detections_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events_file(tmp_path, _llm_lines() + _junk_lines())
    assert cli.main(["replay", events, "-f", LLM_EGRESS, "--static-hosts", HOSTS]) == 0
    out, err = capsys.readouterr()
    rows = _table(out)
    assert rows[0] == HEADER
    assert rows[1:] == [
        ["support", POD1, "llm-egress", "3", "openai, in-cluster-vllm, anthropic", "6", ts(6), "Observed"],
        ["support", POD2, "llm-egress", "2", "azure-openai-prod, llm-gateway", "2", ts(8), "Killed"],
    ]
    assert err.strip() == (
        "17 lines: 11 hook events, 3 matched no profile, 1 other events, 3 malformed, "
        "1 truncated, 1 unknown, 0 oversized"
    )


def test_replay_columns_line_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events_file(tmp_path, _llm_lines())
    assert cli.main(["replay", events, "-f", LLM_EGRESS, "--static-hosts", HOSTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for column in HEADER[1:]:
        start = lines[0].index(column)
        assert all(row[start - 3 : start] == "   " for row in lines[1:]), column


def test_replay_json_prints_agent_detections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events_file(tmp_path, _llm_lines() + _junk_lines())
    assert cli.main(["replay", events, "-f", LLM_EGRESS, "--static-hosts", HOSTS, "-o", "json"]) == 0
    out, err = capsys.readouterr()
    docs: list[dict[str, Any]] = orjson.loads(out)
    assert [d["pod"]["name"] for d in docs] == [POD1, POD2]
    profile_key = ("AgentDetectionProfile", "support", "llm-egress")
    for doc in docs:
        obj = AgentDetection.model_validate(doc)
        assert obj.dump() == doc
        assert doc["apiVersion"] == "agentdetect.io/v1alpha1" and doc["kind"] == "AgentDetection"
        assert doc["metadata"]["name"] == detection_name((profile_key, "support", doc["pod"]["name"]))
        assert doc["metadata"]["namespace"] == "support"
        assert doc["profile"] == {
            "kind": "AgentDetectionProfile",
            "namespace": "support",
            "name": "llm-egress",
        }
        assert doc["workload"] == "support-bot"
    first = docs[0]
    assert first["summary"] == {
        "rules": 3,
        "targets": "openai, in-cluster-vllm, anthropic",
        "events": 6,
        "lastSeen": ts(6),
        "action": "Observed",
    }
    openai = first["detections"][0]
    assert openai == {
        "rule": "openai",
        "hook": "tcp_connect",
        "count": 3,
        "firstSeen": ts(1),
        "lastSeen": ts(5),
        "action": "Observed",
        "example": "/usr/bin/python3 connected to 104.18.6.192",
    }
    assert docs[1]["summary"]["action"] == "Killed"
    assert "17 lines" in err


def test_replay_of_nothing_prints_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events_file(tmp_path, _junk_lines())
    assert cli.main(["replay", events, "-f", LLM_EGRESS, "--static-hosts", HOSTS]) == 0
    out, err = capsys.readouterr()
    assert _table(out) == [HEADER]
    assert err.startswith("7 lines: 1 hook events, 1 matched no profile, 1 other events, 3 malformed")


def test_replay_max_pods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events_file(tmp_path, _llm_lines())
    assert cli.main(["replay", events, "-f", LLM_EGRESS, "--static-hosts", HOSTS, "--max-pods", "1"]) == 0
    rows = _table(capsys.readouterr().out)
    assert [r[1] for r in rows[1:]] == [POD1]


def test_replay_cluster_profile_with_namespaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = example("shells-in-production.yaml")
    lines = [
        line(
            hook="execve",
            policy=policy_of(profile, "execve"),
            namespace=ns,
            pod="api-5d4f-q1w2e",
            target=target,
            time=ts(i),
        )
        for i, (ns, target) in enumerate(
            [
                ("payments", "/bin/bash"),
                ("payments", "/usr/bin/curl"),
                ("payments", "/usr/bin/python3"),
                ("search", "/bin/sh"),
            ]
        )
    ]
    events = _events_file(tmp_path, lines)
    argv = ["replay", events, "-f", str(EXAMPLES / "shells-in-production.yaml")]
    argv += ["--namespace", "payments:environment=production", "--namespace", "search:environment=production"]
    argv += ["--namespace", "dev:environment=dev"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    rows = _table(out)
    assert rows[1:] == [
        [
            "payments",
            "api-5d4f-q1w2e",
            "shells-in-production",
            "2",
            "network-tools, shells",
            "2",
            ts(1),
            "Observed",
        ],
        ["search", "api-5d4f-q1w2e", "shells-in-production", "1", "shells", "1", ts(3), "Observed"],
    ]
    assert err.startswith("4 lines: 4 hook events, 1 matched no profile")


def test_replay_events_from_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"\n".join(_llm_lines()) + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["replay", "-", "-f", LLM_EGRESS, "--static-hosts", HOSTS]) == 0
    assert [r[1] for r in _table(capsys.readouterr().out)[1:]] == [POD1, POD2]


def test_replay_invalid_profile_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {
        "apiVersion": "agentdetect.io/v1alpha1",
        "kind": "AgentDetectionProfile",
        "metadata": {"name": "broken", "namespace": "support"},
        "spec": {"network": {"destinations": [{"name": "gw", "cidrs": ["10.0.0.0/33"], "ports": [70000]}]}},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    events = _events_file(tmp_path, _llm_lines())
    assert cli.main(["replay", events, "-f", str(path), "--static-hosts", HOSTS]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"agentdetect: {path}: AgentDetectionProfile/broken: invalid: ")
    assert "spec.network.destinations[0].cidrs[0]: '10.0.0.0/33' is not a CIDR" in err
    assert "spec.network.destinations[0].ports[0]" in err


def test_replay_invalid_profile_among_good_ones_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "profiles.yaml"
    bad = {
        "kind": "AgentDetectionProfile",
        "metadata": {"name": "nons"},
        "spec": {"processes": {"presets": ["shells"]}},
    }
    path.write_text(yaml.safe_dump_all([yaml.safe_load(Path(LLM_EGRESS).read_text()), bad]))
    events = _events_file(tmp_path, _llm_lines())
    assert cli.main(["replay", events, "-f", str(path), "--static-hosts", HOSTS]) == 1
    _, err = capsys.readouterr()
    assert "AgentDetectionProfile/nons: invalid: an AgentDetectionProfile needs metadata.namespace" in err


def test_replay_missing_events_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert cli.main(["replay", str(missing), "-f", LLM_EGRESS, "--static-hosts", HOSTS]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"agentdetect: {missing}: ")
