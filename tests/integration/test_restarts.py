"""Detections are records: an operator restart, a log rotation and a Tetragon restart neither
lose nor repeat a count. kwok is the node; Tetragon's export-stdout log flows through the API
server, as on a cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from agentdetect.app.runner import OperatorThread
from agentdetect.local.controlplane import ControlPlane
from agentdetect.local.samples import kprobe_event
from tests.integration.conftest import following_config
from tests.integration.helpers import (
    apply_profile,
    detection_of,
    profile,
    wait_condition,
)
from tests.kwoknode import KwokNode
from tests.waiting import eventually

TETRAGON_LABELS = {"app.kubernetes.io/name": "tetragon"}


def _operator(control_plane: ControlPlane, tetragon_ns: str) -> OperatorThread:
    return OperatorThread(following_config(tetragon_ns), control_plane.kubeconfig)


def test_counts_survive_restarts_rotation_and_a_new_tetragon_pod(
    control_plane: ControlPlane,
    api: Any,
    profile_crds: list[str],
    policy_kinds: bool,
    kwok_node: KwokNode,
    tetragon_ns: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    clock = iter(range(1_000_000))

    def events(policy: str, n: int) -> list[bytes]:
        return [
            orjson.dumps(
                kprobe_event(
                    hook="execve",
                    policy=policy,
                    namespace=namespace,
                    pod="agent-1",
                    target="/bin/sh",
                    time=f"2026-11-23T12:{(i := next(clock)) // 60 % 60:02d}:{i % 60:02d}.000000000Z",
                )
            )
            for _ in range(n)
        ]

    def settled_count(expected: int) -> dict[str, Any]:
        """The record reaches ``expected`` and stays there: nothing lost, nothing twice."""

        def reached() -> dict[str, Any] | None:
            det = detection_of(api, namespace, "agent-1")
            return det if det is not None and det["summary"]["events"] >= expected else None

        eventually(reached, timeout=30, what=f"{expected} events counted")
        time.sleep(1.5)  # three flushes: a double count would show by now
        det = detection_of(api, namespace, "agent-1")
        assert det is not None and det["summary"]["events"] == expected, det and det["summary"]
        return det

    log_a = tmp_path / "tetragon-a.log"
    with _operator(control_plane, tetragon_ns):
        apply_profile(control_plane, namespace, "shells", "{processes: {presets: [shells]}}")
        status = wait_condition(api, "shells", namespace, "Applied")["status"]
        (policy,) = [p["name"] for p in status["policies"]]
        kwok_node.create_pod(namespace, "agent-1", ["app"], {})
        tetragon = kwok_node.create_pod(
            tetragon_ns,
            "tetragon-a",
            ["tetragon", "export-stdout"],
            {"export-stdout": log_a},
            labels=TETRAGON_LABELS,
        )
        tetragon.append_log("export-stdout", *events(policy, 5))
        first = settled_count(5)
    first_seen = first["detections"][0]["firstSeen"]
    assert first["streams"][0]["stream"] == f"{tetragon_ns}/tetragon-a"

    # 1. Restart: the new operator reads the whole log again; the record says how far it goes.
    tetragon.append_log("export-stdout", *events(policy, 3))  # while no operator runs
    with _operator(control_plane, tetragon_ns):
        det = settled_count(8)
    assert det["detections"][0]["firstSeen"] == first_seen

    # 2. Rotation: the kubelet serves only the new file; the counts do not go back.
    os.replace(log_a, tmp_path / "tetragon-a.log.1")
    log_a.touch()
    tetragon.append_log("export-stdout", *events(policy, 2))
    with _operator(control_plane, tetragon_ns):
        settled_count(10)

        # 3. A Tetragon restart is a new pod and a new stream: all of it is new.
        kwok_node.delete_pod(tetragon_ns, "tetragon-a")
        restarted = kwok_node.create_pod(
            tetragon_ns,
            "tetragon-b",
            ["tetragon", "export-stdout"],
            {"export-stdout": tmp_path / "tetragon-b.log"},
            labels=TETRAGON_LABELS,
        )
        restarted.append_log("export-stdout", *events(policy, 4))
        det = settled_count(14)
        assert det["detections"][0]["firstSeen"] == first_seen
        assert {s["stream"] for s in det["streams"]} == {
            f"{tetragon_ns}/tetragon-a",
            f"{tetragon_ns}/tetragon-b",
        }
        summary = eventually(
            lambda: (
                (p := profile(api, "shells", namespace)["status"].get("detections"))
                and p["events"] == 14
                and p
            ),
            timeout=10,
            what="the profile's status agrees",
        )
        assert summary["pods"] == 1
