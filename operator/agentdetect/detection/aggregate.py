"""Per (profile, pod): per rule, a count, first and last seen, the action, and one example.

Memory is bounded by design: at most ``max_pods`` (profile, pod) entries and
``max_rules_per_pod`` rules each; events beyond the caps are counted, not stored, and a
deleted pod's state is dropped. Entries changed since the last flush are tracked so the
writer touches only those.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentdetect.detection.events import Event
from agentdetect.detection.match import Match
from agentdetect.policy.board import ProfileKey

PodKey = tuple[ProfileKey, str, str]  # (profile, pod namespace, pod name)


@dataclass(slots=True)
class RuleStats:
    hook: str
    count: int
    first: str
    last: str
    killed: int
    example_binary: str
    example_target: str
    #: The counting path's way on to the pod's entry from the rule (Aggregator.indexed sets
    #: both): the index table holds the rule itself, so an event reaches its counts through
    #: one object, not a tuple of three. Not part of the record (compare, repr).
    entry: PodDetections | None = field(default=None, compare=False, repr=False)
    pod_key: PodKey | None = field(default=None, compare=False, repr=False)
    #: Whether its entry's key is in Aggregator.dirty: set by the event that puts it there and
    #: cleared with the key (take_dirty), so an event reads the rule it updates and not its
    #: entry (one set insertion per flush, not per event). Not part of the record.
    queued: bool = field(default=False, compare=False, repr=False)

    @property
    def action(self) -> str:
        return "Killed" if self.killed else "Observed"


@dataclass(slots=True)
class StreamMark:
    """How far a record goes in one stream: the kubelet timestamp of its last counted line and
    how many counted lines carry exactly that timestamp (timestamps can repeat)."""

    through: int
    at_through: int = 1
    #: After a restore: lines at ``through`` still to pass over, as the stream is read again.
    to_skip: int = 0


def _counted(marks: dict[str, StreamMark], stream: str, stamp_ns: int) -> bool:
    """Whether a line at ``stamp_ns`` of ``stream`` is one the record already counts."""
    mark = marks.get(stream)
    if mark is None or stamp_ns > mark.through:
        return False
    if stamp_ns < mark.through:
        return True
    if mark.to_skip > 0:
        mark.to_skip -= 1
        return True
    return False


def _advance(marks: dict[str, StreamMark], stream: str, stamp_ns: int) -> None:
    """The record now counts the line at ``stamp_ns`` too."""
    mark = marks.get(stream)
    if mark is None or stamp_ns > mark.through:
        marks[stream] = StreamMark(stamp_ns)
    else:
        mark.at_through += 1


@dataclass(slots=True)
class PodDetections:
    """A (profile, pod) record. Its events and last time are its rules' sum and latest, read
    when asked (a flush, a scrape), not kept per event: an event updates its rule alone, and
    with thousands of pods the entry is one more object the cache no longer holds."""

    workload: str
    rules: dict[str, RuleStats] = field(default_factory=dict)
    #: What a restored record's summary counts beyond its rules (none in a record this writes:
    #: its summary is derived from its rules), kept so that its events go on from there.
    events_beyond_rules: int = 0
    #: A restored summary's last time (its rules' latest when they go further).
    last_restored: str = ""
    dropped_rules: int = 0
    #: Per Tetragon stream, how far the counts go.
    streams: dict[str, StreamMark] = field(default_factory=dict)
    #: A record written before records carried stream positions: it counts every line its
    #: writer had read, so a line whose event time is not after its last one is passed over.
    legacy: bool = False
    #: The node the pod runs on, as its events say (a label of its record).
    node: str = ""
    #: Its events and last time when take_dirty last took it. A profile's status reads these
    #: for every pod of the profile at each flush, under the pipeline's lock: one read a pod,
    #: where the summary itself is a pass over the rules, and the same counts as the records
    #: that flush writes (a change since puts its key in the dirty set, so its profile's
    #: status is written again at the next flush). None until taken.
    flushed: tuple[int, str] | None = field(default=None, compare=False, repr=False)

    @property
    def events(self) -> int:
        return self.events_beyond_rules + sum([rule.count for rule in self.rules.values()])

    @events.setter
    def events(self, total: int) -> None:
        """A restored summary's count: what it holds beyond its rules goes on from there."""
        self.events_beyond_rules = total - sum(rule.count for rule in self.rules.values())

    @property
    def last(self) -> str:
        return self.summary()[1]

    @last.setter
    def last(self, restored: str) -> None:
        self.last_restored = restored

    def summary(self) -> tuple[int, str]:
        """Its events and last time as of now, in one pass over its rules."""
        events, last = self.events_beyond_rules, self.last_restored
        for rule in self.rules.values():
            events += rule.count
            if rule.last > last:
                last = rule.last
        return events, last

    def as_flushed(self) -> tuple[int, str]:
        """Its events and last time as the records of its last flush have them (``flushed``),
        or as of now if no flush has taken it yet."""
        return self.flushed if self.flushed is not None else self.summary()


