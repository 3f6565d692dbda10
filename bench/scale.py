"""Node mode at scale: the node agent's read rate and memory, and API writes that do not grow
with the event rate.

Run: .venv/bin/python bench/scale.py [--events N] [--seconds S] [--no-cluster]

1. One node agent's pipeline reading Tetragon's export file (written as lumberjack does,
   rotated every 100,000 lines) on one core, against the in-process pipeline (bench/events.py's
   ``feed_many``) over the same lines in the same run; RSS after 1x and 5x ``--events``, the
   files already read deleted as Tetragon's exportFileMaxBackups does.
2. Against the embedded control plane with a kwok node of 10 pods: a real NodeAgent (informers,
   records, writer) and the operator in node mode, at 10, 1,000 and 10,000 events/s for
   ``--seconds`` each: AgentDetection writes per minute of the agent, status writes per minute
   of the operator. The count refresh is ``--count-refresh`` (default 6 s: the chart's 60 s
   scaled down tenfold so that each rate needs only ``--seconds``); the projection to 5,000
   nodes at the default refresh is printed with its arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import multiprocessing
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client
from tests.kwoknode import KwokNode, append_log_lines, find_kwok_binary, find_kwok_source
from tests.lumberjack import Lumberjack
from tests.operator_process import OperatorProcess, http_get

from agentdetect.app.runner import OperatorThread, api_client
from agentdetect.cluster.kube import Cluster
from agentdetect.controller.reconcile import Config
from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.exportfile import ExportFileFollower
from agentdetect.detection.nodeagent import NodeAgent, NodeSettings
from agentdetect.detection.pipeline import Pipeline, tune_gc
from agentdetect.detection.sources import StreamState, TetragonLogSource
from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane, free_port, load_yaml_documents
from agentdetect.local.samples import kprobe_event, stream
from agentdetect.policy.resolve import StaticResolver
from bench.events import HOSTS, PROFILE, TARGETS, board_and_scenarios, print_rows, rss_mib
from bench.faults import AGENTDETECT
from bench.profiles import install_tetragon_crds

REPO = Path(__file__).resolve().parent.parent
ROTATE_EVERY = 100_000
Row = tuple[str, str, str]


def _wait(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.05)


class KubeletLog:
    """What the API server streams for ``pods/log?follow&timestamps``: each line prefixed with
    the kubelet's RFC 3339 nanosecond timestamp, in 64 KiB chunks (TetragonLogSource._pump's
    input)."""

    def __init__(self, pool: list[bytes], n: int) -> None:
        self.pool, self.n = pool, n

    def stream(self, size: int) -> Iterator[bytes]:
        chunk: list[bytes] = []
        length = 0
        for i, line in enumerate(itertools.islice(itertools.cycle(self.pool), self.n)):
            seconds, nanos = divmod(i, 1_000_000)
            stamp = f"2026-11-24T12:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{nanos * 1000:09d}Z "
            chunk.append(stamp.encode() + line + b"\n")
            length += len(chunk[-1])
            if length >= size:
                yield b"".join(chunk)
                chunk, length = [], 0
        if chunk:
            yield b"".join(chunk)


def api_client_stub() -> client.ApiClient:
    return client.ApiClient(client.Configuration())


def _agent_side(path: Path, events: int, conn: Any) -> None:
    """The node agent's read path (follower, Pipeline.feed_stream) in its own process."""
    board, _ = board_and_scenarios([f"team-{i}" for i in range(10)])
    pipeline = Pipeline(board, Aggregator(max_pods=20_000))
    follower = ExportFileFollower(path, lambda batch: pipeline.feed_stream(batch, "node/bench"), poll=0.02)
    tune_gc()
    conn.recv()
    thread = threading.Thread(target=follower.run, daemon=True)
    start = time.perf_counter()
    thread.start()
    _wait(functools.partial(_read_at_least, follower, events), 600, f"{events:,} lines read")
    conn.send((events / (time.perf_counter() - start), rss_mib()))
    for batch in range(2, 6):
        conn.recv()
        n = batch * events
        _wait(functools.partial(_read_at_least, follower, n), 600, f"{n:,} lines read")
        conn.send(n)
    follower.stop()
    conn.send((rss_mib(), pipeline.stats.lines, pipeline.aggregator.stats.already_counted))


