"""Detection pipeline: throughput on one core, memory over time, API writes per flush.

Run: .venv/bin/python bench/events.py [--events N] [--pods N] [--rounds N] [--no-cluster]
     [--profile]

1. A stream of Tetragon-formatted events (the three hooks mixed, ``--pods`` pods over ten
   namespaces, ten profiles) through parse, match and aggregate, against merely parsing each
   line with orjson, in alternating rounds; twice: with the short parent process of the
   earlier benchmark (1.1 kB lines), and with the parent Tetragon exports for a process in a
   pod, its pod included, as in its recorded samples (1.7 kB lines). A third time, lines as
   a real export mixes them: each of those kprobe lines between the ``process_exec`` and the
   ``process_exit`` of its process, which detection counts as ignored (lines per second). A
   fourth: each followed by another TracingPolicy's kprobe of the same process on a hook
   detection does not read (ignored too).
2. RSS after 1x and ``--rounds``x ``--events`` events (the state is bounded, so it should be flat).
3. API writes per flush interval against the embedded control plane at 10 and at 10,000
   events per second over the same 10 pods (coalescing makes them equal).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson
import yaml
from kubernetes import client

from agentdetect.cluster.kube import Cluster
from agentdetect.controller.reconcile import targets_for
from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.events import decode_line
from agentdetect.detection.pipeline import Pipeline, tune_gc
from agentdetect.detection.writer import DetectionWriter
from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane, load_yaml_documents
from agentdetect.local.samples import Scenario, foreign_kprobe, kprobe_event, lifecycle_events, stream
from agentdetect.policy.board import ProfileBoard, ProfileState
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import hostnames_of, policy_name
from agentdetect.policy.resolve import StaticResolver, resolve_all

REPO = Path(__file__).resolve().parent.parent
HOSTS = {
    "api.openai.com": ["104.18.6.192"],
    "api.anthropic.com": ["160.79.104.10"],
    "api.pinecone.io": ["34.111.1.10"],
}
PROFILE = """
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: agents, namespace: {ns}}}
spec:
  network:
    providers: [openai, anthropic, pinecone, ollama]
    destinations: [{{name: vllm, cidrs: [10.20.0.0/16], ports: [8000]}}]
  files: {{presets: [credentials, ssh-keys, serviceaccount-token, ai-sdks]}}
  processes: {{presets: [shells, agent-clis, network-tools]}}
"""
TARGETS = {
    "tcp_connect": (
        ("104.18.6.192", 443),
        ("160.79.104.10", 443),
        ("34.111.1.10", 443),
        ("10.20.7.7", 8000),
        ("10.0.0.9", 11434),
        ("1.1.1.1", 443),
    ),
    "fd_install": (
        ("/var/run/secrets/kubernetes.io/serviceaccount/token", 0),
        ("/home/app/.aws/credentials", 0),
        ("/usr/lib/python3.12/site-packages/openai/__init__.py", 0),
        ("/etc/hosts", 0),
    ),
    "execve": (("/bin/sh", 0), ("/usr/bin/curl", 0), ("/usr/local/bin/claude", 0), ("/usr/bin/python3", 0)),
}


def board_and_scenarios(namespaces: list[str]) -> tuple[ProfileBoard, list[Scenario]]:
    board = ProfileBoard()
    scenarios = []
    for ns in namespaces:
        profile = parse_profile(yaml.safe_load(PROFILE.format(ns=ns)))
        targets = tuple(targets_for(profile, None))
        resolved = resolve_all(hostnames_of(profile.spec), StaticResolver(HOSTS), {}, "2026-11-23T00:00:00Z")
        board.publish(ProfileState(profile, targets, resolved))
        for hook, hook_targets in TARGETS.items():
            scenarios.append(Scenario(policy_name(profile, targets[0], hook), hook, ns, hook_targets))
    return board, scenarios


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _median_spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} /s ({min(rates):,.0f}-{max(rates):,.0f})"


#: Lines per slice of a round: each side's pass over a slice follows the other's within a
#: fraction of a second, so the machine's drift (a fifth, over seconds, on a shared 2-core
#: machine) falls on both alike.
SLICE = 20_000


def parse_all(lines: list[bytes]) -> None:
    """The floor: each line merely parsed with orjson."""
    for line in lines:
        orjson.loads(line)


def decode_all(lines: list[bytes]) -> None:
    """Each line through the pipeline's typed decode alone (its first step)."""
    for line in lines:
        decode_line(line)


def take_turns(
    chunk: list[bytes], sides: Mapping[str, Callable[[list[bytes]], object]], took: dict[str, float]
) -> None:
    """Each side over the same slice in turn, its time added to ``took`` (bench/events_ab.py
    too)."""
    for name, side in sides.items():
        start = time.perf_counter()
        side(chunk)
        took[name] += time.perf_counter() - start


