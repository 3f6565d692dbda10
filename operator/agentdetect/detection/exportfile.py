"""Tetragon's JSON export file on the node, followed across rotations (the node mode's source).

How Tetragon writes it (cmd/tetragon/main.go and vendor/github.com/cilium/lumberjack/v2/
lumberjack.go, v1.7.0): one file (``exportFilename``, by default
``/var/run/cilium/tetragon/tetragon.log``); past ``exportFileMaxSizeMB`` it is renamed to
``tetragon-<UTC 2006-01-02T15-04-05.000>.log`` and a new empty file takes its name; with
``exportFileCompress`` the backup is later gzipped (``.gz.tmp``, renamed to ``.gz``, the plain
backup removed); past ``exportFileMaxBackups`` the oldest backups are deleted.

A position names a file by its *fingerprint* (a hash of its first line, the same before and
after renaming or compressing) and a byte offset in its uncompressed content. Ordered by the
backups' timestamps, then the current file, positions become integers (:meth:`Segments.stamp`)
that the aggregator's per-record marks compare, exactly as the kubelet's timestamps in stream
mode: a restart resumes after what a record counts, in whichever file that content now is.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agentdetect.api.models import StreamPosition

log = logging.getLogger(__name__)

#: Offsets fit below this; a segment's ordinal sits above it.
OFFSET_BITS = 40
#: A line longer than this is skipped (it would be an oversized event anyway).
MAX_LINE = 1 << 20
#: Bytes of the first line that identify a file: all of it. Tetragon writes ``node_name`` and
#: ``time`` (nanoseconds) last, after the process and parent, which can fill kilobytes: two
#: files starting with events of one process differ only there.
FINGERPRINT_BYTES = MAX_LINE
#: Passes over the directory after which a backup whose first line cannot be read (a corrupt
#: or truncated .gz) is given up on, rather than holding every newer file back.
UNREADABLE_AFTER = 25


def fingerprint(first_line: bytes) -> str:
    return hashlib.sha256(first_line[:FINGERPRINT_BYTES]).hexdigest()[:16]


@dataclass(frozen=True)
class Segment:
    path: Path
    #: Backups: their rotation time as named; the current file sorts last.
    order: str
    compressed: bool

    def open(self) -> BinaryIO:
        if self.compressed:
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        return self.path.open("rb")

    def first_line(self) -> bytes | None:
        """The file's first complete line, or None while it has none (empty, or being written)."""
        try:
            with self.open() as fh:
                line = fh.readline(FINGERPRINT_BYTES + 1)
        except (OSError, EOFError):
            return None
        return line if line.endswith(b"\n") or len(line) > FINGERPRINT_BYTES else None


def list_segments(current: Path) -> list[Segment]:
    """The export's files, oldest first: backups by their timestamp, then the current file."""
    stem, ext = current.stem, current.suffix
    pattern = re.compile(
        rf"^{re.escape(stem)}-(\d{{4}}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{{3}}){re.escape(ext)}(\.gz)?$"
    )
    found: dict[str, Segment] = {}
    try:
        names = os.listdir(current.parent)
    except FileNotFoundError:
        names = []
    for name in names:
        m = pattern.match(name)
        if m is None:
            continue
        stamp, gz = m.group(1), bool(m.group(2))
        # While compressing, both exist for a moment: the plain one is complete, prefer it.
        if stamp in found and not found[stamp].compressed:
            continue
        found[stamp] = Segment(current.parent / name, stamp, gz)
    out = [found[k] for k in sorted(found)]
    if current.exists():
        out.append(Segment(current, "~current", False))
    return out


def rotated_since(current: Path, listed: list[Segment]) -> bool:
    """Whether a backup is on disk now that ``listed`` (an earlier listing) did not have: a
    rotation between the two. Renamed to .gz keeps its timestamp; deleted old ones don't count."""
    before = {seg.order for seg in listed}
    return any(seg.order not in before for seg in list_segments(current) if seg.path != current)


@dataclass(frozen=True)
class FilePosition:
    """After the line ending at ``offset`` in the file whose first line hashes to ``file``."""

    file: str
    offset: int


