"""Tetragon's JSON export into events: every hook's fields, and every kind of bad line counted
in its own counter, never raising."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from agentdetect.detection import events
from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.events import MAX_LINE_BYTES, Event, ParseStats, normalize_time, parse_line
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import detection_object
from agentdetect.local.samples import kprobe_event
from agentdetect.policy.board import ProfileBoard
from tests.unit.detect_helpers import example, line, policy_of, state_of

COUNTERS = ("events", "ignored", "malformed", "truncated", "unknown", "oversized")


def _doc(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hook": "tcp_connect",
        "policy": "llm-egress-net-0123abcd",
        "namespace": "support",
        "pod": "support-bot-6f7c9-abcde",
        "target": "104.18.6.192",
    }
    base.update(kwargs)
    return kprobe_event(**base)


def _parse(raw: bytes | str) -> tuple[Event | None, ParseStats]:
    stats = ParseStats()
    return parse_line(raw, stats), stats


def _only(stats: ParseStats, counter: str) -> None:
    """Exactly one line, counted in exactly ``counter``."""
    counts = stats.as_dict()
    assert counts["lines"] == 1
    assert {k: counts[k] for k in COUNTERS} == {k: int(k == counter) for k in COUNTERS}, counts


def _mutated(mutate: Callable[[dict[str, Any]], None], **kwargs: Any) -> bytes:
    doc = copy.deepcopy(_doc(**kwargs))
    mutate(doc)
    return orjson.dumps(doc)


def _counted(stats: ParseStats) -> int:
    counts = stats.as_dict()
    return sum(counts[k] for k in COUNTERS)


# ---- the three hooks -------------------------------------------------------------------------


def test_tcp_connect_ipv4() -> None:
    raw = line(
        hook="tcp_connect",
        policy="llm-egress-net-0123abcd",
        namespace="support",
        pod="support-bot-6f7c9-abcde",
        workload="support-bot",
        target="104.18.6.192",
        port=443,
        binary="/usr/local/bin/python3.12",
        time="2026-11-23T12:00:01.123456789Z",
        node="worker-3",
    )
    event, stats = _parse(raw)
    assert event == Event(
        policy="llm-egress-net-0123abcd",
        hook="tcp_connect",
        namespace="support",
        pod="support-bot-6f7c9-abcde",
        workload="support-bot",
        binary="/usr/local/bin/python3.12",
        target="104.18.6.192",
        port=443,
        killed=False,
        time="2026-11-23T12:00:01.123456789Z",
        node="worker-3",
    )
    _only(stats, "events")


def test_tcp_connect_ipv6() -> None:
    event, stats = _parse(
        line(hook="tcp_connect", policy="p", namespace="ns", pod="p-1", target="2001:db8::10")
    )
    assert event is not None
    assert (event.hook, event.target, event.port) == ("tcp_connect", "2001:db8::10", 443)
    assert (
        kprobe_event(hook="tcp_connect", policy="p", namespace="ns", pod="p-1", target="2001:db8::10")[
            "process_kprobe"
        ]["args"][0]["sock_arg"]["family"]
        == "AF_INET6"
    )
    _only(stats, "events")


@pytest.mark.parametrize("port", [1, 80, 8000, 11434, 65535])
def test_tcp_connect_port(port: int) -> None:
    event, _ = _parse(
        line(hook="tcp_connect", policy="p", namespace="ns", pod="p-1", target="10.0.0.1", port=port)
    )
    assert event is not None and event.port == port


def test_tcp_connect_sock_arg_found_when_not_first() -> None:
    def move(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["args"].insert(0, {"int_arg": 7})

    event, stats = _parse(_mutated(move))
    assert event is not None and (event.target, event.port) == ("104.18.6.192", 443)
    _only(stats, "events")


def test_fd_install_file_path() -> None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    event, stats = _parse(line(hook="fd_install", policy="p-file", namespace="ns", pod="p-1", target=path))
    assert event is not None
    assert (event.hook, event.target, event.port, event.policy) == ("fd_install", path, 0, "p-file")
    _only(stats, "events")


def test_fd_install_file_arg_found_when_not_second() -> None:
    def only_file(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["args"] = [{"file_arg": {"path": "/etc/shadow"}}]

    event, stats = _parse(_mutated(only_file, hook="fd_install", target="/x"))
    assert event is not None and event.target == "/etc/shadow"
    _only(stats, "events")


@pytest.mark.parametrize("function", ["sys_execve", "__x64_sys_execve", "__arm64_sys_execve"])
def test_execve_string_arg(function: str) -> None:
    def rename(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["function_name"] = function

    event, stats = _parse(_mutated(rename, hook="execve", target="/usr/bin/curl"))
    assert event is not None
    assert (event.hook, event.target, event.port) == ("execve", "/usr/bin/curl", 0)
    _only(stats, "events")


def test_non_ascii_target_is_kept() -> None:
    path = "/home/ユーザー/.ssh/id_ed25519"
    event, _ = _parse(line(hook="fd_install", policy="p", namespace="ns", pod="p-1", target=path))
    assert event is not None and event.target == path


@pytest.mark.parametrize(
    ("action", "killed"),
    [
        ("KPROBE_ACTION_SIGKILL", True),
        ("KPROBE_ACTION_OVERRIDE", True),
        ("KPROBE_ACTION_POST", False),
        (None, False),
    ],
)
def test_action_killed(action: str | None, killed: bool) -> None:
    def set_action(doc: dict[str, Any]) -> None:
        if action is None:
            del doc["process_kprobe"]["action"]
        else:
            doc["process_kprobe"]["action"] = action

    event, _ = _parse(_mutated(set_action))
    assert event is not None and event.killed is killed


def test_sample_killed_flag_is_sigkill() -> None:
    event, _ = _parse(
        line(hook="execve", policy="p", namespace="ns", pod="p-1", target="/bin/sh", killed=True)
    )
    assert event is not None and event.killed


def test_pod_fields_workload_binary_time_node() -> None:
    event, _ = _parse(
        line(
            hook="execve",
            policy="p",
            namespace="agents",
            pod="sandbox-5b8c7d-x2x9q",
            target="/bin/bash",
            binary="/usr/bin/env",
            time="2026-11-23T12:00:00.5Z",
            node="ip-10-0-0-1",
        )
    )
    assert event is not None
    # The sample derives the workload from the pod name (Deployment pods: name-<rs>-<pod>).
    assert (event.namespace, event.pod, event.workload) == ("agents", "sandbox-5b8c7d-x2x9q", "sandbox")
    # Times are normalised to nine fractional digits, so that string order is time order.
    assert (event.binary, event.time, event.node) == (
        "/usr/bin/env",
        "2026-11-23T12:00:00.500000000Z",
        "ip-10-0-0-1",
    )


@pytest.mark.parametrize(
    ("stamp", "normal"),
    [
        ("2026-11-23T12:00:01Z", "2026-11-23T12:00:01.000000000Z"),
        ("2026-11-23T12:00:01.5Z", "2026-11-23T12:00:01.500000000Z"),
        ("2026-11-23T12:00:01.123456Z", "2026-11-23T12:00:01.123456000Z"),
        ("2026-11-23T12:00:01.123456789Z", "2026-11-23T12:00:01.123456789Z"),
        ("not a time", "not a time"),
    ],
)
def test_times_are_normalised_to_nanoseconds(stamp: str, normal: str) -> None:
    assert normalize_time(stamp) == normal


def test_missing_workload_and_node_default_to_empty() -> None:
    def strip(doc: dict[str, Any]) -> None:
        del doc["process_kprobe"]["process"]["pod"]["workload"]
        del doc["node_name"]

    event, stats = _parse(_mutated(strip))
    assert event is not None and (event.workload, event.node) == ("", "")
    _only(stats, "events")


def test_bytes_and_str_give_the_same_event() -> None:
    raw = line(hook="tcp_connect", policy="p", namespace="ns", pod="p-1", target="10.1.2.3", port=8000)
    from_bytes, s1 = _parse(raw)
    from_str, s2 = _parse(raw.decode())
    from_line, s3 = _parse(raw + b"\n")
    assert from_bytes is not None
    assert from_bytes == from_str == from_line
    assert s1.as_dict() == s2.as_dict() == s3.as_dict()


def test_stats_accumulate_over_lines() -> None:
    stats = ParseStats()
    good = line(hook="execve", policy="p", namespace="ns", pod="p-1", target="/bin/sh")
    for raw in (good, good, b"junk", b"", b'{"process_exec": {}}', b"{}", good[:20]):
        parse_line(raw, stats)
    assert stats.as_dict() == {
        "lines": 7,
        "events": 2,
        "ignored": 1,
        "malformed": 2,
        "truncated": 1,
        "unknown": 1,
        "oversized": 0,
    }
    assert "by_reason" not in stats.as_dict()


# ---- bad lines, each in its counter ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        "",
        b"   ",
        b"\n",
        "\t \r\n",
        b"hello",
        "not json at all",
        b"}{",
        b"[1, 2]",
        "[]",
        b"42",
        "3.5",
        b'"s"',
        b"null",
    ],
    ids=repr,
)
def test_not_an_object_is_malformed(raw: bytes | str) -> None:
    event, stats = _parse(raw)
    assert event is None
    _only(stats, "malformed")


@pytest.mark.parametrize("hook", ["tcp_connect", "fd_install", "execve"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_line(hook: str, fraction: float) -> None:
    raw = line(
        hook=hook,
        policy="p",
        namespace="ns",
        pod="p-1",
        target="/usr/bin/curl" if hook != "tcp_connect" else "10.0.0.1",
    )
    cut = raw[: int(len(raw) * fraction)]
    for variant in (cut, cut + b"\n", cut.decode(errors="ignore")):
        event, stats = _parse(variant)
        assert event is None
        _only(stats, "truncated")


def test_truncated_anywhere_is_truncated() -> None:
    raw = line(hook="fd_install", policy="p", namespace="ns", pod="p-1", target="/root/.aws/credentials")
    stats = ParseStats()
    for cut in range(1, len(raw)):
        assert parse_line(raw[:cut], stats) is None
    assert stats.truncated == len(raw) - 1
    assert stats.lines == stats.truncated


def test_truncated_line_with_non_ascii_content_is_truncated() -> None:
    """A stream cut after multi-byte UTF-8 text is still a truncation, not garbage."""
    raw = line(hook="fd_install", policy="p", namespace="ns", pod="p-1", target="/data/日本語/.ssh/id_rsa")
    cut = raw[: int(len(raw) * 0.99)]
    event, stats = _parse(cut)
    assert event is None
    _only(stats, "truncated")


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"time": "2026-11-23T12:00:00Z"},
        {"process_fork": {"process": {}}, "time": "2026-11-23T12:00:00Z"},
        {"something_else": 1},
    ],
    ids=repr,
)
def test_unknown_kind(doc: dict[str, Any]) -> None:
    event, stats = _parse(orjson.dumps(doc))
    assert event is None
    _only(stats, "unknown")


@pytest.mark.parametrize("kind", sorted(events.OTHER_KINDS))
def test_other_tetragon_kinds_are_ignored(kind: str) -> None:
    doc = {kind: {"process": {"binary": "/bin/sh", "pod": {"namespace": "a", "name": "b"}}}, "time": "t"}
    event, stats = _parse(orjson.dumps(doc))
    assert event is None
    _only(stats, "ignored")


def test_process_exec_and_exit_are_ignored() -> None:
    doc = kprobe_event(hook="execve", policy="p", namespace="ns", pod="p-1", target="/bin/sh")
    kprobe = doc.pop("process_kprobe")
    for kind in ("process_exec", "process_exit"):
        event, stats = _parse(orjson.dumps({kind: {"process": kprobe["process"]}, **doc}))
        assert event is None
        _only(stats, "ignored")


@pytest.mark.parametrize("function", ["security_file_permission", "tcp_close", "sys_openat", "", "execve"])
def test_kprobe_of_another_function_is_ignored(function: str) -> None:
    def rename(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["function_name"] = function

    event, stats = _parse(_mutated(rename))
    assert event is None
    _only(stats, "ignored")


@pytest.mark.parametrize("pod", ["absent", None, {}])
def test_kprobe_outside_any_pod_is_a_host_event(pod: Any) -> None:
    """Counted and reported per profile (a hostProcesses profile asks for them), never dropped
    silently; Tetragon leaves "pod" out for a host process."""

    def host_process(doc: dict[str, Any]) -> None:
        if pod == "absent":
            del doc["process_kprobe"]["process"]["pod"]
        else:
            doc["process_kprobe"]["process"]["pod"] = pod

    event, stats = _parse(_mutated(host_process))
    assert event is not None
    assert (event.namespace, event.pod, event.workload) == ("", "", "")
    assert event.target == "104.18.6.192"
    _only(stats, "events")


@pytest.mark.parametrize("policy", ["absent", "", None])
def test_kprobe_without_policy_is_ignored(policy: Any) -> None:
    def no_policy(doc: dict[str, Any]) -> None:
        if policy == "absent":
            del doc["process_kprobe"]["policy_name"]
        else:
            doc["process_kprobe"]["policy_name"] = policy

    event, stats = _parse(_mutated(no_policy))
    assert event is None
    _only(stats, "ignored")


def _kp(doc: dict[str, Any]) -> dict[str, Any]:
    kp = doc["process_kprobe"]
    assert isinstance(kp, dict)
    return kp


MALFORMED_KPROBES: dict[str, Callable[[dict[str, Any]], None]] = {
    "no process": lambda d: _kp(d).pop("process"),
    "process null": lambda d: _kp(d).__setitem__("process", None),
    "process list": lambda d: _kp(d).__setitem__("process", ["x"]),
    "process string": lambda d: _kp(d).__setitem__("process", "x"),
    "no function_name": lambda d: _kp(d).pop("function_name"),
    "function_name list": lambda d: _kp(d).__setitem__("function_name", ["tcp_connect"]),
    "kprobe list": lambda d: d.__setitem__("process_kprobe", [1, 2]),
    "kprobe string": lambda d: d.__setitem__("process_kprobe", "tcp_connect"),
    "args absent": lambda d: _kp(d).pop("args"),
    "args empty": lambda d: _kp(d).__setitem__("args", []),
    "args string": lambda d: _kp(d).__setitem__("args", "abc"),
    "args dict": lambda d: _kp(d).__setitem__("args", {"0": {"sock_arg": {}}}),
    "args of ints": lambda d: _kp(d).__setitem__("args", [1, 2]),
    "args of strings": lambda d: _kp(d).__setitem__("args", ["sock_arg"]),
    "sock_arg string": lambda d: _kp(d).__setitem__("args", [{"sock_arg": "10.0.0.1"}]),
    "sock_arg list": lambda d: _kp(d).__setitem__("args", [{"sock_arg": ["10.0.0.1"]}]),
    "sock_arg empty": lambda d: _kp(d).__setitem__("args", [{"sock_arg": {}}]),
    "dport not a number": lambda d: _kp(d)["args"][0]["sock_arg"].__setitem__("dport", "https"),
    "dport list": lambda d: _kp(d)["args"][0]["sock_arg"].__setitem__("dport", [443]),
    "daddr empty": lambda d: _kp(d)["args"][0]["sock_arg"].__setitem__("daddr", ""),
    "no time": lambda d: d.pop("time"),
    "no binary": lambda d: _kp(d)["process"].pop("binary"),
    "pod string": lambda d: _kp(d)["process"].__setitem__("pod", "support/bot"),
    "pod list": lambda d: _kp(d)["process"].__setitem__("pod", ["support", "bot"]),
    "pod without namespace": lambda d: _kp(d)["process"]["pod"].pop("namespace"),
    "pod without name": lambda d: _kp(d)["process"]["pod"].pop("name"),
}


@pytest.mark.parametrize("name", list(MALFORMED_KPROBES))
def test_kprobe_with_wrong_shapes_is_malformed(name: str) -> None:
    """Counted once, as malformed, and never also as an event."""
    event, stats = _parse(_mutated(MALFORMED_KPROBES[name]))
    assert event is None
    _only(stats, "malformed")


@pytest.mark.parametrize(
    "args",
    [
        [],
        [{"int_arg": 3}],
        [{"int_arg": 3}, {"file_arg": "/etc/shadow"}],
        [{"int_arg": 3}, {"file_arg": {"permission": "-rw-"}}],
        [{"int_arg": 3}, {"file_arg": {"path": ""}}],
        [3, 4],
    ],
    ids=repr,
)
def test_fd_install_with_bad_args_is_malformed(args: list[Any]) -> None:
    def set_args(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["args"] = args

    event, stats = _parse(_mutated(set_args, hook="fd_install", target="/x"))
    assert event is None
    _only(stats, "malformed")


@pytest.mark.parametrize(
    "args",
    [[], [{"string_arg": ""}], [{"string_arg": None}], [{"int_arg": 1}], ["string_arg"], [None]],
    ids=repr,
)
def test_execve_with_bad_args_is_malformed(args: list[Any]) -> None:
    def set_args(doc: dict[str, Any]) -> None:
        doc["process_kprobe"]["args"] = args

    event, stats = _parse(_mutated(set_args, hook="execve", target="/bin/sh"))
    assert event is None
    _only(stats, "malformed")


# ---- oversized and encoding --------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A valid event line of exactly ``size`` bytes (padding in the process arguments)."""
    doc = _doc()
    base = len(orjson.dumps(doc))
    doc["process_kprobe"]["process"]["arguments"] += "x" * (size - base)
    raw = orjson.dumps(doc)
    assert len(raw) == size
    return raw


