"""AgentDetections and profile detection status, built from the aggregator's state and read
back from the API: pure functions, no I/O (the writer does the writes)."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from agentdetect.api.models import (
    AgentDetection,
    DetectionSummary,
    HostProcessDetections,
    ObjectRef,
    PodDetectionSummary,
    ProfileDetections,
    RuleDetection,
    StreamPosition,
)
from agentdetect.detection.aggregate import HostDetections, PodDetections, PodKey, RuleStats, StreamMark
from agentdetect.detection.sources import parse_timestamp
from agentdetect.policy.board import ProfileKey

_KIND_SHORT = {"AgentDetectionProfile": "adp", "ClusterAgentDetectionProfile": "cadp"}


#: The node of the record's pod: a node agent lists its own records by it.
LABEL_NODE = "agentdetect.io/node"


def detection_name(key: PodKey) -> str:
    (kind, pns, pname), _, pod = key
    digest = hashlib.sha256(f"{kind}/{pns or ''}/{pname}/{key[1]}/{pod}".encode()).hexdigest()[:6]
    base = f"{pod}.{_KIND_SHORT[kind]}-{pname}"
    return f"{base[: 253 - 7].rstrip('-.')}-{digest}"


_VERBS = {"tcp_connect": "connected to", "fd_install": "opened", "execve": "executed"}
#: Stream positions kept per record: Tetragon pods come and go (restarts, node changes).
MAX_STREAMS = 8


def _example(binary: str, target: str, hook: str) -> str:
    return f"{binary} {_VERBS[hook]} {target}"[:512]


def _ns_to_rfc3339(stamp_ns: int) -> str:
    seconds, nanos = divmod(stamp_ns, 1_000_000_000)
    whole = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos:09d}Z"


class Positions(Protocol):
    """How a record writes and reads how far into a stream it counts: the stamps the
    aggregator compares are integers; in the record they are a kubelet timestamp (stream mode)
    or a position in Tetragon's export file (node mode, detection.exportfile)."""

    def encode(self, stream: str, stamp: int, lines_at: int) -> StreamPosition | None: ...

    def decode(self, position: StreamPosition) -> int | None: ...


class KubeletPositions:
    """Stream mode: the kubelet's per-line timestamp, in nanoseconds."""

    def encode(self, stream: str, stamp: int, lines_at: int) -> StreamPosition | None:
        return StreamPosition(stream=stream, through=_ns_to_rfc3339(stamp), lines_at_through=lines_at)

    def decode(self, position: StreamPosition) -> int | None:
        if position.through is None:
            return None
        try:
            return parse_timestamp(position.through.encode())
        except ValueError:
            return None


KUBELET = KubeletPositions()


def record_of(obj: Mapping[str, Any], positions: Positions = KUBELET) -> tuple[PodKey, PodDetections] | None:
    """An AgentDetection read back into the aggregator's terms: where counting resumes after a
    restart or a failover. None for an object that is not one of ours."""
    try:
        doc = AgentDetection.model_validate(obj)
    except ValidationError:
        return None
    profile = doc.profile
    if profile.kind not in ("AgentDetectionProfile", "ClusterAgentDetectionProfile"):
        return None
    key: PodKey = ((profile.kind, profile.namespace, profile.name), doc.pod.namespace or "", doc.pod.name)
    labels = (obj.get("metadata") or {}).get("labels") or {}
    pod = PodDetections(doc.workload, node=labels.get(LABEL_NODE, ""))
    for d in doc.detections:
        binary, _, target = d.example.partition(f" {_VERBS[d.hook]} ")
        pod.rules[d.rule] = RuleStats(
            d.hook, d.count, d.first_seen, d.last_seen, int(d.action == "Killed"), binary, target
        )
    pod.events = doc.summary.events
    pod.last = doc.summary.last_seen or ""
    pod.legacy = not doc.streams and pod.events > 0
    for s in doc.streams:
        through = positions.decode(s)
        if through is not None:
            pod.streams[s.stream] = StreamMark(through, s.lines_at_through, s.lines_at_through)
    return key, pod