class Segments:
    """Fingerprint <-> ordinal, in rotation order; kept current as files rotate."""

    def __init__(self) -> None:
        self._ordinal: dict[str, int] = {}
        self._by_ordinal: dict[int, str] = {}
        self._lock = threading.Lock()

    def ordinal(self, fp: str) -> int:
        with self._lock:
            found = self._ordinal.get(fp)
            if found is None:
                found = self._ordinal[fp] = len(self._ordinal) + 1
                self._by_ordinal[found] = fp
            return found

    def count(self) -> int:
        with self._lock:
            return len(self._ordinal)

    def known(self, fp: str) -> bool:
        with self._lock:
            return fp in self._ordinal

    def stamp(self, position: FilePosition) -> int:
        """Comparable: a later file, or later in the same file, is larger. A file no longer on
        disk (deleted by exportFileMaxBackups) precedes everything that is: -1."""
        if not self.known(position.file):
            return -1
        return (self.ordinal(position.file) << OFFSET_BITS) | position.offset

    def position(self, stamp: int) -> FilePosition:
        with self._lock:
            fp = self._by_ordinal[stamp >> OFFSET_BITS]
        return FilePosition(fp, stamp & ((1 << OFFSET_BITS) - 1))


#: (line without its newline, stamp) for each complete line of one read, in order: one call
#: per read (up to 64 KiB), so the pipeline takes its lock once per batch, not per line.
LineSink = Callable[[list[tuple[bytes, int]]], None]