def test_line_of_exactly_the_limit_is_parsed() -> None:
    event, stats = _parse(_padded(MAX_LINE_BYTES))
    assert event is not None
    _only(stats, "events")


def test_oversized_line_is_skipped_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    decode = events.decode_line

    def counting(raw: bytes | str) -> Any:
        calls.append(len(raw))
        return decode(raw)

    monkeypatch.setattr(events, "decode_line", counting)
    for raw in (_padded(MAX_LINE_BYTES + 1), b"{" * (MAX_LINE_BYTES + 1), b"x" * (4 * MAX_LINE_BYTES)):
        event, stats = _parse(raw)
        assert event is None
        _only(stats, "oversized")
    assert calls == []
    _parse(_padded(MAX_LINE_BYTES))
    assert calls == [MAX_LINE_BYTES]


def test_oversized_str_line() -> None:
    event, stats = _parse(_padded(MAX_LINE_BYTES + 10).decode())
    assert event is None
    _only(stats, "oversized")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b"\xc3",
        b'{"a": "\xff"}',
        b'\xef\xbb\xbf{"a": 1}\xff',
        b'{"process_kprobe": {"function_name": "tcp_\xc0\xafconnect"}}',
    ],
    ids=repr,
)
def test_invalid_utf8_is_malformed(raw: bytes) -> None:
    event, stats = _parse(raw)
    assert event is None
    _only(stats, "malformed")


