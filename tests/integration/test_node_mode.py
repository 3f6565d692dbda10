"""Node mode for real: several node agents, one per kwok node, each reading its own export
file that the test writes and rotates as Tetragon does; pods scheduled on those nodes; the
operator in node mode building profile status from the records. Ground truth (every event
line written) is compared with the AgentDetections at the end of each test: nothing lost,
nothing counted twice, across rotations, compression, agent crashes and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client

from agentdetect.app.runner import OperatorThread, api_client
from agentdetect.cluster.kube import Cluster
from agentdetect.controller.reconcile import Config
from agentdetect.detection.nodeagent import NodeAgent, NodeSettings
from agentdetect.local.controlplane import ControlPlane, free_port
from agentdetect.local.samples import kprobe_event
from agentdetect.policy.resolve import StaticResolver
from tests.integration.conftest import TEST_HOSTS
from tests.integration.helpers import temporary_namespace, wait_condition
from tests.integration.test_detections import PROFILE  # the same profile, here on three nodes
from tests.kwoknode import KwokNode, find_kwok_binary, find_kwok_source
from tests.lumberjack import Lumberjack
from tests.waiting import eventually

NODES = ("nm-node-a", "nm-node-b", "nm-node-c")
#: Which rule each target is, as the ground truth counts it.
TARGETS = {
    ("tcp_connect", "104.18.6.192"): "openai",
    ("tcp_connect", "160.79.104.10"): "anthropic",
    ("fd_install", "/var/run/secrets/kubernetes.io/serviceaccount/token"): "serviceaccount-token",
    ("execve", "/bin/sh"): "shells",
}


def agent_settings(node: str, export: Path) -> NodeSettings:
    return NodeSettings(node=node, export_file=export, flush_interval=0.3, count_refresh=1.0, poll=0.05)


@dataclass
class NodeLab:
    control_plane: ControlPlane
    namespace: str
    policies: dict[str, str]
    files: dict[str, Lumberjack]
    agents: dict[str, NodeAgent] = field(default_factory=dict)
    #: (pod, rule) -> events written for it.
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)
    pods: dict[str, str] = field(default_factory=dict)  # pod -> node
    seq: int = 0

    def start_agent(self, node: str) -> NodeAgent:
        cluster = Cluster(api_client(self.control_plane.kubeconfig))
        agent = NodeAgent(cluster, agent_settings(node, self.files[node].path)).start()
        assert agent.begun.wait(60), f"node agent {node} did not begin"
        self.agents[node] = agent
        return agent

    def write(self, pod: str, hook: str, target: str, n: int = 1) -> None:
        node = self.pods[pod]
        lines = []
        for _ in range(n):
            self.seq += 1
            second, nanos = divmod(self.seq, 1000)
            lines.append(
                orjson.dumps(
                    kprobe_event(
                        hook=hook,
                        policy=self.policies[hook],
                        namespace=self.namespace,
                        pod=pod,
                        target=target,
                        workload="chatbot",
                        node=node,
                        time=f"2026-11-24T12:{second // 60 % 60:02d}:{second % 60:02d}.{nanos:09d}Z",
                    )
                )
            )
        self.files[node].write_lines(lines)
        rule = TARGETS.get((hook, target))
        if rule is not None:
            self.truth[(pod, rule)] += n

    def records(self) -> list[dict[str, Any]]:
        resp = client.CustomObjectsApi(self.control_plane.api_client()).list_namespaced_custom_object(
            "agentdetect.io", "v1alpha1", self.namespace, "agentdetections"
        )
        assert isinstance(resp, dict)
        return list(resp["items"])

    def profile(self) -> dict[str, Any]:
        body = client.CustomObjectsApi(self.control_plane.api_client()).get_namespaced_custom_object(
            "agentdetect.io", "v1alpha1", self.namespace, "agentdetectionprofiles", "chatbot"
        )
        assert isinstance(body, dict)
        return body

    def recorded(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for d in self.records():
            for r in d["detections"]:
                out[(d["pod"]["name"], r["rule"])] += r["count"]
        return out

    def converged(self, timeout: float = 60.0) -> Counter[tuple[str, str]]:
        """The records equal the truth, or the test fails showing both."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recorded()
            if got == self.truth:
                return got
            if time.monotonic() > deadline:
                missing = self.truth - got
                extra = got - self.truth
                raise AssertionError(
                    f"records differ from the truth: lost {dict(missing)}, doubled {dict(extra)}"
                )
            time.sleep(0.3)


