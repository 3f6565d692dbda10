"""The counting path (detection.count, behind every Pipeline.feed*) against the whole path it
short-cuts, line by line: parse_line, Matcher.match, then Aggregator.add or add_at. Both must
leave the same records (counts, first and last, kills, examples, stream positions), the same
dirty marks and the same parse, match and aggregate counts, whatever the batching, through
forgotten pods and profiles, a changed board, a restore from the records, re-read streams and
a full memory of keys."""

from __future__ import annotations

import random
from collections.abc import Sequence

import orjson
import pytest

from agentdetect.detection import count
from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.events import ParseStats, parse_line
from agentdetect.detection.match import Matcher
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import detection_object, record_of
from agentdetect.local.samples import foreign_kprobe, kprobe_event, lifecycle_events, stream
from agentdetect.policy.board import ProfileBoard
from agentdetect.policy.profiles import parse_profile
from tests.unit.detect_helpers import line, policy_of, small_board, state_of, ts
from tests.unit.detection.test_typed_decoder import broken, corpus


class WholePath:
    """The reference: each line through the three stages, as before the counting path."""

    def __init__(self, board: ProfileBoard, aggregator: Aggregator | None = None) -> None:
        self.board = board
        self.aggregator = aggregator or Aggregator()
        self.stats = ParseStats()
        self.unmatched = 0

    def feed(
        self, lines: Sequence[bytes | str], stream: str | None = None, stamps: Sequence[int] = ()
    ) -> None:
        matcher = Matcher(self.board.snapshot()[1])
        for i, raw in enumerate(lines):
            event = parse_line(raw, self.stats)
            if event is None:
                continue
            match = matcher.match(event)
            if match is None:
                continue
            if stream is None:
                self.aggregator.add(event, match)
            else:
                self.aggregator.add_at(event, match, stream, stamps[i])
        self.unmatched += matcher.unmatched


def assert_same(pipeline: Pipeline, reference: WholePath) -> None:
    mine, theirs = pipeline.aggregator, reference.aggregator
    assert mine.pods.keys() == theirs.pods.keys()
    for key, pod in theirs.pods.items():
        assert mine.pods[key] == pod, key  # rules, times, examples, stream positions
    assert mine.dirty == theirs.dirty
    # A rule marked queued has its entry's key in the dirty set (the counting path's mark).
    queued = {key for key, pod in mine.pods.items() for rule in pod.rules.values() if rule.queued}
    assert queued <= mine.dirty
    assert mine.host == theirs.host and mine.host_dirty == theirs.host_dirty
    assert mine.stats == theirs.stats
    assert mine.rule_totals() == theirs.rule_totals()
    assert pipeline.stats == reference.stats
    assert pipeline.unmatched == reference.unmatched


def positioned(lines: list[bytes | str], stamps: list[int]) -> list[tuple[bytes | str, int]]:
    return list(zip(lines, stamps, strict=True))


def _host_line(policy: str, second: int, target: str = "/root/.ssh/id_ed25519") -> bytes:
    raw = line(hook="fd_install", policy=policy, namespace="x", pod="x", target=target, time=ts(second))
    doc = orjson.loads(raw)
    del doc["process_kprobe"]["process"]["pod"]  # what Tetragon exports for a host process
    return orjson.dumps(doc)