class ExportFileFollower:
    """Reads every complete line of the export once, oldest file first, then follows the
    current file through rotations. A rotated file is read to its end through the open
    descriptor, whatever it is renamed, compressed or deleted to meanwhile."""

    def __init__(self, current: Path, sink: LineSink, poll: float = 0.2) -> None:
        self.current = current
        self.sink = sink
        self.poll = poll
        self.segments = Segments()
        self._stop = threading.Event()
        self.lines = 0
        self.skipped_long = 0
        #: Backups given up on (unreadable), and failed reads per backup so far.
        self.unreadable = 0
        self._failures: dict[Path, int] = {}
        #: Whether the last :meth:`index` registered every file on disk.
        self.complete = True

    def index(self) -> list[tuple[Segment, str]]:
        """The files on disk now, oldest first, with their fingerprints registered in that
        order. A backup whose first line cannot be read now (renamed to .gz, or deleted,
        between the listing and the read) ends the pass: a file registered after a newer one
        would sort after it. :attr:`complete` says whether the pass reached the end."""
        out = []
        self.complete = True
        listed = list_segments(self.current)
        for seg in listed:
            first = seg.first_line()
            if first is None:
                if seg.path == self.current:
                    break  # empty so far: nothing after it
                failures = self._failures.get(seg.path, 0) + 1
                self._failures[seg.path] = failures
                if failures == UNREADABLE_AFTER:
                    self.unreadable += 1
                    log.warning("%s: its first line cannot be read; its lines are not counted", seg.path)
                if failures >= UNREADABLE_AFTER:
                    continue
                self.complete = False
                break
            self._failures.pop(seg.path, None)
            if seg.path == self.current and rotated_since(self.current, listed):
                # The first line read is a newer file's than the listing's current one: the
                # file rotated away meanwhile would take an ordinal after it.
                self.complete = False
                break
            fp = fingerprint(first)
            self.segments.ordinal(fp)
            out.append((seg, fp))
        return out

    def index_settled(self, attempts: int = 50) -> list[tuple[Segment, str]]:
        """:meth:`index` until a pass registers every file on disk (at start, before positions
        are decoded: a file missing from the index would read as deleted)."""
        found = self.index()
        for _ in range(attempts):
            if self.complete or self._stop.is_set():
                break
            self._stop.wait(self.poll)
            found = self.index()
        return found

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until :meth:`stop`: every backup on disk not read yet, in order, then the current
        file until it is rotated; again. A rotation between the two is caught by the next pass."""
        done: set[str] = set()
        while not self._stop.is_set():
            self.drain_backups(done)
            self._follow_current(done)

    def drain_backups(self, done: set[str]) -> None:
        for seg, fp in self.index():
            if seg.path == self.current or fp in done:
                continue
            try:
                with seg.open() as fh:
                    self._drain(fh, fp, 0, done)
            except (OSError, EOFError):  # deleted or being compressed: its other name is next
                failures = self._failures.get(seg.path, 0) + 1
                self._failures[seg.path] = failures
                if failures >= UNREADABLE_AFTER:  # a corrupt .gz: do not hold the rest back
                    self.unreadable += 1
                    log.warning("%s cannot be read to its end; the rest of it is not counted", seg.path)
                    done.add(fp)
                    continue
                self._stop.wait(self.poll)
                return  # the newer files wait for it: the next pass tries again

    def _follow_current(self, done: set[str]) -> None:
        fh = self._open_current()
        if fh is None:
            self._stop.wait(self.poll)
            return
        with fh:
            if self._pending(fh, done):
                self._stop.wait(self.poll / 4)
                return  # backups older than this file came meanwhile: they are read first
            first = self._wait_first_line(fh)
            if first is None:
                return
            fp = fingerprint(first)
            self.segments.ordinal(fp)
            if fp in done:
                self._stop.wait(self.poll)
                return
            fh.seek(0)
            inode = os.fstat(fh.fileno()).st_ino
            offset = 0
            partial = b""
            while not self._stop.is_set():
                chunk = fh.read(1 << 16)
                if chunk:
                    partial, offset = self._lines(partial + chunk, offset - len(partial), fp)
                    continue
                if self._rotated(inode):
                    # Renamed away: what is left in it is read through this descriptor.
                    rest = fh.read()
                    partial, offset = self._lines(partial + rest, offset - len(partial), fp)
                    done.add(fp)
                    return
                self._stop.wait(self.poll)

    def _pending(self, fh: BinaryIO, done: set[str]) -> bool:
        """Whether a backup not read yet is on disk, other than the file ``fh`` has open: the
        files rotated between the last pass over the backups and opening the current one.
        Reading the current file first would put their lines after its own, and a position
        past them would then pass them over as counted."""
        inode = os.fstat(fh.fileno()).st_ino
        found = self.index()
        if not self.complete:
            return True
        for seg, fp in found:
            if seg.path == self.current or fp in done:
                continue
            try:
                if seg.path.stat().st_ino == inode:
                    continue  # the open file itself, renamed since
            except FileNotFoundError:
                continue
            return True
        return False

    def _open_current(self) -> BinaryIO | None:
        try:
            return self.current.open("rb")
        except FileNotFoundError:
            return None

    def _wait_first_line(self, fh: BinaryIO) -> bytes | None:
        while not self._stop.is_set():
            fh.seek(0)
            line = fh.readline(FINGERPRINT_BYTES + 1)
            if line.endswith(b"\n") or len(line) > FINGERPRINT_BYTES:
                return line
            self._stop.wait(self.poll)
        return None

    def _rotated(self, inode: int) -> bool:
        try:
            return self.current.stat().st_ino != inode
        except FileNotFoundError:
            return True

    def _drain(self, fh: BinaryIO, fp: str, start: int, done: set[str]) -> None:
        offset, partial = start, b""
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            partial, offset = self._lines(partial + chunk, offset - len(partial), fp)
            if self._stop.is_set():
                return
        done.add(fp)

    def _lines(self, data: bytes, base: int, fp: str) -> tuple[bytes, int]:
        """Emit each complete line of ``data`` (which starts at ``base``); returns the partial
        tail and the offset just after the data."""
        ordinal = self.segments.ordinal(fp) << OFFSET_BITS
        *lines, tail = data.split(b"\n")
        batch: list[tuple[bytes, int]] = []
        position = ordinal | base
        for line in lines:
            position += len(line) + 1  # just after its newline
            if len(line) > MAX_LINE:
                self.skipped_long += 1
                continue
            batch.append((line, position))
        if batch:
            self.lines += len(batch)
            self.sink(batch)
        if len(tail) > MAX_LINE:
            self.skipped_long += 1
            tail = b""
        return tail, base + len(data)


def read_all(current: Path) -> tuple[list[tuple[bytes, int]], Segments]:
    """Every complete line of every file on disk now, oldest first, with its stamp."""
    out: list[tuple[bytes, int]] = []
    follower = ExportFileFollower(current, out.extend)
    done: set[str] = set()
    follower.drain_backups(done)
    first = Segment(current, "~current", False).first_line() if current.exists() else None
    if first is not None:
        with current.open("rb") as fh:
            follower._drain(fh, fingerprint(first), 0, done)
    return out, follower.segments


class FilePositions:
    """Node mode's :class:`~agentdetect.detection.records.Positions`: stamps are ordinals of
    the files on disk and offsets in them; records carry (fingerprint, offset)."""

    def __init__(self, segments: Segments) -> None:
        self.segments = segments

    def encode(self, stream: str, stamp: int, lines_at: int) -> StreamPosition | None:
        if stamp < 0:
            return None
        try:
            position = self.segments.position(stamp)
        except KeyError:  # not a stamp of this node's files
            return None
        return StreamPosition(stream=stream, file=position.file, offset=position.offset, lines_at_through=1)

    def decode(self, position: StreamPosition) -> int | None:
        if position.file is None or position.offset is None:
            return None
        return self.segments.stamp(FilePosition(position.file, position.offset))