@dataclass(slots=True)
class HostDetections:
    """A profile's matches from processes outside any pod: no pod to own an AgentDetection, so
    they are summed per profile and reported in its status."""

    events: int = 0
    first: str = ""
    last: str = ""
    rules: dict[str, int] = field(default_factory=dict)
    example_binary: str = ""
    example_target: str = ""
    example_hook: str = ""
    node: str = ""
    #: Per Tetragon stream, how far the counts go (as PodDetections.streams).
    streams: dict[str, StreamMark] = field(default_factory=dict)


@dataclass
class AggregateStats:
    dropped_over_pod_cap: int = 0
    dropped_over_rule_cap: int = 0
    pods_forgotten: int = 0
    #: Lines at or before a record's stream position: already counted there.
    already_counted: int = 0


class Aggregator:
    def __init__(self, max_pods: int = 10_000, max_rules_per_pod: int = 64, node: str = "") -> None:
        self.max_pods = max_pods
        #: A node agent's node: its records are labelled with it (and listed back by it),
        #: whatever node name Tetragon's events carry.
        self.node = node
        self.max_rules_per_pod = max_rules_per_pod
        self.pods: dict[PodKey, PodDetections] = {}
        self.dirty: set[PodKey] = set()
        self.stats = AggregateStats()
        #: Counts of deleted pods' rules, so totals for metrics never go back (see rule_totals).
        self._retired: dict[tuple[ProfileKey, str, str], int] = {}
        self.host: dict[ProfileKey, HostDetections] = {}
        #: Profiles whose host detections changed since the last flush.
        self.host_dirty: set[ProfileKey] = set()
        #: (profile, rule, pod namespace) -> pod name -> the rule's counts in that pod's entry:
        #: the counting path's way straight to them (see indexed), where the (profile,
        #: namespace, pod) key and the pod's rules dict each cost a lookup in memory the cache no
        #: longer holds once pods number in the thousands. Holds only what ``pods`` holds:
        #: entries go when their pod or profile does.
        self._index: dict[tuple[ProfileKey, str, str], dict[str, RuleStats]] = {}

    def add_at(self, event: Event, match: Match, stream: str, stamp_ns: int) -> None:
        """``add`` for a line of a followed stream: a line at or before what the record (the
        (profile, pod) AgentDetection, or the profile's host-process status) already counts
        from that stream is not counted again."""
        if not event.pod:
            host = self.host.get(match.profile)
            if host is not None and _counted(host.streams, stream, stamp_ns):
                self.stats.already_counted += 1
                return
            self.add_host(event, match)
            _advance(self.host[match.profile].streams, stream, stamp_ns)
            return
        key = (match.profile, event.namespace, event.pod)
        pod = self.pods.get(key)
        if pod is not None:
            mark = pod.streams.get(stream)
            if mark is not None and stamp_ns > mark.through:
                # The common case, a line after everything the record counts: in line here,
                # as this runs once per matched event.
                self.add(event, match)
                mark.through, mark.at_through, mark.to_skip = stamp_ns, 1, 0
                return
            if pod.legacy and mark is None and event.time <= pod.last:
                self.stats.already_counted += 1
                return
            if _counted(pod.streams, stream, stamp_ns):
                self.stats.already_counted += 1
                return
        self.add(event, match)
        pod = self.pods.get(key)
        if pod is None:
            return  # over a cap: not counted, so no position either
        _advance(pod.streams, stream, stamp_ns)

    def restore(self, key: PodKey, pod: PodDetections) -> None:
        """Start from the record (an AgentDetection read back): counts go on from there."""
        if key not in self.pods and len(self.pods) < self.max_pods:
            pod.flushed = pod.summary()  # what the record says: written already
            self.pods[key] = pod

    def restore_host(self, profile: ProfileKey, host: HostDetections) -> None:
        """Start from the profile's status: host-process counts go on from there."""
        self.host.setdefault(profile, host)

    def add_host(self, event: Event, match: Match) -> None:
        host = self.host.get(match.profile)
        if host is None:
            host = self.host[match.profile] = HostDetections(first=event.time)
        host.events += 1
        host.rules[match.rule] = host.rules.get(match.rule, 0) + 1
        if event.time >= host.last:
            host.last = event.time
            host.example_binary, host.example_target = event.binary, event.target
            host.example_hook, host.node = event.hook, event.node
        host.first = min(host.first, event.time)
        self.host_dirty.add(match.profile)

    def add(self, event: Event, match: Match) -> None:
        if not event.pod:
            self.add_host(event, match)
            return
        time = event.time
        key = (match.profile, event.namespace, event.pod)
        pod = self.pods.get(key)
        if pod is None:
            if len(self.pods) >= self.max_pods:
                self.stats.dropped_over_pod_cap += 1
                return
            pod = self.pods[key] = PodDetections(event.workload, node=self.node or event.node)
        rule = pod.rules.get(match.rule)
        if rule is None:
            if len(pod.rules) >= self.max_rules_per_pod:
                pod.dropped_rules += 1
                self.stats.dropped_over_rule_cap += 1
                return
            rule = pod.rules[match.rule] = RuleStats(
                event.hook, 1, time, time, int(event.killed), event.binary, event.target
            )
        else:
            rule.count += 1
            # Streams from several nodes interleave: keep the true first and last.
            if time > rule.last:
                rule.last = time
            elif time < rule.first:
                rule.first = time
            if event.killed:
                rule.killed += 1
        if not rule.queued:
            rule.queued = True
            self.dirty.add(key)

    def indexed(self, match: Match, namespace: str, pod: str) -> dict[str, RuleStats]:
        """The index table of ``match``'s rule in ``namespace``: pod name to that rule's counts
        in the pod's entry (linked to the entry and its key), with ``pod`` in it once its entry
        has the rule. The counting path (detection.count) remembers the table itself, so a
        table this aggregator lets go of is emptied first (forget_profile): never a way to a
        dropped entry."""
        table = self._index.setdefault((match.profile, match.rule, namespace), {})
        key = (match.profile, namespace, pod)
        entry = self.pods.get(key)
        rule = None if entry is None else entry.rules.get(match.rule)
        if entry is not None and rule is not None:
            rule.entry, rule.pod_key = entry, key
            # One string object per pod name for all its tables (sys.intern: freed with its
            # last use): a lookup compares the decoded name with it, and a few thousand
            # strings stay in the cache where one per (rule, pod) did not.
            table[sys.intern(pod)] = rule
        return table

    def mark_dirty(self, key: PodKey) -> None:
        """Write this entry at the next flush (again: the last write failed)."""
        if key in self.pods:
            self.dirty.add(key)

    def forget_pod(self, namespace: str, name: str) -> int:
        """The pod is gone: drop its state for every profile."""
        keys = [k for k in self.pods if k[1] == namespace and k[2] == name]
        for k in keys:
            for rule_name, rule in self.pods[k].rules.items():
                retired_key = (k[0], rule_name, rule.hook)
                self._retired[retired_key] = self._retired.get(retired_key, 0) + rule.count
                table = self._index.get((k[0], rule_name, namespace))
                if table is not None:
                    table.pop(name, None)
                rule.entry = None  # the entry and its rules refer to each other: no cycle left
            del self.pods[k]
            self.dirty.discard(k)
        self.stats.pods_forgotten += len(keys)
        return len(keys)

    def forget_profile(self, profile: ProfileKey) -> None:
        for t in [t for t in self._index if t[0] == profile]:
            self._index.pop(t).clear()
        for k in [k for k in self.pods if k[0] == profile]:
            for rule in self.pods.pop(k).rules.values():
                rule.entry = None
            self.dirty.discard(k)
        for t in [t for t in self._retired if t[0] == profile]:
            del self._retired[t]
        self.host.pop(profile, None)
        self.host_dirty.discard(profile)

    def take_host_dirty(self) -> set[ProfileKey]:
        dirty, self.host_dirty = self.host_dirty, set()
        return dirty

    def rule_totals(self) -> dict[tuple[ProfileKey, str, str], int]:
        """Stored events per (profile, rule, hook), deleted pods included. Summed when asked (a
        metrics scrape) rather than kept per event: the event path stays as lean as it was."""
        totals = dict(self._retired)
        for (profile, _, _), pod in self.pods.items():
            for rule_name, rule in pod.rules.items():
                key = (profile, rule_name, rule.hook)
                totals[key] = totals.get(key, 0) + rule.count
        return totals

    def take_dirty(self) -> list[PodKey]:
        keys = sorted(self.dirty, key=lambda k: (k[0][0], k[0][1] or "", k[0][2], k[1], k[2]))
        self.dirty.clear()
        for k in keys:
            pod = self.pods.get(k)
            if pod is not None:
                for rule in pod.rules.values():
                    rule.queued = False
                pod.flushed = pod.summary()
        return keys

    def by_profile(self) -> Iterator[tuple[ProfileKey, list[tuple[PodKey, PodDetections]]]]:
        grouped: dict[ProfileKey, list[tuple[PodKey, PodDetections]]] = {}
        for key, pod in self.pods.items():
            grouped.setdefault(key[0], []).append((key, pod))
        yield from grouped.items()