@pytest.fixture(scope="module")
def kwok_nodes(control_plane: ControlPlane) -> Iterator[dict[str, KwokNode]]:
    nodes = {
        name: KwokNode(control_plane, find_kwok_binary(), name=name, source=find_kwok_source())
        for name in NODES
    }
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def node_mode_operator(
    control_plane: ControlPlane, profile_crds: list[str], policy_kinds: bool
) -> Iterator[OperatorThread]:
    cfg = Config(
        resolver=StaticResolver(TEST_HOSTS),
        detect=True,
        detection_mode="node",
        flush_interval=0.3,
        retry_delay=1.0,
    )
    with OperatorThread(cfg, control_plane.kubeconfig) as op:
        assert op.runtime is not None and op.runtime.rollup is not None and op.detection is None
        yield op


@pytest.fixture
def node_lab(
    control_plane: ControlPlane,
    node_mode_operator: OperatorThread,
    kwok_nodes: dict[str, KwokNode],
    tmp_path: Path,
) -> Iterator[NodeLab]:
    api = control_plane.api_client()
    with temporary_namespace(api, "nm", length=8) as ns:
        control_plane.kubectl("apply", "-f", "-", input=PROFILE.format(ns=ns))
        status = wait_condition(api, "chatbot", ns, "Applied")["status"]
        policies = {p["hook"]: p["name"] for p in status["policies"]}
        files = {node: Lumberjack(tmp_path / node, max_backups=3) for node in NODES}
        lab = NodeLab(control_plane, ns, policies, files)
        for i, node in enumerate(NODES):
            for j in range(2):
                pod = f"chatbot-{i}-{j}"
                kwok_nodes[node].create_pod(ns, pod, ["app"], {}, labels={"app": "chatbot"})
                lab.pods[pod] = node
        try:
            yield lab
        finally:
            for agent in lab.agents.values():
                agent.stop()
            for node in NODES:
                for pod in [p for p, n in lab.pods.items() if n == node]:
                    kwok_nodes[node].delete_pod(ns, pod)


def test_each_node_agent_writes_its_own_pods_records_and_the_operator_sums_them(node_lab: NodeLab) -> None:
    lab = node_lab
    for node in NODES:
        lab.start_agent(node)
    lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=5)
    lab.write("chatbot-0-1", "execve", "/bin/sh", n=2)
    lab.write("chatbot-1-0", "fd_install", "/var/run/secrets/kubernetes.io/serviceaccount/token", n=3)
    lab.write("chatbot-2-1", "tcp_connect", "160.79.104.10", n=4)
    lab.write("chatbot-2-1", "tcp_connect", "8.8.8.8")  # no rule: not a detection
    lab.files["nm-node-c"].write(50)  # process_exec lines: read and passed over
    lab.converged()

    items = lab.records()
    assert len(items) == 4
    for d in items:
        node = lab.pods[d["pod"]["name"]]
        assert d["metadata"]["labels"]["agentdetect.io/node"] == node
        (stream,) = d["streams"]
        assert stream["stream"] == f"node/{node}" and stream["file"] and stream["offset"] > 0
        assert d["metadata"]["ownerReferences"][0]["name"] == d["pod"]["name"]

    # The operator builds the profile's status from every node's records.
    def summed() -> dict[str, Any] | None:
        det: dict[str, Any] = (lab.profile().get("status") or {}).get("detections") or {}
        return det if det.get("events") == 14 and det.get("pods") == 4 else None

    det = eventually(summed, what="profile status summing the records of three nodes")
    assert {p["pod"] for p in det["byPod"]} == {"chatbot-0-0", "chatbot-0-1", "chatbot-1-0", "chatbot-2-1"}


def test_rotation_compression_and_crashes_neither_lose_nor_double_count(node_lab: NodeLab) -> None:
    lab = node_lab
    for node in NODES:
        lab.start_agent(node)
    a, b = "nm-node-a", "nm-node-b"
    lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=7)
    lab.write("chatbot-1-1", "execve", "/bin/sh", n=3)
    lab.converged()

    # Rotations while the agents run: plain and compressed backups.
    lab.files[a].rotate(compress=True)
    lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=4)
    lab.files[a].rotate()
    lab.write("chatbot-0-1", "execve", "/bin/sh", n=2)
    lab.converged()

    # A crash (no final flush) with events read but not yet written, then rotation and
    # compression while the agent is down: its successor finds its position in a .gz file.
    lab.write("chatbot-1-1", "execve", "/bin/sh", n=5)
    lab.agents[b].stop(flush=False)
    lab.write("chatbot-1-1", "execve", "/bin/sh", n=6)
    lab.files[b].rotate(compress=True)
    lab.write("chatbot-1-0", "fd_install", "/var/run/secrets/kubernetes.io/serviceaccount/token", n=2)
    lab.files[b].rotate(compress=True)
    lab.write("chatbot-1-1", "execve", "/bin/sh", n=1)
    restarted = lab.start_agent(b)
    lab.converged()
    assert restarted.restored >= 1
    assert restarted.pipeline.aggregator.stats.already_counted > 0, "nothing was passed over: no test"

    # A clean restart (SIGTERM: the last counts are flushed) of every agent, then more events.
    for node in NODES:
        lab.agents[node].stop()
        lab.start_agent(node)
    lab.write("chatbot-2-0", "tcp_connect", "160.79.104.10", n=3)
    lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=1)
    lab.converged()


