"""The event pipeline: lines in, per-pod detections aggregated. No I/O here.

The profiles it matches against come from a ProfileBoard (policy.board) that the reconciler
keeps current (spec, targets, resolved addresses: exactly what was rendered), so a detection
always names the rule of the policy that produced it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable, Sequence
from itertools import islice

from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.count import LineCounter
from agentdetect.detection.events import ParseStats
from agentdetect.detection.match import Matcher
from agentdetect.policy.board import ProfileBoard

#: Lines parsed per call in feed_many: large enough that the call costs nothing per line,
#: small enough that the events list stays in cache.
_BATCH = 256


def tune_gc() -> None:
    """For the long-running event loop (``run``, ``replay``, the benchmark): every parsed event
    allocates a dozen short-lived dicts, which keeps triggering the cyclic collector over the
    long-lived aggregation state. Freezing what exists at start-up and collecting the youngest
    generation less often removes that cost (about a tenth of the time per event); memory is
    still reclaimed by reference counting, and the bound on pods and rules is unchanged."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Pipeline:
    def __init__(self, board: ProfileBoard, aggregator: Aggregator | None = None) -> None:
        self.board = board
        self.aggregator = aggregator or Aggregator()
        self.stats = ParseStats()
        self.lock = threading.Lock()  # held while feeding and while a writer takes a snapshot
        self._version = -1
        self._matcher = Matcher([])
        self._counter = LineCounter(self._matcher, self.aggregator)

    def _current_matcher(self) -> Matcher:
        if self.board.version != self._version:
            self._version, states = self.board.snapshot()
            unmatched = self._matcher.unmatched
            self._matcher = Matcher(states)
            self._matcher.unmatched = unmatched
        return self._matcher

    @property
    def unmatched(self) -> int:
        return self._matcher.unmatched

    def _current_counter(self) -> LineCounter:
        """The counting path of the current matcher and aggregator (either can be replaced: a
        profile change, a restore from the records)."""
        matcher = self._current_matcher()
        counter = self._counter
        if counter.matcher is not matcher or counter.aggregator is not self.aggregator:
            counter = self._counter = LineCounter(matcher, self.aggregator)
        return counter

    def feed(self, line: bytes | str, stream: str | None = None, stamp_ns: int = 0) -> None:
        """One line; with the followed Tetragon ``stream`` it came from and its kubelet
        timestamp, a line the (profile, pod) record already counts is passed over."""
        with self.lock:
            self._current_counter().count((line,), self.stats, stream, (stamp_ns,))

    def feed_many(self, lines: Iterable[bytes | str]) -> None:
        """The hot loop for files and benchmarks: one lock and one matcher check per batch."""
        with self.lock:
            count, stats = self._current_counter().count, self.stats
            it = iter(lines)
            while batch := list(islice(it, _BATCH)):
                count(batch, stats)

    def feed_stream(self, batch: Sequence[tuple[bytes | str, int]], stream: str) -> None:
        """:meth:`feed` for a batch of one stream's lines with their positions (the node
        agent's reads of the export file): one lock and one matcher check per batch."""
        with self.lock:
            lines = [line for line, _ in batch]
            self._current_counter().count(lines, self.stats, stream, [stamp for _, stamp in batch])
