"""The Tetragon log source for real: kwok is the node, Tetragon's export-stdout log flows
through the API server, and the operator turns it into AgentDetections exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentdetect.app.runner import OperatorThread
from agentdetect.local.controlplane import ControlPlane
from agentdetect.local.samples import kprobe_event
from tests.integration.conftest import following_config
from tests.integration.helpers import apply_profile, detection_of, temporary_namespace, wait_condition
from tests.kwoknode import FakePod, KwokNode
from tests.waiting import eventually

TETRAGON_LABELS = {"app.kubernetes.io/name": "tetragon"}


@pytest.fixture(scope="module")
def tetragon_ns(control_plane: ControlPlane) -> Iterator[str]:
    with temporary_namespace(control_plane.api_client(), "tetragon") as name:
        yield name


@pytest.fixture(scope="module")
def following_operator(
    control_plane: ControlPlane,
    profile_crds: list[str],
    policy_kinds: bool,
    tetragon_ns: str,
    kwok_node: KwokNode,
) -> Iterator[OperatorThread]:
    with OperatorThread(following_config(tetragon_ns), control_plane.kubeconfig) as op:
        yield op


def _tetragon_pod(node: KwokNode, namespace: str, name: str, tmp_path: Path) -> FakePod:
    return node.create_pod(
        namespace,
        name,
        ["tetragon", "export-stdout"],
        {"export-stdout": tmp_path / f"{name}.log"},
        labels=TETRAGON_LABELS,
    )


def test_events_followed_from_tetragon_pods_exactly_once(
    control_plane: ControlPlane,
    api: Any,
    following_operator: OperatorThread,
    kwok_node: KwokNode,
    tetragon_ns: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    service = following_operator.detection
    assert service is not None and service.begun.wait(30) and service.source is not None
    source = service.source
    apply_profile(
        control_plane, namespace, "agents", "{network: {providers: [openai]}, processes: {presets: [shells]}}"
    )
    policies = {
        p["hook"]: p["name"]
        for p in wait_condition(api, "agents", namespace, "Applied")["status"]["policies"]
    }
    kwok_node.create_pod(namespace, "agent-1", ["app"], {})
    first = _tetragon_pod(kwok_node, tetragon_ns, "tetragon-node-a", tmp_path)

    def events(hook: str, target: str, n: int) -> list[bytes]:
        return [
            orjson.dumps(
                kprobe_event(
                    hook=hook,
                    policy=policies[hook],
                    namespace=namespace,
                    pod="agent-1",
                    target=target,
                    time=f"2026-11-23T12:00:00.{i:09d}Z",
                )
            )
            for i in range(n)
        ]

    def count(expected: int) -> bool:
        det = detection_of(api, namespace, "agent-1")
        return det is not None and det["summary"]["events"] == expected

    first.append_log("export-stdout", *events("tcp_connect", "104.18.6.192", 5))
    eventually(lambda: count(5), timeout=30, what="5 events from Tetragon's log counted")

    # A dropped stream is reopened with a since-time of whole seconds: the lines of the last
    # second come again, and must not be counted again.
    state = source.states["tetragon-node-a"]
    source.drop_connection("tetragon-node-a")
    eventually(lambda: state.reconnects >= 1, what="the stream reconnected")
    first.append_log("export-stdout", *events("execve", "/bin/sh", 3))
    eventually(lambda: count(8), timeout=30, what="8 events after the reconnect")
    assert state.duplicates_dropped >= 5, "the reconnect replayed the last second, and it was dropped"
    det = detection_of(api, namespace, "agent-1")
    assert det is not None and det["summary"]["targets"] == "openai, shells"

    # Tetragon pods come and go: a new node's pod is followed too.
    second = _tetragon_pod(kwok_node, tetragon_ns, "tetragon-node-b", tmp_path)
    second.append_log("export-stdout", *events("tcp_connect", "104.18.6.192", 2))
    eventually(lambda: count(10), timeout=30, what="events from the second Tetragon pod counted")
    kwok_node.delete_pod(tetragon_ns, first.name)
    eventually(lambda: "tetragon-node-a" not in source._threads, timeout=30, what="the gone pod unfollowed")
    assert source.reconnects >= 1
    assert eventually(lambda: count(10), timeout=5), "nothing counted twice"