def busy_stream(seed: int = 3) -> tuple[ProfileBoard, list[bytes | str]]:
    """The benchmark's ten profiles and a stream over them, shuffled so that times go back and
    forth: kills, times of fewer than nine fractional digits, host processes (matched by a
    cluster profile, and not), the small board's lines, and the parser tests' broken lines."""
    from bench.events import board_and_scenarios

    board, scenarios = board_and_scenarios([f"team-{i}" for i in range(10)])
    lines = list(stream(scenarios, pods=30, count=6_000))
    small, small_lines = small_board()
    for state in small.snapshot()[1]:
        board.publish(state)
    hosts = parse_profile(
        {
            "kind": "ClusterAgentDetectionProfile",
            "metadata": {"name": "node-secrets"},
            "spec": {"hostProcesses": True, "files": {"presets": ["ssh-keys"]}},
        }
    )
    board.publish(state_of(hosts))
    host_policy = policy_of(hosts, "fd_install")
    killed = [
        orjson.dumps(
            kprobe_event(
                hook=s.hook,
                policy=s.policy,
                namespace=s.namespace,
                pod=f"app-{i % 3}-{i:05d}",
                target=s.targets[0][0],
                port=s.targets[0][1],
                killed=True,
                time=ts(i),
            )
        )
        for i, s in enumerate(scenarios)
    ]
    short_times = [raw.replace(b".000000000Z", b".5Z") for raw in lines[:300]]
    # An action the counting path's decoder does not take (events._Kprobe: one Tetragon
    # adds later), whose lines take the whole path; and a function name written with an
    # escape, which it reads as the whole path does.
    posted = [raw for raw in lines if b'"KPROBE_ACTION_POST"' in raw][:200]
    connects = [raw for raw in lines if b'"function_name":"tcp_' in raw][:200]
    other_names = [raw.replace(b'"KPROBE_ACTION_POST"', b'"KPROBE_ACTION_LATER"') for raw in posted]
    other_names += [raw.replace(b'"function_name":"tcp_', b'"function_name":"tcp\\u005f') for raw in connects]
    assert len(other_names) == 400
    # Counted lines that also carry another kind's key, any value (a number beyond a double
    # included, which msgspec skips and orjson refuses: test_typed_decoder).
    other_names += [b'{"process_exec":1e999,' + raw[1:] for raw in connects[:50]]
    other_names += [b'{"process_exec":{},' + raw[1:] for raw in connects[50:100]]
    # Another kind's events, which the counting path counts as ignored once decoded: the exec
    # and exit around a counted line's process, and the same with a kprobe key that is null,
    # or with another kind that is null.
    kinds: list[bytes] = []
    for raw in posted[:100]:
        for other in lifecycle_events(orjson.loads(raw), ts(1)):
            kinds.append(orjson.dumps(other))
    kinds += [b'{"process_kprobe":null,' + raw[1:] for raw in kinds[:40]]
    kinds += [b'{"process_lsm":null,"time":"' + ts(i).encode() + b'"}' for i in range(20)]
    other_names += kinds
    # Another policy's kprobes on a hook detection does not read, ignored once decoded: as
    # exported, without a time, and ours without a policy name.
    foreign = [orjson.dumps(foreign_kprobe(orjson.loads(raw))) for raw in posted[:100]]
    foreign += [raw.replace(b',"time":"', b',"untimed":"', 1) for raw in foreign[:20]]
    foreign += [raw.replace(b'"KPROBE_ACTION_POST"', b'"KPROBE_ACTION_FOLLOWFD"') for raw in foreign[20:40]]
    foreign += [raw.replace(b'"policy_name":"', b'"policy_name":"","p":"', 1) for raw in posted[:20]]
    other_names += foreign
    host = [_host_line(host_policy, i, ("/root/.ssh/id_rsa", "/etc/hostname")[i % 2]) for i in range(40)]
    host += [_host_line(scenarios[1].policy, i) for i in range(5)]  # a namespaced policy's: unmatched
    lines += killed * 3 + short_times + other_names + host + small_lines * 5
    bad = broken(corpus())
    lines += bad[:3_000] + bad[-30:]  # cut, retyped and garbage lines; the last: deep nesting
    random.Random(seed).shuffle(lines)
    # Lines as text too (Pipeline.feed takes either), some of them events of the stream.
    every: list[bytes | str] = [*lines, *(raw.decode("utf-8", "replace") for raw in lines[:500])]
    # And text with a lone surrogate, which has no UTF-8: the decode must not raise mid-batch.
    every += [raw.decode("utf-8", "replace").replace('"time":"', '"time":"\ud800', 1) for raw in lines[:20]]
    return board, every


@pytest.mark.parametrize("batch", [1, 97, 256, 100_000])
def test_feed_many_counts_as_the_whole_path(batch: int) -> None:
    board, lines = busy_stream()
    pipeline, reference = Pipeline(board), WholePath(board)
    for start in range(0, len(lines), batch):
        pipeline.feed_many(lines[start : start + batch])
    reference.feed(lines)
    assert_same(pipeline, reference)
    # Not a vacuous comparison: most lines took the short path, and every kind of line is here.
    assert reference.stats.events > 6_000 and reference.unmatched > 0 and reference.stats.malformed > 0
    assert reference.stats.ignored > 350 and reference.stats.unknown > 0
    assert any(r.killed for p in reference.aggregator.pods.values() for r in p.rules.values())
    assert reference.aggregator.host and len(pipeline._counter._tables) > 0


def test_flushes_between_batches_take_the_same_records_on_both_paths() -> None:
    """A flush (take_dirty) clears the counting path's marks on the rules: after it, the next
    batch must put back exactly the keys the whole path puts back, stream or not, and each
    record's summary as that flush left it is the same on both paths."""
    board, lines = busy_stream(seed=9)
    stamps = list(range(len(lines)))
    pipeline, reference = Pipeline(board), WholePath(board)
    taken = 0
    for start in range(0, len(lines), 500):
        these, their_stamps = lines[start : start + 500], stamps[start : start + 500]
        stream = "s" if start % 1_000 else None
        if stream is None:
            pipeline.feed_many(these)
        else:
            pipeline.feed_stream(positioned(these, their_stamps), stream)
        reference.feed(these, stream, their_stamps)
        assert_same(pipeline, reference)
        keys = pipeline.aggregator.take_dirty()
        assert keys == reference.aggregator.take_dirty()
        taken += len(keys)
        for key in keys:
            mine, theirs = pipeline.aggregator.pods[key], reference.aggregator.pods[key]
            assert mine.flushed == theirs.flushed == (theirs.events, theirs.last)
        if start == 1_000:  # a failed write: owed again, with no rule changed
            pipeline.aggregator.mark_dirty(keys[0])
            reference.aggregator.mark_dirty(keys[0])
    assert taken > len(pipeline.aggregator.pods)  # records taken again after later events


