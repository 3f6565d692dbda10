"""Embedded control plane: warm start time to ready and peak memory per component.

Run: .venv/bin/python bench/controlplane.py [--runs N] [--objects N]
Binaries must already be built or cached (``agentdetect binaries``), so only the start is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from kubernetes import client

from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def workload(cp: ControlPlane, objects: int) -> None:
    """Some writes and reads, so peak memory reflects use rather than an idle start."""
    core = client.CoreV1Api(cp.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))
    for i in range(objects):
        core.create_namespaced_config_map(
            "bench", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm-{i}"), data={"i": str(i)})
        )
    assert len(core.list_namespaced_config_map("bench").items) >= objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--objects", type=int, default=500)
    args = parser.parse_args()
    bins = binaries.ensure()

    ready: dict[str, list[float]] = {}
    peaks: dict[str, list[float]] = {}
    stops: list[float] = []
    for _ in range(args.runs):
        cp = ControlPlane(bins)
        cp.start()
        try:
            for name, seconds in cp.timings.items():
                ready.setdefault(name, []).append(seconds)
            workload(cp, args.objects)
            for proc in cp.processes:
                assert proc.pid is not None
                peaks.setdefault(proc.name, []).append(peak_rss_mib(proc.pid))
        finally:
            began = time.monotonic()
            cp.stop()
            stops.append(time.monotonic() - began)

    print(f"control plane, {args.runs} warm starts, {args.objects} ConfigMaps written per run\n")
    print("| component | ready, seconds after start (median / max) | peak RSS (max, MiB) |")
    print("|---|---|---|")
    for name, times in ready.items():
        print(f"| {name} | {statistics.median(times):.2f} / {max(times):.2f} | {max(peaks[name]):.0f} |")
    whole = ready["kube-controller-manager"]
    total_peak = sum(max(v) for v in peaks.values())
    print(f"| whole control plane | {statistics.median(whole):.2f} / {max(whole):.2f} | {total_peak:.0f} |")
    print(f"| stop, all three (SIGTERM) | {statistics.median(stops):.2f} / {max(stops):.2f} | |")


if __name__ == "__main__":
    main()