def host_record_of(
    body: Mapping[str, Any], positions: Positions = KUBELET
) -> tuple[ProfileKey, HostDetections] | None:
    """A profile's host-process counts read back from its status, as :func:`record_of` does
    for an AgentDetection. None when it has none (or they cannot be read)."""
    raw = ((body.get("status") or {}).get("detections") or {}).get("hostProcesses")
    if not raw:
        return None
    try:
        doc = HostProcessDetections.model_validate(raw)
    except ValidationError:
        return None
    meta = body.get("metadata") or {}
    key: ProfileKey = (str(body.get("kind")), meta.get("namespace"), str(meta.get("name")))
    host = HostDetections(events=doc.events, first=doc.first_seen or "", last=doc.last_seen or "")
    # Per-rule counts are not in the status; the rules stay listed, in their order.
    host.rules = {r: 0 for r in doc.targets.split(", ") if r}
    example = doc.example
    if example.startswith("on ") and ": " in example:
        host.node, _, example = example[3:].partition(": ")
    for hook, verb in _VERBS.items():
        binary, sep, target = example.partition(f" {verb} ")
        if sep:
            host.example_binary, host.example_target, host.example_hook = binary, target, hook
            break
    for s in doc.streams or []:
        through = positions.decode(s)
        if through is not None:
            host.streams[s.stream] = StreamMark(through, s.lines_at_through, s.lines_at_through)
    return key, host


def _stream_positions(streams: Mapping[str, StreamMark], positions: Positions) -> list[StreamPosition]:
    encoded = (
        positions.encode(stream, mark.through, mark.at_through)
        for stream, mark in sorted(streams.items(), key=lambda kv: -kv[1].through)
    )
    return [p for p in encoded if p is not None][:MAX_STREAMS]


def _by_count(pod: PodDetections) -> list[str]:
    """Rule names, most frequent first: the same order wherever targets are listed."""
    return [r for r, _ in sorted(pod.rules.items(), key=lambda kv: (-kv[1].count, kv[0]))]


def detection_object(key: PodKey, pod: PodDetections, positions: Positions = KUBELET) -> AgentDetection:
    (kind, pns, pname), namespace, name = key
    rules = sorted(pod.rules.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return AgentDetection(
        metadata={
            "name": detection_name(key),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "agentdetect",
                "agentdetect.io/profile-kind": kind,
                "agentdetect.io/profile-name": pname,
                **({"agentdetect.io/profile-namespace": pns} if pns else {}),
                "agentdetect.io/pod": name[:63].rstrip("-._"),
                **({LABEL_NODE: pod.node[:63].rstrip("-._")} if pod.node else {}),
            },
        },
        pod=ObjectRef(kind="Pod", namespace=namespace, name=name),
        profile=ObjectRef(kind=kind, namespace=pns, name=pname),
        workload=pod.workload,
        summary=DetectionSummary(
            rules=len(rules),
            targets=", ".join(r for r, _ in rules)[:1024],
            events=pod.events,
            last_seen=pod.last or None,
            action="Killed" if any(s.killed for _, s in rules) else "Observed",
        ),
        streams=_stream_positions(pod.streams, positions),
        detections=[
            RuleDetection.model_validate(
                {
                    "rule": r,
                    "hook": s.hook,
                    "count": s.count,
                    "firstSeen": s.first,
                    "lastSeen": s.last,
                    "action": s.action,
                    "example": _example(s.example_binary, s.example_target, s.hook),
                }
            )
            for r, s in rules
        ],
    )


def host_detections(
    host: HostDetections | None, positions: Positions = KUBELET
) -> HostProcessDetections | None:
    if host is None:
        return None
    example = _example(host.example_binary, host.example_target, host.example_hook)
    return HostProcessDetections(
        events=host.events,
        first_seen=host.first or None,
        last_seen=host.last or None,
        targets=", ".join(r for r, _ in sorted(host.rules.items(), key=lambda kv: (-kv[1], kv[0])))[:256],
        example=(f"on {host.node}: {example}" if host.node else example)[:512],
        streams=_stream_positions(host.streams, positions) or None,
    )


def profile_detections(
    pods: list[tuple[PodKey, PodDetections]], cap: int, host: HostDetections | None = None
) -> ProfileDetections:
    """The profile-level summary; the per-pod list keeps the ``cap`` most recently active pods."""
    # Each pod's summary as its last flush wrote it: one read a pod, not a pass over its rules.
    summed = [(key, pod, *pod.as_flushed()) for key, pod in pods]
    recent = sorted(summed, key=lambda row: row[3], reverse=True)
    return ProfileDetections(
        pods=len(pods),
        events=sum(row[2] for row in summed),
        last_detection=recent[0][3] if recent else None,
        by_pod=[
            PodDetectionSummary(
                pod=k[2],
                namespace=k[1],
                workload=p.workload,
                targets=", ".join(_by_count(p))[:256],
                events=events,
                last_seen=last or None,
            )
            for k, p, events, last in recent[:cap]
        ],
        truncated=len(recent) > cap,
        host_processes=host_detections(host),
    )
