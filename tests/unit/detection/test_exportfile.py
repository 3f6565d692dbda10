"""Tetragon's export file followed across rotations, compression and deleted backups, as its
lumberjack writer does them (vendor/github.com/cilium/lumberjack/v2/lumberjack.go, v1.7.0):
every line once, in order, and positions that find their line again after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentdetect.detection.exportfile import ExportFileFollower, Segment, read_all
from tests.lumberjack import Lumberjack


@contextmanager
def following(lj: Lumberjack, pause_per_line: float = 0.0) -> Iterator[tuple[list[bytes], list[int]]]:
    """A follower on its own thread while the block writes; on leaving, the lines it read and
    their stamps once it has caught up with everything written (or after 30 s)."""
    seen: list[bytes] = []
    stamps: list[int] = []

    def sink(batch: list[tuple[bytes, int]]) -> None:
        for line, stamp in batch:
            seen.append(line)
            stamps.append(stamp)
        if pause_per_line:
            time.sleep(pause_per_line * len(batch))

    follower = ExportFileFollower(lj.path, sink, poll=0.01)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        yield seen, stamps
        deadline = time.monotonic() + 30
        while len(seen) < len(lj.written) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        follower.stop()
        thread.join(5)


def rotate_at_first_read(lj: Lumberjack, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Makes the first read of the current file's first line land just after a rotation (and
    two lines in the new file): the race between listing the directory and reading that line.
    Returns the rotated file's path, once rotated."""
    real_first_line = Segment.first_line
    rotated: list[Path] = []

    def rotate_first(seg: Segment) -> bytes | None:
        if seg.path == lj.path and not rotated:
            rotated.append(lj.rotate())
            lj.write(2)
        return real_first_line(seg)

    monkeypatch.setattr(Segment, "first_line", rotate_first)
    return rotated