def _read_at_least(follower: ExportFileFollower, n: int) -> bool:
    return follower.lines >= n


def read_rate(events: int, pods: int, workdir: Path) -> list[Row]:
    namespaces = [f"team-{i}" for i in range(10)]
    board, scenarios = board_and_scenarios(namespaces)
    pool = list(stream(scenarios, pods // len(namespaces), min(events, 200_000)))
    tune_gc()

    # The floor: the stream mode's in-process path over the same lines, as the operator reads
    # them from a Tetragon pod's log (kubelet timestamp, duplicate check, one feed per line).
    floor = Pipeline(board, Aggregator(max_pods=20_000))
    source = TetragonLogSource(api_client_stub(), floor.feed)
    start = time.perf_counter()
    source._pump(KubeletLog(pool, events), StreamState(), "tetragon-bench")
    in_process = events / (time.perf_counter() - start)
    assert floor.stats.lines == events, floor.stats
    # And the pipeline alone (bench/events.py's figure): lines in memory, no source.
    bare = Pipeline(board, Aggregator(max_pods=20_000))
    start = time.perf_counter()
    bare.feed_many(itertools.islice(itertools.cycle(pool), events))
    bare_rate = events / (time.perf_counter() - start)
    del floor, bare
    gc.collect()

    lj = Lumberjack(workdir / "export", max_backups=10_000, keep=False)
    lines = itertools.cycle(pool)
    files = itertools.count()

    def write(n: int) -> None:
        for _ in range(n // ROTATE_EVERY):
            # Tetragon's first line of a file is unique (its time has nanoseconds): the pool
            # cycles, so each file starts with a line of its own (an event kind counted as other).
            lj.write_lines([orjson.dumps({"process_exit": {}, "time": f"file-{next(files)}"})])
            lj.write_lines(itertools.islice(lines, ROTATE_EVERY - 1))
            lj.rotate()

    def delete_read() -> None:
        for p in lj.path.parent.iterdir():
            if p != lj.path:
                p.unlink()

    # The agent's side runs in a process of its own, so its RSS is its own (this one holds the
    # pool of lines and what building it left behind).
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    reader = ctx.Process(target=_agent_side, args=(lj.path, events, child), daemon=True)
    reader.start()
    write(events)  # before the clock starts: the rate is the reader's, not the writer's
    parent.send("go")
    node_rate, rss_1 = parent.recv()
    for _ in range(2, 6):
        delete_read()
        write(events)
        parent.send("next")
        parent.recv()
    rss_5, lines_read, already = parent.recv()
    reader.join(30)
    delete_read()
    assert lines_read == 5 * events and already == 0, (lines_read, already)
    return [
        ("node agent: export file read, parsed, matched, aggregated (one core)", f"{node_rate:,.0f} /s", ""),
        ("stream mode's in-process path over the same lines (floor)", f"{in_process:,.0f} /s", ""),
        ("node agent / stream mode's in-process path", f"{node_rate / in_process:.2f}", ">= 1.0"),
        ("the pipeline alone, lines in memory (bench/events.py)", f"{bare_rate:,.0f} /s", ""),
        ("node agent / pipeline alone", f"{node_rate / bare_rate:.2f}", ""),
        (f"node agent's RSS after {events:,} events read from files", f"{rss_1:.0f} MiB", ""),
        (f"node agent's RSS after {5 * events:,} events", f"{rss_5:.0f} MiB", "flat"),
    ]


def _line_pool(
    policies: dict[str, str], ns: str, pods: list[str], n: int, node: str = "scale-node", hour: int = 12
) -> list[bytes]:
    """Every line matches a rule (the last target of each hook in bench.events matches none)."""
    out = []
    hooks = list(TARGETS)
    for i in range(n):
        hook = hooks[i % len(hooks)]
        targets = TARGETS[hook][:-1]
        target, port = targets[i // len(hooks) % len(targets)]
        out.append(
            orjson.dumps(
                kprobe_event(
                    hook=hook,
                    policy=policies[hook],
                    namespace=ns,
                    pod=pods[i % len(pods)],
                    target=target,
                    port=port,
                    node=node,
                    time=f"2026-11-24T{hour:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
                )
            )
        )
    return out


def writes_per_minute(rates: list[int], seconds: float, count_refresh: float, workdir: Path) -> list[Row]:
    ns, pods = "bench", [f"agent-{i}" for i in range(10)]
    with ControlPlane(binaries.ensure()) as cp:
        cp.install_crds(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        which, _ = install_tetragon_crds(cp)
        print(f"Tetragon CRDs: {which}")
        api = cp.api_client()
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        node = KwokNode(cp, find_kwok_binary(), name="scale-node", source=find_kwok_source())
        node.start()
        cfg = Config(resolver=StaticResolver(HOSTS), detect=True, detection_mode="node", flush_interval=1.0)
        operator = OperatorThread(cfg, cp.kubeconfig).start()
        try:
            for pod in pods:
                node.create_pod(ns, pod, ["app"], {})
            cp.kubectl("apply", "-f", "-", input=PROFILE.format(ns=ns))
            custom = client.CustomObjectsApi(api)

            policies = functools.partial(profile_policies, custom, ns)

            _wait(policies, 60, "the profile's policies")
            pool = _line_pool(policies() or {}, ns, pods, 20_000)
            lj = Lumberjack(workdir / "node-export", keep=False)
            settings = NodeSettings(
                node="scale-node",
                export_file=lj.path,
                flush_interval=1.0,
                count_refresh=count_refresh,
                poll=0.05,
            )
            agent = NodeAgent(Cluster(api_client(cp.kubeconfig)), settings).start()
            assert agent.begun.wait(60)
            rollup = operator.runtime.rollup if operator.runtime else None
            assert rollup is not None
            lines = itertools.cycle(pool)
            rows: list[Row] = []
            per_rate: list[float] = []
            for rate in rates:
                # Warm-up: every record exists and has seen each of its rules before the
                # windows measured (a new rule is written at once, by design); then events at
                # the rate, through whole refresh windows (they follow the wall clock) from the
                # middle of one to the middle of another: each window's refresh (the first
                # flush after it starts) falls inside exactly once.
                lj.write_lines(itertools.islice(lines, 2_000))
                windows = max(1, round(seconds / count_refresh))
                began = (time.time() // count_refresh + 2.5) * count_refresh
                start = time.time()
                w0 = s0 = l0 = -1
                for tick in itertools.count():
                    at = start + tick * 0.1
                    if at >= began + windows * count_refresh:
                        break
                    if w0 < 0 and at >= began:
                        w0, s0, l0 = agent.writer.detection_writes, rollup.status_writes, agent.follower.lines
                    lj.write_lines(itertools.islice(lines, rate // 10))  # rates are multiples of 10
                    time.sleep(max(0.0, at + 0.1 - time.time()))
                elapsed = windows * count_refresh
                agent_wpm = (agent.writer.detection_writes - w0) * 60 / elapsed
                central_wpm = (rollup.status_writes - s0) * 60 / elapsed
                per_rate.append(agent_wpm)
                rows.append(
                    (
                        f"{rate:,} events/s on the node (10 pods, {agent.follower.lines - l0:,} read in "
                        f"{elapsed:.0f} s): AgentDetection writes/min, status writes/min",
                        f"{agent_wpm:.1f}, {central_wpm:.1f}",
                        "independent of the rate",
                    )
                )
            spread = (max(per_rate) - min(per_rate)) / max(per_rate) if max(per_rate) else 0.0
            rows.append(("agent writes/min: spread across rates", f"{spread:.0%}", "<= 10%"))
            # At the chart's default refresh (60 s) the count-only rewrites are tenfold fewer.
            default_wpm = max(per_rate) * count_refresh / 60.0
            rows.append(
                (
                    "projection, 5,000 nodes each like this one, count refresh 60 s: "
                    f"5,000 x {default_wpm:.1f} writes/min (= {max(per_rate):.1f} x {count_refresh:g}/60)",
                    f"{5000 * default_wpm / 60:,.0f} writes/s",
                    "what changes, not what happens",
                )
            )
            agent.stop()
        finally:
            operator.stop()
            node.stop()
    return rows


def profile_policies(custom: client.CustomObjectsApi, ns: str) -> dict[str, str] | None:
    """The benchmark profile's policy names by hook, once the operator has rendered them."""
    body = custom.get_namespaced_custom_object(
        "agentdetect.io", "v1alpha1", ns, "agentdetectionprofiles", "agents"
    )
    assert isinstance(body, dict)
    refs = (body.get("status") or {}).get("policies") or []
    return {r["hook"]: r["name"] for r in refs} or None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def _writes(metrics_text: str) -> float:
    """agentdetect_api_writes_total, summed over its kinds."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("agentdetect_api_writes_total{")
    )


def compare_modes(rate: int, seconds: float, workdir: Path) -> list[Row]:
    """The same cluster and the same events, followed in stream mode, then read in node mode:
    what each costs the API server, what the operator reads, and the writes per minute."""
    ns, tetragon_ns, pods = "cmp", "tetragon", [f"agent-{i}" for i in range(10)]
    results: dict[str, dict[str, float]] = {}
    with ControlPlane(binaries.ensure()) as cp:
        cp.install_crds(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        install_tetragon_crds(cp)
        api = cp.api_client()
        core = client.CoreV1Api(api)
        for name in (ns, tetragon_ns):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        node = KwokNode(cp, find_kwok_binary(), name="cmp-node", source=find_kwok_source())
        node.start()
        apiserver = next(p.pid for p in cp.processes if p.name == "kube-apiserver" and p.pid)
        cri_log = workdir / "tetragon-export-stdout.log"
        node.create_pod(
            tetragon_ns,
            "tetragon-cmp",
            ["export-stdout"],
            {"export-stdout": cri_log},
            labels={"app.kubernetes.io/name": "tetragon"},
        )
        for pod in pods:
            node.create_pod(ns, pod, ["app"], {})
        export = Lumberjack(workdir / "cmp-export", keep=False)
        cp.kubectl("apply", "-f", "-", input=PROFILE.format(ns=ns))
        custom = client.CustomObjectsApi(api)
        try:
            for mode in ("stream", "node"):
                op = OperatorProcess(
                    AGENTDETECT,
                    cp.kubeconfig,
                    workdir / f"operator-{mode}.log",
                    f"--detection-mode={mode}",
                    f"--tetragon-namespace={tetragon_ns}",
                    "--flush-interval=1",
                    "--static-hosts=" + str(_static_hosts(workdir)),
                ).start()
                agent: subprocess.Popen[bytes] | None = None
                agent_metrics = 0
                if mode == "node":
                    agent_metrics = free_port()
                    agent = subprocess.Popen(
                        [
                            str(AGENTDETECT),
                            "node",
                            "--node-name=cmp-node",
                            f"--export-file={export.path}",
                            f"--kubeconfig={cp.kubeconfig}",
                            "--flush-interval=1",
                            # Both scaled tenfold down from their defaults, as the operator's
                            # flush interval (10 s) is here.
                            "--count-refresh=6",
                            f"--metrics-port={agent_metrics}",
                            "--health-port=0",
                            "--bind=127.0.0.1",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )

                policies = functools.partial(profile_policies, custom, ns)

                _wait(policies, 60, "the profile's policies")
                # Later event times in node mode: the agent passes over what the stream mode's
                # records count by event time (a record without a file position).
                pool = _line_pool(
                    policies() or {}, ns, pods, 20_000, "cmp-node", 12 if mode == "stream" else 13
                )
                lines = itertools.cycle(pool)

                def emit(n: int, mode: str = mode, lines: Iterator[bytes] = lines) -> None:
                    batch = list(itertools.islice(lines, n))
                    if mode == "stream":
                        append_log_lines(cri_log, batch)
                    else:
                        export.write_lines(batch)

                def agent_writes(port: int = agent_metrics) -> float:
                    if not port:
                        return 0.0
                    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
                    return _writes(body) if status == 200 else 0.0

                emit(2_000)
                time.sleep(5.0)  # warm: every record written, streams followed
                cpu0, rchar0, opcpu0 = _cpu_seconds(apiserver), _rchar(op.proc.pid), _cpu_seconds(op.proc.pid)  # type: ignore[union-attr]
                w0 = _writes(op.metrics()) + agent_writes()
                agent_cpu0 = _cpu_seconds(agent.pid) if agent is not None else 0.0
                began = time.monotonic()
                for tick in range(int(seconds * 10)):
                    emit(rate // 10)
                    time.sleep(max(0.0, began + (tick + 1) * 0.1 - time.monotonic()))
                time.sleep(2.0)  # what was read is written
                elapsed = time.monotonic() - began
                pid = op.proc.pid  # type: ignore[union-attr]
                results[mode] = {
                    "apiserver_cpu": _cpu_seconds(apiserver) - cpu0,
                    "operator_cpu": _cpu_seconds(pid) - opcpu0,
                    "operator_read_mib": (_rchar(pid) - rchar0) / 2**20,
                    "writes_per_min": (_writes(op.metrics()) + agent_writes() - w0) * 60 / elapsed,
                    "agent_cpu": _cpu_seconds(agent.pid) - agent_cpu0 if agent is not None else 0.0,
                }
                if agent is not None:
                    agent.terminate()
                    agent.wait(30)
                op.stop()
        finally:
            node.stop()
    rows: list[Row] = []
    for label, key, unit in (
        ("kube-apiserver CPU seconds", "apiserver_cpu", "s"),
        ("operator CPU seconds", "operator_cpu", "s"),
        ("node agent CPU seconds (reading the file, not the API)", "agent_cpu", "s"),
        ("bytes read by the operator", "operator_read_mib", "MiB"),
        ("API writes per minute (operator and node agent)", "writes_per_min", ""),
    ):
        stream, nodem = results["stream"][key], results["node"][key]
        rows.append(
            (
                f"{rate:,} events/s for {seconds:g} s, stream mode / node mode: {label}",
                f"{stream:.2f} / {nodem:.2f} {unit}".rstrip(),
                "node mode lower" if key not in ("writes_per_min", "agent_cpu") else "",
            )
        )
    return rows


def grow_nodes(steps: list[int], seconds: float, count_refresh: float, workdir: Path) -> list[Row]:
    """The operator in node mode (its own process) as nodes are added: at each step every node
    has a node agent and a pod, and 10 events/s on its export file; the operator's CPU, the
    kube-apiserver's, and the status writes per minute, over whole refresh windows."""
    ns = "grow"
    rows: list[Row] = []
    with ControlPlane(binaries.ensure()) as cp:
        cp.install_crds(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        install_tetragon_crds(cp)
        api = cp.api_client()
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        apiserver = next(p.pid for p in cp.processes if p.name == "kube-apiserver" and p.pid)
        op = OperatorProcess(
            AGENTDETECT,
            cp.kubeconfig,
            workdir / "operator-grow.log",
            "--detection-mode=node",
            "--flush-interval=1",
            "--static-hosts=" + str(_static_hosts(workdir)),
        ).start()
        agents: list[NodeAgent] = []
        files: list[tuple[Lumberjack, Iterator[bytes]]] = []
        try:
            cp.kubectl("apply", "-f", "-", input=PROFILE.format(ns=ns))
            custom = client.CustomObjectsApi(api)

            policies = functools.partial(profile_policies, custom, ns)

            _wait(policies, 60, "the profile's policies")
            names = policies() or {}
            for step in steps:
                while len(agents) < step:
                    i = len(agents)
                    node, pod = f"grow-node-{i:03d}", f"worker-{i:03d}"
                    # A Node object without a kubelet: its pod exists, bound to it, and
                    # tolerates the taints the node lifecycle controller puts on it.
                    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node)))
                    core.create_namespaced_pod(
                        ns,
                        client.V1Pod(
                            metadata=client.V1ObjectMeta(name=pod),
                            spec=client.V1PodSpec(
                                node_name=node,
                                containers=[client.V1Container(name="app", image="app:1")],
                                tolerations=[client.V1Toleration(operator="Exists")],
                            ),
                        ),
                    )
                    lj = Lumberjack(workdir / "grow" / node, keep=False)
                    files.append((lj, itertools.cycle(_line_pool(names, ns, [pod], 300, node))))
                    settings = NodeSettings(
                        node=node, export_file=lj.path, flush_interval=1.0, count_refresh=count_refresh
                    )
                    agents.append(NodeAgent(Cluster(api_client(cp.kubeconfig)), settings).start())
                for agent in agents:
                    assert agent.begun.wait(120)
                for lj, lines in files:  # warm: every record has seen each of its rules
                    lj.write_lines(itertools.islice(lines, 300))
                windows = max(1, round(seconds / count_refresh))
                began = (time.time() // count_refresh + 2.5) * count_refresh
                start = time.time()
                marks: tuple[float, float, float] | None = None
                for tick in itertools.count():
                    at = start + tick * 0.1
                    if at >= began + windows * count_refresh:
                        break
                    if marks is None and at >= began:
                        marks = (_cpu_seconds(op.proc.pid), _cpu_seconds(apiserver), _writes(op.metrics()))  # type: ignore[union-attr]
                    for lj, lines in files:  # 10 events/s per node
                        lj.write_lines(itertools.islice(lines, 1))
                    time.sleep(max(0.0, at + 0.1 - time.time()))
                assert marks is not None
                elapsed = windows * count_refresh
                op_cpu = _cpu_seconds(op.proc.pid) - marks[0]  # type: ignore[union-attr]
                api_cpu = _cpu_seconds(apiserver) - marks[1]
                status_wpm = (_writes(op.metrics()) - marks[2]) * 60 / elapsed
                rows.append(
                    (
                        f"{step} nodes, each with a node agent and 10 events/s ({elapsed:.0f} s): operator "
                        "CPU s per minute, its status writes/min, kube-apiserver CPU s per minute",
                        f"{op_cpu * 60 / elapsed:.2f}, {status_wpm:.0f}, {api_cpu * 60 / elapsed:.1f}",
                        "status writes flat",
                    )
                )
        finally:
            for agent in agents:
                agent.stop(flush=False)
            op.stop()
    return rows


def _static_hosts(workdir: Path) -> Path:
    path = workdir / "static-hosts.yaml"
    path.write_text("".join(f"{h}: [{', '.join(a)}]\n" for h, a in HOSTS.items()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--count-refresh", type=float, default=6.0)
    parser.add_argument("--no-cluster", action="store_true", help="skip the API-writes part")
    parser.add_argument("--no-read", action="store_true", help="skip the read-rate part")
    parser.add_argument("--no-compare", action="store_true", help="skip stream mode against node mode")
    parser.add_argument("--compare-rate", type=int, default=1_000)
    parser.add_argument("--no-grow", action="store_true", help="skip the operator as nodes grow")
    parser.add_argument("--grow", default="10,50,100", help="node counts of the growth part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentdetect-scale-") as tmp:
        rows = [] if args.no_read else read_rate(args.events, args.pods, Path(tmp))
        if not args.no_cluster:
            rows += writes_per_minute([10, 1_000, 10_000], args.seconds, args.count_refresh, Path(tmp))
        if not args.no_compare:
            rows += compare_modes(args.compare_rate, args.seconds, Path(tmp))
        if not args.no_grow:
            steps = [int(n) for n in args.grow.split(",")]
            rows += grow_nodes(steps, args.seconds, args.count_refresh, Path(tmp))
    print(f"node mode: {args.events:,} events over {args.pods:,} pods; {args.seconds:g} s per rate\n")
    print_rows(rows)


if __name__ == "__main__":
    main()