def test_line_by_line_feed_counts_as_the_whole_path() -> None:
    board, lines = busy_stream(seed=5)
    lines = lines[:4_000]
    pipeline, reference = Pipeline(board), WholePath(board)
    for raw in lines:
        pipeline.feed(raw)
    reference.feed(lines)
    assert_same(pipeline, reference)


def test_a_followed_stream_counts_as_the_whole_path_and_passes_over_what_it_counted() -> None:
    """Stream positions: timestamps that repeat, the stream read again from the start (a
    restarted follower), a second stream (a restarted Tetragon pod), line by line and in batches."""
    board, lines = busy_stream(seed=7)
    stamps = [i // 3 for i in range(len(lines))]  # three lines per kubelet timestamp
    half = len(lines) // 2
    batched, single, reference = Pipeline(board), Pipeline(board), WholePath(board)
    plan = [("s", lines, stamps), ("s", lines[:half], stamps[:half]), ("t", lines[:half], stamps[:half])]
    for name, these, their_stamps in plan:
        for start in range(0, len(these), 97):
            batched.feed_stream(positioned(these, their_stamps)[start : start + 97], name)
        for raw, stamp in zip(these, their_stamps, strict=True):
            single.feed(raw, name, stamp)
        reference.feed(these, name, their_stamps)
    assert_same(batched, reference)
    assert_same(single, reference)
    assert reference.aggregator.stats.already_counted > half // 2  # the re-read was passed over


def test_a_restore_from_the_records_counts_as_the_whole_path() -> None:
    """The operator restarts: a new aggregator from the AgentDetections, the stream read again
    from the start. Its first lines are counted already, by position; the rest go on."""
    board, lines = busy_stream(seed=11)
    stamps = list(range(len(lines)))
    half = len(lines) // 2
    first = Pipeline(board)
    first.feed_stream(positioned(lines, stamps)[:half], "s")
    objects = [detection_object(key, pod).dump() for key, pod in first.aggregator.pods.items()]

    def restored() -> Aggregator:
        agg = Aggregator()
        for body in objects:
            record = record_of(body)
            assert record is not None
            agg.restore(*record)
        return agg

    pipeline, reference = Pipeline(board), WholePath(board, restored())
    pipeline.feed_stream(positioned(lines, stamps)[:100], "s")  # the old aggregator's tables
    pipeline.aggregator = restored()  # what DetectionService._restore does
    pipeline.stats, pipeline._matcher.unmatched = ParseStats(), 0
    for start in range(0, len(lines), 256):
        pipeline.feed_stream(positioned(lines, stamps)[start : start + 256], "s")
    reference.feed(lines, "s", stamps)
    assert_same(pipeline, reference)
    assert reference.aggregator.stats.already_counted > 0


def test_forgotten_pods_and_profiles_and_a_changed_board_count_as_the_whole_path() -> None:
    """A table the counting path remembers never leads to an entry the aggregator dropped:
    after a pod or a profile is forgotten, its next events start a new entry, and a profile
    taken off the board stops matching."""
    board, lines = busy_stream(seed=13)
    third = len(lines) // 3
    pipeline, reference = Pipeline(board), WholePath(board)
    pipeline.feed_many(lines[:third])
    reference.feed(lines[:third])
    (profile, namespace, pod), *_ = sorted(k for k in reference.aggregator.pods if k[0][1] == "team-3")
    dropped = ("AgentDetectionProfile", "team-5", "agents")
    for agg in (pipeline.aggregator, reference.aggregator):
        assert agg.forget_pod(namespace, pod) >= 1
        agg.forget_profile(dropped)
    pipeline.feed_many(lines[third : 2 * third])
    reference.feed(lines[third : 2 * third])
    assert_same(pipeline, reference)
    assert (profile, namespace, pod) in reference.aggregator.pods  # counted again, from the second third
    assert any(k[0] == dropped for k in reference.aggregator.pods)
    board.remove(("AgentDetectionProfile", "team-4", "agents"))
    pipeline.feed_many(lines[2 * third :])
    reference.feed(lines[2 * third :])
    assert_same(pipeline, reference)


def test_a_full_memory_of_keys_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(count, "_LIMIT", 7)
    board, lines = busy_stream(seed=17)
    pipeline, reference = Pipeline(board), WholePath(board)
    pipeline.feed_many(lines)
    reference.feed(lines)
    assert_same(pipeline, reference)
    assert len(pipeline._counter._tables) <= 7
