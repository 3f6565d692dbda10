"""Lines counted straight into the records they add to: parse, match and aggregate in one pass.

A stream repeats itself: the same pods reach the same few destinations, paths and binaries,
and once a (profile, pod) record has a rule, another event of it changes that rule alone: a
count, two times and a dirty mark (the record's events and last time are read from its rules,
PodDetections). Building an Event and a Match for it, and keys for two more lookups, was
most of the Python per event (bench/events.py). Here such a line goes from its decoded
fields to its record in two dict lookups: (policy, hook, pod namespace, target, port), all
that a match depends on (Matcher._answer), to the table of the matched rule's pods in that
namespace (Aggregator.indexed), then the pod's name to the rule's counts in its record.

A line of another kind (process_exec and process_exit, most of a real export), and a kprobe
on a hook detection does not read or without a policy (another TracingPolicy's), is counted
as ignored once decoded, as events._event_of decides it before it reads anything else. Every
other line takes the whole path, one line at a time and in order:
parse_line, then Matcher.match, then Aggregator.add or add_at, which also fill the tables.
That is the first line of a (rule, pod), a line the short path does not read (malformed, its
argument elsewhere, a process outside any pod), a line a record's stream position already
counts, and anything over a cap. tests/unit/detection/test_count.py holds this to the whole
path, line by line: the same records, stream positions, dirty marks and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from agentdetect.detection.aggregate import Aggregator, RuleStats
from agentdetect.detection.events import (
    HOOK_OF_FUNCTION,
    KILLED_ACTIONS,
    MAX_LINE_BYTES,
    DecodedLine,
    ParseStats,
    decode_line,
    is_other_kind,
    normalize_time,
    parse_decoded,
    parse_line,
)
from agentdetect.detection.match import Matcher

#: What a match depends on: policy, hook, pod namespace, target, port.
MatchKey = tuple[str, str, str, str, int]
#: The table of a key that matches no rule (its events are counted as unmatched).
_UNMATCHED: Final[dict[str, RuleStats]] = {}
#: Keys remembered before the memory starts again: the keys a stream repeats are few, but
#: paths and binaries come from the workload and need a bound.
_LIMIT = 65536


class LineCounter:
    """The counting path of one matcher and one aggregator: the Pipeline builds a new one when
    either is replaced, so that no remembered table outlives what it was read from."""

    def __init__(self, matcher: Matcher, aggregator: Aggregator) -> None:
        self.matcher = matcher
        self.aggregator = aggregator
        self._tables: dict[MatchKey, dict[str, RuleStats]] = {}

    def count(
        self,
        lines: Sequence[bytes | str],
        stats: ParseStats,
        stream: str | None = None,
        stamps: Sequence[int] = (),
    ) -> None:
        """Count a batch of lines in order; with the followed ``stream`` and each line's
        kubelet timestamp in ``stamps``, a line its record already counts is passed over."""
        tables, whole, dirty, unmatched_table = self._tables, self._whole, self.aggregator.dirty, _UNMATCHED
        decode, hooks, killed_actions = decode_line, HOOK_OF_FUNCTION, KILLED_ACTIONS
        counted = unmatched = ignored = 0
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE_BYTES or not line.isascii():
                whole(line, stats, stream, stamps, i)
                continue
            try:
                doc = decode(line)
            except (msgspec.MsgspecError, RecursionError):  # as events._parse_one (text that
                # has no UTF-8 is not ASCII: it took the whole path above)
                whole(line, stats, stream, stamps, i)
                continue
            # The checks of events._event_of for a line with its argument where Tetragon puts
            # it: a line that passes them is an event there, with these fields.
            kprobe = doc.process_kprobe
            if kprobe is None:
                if is_other_kind(doc):
                    # Another kind's event (process_exec and _exit are most of a real
                    # export): parse_line counts it as ignored, whatever else the line holds.
                    ignored += 1
                else:
                    whole(line, stats, stream, stamps, i, doc)
                continue
            hook = hooks.get(kprobe.function_name)
            policy = kprobe.policy_name
            if hook is None or not policy:
                # Another policy's kprobe on a hook detection does not read, or no policy:
                # ignored there too, whatever else the line holds.
                ignored += 1
                continue
            time = doc.time
            args = kprobe.args
            if time is None or not args:
                whole(line, stats, stream, stamps, i, doc)
                continue
            target = ""
            port = 0
            if hook == "tcp_connect":
                sock = args[0].sock_arg
                if sock is not None:
                    target, port = sock.daddr, sock.dport
            elif hook == "fd_install":
                file = args[1].file_arg if len(args) > 1 else None
                if file is not None:
                    target = file.path
            else:
                target = args[0].string_arg or ""
            pod = kprobe.process.pod
            if not target or pod is None:
                whole(line, stats, stream, stamps, i, doc)
                continue
            table = tables.get((policy, hook, pod.namespace, target, port))
            if table is None:
                whole(line, stats, stream, stamps, i, doc)
                continue
            if table is unmatched_table:
                unmatched += 1
                continue
            # A table holds only rules of entries the aggregator holds (forget_pod and
            # forget_profile take them out): without a stream the rule is all an event
            # updates, and its entry (another object, out of the cache) is not read.
            rule = table.get(pod.name)
            if rule is None:
                whole(line, stats, stream, stamps, i, doc)
                continue
            if stream is not None:
                entry = rule.entry
                if entry is None:
                    whole(line, stats, stream, stamps, i, doc)
                    continue
                stamp = stamps[i]
                # Aggregator.add_at's common case: a line after all its record counts.
                mark = entry.streams.get(stream)
                if mark is None or stamp <= mark.through:
                    whole(line, stats, stream, stamps, i, doc)
                    continue
                mark.through, mark.at_through, mark.to_skip = stamp, 1, 0
            if len(time) != 30:
                time = normalize_time(time)
            # Aggregator.add's lines for a rule the entry has (a test holds the two alike).
            rule.count += 1
            if time > rule.last:
                rule.last = time
            elif time < rule.first:
                rule.first = time
            if kprobe.action in killed_actions:
                rule.killed += 1
            if not rule.queued:
                key = rule.pod_key
                if key is not None:  # set with the entry (Aggregator.indexed)
                    rule.queued = True
                    dirty.add(key)
            counted += 1
        stats.lines += counted + unmatched + ignored
        stats.events += counted + unmatched
        stats.ignored += ignored
        self.matcher.unmatched += unmatched

    def _whole(
        self,
        line: bytes | str,
        stats: ParseStats,
        stream: str | None,
        stamps: Sequence[int],
        i: int,
        doc: DecodedLine | None = None,
    ) -> None:
        """One line (the ``i``-th of its batch) through parse, match and aggregate, remembering
        where its key leads; a line decode_line took (``doc``) is not decoded again."""
        stamp = stamps[i] if stream is not None else 0
        event = parse_line(line, stats) if doc is None else parse_decoded(doc, stats)
        if event is None:
            return
        match = self.matcher.match(event)
        key = (event.policy, event.hook, event.namespace, event.target, event.port)
        if len(self._tables) >= _LIMIT:
            self._tables.clear()
        if match is None:
            self._tables[key] = _UNMATCHED
            return
        if stream is None:
            self.aggregator.add(event, match)
        else:
            self.aggregator.add_at(event, match, stream, stamp)
        if event.pod:
            self._tables[key] = self.aggregator.indexed(match, event.namespace, event.pod)
