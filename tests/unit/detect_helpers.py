"""Shared helpers for the event-pipeline unit tests: the example profiles as the operator
would hold them (parsed, targeted, resolved through the static hosts table), and events in
Tetragon's export format for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from agentdetect.controller.reconcile import targets_for
from agentdetect.detection.events import Event
from agentdetect.local.samples import kprobe_event
from agentdetect.policy.board import ProfileBoard, ProfileState
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import HOOKS, Profile, hostnames_of, policy_name, target_in
from agentdetect.policy.resolve import StaticResolver, resolve_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
STATIC_HOSTS = EXAMPLES / "static-hosts.yaml"
NOW = "2026-11-23T00:00:00Z"
T0 = "2026-11-23T12:00:00.000000000Z"


def static_hosts() -> dict[str, list[str]]:
    table = yaml.safe_load(STATIC_HOSTS.read_text())
    assert isinstance(table, dict)
    return {str(k): [str(a) for a in v] for k, v in table.items()}


def example_doc(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(doc, dict)
    return doc


def example(name: str) -> Profile:
    return parse_profile(example_doc(name))


def make_profile(
    spec: dict[str, Any],
    name: str = "prof",
    kind: str = "AgentDetectionProfile",
    namespace: str | None = "team-a",
) -> Profile:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return parse_profile({"kind": kind, "metadata": meta, "spec": spec})


def state_of(
    profile: Profile,
    namespaces: list[tuple[str, dict[str, str]]] | None = None,
    hosts: dict[str, list[str]] | None = None,
) -> ProfileState:
    """What the reconciler publishes for ``profile``: its targets and resolved addresses."""
    table = static_hosts() if hosts is None else hosts
    resolved = resolve_all(hostnames_of(profile.spec), StaticResolver(table), {}, NOW)
    return ProfileState(profile, tuple(targets_for(profile, namespaces)), resolved)


def policy_of(profile: Profile, hook: str) -> str:
    """The name of the (first) policy ``profile`` renders for ``hook``."""
    assert hook in HOOKS
    return policy_name(profile, target_in(profile), hook)


def event(
    *,
    policy: str = "pol-net-00000000",
    hook: str = "tcp_connect",
    namespace: str = "team-a",
    pod: str = "app-7d9f-abcde",
    workload: str = "app",
    binary: str = "/usr/bin/python3",
    target: str = "104.18.6.192",
    port: int = 443,
    killed: bool = False,
    time: str = T0,
    node: str = "node-1",
) -> Event:
    return Event(policy, hook, namespace, pod, workload, binary, target, port, killed, time, node)


def line(**kwargs: Any) -> bytes:
    """One export line, as ``kubectl logs ... -c export-stdout`` prints it (without newline)."""
    return orjson.dumps(kprobe_event(**kwargs))


def ts(second: int, nanos: int = 0) -> str:
    """An RFC 3339 timestamp with nine fractional digits, ``second`` seconds after 12:00:00."""
    minutes, seconds = divmod(second, 60)
    return f"2026-11-23T12:{minutes:02d}:{seconds:02d}.{nanos:09d}Z"


def small_board() -> tuple[ProfileBoard, list[bytes]]:
    """Two example profiles and six lines for them: four events (one unmatched), one of
    another kind, one not JSON."""
    llm = example("llm-egress.yaml")
    sandbox = example("enforce-agent-sandbox.yaml")
    board = ProfileBoard()
    board.publish(state_of(llm))
    board.publish(state_of(sandbox))
    net = policy_of(llm, "tcp_connect")
    lines = [
        line(
            hook="tcp_connect",
            policy=net,
            namespace="support",
            pod="bot-1",
            target="104.18.6.192",
            time=ts(1),
        ),
        line(
            hook="tcp_connect",
            policy=net,
            namespace="support",
            pod="bot-1",
            target="10.42.0.7",
            port=8000,
            time=ts(2),
        ),
        line(hook="tcp_connect", policy=net, namespace="support", pod="bot-2", target="1.1.1.1", time=ts(3)),
        line(
            hook="execve",
            policy=policy_of(sandbox, "execve"),
            namespace="agents",
            pod="sb-1",
            target="/usr/bin/curl",
            killed=True,
            time=ts(4),
        ),
        b"not json",
        b'{"process_exec": {}}',
    ]
    return board, lines