def test_invalid_utf8_inside_a_real_event_is_malformed() -> None:
    raw = line(hook="execve", policy="p", namespace="ns", pod="p-1", target="/bin/sh-XX")
    raw = raw.replace(b"sh-XX", b"sh-\xff\xfe")
    event, stats = _parse(raw)
    assert event is None
    _only(stats, "malformed")


# ---- fuzz --------------------------------------------------------------------------------------


def _real_lines() -> list[bytes]:
    profile = example("llm-egress.yaml")
    return [
        line(
            hook="tcp_connect",
            policy=policy_of(profile, "tcp_connect"),
            namespace="support",
            pod="bot-6f7c9-abcde",
            target="104.18.6.192",
        ),
        line(
            hook="tcp_connect",
            policy=policy_of(profile, "tcp_connect"),
            namespace="support",
            pod="bot-6f7c9-abcde",
            target="2001:db8::1",
            port=8000,
        ),
        line(
            hook="fd_install",
            policy="p-file",
            namespace="support",
            pod="bot-6f7c9-fghij",
            target="/root/.ssh/id_rsa",
            killed=True,
        ),
        line(
            hook="execve", policy="p-exec", namespace="support", pod="bot-6f7c9-fghij", target="/usr/bin/cürl"
        ),
        orjson.dumps({"process_exec": {"process": {"binary": "/bin/sh"}}, "time": "2026-11-23T12:00:00Z"}),
    ]


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:  # flip bits of one byte
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op == 2:  # insert random bytes or JSON punctuation
            i = rng.randint(0, len(data))
            chunk = rng.choice(
                [b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"1", bytes([rng.randrange(256)])]
            )
            data[i:i] = chunk
        elif data:  # replace one byte by another
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def test_fuzzed_lines_never_raise_and_counters_add_up() -> None:
    rng = random.Random(20261123)
    originals = _real_lines()
    mutated = [_mutate(rng, rng.choice(originals)) for _ in range(2000)]
    stats = ParseStats()
    for raw in mutated:
        parse_line(raw, stats)
    assert stats.lines == 2000
    assert _counted(stats) == stats.lines, stats.as_dict()
    # The mutations produce a mix, not a single class.
    assert stats.truncated > 0 and stats.malformed > 0


