"""Parse Tetragon's JSON export (one event per line, as ``kubectl logs ds/tetragon -c
export-stdout`` prints it) into the few fields detection needs.

Only ``process_kprobe`` events of our three hooks matter. Everything else is counted and
skipped, never fatal: a log stream is untrusted input and a bad line must not stop the
pipeline. A typed decoder (msgspec) materialises only the fields detection reads and skips
the rest (process and parent details, capabilities, labels) in C: building a Python dict of
every event and walking it was most of the cost per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import orjson

#: Lines longer than this are skipped unparsed (a runaway line must not cost a large parse).
MAX_LINE_BYTES = 256 * 1024

HOOK_OF_FUNCTION = {
    "tcp_connect": "tcp_connect",
    "fd_install": "fd_install",
    "sys_execve": "execve",
    "__x64_sys_execve": "execve",
    "__arm64_sys_execve": "execve",
}
KILLED_ACTIONS = frozenset({"KPROBE_ACTION_SIGKILL", "KPROBE_ACTION_OVERRIDE"})


class Event(msgspec.Struct, gc=False):
    """One detection-relevant kprobe event. A Struct, not a dataclass: built once per event in
    C (a dataclass's __init__ is Python code, twice the cost), and outside the cyclic
    collector's bookkeeping (strings, an int and a bool cannot form a cycle)."""

    policy: str
    hook: str
    #: Both empty for a process outside any pod (a ClusterAgentDetectionProfile with
    #: hostProcesses, or a policy not rendered by agentdetect).
    namespace: str
    pod: str
    workload: str
    binary: str
    #: Destination address (tcp_connect), file path (fd_install) or executed file (execve).
    target: str
    port: int
    killed: bool
    #: RFC 3339, always with nine fractional digits (see :func:`normalize_time`), so that
    #: string comparison is time order.
    time: str
    node: str


@dataclass
class ParseStats:
    lines: int = 0
    events: int = 0
    ignored: int = 0  # valid Tetragon events of other kinds or hooks
    malformed: int = 0
    truncated: int = 0
    unknown: int = 0
    oversized: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


#: What a process outside any pod has for a pod: Tetragon leaves the "pod" key out.
_NO_POD: dict[str, str] = {"namespace": "", "name": ""}


def _first_arg(args: list[Any], key: str) -> Any:
    for arg in args:
        if key in arg:
            return arg[key]
    return None


def normalize_time(stamp: str) -> str:
    """Tetragon writes protobuf-JSON timestamps with 0, 3, 6 or 9 fractional digits; padded to
    nine they compare correctly as strings ("12:00:01Z" sorts after "12:00:01.5Z" otherwise)."""
    if len(stamp) == 30 or not stamp.endswith("Z") or len(stamp) < 20:
        return stamp
    main, frac = stamp[:19], stamp[20:-1] if stamp[19] == "." else ""
    return f"{main}.{frac:0<9}Z"


def parse_line_reference(line: bytes | str, stats: ParseStats) -> Event | None:
    """The parser before typed decoding: a full orjson document, walked by hand. Kept as the
    oracle of the differential test (tests/unit/detection/test_typed_decoder.py) that holds
    :func:`parse_line` to the same answers, line by line."""
    stats.lines += 1
    if len(line) > MAX_LINE_BYTES:
        stats.oversized += 1
        return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        # A line cut off mid-object (a dropped stream, a partial write) is not the same problem
        # as garbage: the JSON is fine until the line ends. orjson's position counts characters.
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        stripped = text.rstrip()
        if stripped.lstrip()[:1] == "{" and exc.pos >= len(stripped):
            stats.truncated += 1
        else:
            stats.malformed += 1
        return None
    if not isinstance(doc, dict):
        stats.malformed += 1
        return None
    kprobe = doc.get("process_kprobe")
    if kprobe is None:
        if any(k in doc for k in OTHER_KINDS):
            stats.ignored += 1
        else:
            stats.unknown += 1
        return None
    try:
        hook = HOOK_OF_FUNCTION.get(kprobe["function_name"])
        policy = kprobe.get("policy_name")
        process = kprobe["process"]
        pod = process.get("pod") or _NO_POD
        if hook is None or not policy:
            stats.ignored += 1
            return None
        args: list[Any] = kprobe.get("args") or []
        port = 0
        if hook == "tcp_connect":
            sock = args[0].get("sock_arg") if args else None
            if sock is None:
                sock = _first_arg(args, "sock_arg") or {}
            target = sock.get("daddr", "")
            port = int(sock.get("dport", 0))
        elif hook == "fd_install":
            file = args[1].get("file_arg") if len(args) > 1 else None
            if file is None:
                file = _first_arg(args, "file_arg") or {}
            target = file.get("path", "")
        else:
            target = (args[0].get("string_arg") if args else None) or _first_arg(args, "string_arg") or ""
        if not target:
            stats.malformed += 1
            return None
        namespace, name, binary, time = pod["namespace"], pod["name"], process["binary"], doc["time"]
        workload = pod.get("workload") or ""
        node = doc.get("node_name") or ""
        # Everything that later becomes a dict key or is compared must be a string: a
        # wrong-typed field is a malformed line here, not an exception further down.
        if not (
            type(policy) is str
            and type(target) is str
            and type(namespace) is str
            and type(name) is str
            and type(binary) is str
            and type(time) is str
            and type(workload) is str
            and type(node) is str
        ):
            stats.malformed += 1
            return None
        # Positional: measurably cheaper than keywords on the per-event path.
        event = Event(
            policy,
            hook,
            namespace,
            name,
            workload,
            binary,
            target,
            port,
            kprobe.get("action") in KILLED_ACTIONS,
            time if len(time) == 30 else normalize_time(time),  # nine digits already: no call
            node,
        )
        stats.events += 1
        return event
    except (AttributeError, KeyError, TypeError, ValueError):
        stats.malformed += 1
        return None


# ---- typed decoding: only what detection reads ---------------------------------------------
# Every Struct here is gc=False: decoded JSON is a tree (strings, numbers, nested Structs and
# lists of them), so none can be part of a reference cycle, and leaving them out of the cyclic
# collector's bookkeeping saves an allocation-time cost on each of the several per line.


class _Pod(msgspec.Struct, gc=False):
    namespace: str
    name: str
    workload: str = ""


class _Process(msgspec.Struct, gc=False):
    binary: str
    pod: _Pod | None = None


#: Integers orjson reads exactly (it does up to 2**64 - 1; msgspec's bounds stop at int64's):
#: beyond, orjson reads a float (so the reference parser's port is that float's int) where
#: msgspec reads the exact value. Outside this range the typed decode refuses the line and
#: the reference parser answers.
_ExactInt = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Sock(msgspec.Struct, gc=False):
    daddr: str = ""
    dport: _ExactInt = 0


class _File(msgspec.Struct, gc=False):
    path: str = ""


class _Arg(msgspec.Struct, gc=False):
    sock_arg: _Sock | None = None
    file_arg: _File | None = None
    string_arg: str | None = None


#: Every KprobeAction Tetragon names (tetragon.proto's enum, 0 to 15, as listed in
#: docs/content/en/docs/reference/grpc-api.md): another policy's kprobe may carry any of them.
_KprobeAction = Literal[
    "KPROBE_ACTION_UNKNOWN",
    "KPROBE_ACTION_POST",
    "KPROBE_ACTION_FOLLOWFD",
    "KPROBE_ACTION_SIGKILL",
    "KPROBE_ACTION_UNFOLLOWFD",
    "KPROBE_ACTION_OVERRIDE",
    "KPROBE_ACTION_COPYFD",
    "KPROBE_ACTION_GETURL",
    "KPROBE_ACTION_DNSLOOKUP",
    "KPROBE_ACTION_NOPOST",
    "KPROBE_ACTION_SIGNAL",
    "KPROBE_ACTION_TRACKSOCK",
    "KPROBE_ACTION_UNTRACKSOCK",
    "KPROBE_ACTION_NOTIFYENFORCER",
    "KPROBE_ACTION_CLEANUPENFORCERNOTIFICATION",
    "KPROBE_ACTION_SET",
]


class _Kprobe(msgspec.Struct, gc=False):
    """The action is typed as the values it takes (_KprobeAction): msgspec returns the very
    strings above, whose hashes are kept, instead of building one per line and hashing it for
    the killed-action lookup. A name Tetragon adds later fails the decode, and the reference
    parser answers. The function name is a string: another policy's kprobes, on hooks
    detection does not read, are counted as ignored once decoded."""

    function_name: str
    process: _Process
    policy_name: str | None = None
    args: list[_Arg] | None = None
    action: _KprobeAction | None = None


#: Any JSON value, left unparsed (msgspec skips it in C, checking its syntax as orjson would,
#: but for a number beyond a double's range and, on Python 3.12 and later, nesting beyond
#: orjson's 1,024 levels, which orjson refuses: test_typed_decoder pins both differences, as
#: for every value detection does not read); UNSET when the key is absent, since the
#: reference parser asks whether the key is there, null or not.
_Skip = msgspec.Raw | msgspec.UnsetType


class DecodedLine(msgspec.Struct, gc=False):
    """One line of the export, as far as detection reads it. Besides ours, the event kinds
    Tetragon exports that are not ours, counted as ignored, not as unknown (OTHER_KINDS is
    these fields): the oneof of GetEventsResponse (api/v1/tetragon/events.proto, v1.7.0), and
    the network events of older and enterprise builds (process_connect, process_close,
    process_listen: samples in docs/security-observability-with-ebpf/03_chapter/)."""

    process_kprobe: _Kprobe | None = None
    time: str | None = None
    node_name: str | None = None
    # Every other kind, left unparsed; the two a real export carries most of first:
    process_exec: _Skip = msgspec.UNSET
    process_exit: _Skip = msgspec.UNSET
    process_tracepoint: _Skip = msgspec.UNSET
    process_uprobe: _Skip = msgspec.UNSET
    process_lsm: _Skip = msgspec.UNSET
    process_loader: _Skip = msgspec.UNSET
    process_throttle: _Skip = msgspec.UNSET
    process_usdt: _Skip = msgspec.UNSET
    rate_limit_info: _Skip = msgspec.UNSET
    test: _Skip = msgspec.UNSET
    process_connect: _Skip = msgspec.UNSET
    process_close: _Skip = msgspec.UNSET
    process_listen: _Skip = msgspec.UNSET
    process_accept: _Skip = msgspec.UNSET


#: In DecodedLine's order, the most frequent first (:func:`is_other_kind` stops at the first
#: found).
OTHER_KINDS = tuple(
    f for f in DecodedLine.__struct_fields__ if f not in {"process_kprobe", "time", "node_name"}
)
#: The typed decode: parse_line's first step, and the counting path's (bench/events.py times
#: it alone beside the whole parse).
decode_line = msgspec.json.Decoder(DecodedLine).decode
_NO_POD_TYPED = _Pod("", "")
_COUNTED = ("events", "ignored", "malformed", "truncated", "unknown", "oversized")


def _by_reference(line: bytes | str, stats: ParseStats) -> Event | None:
    """The reference parser's verdict on a line the typed decoder refused, added to ``stats``
    (the line itself is counted once)."""
    verdict = ParseStats()
    event = parse_line_reference(line, verdict)
    for name in _COUNTED:
        setattr(stats, name, getattr(stats, name) + getattr(verdict, name))
    return event


def is_other_kind(doc: DecodedLine) -> bool:
    """Whether a decoded line carries an event kind detection does not read."""
    return any(getattr(doc, kind) is not msgspec.UNSET for kind in OTHER_KINDS)


def _parse_one(line: bytes | str, stats: ParseStats) -> Event | None:
    """The whole of the checks for one line (its count in ``stats.lines`` is the caller's)."""
    if len(line) > MAX_LINE_BYTES:
        stats.oversized += 1
        return None
    if isinstance(line, bytes) and not line.isascii():
        # The typed decoder checks UTF-8 only in the fields it reads; a Tetragon line is JSON,
        # so UTF-8 throughout (rare: most lines are ASCII, and isascii() costs nothing).
        try:
            line.decode()
        except UnicodeDecodeError:
            stats.malformed += 1
            return None
    try:
        doc = decode_line(line)
    except (msgspec.MsgspecError, RecursionError, UnicodeEncodeError):
        # Valid JSON of the wrong shape (not an object, one of our fields mistyped), JSON
        # nested deeper than the decoder recurses (RecursionError: under 1,000 levels on
        # Python 3.11, more on later ones), invalid JSON, or text with a lone surrogate (which
        # has no UTF-8): a hostile line must not stop the follower. The reference parser tells
        # a non-event from a malformed event, and a cut line from a bad one (msgspec says
        # "truncated" wherever a token needs more bytes than are left, a lone "\ud800" at the
        # end included, where orjson says malformed); so does this, by asking it (rare lines).
        return _by_reference(line, stats)
    return _event_of(doc, stats)


def _event_of(doc: DecodedLine, stats: ParseStats) -> Event | None:
    """A decoded line, whatever its shape, to an event or a count of why not."""
    kprobe = doc.process_kprobe
    if kprobe is None:
        if is_other_kind(doc):
            stats.ignored += 1
        else:
            stats.unknown += 1
        return None
    hook = HOOK_OF_FUNCTION.get(kprobe.function_name)
    policy = kprobe.policy_name
    process = kprobe.process
    if hook is None or not policy:
        stats.ignored += 1
        return None
    args = kprobe.args or []
    port = 0
    target: str | None = None
    if hook == "tcp_connect":
        sock = args[0].sock_arg if args else None
        if sock is None:
            sock = next((a.sock_arg for a in args if a.sock_arg is not None), None)
        if sock is not None:
            target, port = sock.daddr, sock.dport
    elif hook == "fd_install":
        file = args[1].file_arg if len(args) > 1 else None
        if file is None:
            file = next((a.file_arg for a in args if a.file_arg is not None), None)
        if file is not None:
            target = file.path
    else:
        target = (args[0].string_arg if args else None) or next(
            (a.string_arg for a in args if a.string_arg is not None), None
        )
    time = doc.time
    if not target or time is None:
        stats.malformed += 1
        return None
    pod = process.pod or _NO_POD_TYPED
    stats.events += 1
    return Event(
        policy,
        hook,
        pod.namespace,
        pod.name,
        pod.workload,
        process.binary,
        target,
        port,
        kprobe.action in KILLED_ACTIONS,
        time if len(time) == 30 else normalize_time(time),
        doc.node_name or "",
    )


def parse_decoded(doc: DecodedLine, stats: ParseStats) -> Event | None:
    """:func:`parse_line`'s answer for a line decode_line took (within MAX_LINE_BYTES and
    ASCII, as the counting path sends it), so that it is not decoded twice (nor, near
    msgspec's recursion limit, decoded otherwise at a deeper stack)."""
    stats.lines += 1
    return _event_of(doc, stats)


def parse_line(line: bytes | str, stats: ParseStats) -> Event | None:
    """One line in, an :class:`Event` or ``None`` out; ``stats`` says why not. The pipeline
    counts most lines without an Event (detection.count); every line it does not, this reads."""
    stats.lines += 1
    return _parse_one(line, stats)
