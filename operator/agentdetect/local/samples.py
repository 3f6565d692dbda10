"""Events in Tetragon's JSON export format, for tests, benchmarks and the local demo.

The shape follows what Tetragon exports for ``process_kprobe`` events: a ``process`` with
its ``pod`` (namespace, name, container, ``pod_labels``, ``workload``), the hooked
``function_name``, typed ``args`` (``sock_arg``, ``int_arg``/``file_arg``, ``string_arg``),
the ``action`` taken and the ``policy_name``; ``node_name`` and ``time`` at the top level.
"""

from __future__ import annotations

import base64
import datetime
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

_FUNCTION = {"tcp_connect": "tcp_connect", "fd_install": "fd_install", "execve": "sys_execve"}


def kprobe_event(
    *,
    hook: str,
    policy: str,
    namespace: str,
    pod: str,
    target: str,
    port: int = 443,
    binary: str = "/usr/bin/python3",
    workload: str | None = None,
    labels: dict[str, str] | None = None,
    killed: bool = False,
    time: str = "2026-11-23T12:00:00.000000000Z",
    node: str = "node-1",
    pid: int = 4242,
    full_parent: bool = False,
) -> dict[str, Any]:
    """One ``process_kprobe`` event. ``full_parent`` gives the parent every field Tetragon
    exports for a process in a pod, its pod included, as the recorded samples do
    (docs/content/en/docs/use-cases/process-lifecycle/namespace-access.md at v1.7.0, and
    tests/data/tetragon_event_shapes.json): about twice the bytes of the short parent."""
    if hook == "tcp_connect":
        family = "AF_INET6" if ":" in target else "AF_INET"
        args: list[dict[str, Any]] = [
            {
                "sock_arg": {
                    "family": family,
                    "type": "SOCK_STREAM",
                    "protocol": "IPPROTO_TCP",
                    "saddr": "10.244.1.17",
                    "daddr": target,
                    "sport": 40000 + pid % 20000,
                    "dport": port,
                    "cookie": str(18446744071698713344 + pid),
                    "state": "TCP_SYN_SENT",
                }
            }
        ]
    elif hook == "fd_install":
        args = [{"int_arg": 3}, {"file_arg": {"path": target, "permission": "-rw-r-----"}}]
    else:
        args = [{"string_arg": target}]
    exec_id = base64.b64encode(f"{node}:{pid}:{pod}".encode()).decode()
    action = "KPROBE_ACTION_SIGKILL" if killed else "KPROBE_ACTION_POST"
    pod_of = {
        "namespace": namespace,
        "name": pod,
        "container": {
            "id": f"containerd://{exec_id[:32]}",
            "name": "app",
            "image": {
                "id": "registry.example.com/app@sha256:0",
                "name": "registry.example.com/app:1",
            },
            "start_time": time,
            "pid": 1,
        },
        "pod_labels": labels or {"app": workload or pod},
        "workload": workload or pod.rsplit("-", 2)[0],
        "workload_kind": "Deployment",
    }
    parent: dict[str, Any] = {"exec_id": exec_id, "pid": 1, "binary": "/bin/sh", "flags": "execve"}
    if full_parent:
        parent = {
            "exec_id": exec_id,
            "pid": pid - 1,
            "uid": 1000,
            "cwd": "/app",
            "binary": "/usr/bin/dumb-init",
            "flags": "execve rootcwd clone",
            "start_time": time,
            "auid": 4294967295,
            "pod": pod_of,
            "docker": exec_id[:31],
            "parent_exec_id": exec_id,
            "tid": pid - 1,
        }
    return {
        "process_kprobe": {
            "process": {
                "exec_id": exec_id,
                "pid": pid,
                "uid": 1000,
                "cwd": "/app",
                "binary": binary,
                "arguments": "main.py",
                "flags": "execve clone",
                "start_time": time,
                "auid": 4294967295,
                "pod": pod_of,
                "docker": exec_id[:31],
                "parent_exec_id": exec_id,
                "refcnt": 1,
                "tid": pid,
            },
            "parent": parent,
            "function_name": _FUNCTION[hook],
            "args": args,
            "action": action,
            "policy_name": policy,
            "return_action": action,
        },
        "node_name": node,
        "time": time,
    }


def lifecycle_events(kprobe: dict[str, Any], exit_time: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``process_exec`` and ``process_exit`` Tetragon exports around a kprobe event's
    process (its ``process`` and ``parent``, the envelope's node): the two kinds a real export
    carries far more of than kprobes, which detection counts as ignored. Shapes as in
    tests/data/tetragon_event_shapes.json; the exit's ``signal`` and ``status`` are fields of
    ProcessExit in api/v1/tetragon/tetragon.proto."""
    inner = kprobe["process_kprobe"]
    lineage = {"process": inner["process"], "parent": inner["parent"]}
    node, started = kprobe["node_name"], inner["process"]["start_time"]
    return (
        {"process_exec": lineage, "node_name": node, "time": started},
        {
            "process_exit": {**lineage, "signal": "SIGTERM", "status": 143},
            "node_name": node,
            "time": exit_time,
        },
    )


def foreign_kprobe(kprobe: dict[str, Any]) -> dict[str, Any]:
    """The same process seen by another TracingPolicy's kprobe on a hook agentdetect does not
    read: security_file_permission as Tetragon's example policy "file-monitoring-filtered"
    hooks it (examples/tracingpolicy/filename_monitoring_filtered.yaml: a file, then the
    access mask, 2 for MAY_WRITE), which detection counts as ignored."""
    inner = kprobe["process_kprobe"]
    return {
        "process_kprobe": {
            "process": inner["process"],
            "parent": inner["parent"],
            "function_name": "security_file_permission",
            "args": [
                {"file_arg": {"path": "/etc/passwd", "permission": "-rw-r--r--"}},
                {"int_arg": 2},
            ],
            "return": {"int_arg": 0},
            "action": "KPROBE_ACTION_POST",
            "policy_name": "file-monitoring-filtered",
            "return_action": "KPROBE_ACTION_POST",
        },
        "node_name": kprobe["node_name"],
        "time": kprobe["time"],
    }


@dataclass(frozen=True)
class Scenario:
    """A policy and what its hook sees: targets are (address, port), paths or file names."""

    policy: str
    hook: str
    namespace: str
    targets: tuple[tuple[str, int], ...]


def stream(
    scenarios: list[Scenario], pods: int, count: int, seed: int = 7, full_parent: bool = False
) -> Iterator[bytes]:
    """``count`` event lines over ``pods`` pods per namespace, the scenarios mixed at random."""
    rng = random.Random(seed)
    start = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.UTC)
    for i in range(count):
        sc = scenarios[rng.randrange(len(scenarios))]
        target, port = sc.targets[rng.randrange(len(sc.targets))]
        p = rng.randrange(pods)
        ts = (start + datetime.timedelta(microseconds=i * 10)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        yield orjson.dumps(
            kprobe_event(
                hook=sc.hook,
                policy=sc.policy,
                namespace=sc.namespace,
                pod=f"app-{p % 50}-{p:05d}",
                target=target,
                port=port,
                time=ts,
                pid=1000 + p,
                full_parent=full_parent,
            )
        )
