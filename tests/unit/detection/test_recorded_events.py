"""The parser on events shaped like Tetragon's own recorded ones (tests/data/README.md says
which doc or test file each comes from): our hooks parse into the right fields, every other
kind and function is counted as another event, never as malformed or unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentdetect.detection.events import HOOK_OF_FUNCTION, ParseStats, parse_line

SHAPES = json.loads((Path(__file__).parents[2] / "data" / "tetragon_event_shapes.json").read_text())
OURS = [s for s in SHAPES if s["expect"]["kind"] == "kprobe" and s["expect"]["function"] in HOOK_OF_FUNCTION]
OTHERS = [s for s in SHAPES if s not in OURS]


def _id(item: dict[str, Any]) -> str:
    return f"{item['expect'].get('function') or item['expect']['event_kind']}:{item['source'].split('@')[0]}"


def test_the_corpus_covers_every_kind() -> None:
    kinds = {next(iter(s["event"])) for s in SHAPES if s["expect"]["kind"] == "other"}
    assert {"process_exec", "process_exit", "process_loader", "process_uprobe", "process_tracepoint"} <= kinds
    assert {"process_lsm", "process_throttle", "process_usdt", "rate_limit_info"} <= kinds
    assert {"process_connect", "process_close", "process_listen"} <= kinds  # older releases
    assert {s["expect"]["function"] for s in OURS} >= {"tcp_connect", "fd_install", "__x64_sys_execve"}
    assert any(s["expect"]["pod"] == "" for s in OURS), "a process outside any pod"
    assert all(s["source"] for s in SHAPES)


@pytest.mark.parametrize("item", OURS, ids=[_id(s) for s in OURS])
def test_our_hooks_parse_into_their_fields(item: dict[str, Any]) -> None:
    stats = ParseStats()
    event = parse_line(orjson.dumps(item["event"]), stats)
    want = item["expect"]
    assert event is not None, stats.as_dict()
    assert event.hook == HOOK_OF_FUNCTION[want["function"]]
    assert (event.target, event.port) == (want["target"], want["port"])
    assert (event.namespace, event.pod, event.binary) == (want["namespace"], want["pod"], want["binary"])
    assert event.killed is want["killed"]
    assert event.policy == item["event"]["process_kprobe"]["policy_name"]
    assert len(event.time) == 30 and event.time.endswith("Z")  # nine digits, whatever was written
    assert stats.events == 1


@pytest.mark.parametrize("item", OTHERS, ids=[_id(s) for s in OTHERS])
def test_everything_else_is_another_event(item: dict[str, Any]) -> None:
    stats = ParseStats()
    assert parse_line(orjson.dumps(item["event"]), stats) is None
    assert stats.as_dict() == {**ParseStats().as_dict(), "lines": 1, "ignored": 1}