def test_everything_on_disk_in_order_through_plain_and_compressed_backups(tmp_path: Path) -> None:
    lj = Lumberjack(tmp_path)
    lj.write(10)
    lj.rotate(compress=True)
    lj.write(7)
    lj.rotate()
    lj.write(5)
    lines, _ = read_all(lj.path)
    assert [line for line, _ in lines] == lj.written
    stamps = [s for _, s in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_the_follower_sees_every_line_once_while_the_file_rotates(tmp_path: Path) -> None:
    lj = Lumberjack(tmp_path)
    with following(lj) as (seen, stamps):
        for i in range(30):
            lj.write(37)
            if i % 4 == 3:
                lj.rotate(compress=i % 8 == 7)
            time.sleep(0.005)
    assert seen == lj.written
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_a_position_finds_its_line_again_after_renaming_and_compressing(tmp_path: Path) -> None:
    """What a restart does: the records say how far they count (a position); the file is read
    again from its start; exactly the lines after that position are new."""
    lj = Lumberjack(tmp_path)
    lj.write(20)
    lines, segments = read_all(lj.path)
    position = segments.position(lines[13][1])  # a record counted the first 14 lines
    lj.rotate(compress=True)  # the file those lines are in is renamed, then compressed
    lj.write(6)
    lj.rotate()
    lj.write(3)
    again, segments_now = read_all(lj.path)
    mark = segments_now.stamp(position)
    new = [line for line, stamp in again if stamp > mark]
    assert new == lj.written[14:]


def test_a_position_in_a_deleted_backup_counts_everything_left(tmp_path: Path) -> None:
    lj = Lumberjack(tmp_path, max_backups=1)
    lj.write(5)
    lines, segments = read_all(lj.path)
    position = segments.position(lines[2][1])
    lj.rotate()
    lj.write(4)
    lj.rotate()  # the first backup is deleted (exportFileMaxBackups)
    lj.write(2)
    again, segments_now = read_all(lj.path)
    assert segments_now.stamp(position) == -1
    assert [line for line, stamp in again if stamp > -1] == lj.written[5:]


def test_node_mode_counts_every_event_once_across_a_restart_rotation_and_compression(tmp_path: Path) -> None:
    """The records carry (file, offset) positions; a restarted agent re-reads whatever is on
    disk (the file it stopped in now renamed and gzipped) and counts only what is new."""
    import orjson

    from agentdetect.detection.aggregate import Aggregator
    from agentdetect.detection.events import ParseStats, parse_line
    from agentdetect.detection.exportfile import FilePositions
    from agentdetect.detection.match import Match
    from agentdetect.detection.records import detection_object, record_of
    from agentdetect.local.samples import kprobe_event

    profile = ("AgentDetectionProfile", "team", "shells")
    export = tmp_path / "tetragon.log"
    written = 0

    def write(n: int) -> None:
        nonlocal written
        with export.open("ab") as fh:
            for _ in range(n):
                event = kprobe_event(
                    hook="execve",
                    policy="p",
                    namespace="team",
                    pod="agent-0",
                    target="/bin/sh",
                    time=f"2026-11-24T10:00:{written // 1000:02d}.{written % 1000:09d}Z",
                )
                fh.write(orjson.dumps(event) + b"\n")
                written += 1

    def feed(agg: Aggregator) -> None:
        lines, _ = read_all(export)
        for line, stamp in lines:
            event = parse_line(line, ParseStats())
            assert event is not None
            agg.add_at(event, Match(profile, "shells"), "node/n1", stamp)

    lj = Lumberjack(tmp_path)
    write(30)
    first_lines, segments = read_all(export)
    agg = Aggregator()
    for line, stamp in first_lines:
        event = parse_line(line, ParseStats())
        assert event is not None
        agg.add_at(event, Match(profile, "shells"), "node/n1", stamp)
    ((key, pod),) = agg.pods.items()
    body = detection_object(key, pod, FilePositions(segments)).dump()
    assert body["streams"][0]["file"] and body["streams"][0]["offset"] > 0

    # The agent stops; Tetragon goes on, rotates (compressing) twice.
    lj.rotate(compress=True)
    write(12)
    lj.rotate(compress=True)
    write(5)

    _, segments_now = read_all(export)
    record = record_of(body, FilePositions(segments_now))
    assert record is not None
    again = Aggregator()
    again.restore(*record)
    feed(again)
    assert again.pods[key].events == written == 47
    assert again.stats.already_counted == 30


def test_a_reader_behind_several_rotations_reads_the_backups_before_the_new_file(tmp_path: Path) -> None:
    """The files rotated between a pass over the backups and opening the current file are read
    first: read after it, their lines would sit after its own, and a position past them would
    pass them over as counted (found by bench/scale.py, where the reader lags the writer)."""
    lj = Lumberjack(tmp_path)
    with following(lj, pause_per_line=0.002) as (seen, stamps):
        for _ in range(12):
            lj.write(150)
            lj.rotate()
    assert seen == lj.written
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_a_rotation_between_listing_and_reading_the_current_file_keeps_the_files_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotation lands after the directory is listed and before the current file's first
    line is read, so that line is the new file's. Registered then, the new file would take an
    ordinal before the rotated one, whose lines would then read as already counted (CI caught
    this race in the threaded test above)."""
    lj = Lumberjack(tmp_path)
    lj.write(3)
    rotations = rotate_at_first_read(lj, monkeypatch)
    follower = ExportFileFollower(lj.path, lambda batch: None)
    assert follower.index() == [] and not follower.complete
    found = follower.index_settled()
    assert follower.complete and [seg.path for seg, _ in found] == [rotations[0], lj.path]
    assert [follower.segments.ordinal(fp) for _, fp in found] == [1, 2]


def test_a_rotation_while_the_follower_starts_is_read_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race through :meth:`ExportFileFollower.run`: every line once, stamps rising."""
    lj = Lumberjack(tmp_path)
    lj.write(3)
    rotate_at_first_read(lj, monkeypatch)
    with following(lj) as (seen, stamps):
        pass
    assert seen == lj.written
    assert stamps == sorted(stamps)