def _with_lifecycle(lines: list[bytes]) -> list[bytes]:
    """Each kprobe line between its process's exec and exit, as a real export has them."""
    out: list[bytes] = []
    for line in lines:
        started, ended = lifecycle_events(orjson.loads(line), _stamp(len(out)))
        out += [orjson.dumps(started), line, orjson.dumps(ended)]
    return out


def _with_foreign(lines: list[bytes]) -> list[bytes]:
    """Each kprobe line followed by another policy's kprobe of the same process, on a hook
    detection does not read."""
    out: list[bytes] = []
    for line in lines:
        out += [line, orjson.dumps(foreign_kprobe(orjson.loads(line)))]
    return out


def throughput(
    events: int, pods: int, rounds: int, full_parent: bool, mix: str = ""
) -> list[tuple[str, str, str]]:
    """Rounds of ``events`` events, taken a slice at a time; each slice goes through orjson,
    the pipeline, the typed decode alone and the node agent's path in turn, and each side's
    rate in a round is its events over its summed time. The ratio is taken per round, then its
    median. The pipeline keeps its state across rounds, so the last round ends at ``rounds`` x
    ``events`` events (the RSS rows)."""
    namespaces = [f"team-{i}" for i in range(10)]
    board, scenarios = board_and_scenarios(namespaces)
    # A pool of distinct lines, cycled: generating 5M JSON lines would dominate the run.
    pool = list(stream(scenarios, pods // len(namespaces), min(events, 200_000), full_parent=full_parent))
    lifecycle, foreign = mix == "lifecycle", mix == "foreign"
    if lifecycle:
        pool = _with_lifecycle(pool[: len(pool) // 3])
    elif foreign:
        pool = _with_foreign(pool[: len(pool) // 2])
    size = sum(map(len, pool)) / len(pool)
    tune_gc()
    endless = itertools.cycle(pool)
    rss_pool = rss_mib()
    pipeline = Pipeline(board, Aggregator(max_pods=20_000))
    # The node agent's path, feed_stream (each line with its kubelet timestamp, checked against
    # the record's stream position), into a second pipeline, over the same lines.
    streamed = Pipeline(board, Aggregator(max_pods=20_000))
    stamps = itertools.count(1_700_000_000_000_000_000)
    rates: list[float] = []
    parse_rates: list[float] = []
    decode_rates: list[float] = []
    stream_rates: list[float] = []
    ratios: list[float] = []
    rss_after: list[float] = []
    positioned: list[tuple[bytes, int]] = []

    def feed_stream(_: list[bytes]) -> None:
        for at in range(0, len(positioned), 256):
            streamed.feed_stream(positioned[at : at + 256], "kube-system/tetragon-bench")

    sides = {"orjson": parse_all, "pipeline": pipeline.feed_many, "decode": decode_all, "stream": feed_stream}
    for _ in range(rounds):
        spent = dict.fromkeys(sides, 0.0)
        for done in range(0, events, SLICE):
            chunk = list(itertools.islice(endless, min(SLICE, events - done)))
            positioned[:] = zip(chunk, stamps, strict=False)  # stamps: endless; not timed
            take_turns(chunk, sides, spent)
        rss_after.append(rss_mib())
        for rates_of, side in (
            (parse_rates, "orjson"),
            (rates, "pipeline"),
            (decode_rates, "decode"),
            (stream_rates, "stream"),
        ):
            rates_of.append(events / spent[side])
        ratios.append(spent["orjson"] / spent["pipeline"])
    st = pipeline.stats
    assert st.lines == streamed.stats.lines == rounds * events, (st, streamed.stats)
    # With exec and exit lines, two of every three lines are ignored, with another policy's
    # kprobes one of every two (give or take where the last round stops in the pool's cycle).
    assert st.events + st.ignored == rounds * events, st
    ignored_per_event = 2 if lifecycle else 1 if foreign else 0
    assert abs(st.ignored - ignored_per_event * st.events) <= 2, st
    assert streamed.stats == st and streamed.aggregator.stats.already_counted == 0
    tracked = len(pipeline.aggregator.pods)
    shape = f"{'full' if full_parent else 'short'} parent, {size:,.0f} B/line"
    unit = "events"
    if lifecycle:
        shape, unit = f"exec, kprobe, exit; {size:,.0f} B/line", "lines (a third of them kprobe events)"
    elif foreign:
        shape, unit = f"ours, another policy's; {size:,.0f} B/line", "lines (half of them our events)"
    return [
        (
            f"[{shape}] {unit} through parse, match and aggregate (one core)",
            _median_spread(rates),
            "" if mix else ">= 250,000 /s",
        ),
        (f"[{shape}] {unit} merely parsed with orjson", _median_spread(parse_rates), ""),
        (
            f"[{shape}] pipeline / parse-only, per round",
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})",
            ">= 1.0",
        ),
        (f"[{shape}] lines through the typed decode alone", _median_spread(decode_rates), ""),
        (
            f"[{shape}] {unit} through the node agent's path (feed_stream, stream positions)",
            _median_spread(stream_rates),
            "",
        ),
        (f"[{shape}] RSS before feeding (incl. a pool of {len(pool):,} lines)", f"{rss_pool:.0f} MiB", ""),
        (
            f"[{shape}] RSS after {events:,} / {rounds * events:,} {unit.split()[0]}",
            f"{rss_after[0]:.0f} / {rss_after[-1]:.0f} MiB",
            "flat",
        ),
        (f"[{shape}] (profile, pod) entries tracked", f"{tracked:,}", f"{pods:,} pods"),
    ]


def profile_top(events: int, pods: int, top: int) -> None:
    """cProfile's top entries by own time for one pipeline pass (short-parent lines)."""
    board, scenarios = board_and_scenarios([f"team-{i}" for i in range(10)])
    pool = list(stream(scenarios, pods // 10, events))
    tune_gc()
    pipeline = Pipeline(board, Aggregator(max_pods=20_000))
    pipeline.feed_many(pool)  # entries exist: the steady state
    profiler = cProfile.Profile()
    profiler.runcall(pipeline.feed_many, pool)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def _stamp(i: int) -> str:
    return f"2026-11-23T12:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z"


def writes_per_flush(rates: list[int], flushes: int) -> list[tuple[str, str, str]]:
    pods = [f"agent-{i}" for i in range(10)]
    with ControlPlane(binaries.ensure()) as cp:
        cp.install_crds(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        api = cp.api_client()
        core = client.CoreV1Api(api)
        ns = "bench"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        for pod in pods:
            core.create_namespaced_pod(
                ns,
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name=pod),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="app:1")]),
                ),
            )
        cp.kubectl("apply", "-f", "-", input=PROFILE.format(ns=ns))
        board, all_scenarios = board_and_scenarios([ns])
        # Every event matches a rule here (the last target of each hook matches none), so at
        # 10 events/s each of the 10 pods is detected once per interval, as at 10,000.
        scenarios = [Scenario(s.policy, s.hook, s.namespace, s.targets[:-1]) for s in all_scenarios]
        pipeline = Pipeline(board)
        writer = DetectionWriter(Cluster(api), pipeline)
        rows = []
        seq = itertools.count()
        for rate in rates:
            per_flush = []
            for _ in range(flushes):
                began = time.monotonic()
                for chunk in range(10):  # the interval's events, spread over ten slices of it
                    for _ in range(rate // 10 or (1 if chunk < rate else 0)):
                        i = next(seq)
                        sc = scenarios[i % len(scenarios)]
                        target, port = sc.targets[i % len(sc.targets)]
                        pipeline.feed(
                            orjson.dumps(
                                kprobe_event(
                                    hook=sc.hook,
                                    policy=sc.policy,
                                    namespace=ns,
                                    pod=pods[i % len(pods)],
                                    target=target,
                                    port=port,
                                    time=_stamp(i),
                                )
                            )
                        )
                    time.sleep(max(0.0, began + (chunk + 1) * 0.1 - time.monotonic()))
                per_flush.append(writer.flush().writes)
            rows.append(
                (
                    f"API writes per 1 s flush at {rate:,} events/s (10 pods)",
                    f"{sum(per_flush[1:]) / (len(per_flush) - 1):.1f} (each: {per_flush})",
                    "equal across rates",
                )
            )
        return rows


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    """The README's table: measure, result, and the goal or floor it is read against."""
    print("| measure | result | goal |")
    print("|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=5_000)
    parser.add_argument("--flushes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-cluster", action="store_true", help="skip the API-writes part")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries and stop")
    args = parser.parse_args()
    if args.profile:
        profile_top(min(args.events, 200_000), args.pods, 12)
        return
    rows = throughput(args.events, args.pods, args.rounds, full_parent=False)
    rows += throughput(args.events, args.pods, args.rounds, full_parent=True)
    rows += throughput(args.events, args.pods, args.rounds, full_parent=True, mix="lifecycle")
    rows += throughput(args.events, args.pods, args.rounds, full_parent=True, mix="foreign")
    if not args.no_cluster:
        rows += writes_per_flush([10, 10_000], args.flushes)
    print(f"detection pipeline, {args.events:,} events over {args.pods:,} pods\n")
    print_rows(rows)


if __name__ == "__main__":
    main()