def test_fuzzed_lines_never_stop_the_pipeline() -> None:
    board = ProfileBoard()
    board.publish(state_of(example("llm-egress.yaml")))
    pipeline = Pipeline(board, Aggregator())
    rng = random.Random(7)
    originals = _real_lines()
    for _ in range(2000):
        pipeline.feed(_mutate(rng, rng.choice(originals)))
    assert pipeline.stats.lines == 2000
    for key, pod in pipeline.aggregator.pods.items():
        assert detection_object(key, pod).summary.events == pod.events


# Lines of valid JSON whose fields have the wrong types: the pipeline (parse, match, aggregate,
# and turning the aggregate into AgentDetections) must take them without raising.
WRONG_TYPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "policy_name list": lambda d: _kp(d).__setitem__("policy_name", ["x"]),
    "policy_name number": lambda d: _kp(d).__setitem__("policy_name", 7),
    "time number": lambda d: d.__setitem__("time", 1763899200),
    "time null": lambda d: d.__setitem__("time", None),
    "pod name object": lambda d: _kp(d)["process"]["pod"].__setitem__("name", {"n": 1}),
    "pod namespace list": lambda d: _kp(d)["process"]["pod"].__setitem__("namespace", ["support"]),
    "workload null": lambda d: _kp(d)["process"]["pod"].__setitem__("workload", None),
    "binary number": lambda d: _kp(d)["process"].__setitem__("binary", 7),
    "daddr list": lambda d: _kp(d)["args"][0]["sock_arg"].__setitem__("daddr", ["104.18.6.192"]),
}


@pytest.mark.parametrize("name", list(WRONG_TYPES))
def test_wrong_typed_fields_do_not_stop_the_pipeline(name: str) -> None:
    profile = example("llm-egress.yaml")
    board = ProfileBoard()
    board.publish(state_of(profile))
    pipeline = Pipeline(board, Aggregator())
    good = _doc(policy=policy_of(profile, "tcp_connect"), namespace="support")
    bad = copy.deepcopy(good)
    WRONG_TYPES[name](bad)
    pipeline.feed(orjson.dumps(bad))
    pipeline.feed(orjson.dumps(good))
    assert pipeline.stats.lines == 2
    assert _counted(pipeline.stats) == 2
    for key, pod in pipeline.aggregator.pods.items():
        detection_object(key, pod)
    assert pipeline.aggregator.pods, "the good line after the bad one is still detected"
