"""Where events come from: the kubelet's timestamps, exactly-once delivery across reconnects,
and files."""

from __future__ import annotations

import datetime
import io
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from agentdetect.detection.sources import (
    CLOCK_SKEW_MARGIN_S,
    StreamState,
    TetragonLogSource,
    file_lines,
    parse_timestamp,
)

BASE = "2026-11-23T12:34:56"
BASE_NS = int(datetime.datetime(2026, 11, 23, 12, 34, 56, tzinfo=datetime.UTC).timestamp()) * 1_000_000_000


# ---- parse_timestamp ---------------------------------------------------------------------------


@pytest.mark.parametrize("digits", range(10))
def test_parse_timestamp_fraction_digits(digits: int) -> None:
    frac = "987654321"[:digits]
    stamp = f"{BASE}.{frac}Z" if digits else f"{BASE}Z"
    expected = BASE_NS + (int(frac.ljust(9, "0")) if digits else 0)
    assert parse_timestamp(stamp.encode()) == expected


def test_parse_timestamp_known_values() -> None:
    assert parse_timestamp(b"1970-01-01T00:00:00Z") == 0
    assert parse_timestamp(b"1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_timestamp(b"1970-01-01T00:00:00.000000001Z") == 1
    assert parse_timestamp(b"2000-01-01T00:00:00Z") == 946_684_800 * 1_000_000_000


def test_parse_timestamp_orders_like_time() -> None:
    stamps = [
        b"2026-11-23T12:00:00Z",
        b"2026-11-23T12:00:00.000000001Z",
        b"2026-11-23T12:00:00.1Z",
        b"2026-11-23T12:00:00.100000001Z",
        b"2026-11-23T12:00:00.5Z",
        b"2026-11-23T12:00:00.999999999Z",
        b"2026-11-23T12:00:01Z",
        b"2026-11-23T12:00:01.01Z",
    ]
    parsed = [parse_timestamp(s) for s in stamps]
    assert parsed == sorted(parsed) and len(set(parsed)) == len(parsed)


def test_parse_timestamp_equal_precisions_agree() -> None:
    assert parse_timestamp(b"2026-11-23T12:00:00.5Z") == parse_timestamp(b"2026-11-23T12:00:00.500000000Z")
    assert parse_timestamp(b"2026-11-23T12:00:00Z") == parse_timestamp(b"2026-11-23T12:00:00.000Z")


@pytest.mark.parametrize(
    "stamp", [b"", b"garbage", b"2026-11-23", b"2026-13-01T00:00:00Z", b'{"process_kprobe"']
)
def test_parse_timestamp_rejects_non_timestamps(stamp: bytes) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(stamp)


# ---- StreamState ---------------------------------------------------------------------------------


def _deliver(state: StreamState, lines: list[tuple[int, bytes]]) -> list[bytes]:
    return [payload for stamp, payload in lines if state.admit(stamp, payload)]


def test_admit_delivers_a_fresh_stream_in_order() -> None:
    state = StreamState()
    lines = [(10, b"a"), (20, b"b"), (30, b"c")]
    assert _deliver(state, lines) == [b"a", b"b", b"c"]
    assert (state.lines, state.duplicates_dropped, state.last_ns) == (3, 0, 30)


def test_replay_after_reconnect_drops_each_repeated_line_exactly_once() -> None:
    state = StreamState()
    first = [(10, b"a"), (20, b"b"), (20, b"b2"), (30, b"c")]
    assert _deliver(state, first) == [b"a", b"b", b"b2", b"c"]
    # The stream drops; reopened with a since-time of whole seconds, it repeats what it had sent
    # and then carries on.
    replay = [(10, b"a"), (20, b"b"), (20, b"b2"), (30, b"c"), (40, b"d"), (50, b"e")]
    assert _deliver(state, replay) == [b"d", b"e"]
    assert state.duplicates_dropped == 4
    assert state.lines == 6


def test_replay_of_the_last_timestamp_only() -> None:
    state = StreamState()
    _deliver(state, [(10, b"a"), (30, b"x"), (30, b"y")])
    assert _deliver(state, [(30, b"x"), (30, b"y"), (30, b"z"), (31, b"w")]) == [b"z", b"w"]
    assert state.duplicates_dropped == 2


def test_equal_timestamps_distinct_lines_are_all_delivered() -> None:
    state = StreamState()
    lines = [(5, b"one"), (5, b"two"), (5, b"three")]
    assert _deliver(state, lines) == [b"one", b"two", b"three"]
    assert state.at_last == {hash(b"one"), hash(b"two"), hash(b"three")}
    assert state.duplicates_dropped == 0


def test_same_line_twice_at_the_same_timestamp_is_a_duplicate() -> None:
    state = StreamState()
    assert _deliver(state, [(5, b"one"), (5, b"one")]) == [b"one"]
    assert state.duplicates_dropped == 1


def test_earlier_timestamps_are_dropped() -> None:
    state = StreamState()
    _deliver(state, [(100, b"a")])
    assert _deliver(state, [(99, b"new but older"), (0, b"x"), (100, b"b")]) == [b"b"]
    assert state.duplicates_dropped == 2


def test_same_payload_at_a_later_time_is_delivered() -> None:
    state = StreamState()
    assert _deliver(state, [(1, b"tick"), (2, b"tick"), (3, b"tick")]) == [b"tick"] * 3
    assert state.at_last == {hash(b"tick")}


def test_since_seconds_is_none_before_any_line() -> None:
    assert StreamState().since_seconds(10**18) is None


@pytest.mark.parametrize(
    ("elapsed_ns", "seconds"),
    [
        (0, 1),
        (1, 1),
        (999_999_999, 1),
        (1_000_000_000, 2),
        (1_500_000_000, 2),
        (59_000_000_001, 60),
        (-5_000_000_000, -4),  # a clock that went back still asks for something
    ],
)
def test_since_seconds_rounds_up_with_a_margin_for_clock_skew(elapsed_ns: int, seconds: int) -> None:
    """The last line's timestamp is the kubelet's clock; now is ours. The margin covers a
    clock up to CLOCK_SKEW_MARGIN_S behind the node's; lines read twice are dropped."""
    state = StreamState()
    state.admit(BASE_NS, b"x")
    since = state.since_seconds(BASE_NS + elapsed_ns)
    assert since == max(1, seconds + CLOCK_SKEW_MARGIN_S)
    assert since is not None and since * 1_000_000_000 >= elapsed_ns  # reopens at or before the last line


# ---- the follower's line handling ---------------------------------------------------------------


class _Response:
    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk

    def stream(self, amt: int) -> Iterator[bytes]:
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]