def test_counts_wait_for_the_count_refresh_and_new_rules_do_not(node_lab: NodeLab) -> None:
    """The etcd write budget: a record whose rules are unchanged is rewritten for its counts
    at most every count_refresh; a new rule is written at the next flush."""
    lab = node_lab
    node = "nm-node-a"
    cluster = Cluster(api_client(lab.control_plane.kubeconfig))
    settings = agent_settings(node, lab.files[node].path)
    settings.count_refresh = 3600.0
    # Refresh windows are whole periods of the clock (writer._window): on the wall clock, a run
    # crossing the hour would refresh for real (a CI run at 11:00:00 UTC did). Mid-window, fixed.
    agent = NodeAgent(cluster, settings, clock=lambda: 1800.0).start()
    lab.agents[node] = agent
    assert agent.begun.wait(60)
    lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=2)
    lab.converged()
    writes = agent.writer.detection_writes
    for _ in range(5):
        lab.write("chatbot-0-0", "tcp_connect", "104.18.6.192", n=10)
        time.sleep(settings.flush_interval * 2)
    assert agent.writer.detection_writes == writes, "counts alone were written before the refresh"
    assert agent.writer.deferred_total > 0
    lab.write("chatbot-0-0", "execve", "/bin/sh")  # a new rule: written at once
    eventually(lambda: lab.recorded()[("chatbot-0-0", "shells")] == 1, what="the new rule written")
    assert agent.writer.detection_writes == writes + 1
    agent.stop()  # a clean stop writes the owed counts
    del lab.agents[node]
    lab.converged(timeout=10)


def test_a_deleted_pod_leaves_the_profile_status(node_lab: NodeLab, kwok_nodes: dict[str, KwokNode]) -> None:
    lab = node_lab
    lab.start_agent("nm-node-c")
    lab.write("chatbot-2-0", "execve", "/bin/sh", n=2)
    lab.write("chatbot-2-1", "execve", "/bin/sh", n=3)
    lab.converged()

    def pods_in_status() -> int:
        return int(((lab.profile().get("status") or {}).get("detections") or {}).get("pods", 0))

    eventually(lambda: pods_in_status() == 2, what="two pods in the status")
    kwok_nodes["nm-node-c"].delete_pod(lab.namespace, "chatbot-2-0")
    del lab.pods["chatbot-2-0"]
    eventually(lambda: pods_in_status() == 1, what="the deleted pod's record gone from the status")


def test_the_node_command_runs_serves_metrics_and_flushes_on_sigterm(node_lab: NodeLab) -> None:
    """``agentdetect node`` as its own process, as the DaemonSet runs it."""
    lab = node_lab
    node = "nm-node-b"
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "NODE_NAME": node, "KUBECONFIG": str(lab.control_plane.kubeconfig)}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("agentdetect")),
            "node",
            f"--export-file={lab.files[node].path}",
            "--flush-interval=0.3",
            "--count-refresh=3600",
            f"--metrics-port={metrics_port}",
            f"--health-port={health_port}",
            "--bind=127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def get(port: int, path: str) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                    return str(resp.read().decode())
            except OSError:
                return None

        eventually(
            lambda: "agentdetect_detection_active 1.0" in (get(metrics_port, "/metrics") or ""),
            what="the node agent active",
        )
        assert get(health_port, "/healthz") == "ok\n"
        lab.write("chatbot-1-0", "tcp_connect", "104.18.6.192", n=3)
        lab.converged()
        lab.write("chatbot-1-0", "tcp_connect", "104.18.6.192", n=4)  # deferred: count refresh
        text = eventually(
            lambda: (lambda t: t if t and "agentdetect_events_read_total 7.0" in t else None)(
                get(metrics_port, "/metrics")
            ),
            what="seven lines read",
        )
        assert 'hook="tcp_connect"' in text and "pod_name" not in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        lab.converged(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0].decode()
        assert "Traceback" not in out, out
