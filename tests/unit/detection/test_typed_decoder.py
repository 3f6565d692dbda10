"""The typed decoder (msgspec) against the parser it replaced (orjson and a hand walk,
kept as ``parse_line_reference``): the same event and the same counts for every line of the
test corpora, and for every way of breaking them the parser tests know (truncation at every
length, wrong types, garbage, oversized lines). Two answers differ, on purpose and pinned
below: a number beyond a double's range, and (where msgspec recurses that deep) nesting
beyond orjson's 1,024 levels, in a value detection does not read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args, get_type_hints

import msgspec
import orjson

from agentdetect.detection import events
from agentdetect.detection.events import (
    KILLED_ACTIONS,
    MAX_LINE_BYTES,
    ParseStats,
    parse_line,
    parse_line_reference,
)
from agentdetect.local.samples import stream
from tests.unit.detect_helpers import EXAMPLES

REPO = Path(__file__).resolve().parents[3]


def corpus() -> list[bytes]:
    shapes = json.loads((REPO / "tests" / "data" / "tetragon_event_shapes.json").read_text())
    lines = [orjson.dumps(s["event"]) for s in shapes]
    lines += [line for line in (EXAMPLES / "tetragon-events.jsonl").read_bytes().splitlines() if line]
    from bench.events import board_and_scenarios

    _, scenarios = board_and_scenarios([f"team-{i}" for i in range(3)])
    lines += list(stream(scenarios, 5, 2_000))
    return lines


#: Edits of a corpus line, each at the first place it fits: (where, what goes there).
_EDITS: list[tuple[bytes, bytes]] = [
    # Retyped fields.
    (b'"dport":', b'"dport":"x'),
    (b'"binary":"', b'"binary":7,"x":"'),
    (b'"pod":{', b'"pod":{"name":null,'),
    (b'"args":[', b'"args":[7,'),
    (b'"time":"', b'"time":1,"t":"'),
    (b'"policy_name":"', b'"policy_name":5,"p":"'),
    (b'"function_name":"', b'"function_name":null,"f":"'),
    # Invalid UTF-8 in a field read, and in one not read; valid UTF-8, not ASCII.
    (b'"binary":"', b'"binary":"\xff'),
    (b'"time":"', b'"unread":"\xc0\xaf","time":"'),
    (b'"binary":"', b'"binary":"caf\xc3\xa9 '),
    # Fields the counting path's decoder skips as unknown (detection.count): another kind's
    # key beside process_kprobe (any value, null included), and the one field it types but
    # does not read.
    (b'"time":"', b'"process_exec":{"a":[1,{}]},"time":"'),
    (b'"node_name":"', b'"node_name":7,"n":"'),
    (b'"time":"', b'"process_exit":null,"time":"'),
    # JSON msgspec must refuse in a value it skips unread (another kind's event, an unknown
    # key), as orjson refuses it anywhere: a lone surrogate, a control character, a bad
    # escape, NaN, a leading zero.
    (b'"cwd":"', b'"cwd":"\\ud800'),
    (b'"cwd":"', b'"cwd":"\x01'),
    (b'"cwd":"', b'"cwd":"\\q'),
    (b'"uid":', b'"uid":NaN,"u":'),
    (b'"uid":', b'"uid":01,"u":'),
    # Ports beyond the integers orjson reads exactly (it reads a float there), and the last
    # it reads exactly.
    (b'"dport":', b'"dport":18446744073709551616,"d":'),
    (b'"dport":', b'"dport":-9223372036854775809,"d":'),
    (b'"dport":', b'"dport":18446744073709551615,"d":'),
]


def broken(lines: list[bytes]) -> list[bytes]:
    """Every corpus line cut at a spread of lengths, retyped, and some garbage."""
    out: list[bytes] = []
    for line in lines[:60]:
        out += [line[:n] for n in range(0, len(line), max(1, len(line) // 40))]
        out += [line.replace(spot, edit, 1) for spot, edit in _EDITS]
        # Cut where msgspec says "truncated" and orjson says malformed: in a literal, after a
        # lone surrogate escape.
        out.append(line.replace(b'"cwd":"', b'"cwd":no', 1)[: line.find(b'"cwd":') + 8])
        out.append(line.replace(b'"cwd":"', b'"cwd":"\\ud800"', 1)[: line.find(b'"cwd":') + 14])
    out += [
        b"",
        b"   ",
        b"null",
        b"[]",
        b"[1,2]",
        b'"text"',
        b"42",
        b"{",
        b"{}",
        b"}{",
        b"\xff\xfe",
        b"{'a': 1}",
    ]
    out += [b'{"process_kprobe": null}', b'{"process_kprobe": {}}', b'{"process_exec": {}}', b'{"x": 1}']
    out += [b'{"process_exec":{"a":"\\ud800"}}', b'{"process_exit":n\n', b'{"node_name":no']
    out.append(b'{"process_exec":' + b"[" * 300)  # orjson: out of memory, so malformed
    out.append(b'{"process_exec": {"pad": "' + b"x" * MAX_LINE_BYTES + b'"}}')
    # Nested past msgspec's recursion (which raises RecursionError) and past orjson's 1,024 levels.
    for depth in (900, 1_100, 5_000):
        out.append(b'{"x":' + b"[" * depth + b"]" * depth + b"}")
        out.append(b'{"time":1,"x":' + b"[" * depth + b"]" * depth + b"}")  # and a field mistyped
        out.append(lines[0].replace(b'"time":"', b'"deep":' + b"[" * depth + b"]" * depth + b',"time":"', 1))
    return out


def test_the_typed_decoder_answers_as_the_reference_parser_on_every_line() -> None:
    lines = corpus()
    lines += broken(lines)
    assert len(lines) > 5_000
    texts = [line.decode("utf-8", "replace") for line in lines[:200]]
    # Text with a lone surrogate, which has no UTF-8 (a str line, as Pipeline.feed takes).
    texts += [t.replace('"cwd":"', '"cwd":"\ud800', 1) for t in texts[:50]]
    every: list[bytes | str] = [*lines, *texts]
    for line in every:
        mine, theirs = ParseStats(), ParseStats()
        read_as = as_msgspec_skips_it(line)
        assert parse_line(line, mine) == parse_line_reference(read_as, theirs), line[:300]
        assert mine == theirs, (line[:300], mine, theirs)


#: Deeper than orjson nests (1,024 levels: its "depth limit exceeded").
_DEEPER_THAN_ORJSON = re.compile(rb"\[{1025,}\]*")


def as_msgspec_skips_it(line: bytes | str) -> bytes | str:
    """The line as the reference parser is to read it for the typed decoder's answer: the same
    line, but for the second difference, pinned here. A value detection does not read that is
    nested deeper than orjson's 1,024 levels is skipped like any other where msgspec's own
    recursion reaches that deep: the interpreter's, so on 3.12 (about 1,500 levels with
    3.12.1) and 3.13 (about 10,000), not on 3.11, where it stops under 1,000 (RecursionError:
    the reference parser answers). Where msgspec takes it, it reads as that value shallow."""
    if isinstance(line, str) or not _DEEPER_THAN_ORJSON.search(line):
        return line
    try:
        events.decode_line(line)
    except (RecursionError, msgspec.MsgspecError):  # refused: the reference parser answers
        return line
    return _DEEPER_THAN_ORJSON.sub(b"[]", line)


#: Numbers orjson refuses as beyond a double's range (RFC 8259 section 6 lets a parser limit
#: the range it takes), where msgspec, skipping a value unread, checks only their syntax.
_OUT_OF_RANGE = (b"1e999", b"-1E400", b"1" * 400)


def test_a_number_beyond_a_double_in_a_field_not_read_is_skipped_as_any_other_value() -> None:
    """An answer the typed decoder does not share with the reference parser: orjson refuses
    the whole line for such a number wherever it is, the typed decoder skips it as it skips
    every value detection does not read (a kprobe's other fields, unknown keys, other kinds'
    events, which must not cost a parse). Tetragon writes no such number (its numbers are
    protobuf integers, 64-bit ones as strings). So the line reads as the reference reads it
    with that number in range: the same event, or the same count of why not."""
    lines = corpus()
    kinds = {next(iter(orjson.loads(line))) for line in lines[:42]}
    assert {"process_kprobe", "process_exec", "process_exit"} <= kinds
    checked = 0
    for line in lines[:42]:
        # A key of its own at the top, and one inside the event's process (read for a kprobe,
        # skipped whole for another kind).
        for spot in (b"{", b'"process":{'):
            if spot not in line:
                continue
            fits = line.replace(spot, spot + b'"x":0,', 1)
            for big in _OUT_OF_RANGE:
                beyond = line.replace(spot, spot + b'"x":' + big + b",", 1)
                assert parse_line_reference(beyond, ParseStats()) is None  # orjson refuses it
                mine, theirs = ParseStats(), ParseStats()
                assert parse_line(beyond, mine) == parse_line_reference(fits, theirs), beyond[:300]
                assert mine == theirs, (beyond[:300], mine, theirs)
                checked += 1
    assert checked > 200


def test_the_counting_decoder_takes_every_hook_and_every_action_of_our_events() -> None:
    """A name the counting path's decoder refuses sends its line the whole way, one line at a
    time: counted alike (test_count), but at several times the cost. So it takes every
    function name (another policy's hooks are counted as ignored once decoded), and every
    action Tetragon names, those its recorded events from our policies carry among them."""
    hints = get_type_hints(events._Kprobe)
    assert hints["function_name"] is str
    literal, none = get_args(hints["action"])
    assert none is type(None) and len(set(get_args(literal))) == 16  # the enum's 0 to 15
    shapes = json.loads((REPO / "tests" / "data" / "tetragon_event_shapes.json").read_text())
    recorded = {s["event"]["process_kprobe"]["action"] for s in shapes if "process_kprobe" in s["event"]}
    assert recorded and recorded | KILLED_ACTIONS <= set(get_args(literal))
