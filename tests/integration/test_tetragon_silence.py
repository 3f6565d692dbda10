"""A misconfigured Tetragon is loud: with no Tetragon pod where the operator looks, profiles say
``Detecting=False`` (NoTetragonPods), the log says where it looked, and the metrics behind the
NoTetragonStreams alert say so; once a Tetragon pod runs, all of it turns back."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentdetect.app.runner import OperatorThread
from agentdetect.local.controlplane import ControlPlane
from tests.integration.conftest import following_config
from tests.integration.helpers import apply_profile, profile, wait_condition
from tests.kwoknode import KwokNode
from tests.waiting import eventually


def _detecting(api: Any, name: str, namespace: str) -> dict[str, Any] | None:
    conditions = profile(api, name, namespace)["status"].get("conditions") or []
    return next((c for c in conditions if c["type"] == "Detecting"), None)


def _gauges(op: OperatorThread) -> dict[str, float]:
    assert op.runtime is not None
    text = generate_latest(op.runtime.metrics.registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_no_tetragon_pod_is_said_everywhere_until_one_runs(
    control_plane: ControlPlane,
    api: Any,
    profile_crds: list[str],
    policy_kinds: bool,
    kwok_node: KwokNode,
    tetragon_ns: str,
    namespace: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentdetect")
    with OperatorThread(following_config(tetragon_ns), control_plane.kubeconfig) as op:
        apply_profile(control_plane, namespace, "shells", "{processes: {presets: [shells]}}")
        wait_condition(api, "shells", namespace, "Applied")
        silent = eventually(
            lambda: (c := _detecting(api, "shells", namespace)) and c["status"] == "False" and c,
            timeout=30,
            what="Detecting=False on the profile",
        )
        assert silent["reason"] == "NoTetragonPods"
        assert tetragon_ns in silent["message"] and "app.kubernetes.io/name=tetragon" in silent["message"]
        assert wait_condition(api, "shells", namespace, "Applied")  # Ready is about the policies
        said = [r.getMessage() for r in caplog.records if "no Tetragon pod to follow" in r.getMessage()]
        assert len(said) == 1 and tetragon_ns in said[0], said
        gauges = _gauges(op)
        assert (gauges["agentdetect_streams"], gauges["agentdetect_detection_active"]) == (0, 1)

        tetragon = kwok_node.create_pod(
            tetragon_ns,
            "tetragon-x",
            ["tetragon", "export-stdout"],
            {"export-stdout": tmp_path / "export.log"},
            labels={"app.kubernetes.io/name": "tetragon"},
        )
        following = eventually(
            lambda: (c := _detecting(api, "shells", namespace)) and c["status"] == "True" and c,
            timeout=30,
            what="Detecting=True once a Tetragon pod runs",
        )
        assert following["reason"] == "Following"
        # A followed log answers with its first line (kubelet and kwok alike): give it one.
        tetragon.append_log("export-stdout", b'{"process_exec": {}, "node_name": "n", "time": "t"}')
        assert eventually(lambda: _gauges(op)["agentdetect_streams"] == 1, timeout=15, what="one stream")
        eventually(
            lambda: any(
                f"following Tetragon's export: {tetragon_ns}/tetragon-x" in r.getMessage()
                for r in caplog.records
            ),
            timeout=15,
            what="the stream named in the log",
        )
        kwok_node.delete_pod(tetragon_ns, "tetragon-x")