def test_pump_splits_chunks_and_drops_the_replay_after_a_reconnect() -> None:
    received: list[bytes] = []
    streams: set[str] = set()
    api = client.ApiClient()
    try:

        def sink(payload: bytes, stream: str, stamp_ns: int) -> None:
            received.append(payload)
            streams.add(stream)

        source = TetragonLogSource(api, sink)
        state = StreamState()
        log = (
            b'2026-11-23T12:00:00.000000001Z {"a":1}\n'
            b'2026-11-23T12:00:00.5Z {"b":2}\n'
            b"not a timestamped line\n"
            b'2026-11-23T12:00:01Z {"c":3}\n'
            b'2026-11-23T12:00:01Z {"c":4}\n'
        )
        source._pump(_Response(log, chunk=7), state, "kube-system/tetragon-a")
        assert received == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"c":4}']
        # Reconnected: the kubelet repeats the last second, then new lines follow; the last
        # line has no newline yet and is not delivered.
        again = (
            b'2026-11-23T12:00:00.5Z {"b":2}\n'
            b'2026-11-23T12:00:01Z {"c":3}\n'
            b'2026-11-23T12:00:01Z {"c":4}\n'
            b'2026-11-23T12:00:01Z {"c":5}\n'
            b'2026-11-23T12:00:02Z {"d":6}\n'
            b'2026-11-23T12:00:03Z {"partial'
        )
        source._pump(_Response(again, chunk=13), state, "kube-system/tetragon-a")
        assert received[4:] == [b'{"c":5}', b'{"d":6}']
        assert state.duplicates_dropped == 3
        assert state.lines == 6
        assert streams == {"kube-system/tetragon-a"}
    finally:
        api.close()  # type: ignore[no-untyped-call]


# ---- files ---------------------------------------------------------------------------------------


def test_file_lines_reads_every_line(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(b'{"a":1}\n\n{"b":"\xc3\xbc"}\nlast without newline')
    assert list(file_lines(str(path))) == [
        b'{"a":1}\n',
        b"\n",
        b'{"b":"\xc3\xbc"}\n',
        b"last without newline",
    ]


def test_file_lines_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    assert list(file_lines(str(path))) == []


def test_file_lines_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(b"a\nb\nc\n")
    lines = file_lines(str(path))
    assert isinstance(lines, Generator)
    assert next(lines) == b"a\n"
    lines.close()  # an abandoned iteration still closes the file
    assert list(file_lines(str(path))) == [b"a\n", b"b\n", b"c\n"]


def test_file_lines_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        list(file_lines(str(tmp_path / "missing.json")))


def test_file_lines_dash_is_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    assert list(file_lines("-")) == [b"one\n", b"two\n"]
    assert not sys.stdin.closed


def test_backoff_grows_with_full_jitter_and_resets() -> None:
    from agentdetect.detection.sources import Backoff

    backoff = Backoff(1.0, cap=8.0)
    delays = [backoff.next_delay() for _ in range(40)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 30, "jittered, not in step"
    assert max(delays[10:]) > 2.0, "grows towards the cap"
    backoff.reset()
    assert all(backoff.next_delay() <= 2.0 for _ in range(1)) and backoff.failures == 1


def test_one_log_line_per_failure_class_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agentdetect.detection.sources import RateLimitedLog

    limited = RateLimitedLog(logging.getLogger("agentdetect.test"), interval=3600)
    with caplog.at_level(logging.WARNING, logger="agentdetect.test"):
        for i in range(1000):
            limited.warning("dropped", "stream %d dropped", i)
        limited.warning("list", "listing failed")
    assert [r.getMessage() for r in caplog.records] == ["stream 0 dropped", "listing failed"]
