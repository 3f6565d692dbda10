"""Parse Tetragon's JSON export (one event per line, as ``kubectl logs ds/tetragon -c
export-stdout`` prints it) into the few fields detection needs.

Only ``process_kprobe`` events of our three hooks matter. Everything else is counted and
skipped, never fatal: a log stream is untrusted input and a bad line must not stop the
pipeline. orjson parses, because parsing is most of the cost per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
#: Event kinds Tetragon exports that are not ours: counted as ignored, not as unknown.
OTHER_KINDS = frozenset(
    {
        "process_exec",
        "process_exit",
        "process_tracepoint",
        "process_uprobe",
        "process_lsm",
        "process_loader",
        "process_throttle",
        "process_usdt",
        "rate_limit_info",
    }
)


@dataclass(slots=True)
class Event:
    policy: str
    hook: str
    namespace: str
    pod: str
    workload: str
    binary: str
    #: Destination address (tcp_connect), file path (fd_install) or executed file (execve).
    target: str
    port: int
    killed: bool
    time: str
    node: str


@dataclass
class ParseStats:
    lines: int = 0
    events: int = 0
    ignored: int = 0  # valid Tetragon events of other kinds or hooks, or outside any pod
    malformed: int = 0
    truncated: int = 0
    unknown: int = 0
    oversized: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def _first_arg(args: list[Any], key: str) -> Any:
    for arg in args:
        if key in arg:
            return arg[key]
    return None


def parse_line(line: bytes | str, stats: ParseStats) -> Event | None:
    """One line in, an :class:`Event` or ``None`` out; ``stats`` says why not."""
    stats.lines += 1
    if len(line) > MAX_LINE_BYTES:
        stats.oversized += 1
        return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        stripped = line.strip()
        # A line cut off mid-object (a dropped stream, a partial write) is not the same
        # problem as garbage: it ends before the JSON does.
        if stripped[:1] in (b"{", "{") and exc.pos >= len(stripped) - 1:
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
        pod = process.get("pod")
        if hook is None or not policy or not pod:
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
        stats.events += 1
        # Positional: measurably cheaper than keywords on the per-event path.
        return Event(
            policy,
            hook,
            pod["namespace"],
            pod["name"],
            pod.get("workload", ""),
            process["binary"],
            target if isinstance(target, str) else str(target),
            port,
            kprobe.get("action") in KILLED_ACTIONS,
            doc["time"],
            doc.get("node_name", ""),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        stats.malformed += 1
        return None
