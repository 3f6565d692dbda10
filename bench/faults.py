"""Faults: what an operator lives through, and whether the records and policies come out right.

Run: PYTHONPATH=. .venv/bin/python bench/faults.py [--profiles 200] [--namespaces 10]
     [--peering-lifetime 20] [--only SCENARIO ...]

One embedded control plane (kube-apiserver, etcd, kube-controller-manager), kwok as the node
that runs the pods and serves a Tetragon pod's ``export-stdout`` log through the API server,
and ``agentdetect run`` as its own process (peering on, so replicas can fail over). While the
scenarios run, a writer plays Tetragon: every half second it appends one ``execve`` event per
policy of every profile that is Applied to the Tetragon log (for a cluster profile with a
namespace selector, one per selected namespace; for a host-process profile, one from outside
any pod), and counts what it wrote: the ground truth.
Each scenario injects one fault, keeps writing through it, and then measures:

- convergence: seconds from the end of the fault until every record equals the truth and
  every profile's policies are exactly there, and it stays so for four flush intervals;
- lost and double-counted events: the truth against each AgentDetection's count and the
  host-process profile's status count, summed;
- orphaned records (an AgentDetection whose profile is gone), missing policies (a policy a
  profile lists but the API server lacks, or a cluster policy selecting the wrong
  namespaces), orphaned policies (one of ours no live profile lists);
- what the operators logged meanwhile at warning or above, and how many tracebacks.

The same scenarios run small in ``tests/integration/test_faults.py``, which asserts zeros.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import itertools
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.kwoknode import KwokNode, append_log_lines, cri_timestamp, find_kwok_binary, find_kwok_source
from tests.operator_process import OperatorProcess

from agentdetect.api.models import GROUP, VERSION
from agentdetect.cluster.kube import POLICY_PLURALS, TETRAGON_GROUP, TETRAGON_VERSION
from agentdetect.local import binaries, tetragon_crds
from agentdetect.local.controlplane import ControlPlane, load_yaml_documents
from agentdetect.local.samples import kprobe_event
from agentdetect.policy.render import LABEL_MANAGED_BY, MANAGED_BY, POD_NAMESPACE_LABEL

REPO = Path(__file__).resolve().parent.parent
AGENTDETECT = Path(sys.executable).parent / "agentdetect"
TETRAGON_NS = "tetragon"
TETRAGON_LABELS = {"app.kubernetes.io/name": "tetragon"}
PEERING = "agentdetect-faults"
SELECTED = "faults.agentdetect.io/selected"
CLUSTER_PROFILE = "faults-selected"
#: A cluster profile that watches host processes: their counts live in its status.
HOST_PROFILE = "faults-hosts"
POD = "agent-0"
ADP, CADP = "AgentDetectionProfile", "ClusterAgentDetectionProfile"
FLUSH_INTERVAL = 0.5
#: A record key: (profile kind, profile namespace or "", profile name, pod namespace, pod name).
Key = tuple[str, str, str, str, str]

SCENARIOS = (
    "sigkill-during-burst",
    "graceful-restart",
    "failover",
    "apiserver-restart",
    "tetragon-restart",
    "log-rotation",
    "dropped-streams",
    "churn",
)


@dataclass
class Check:
    """One look at the cluster against the truth."""

    lost: int = 0
    doubled: int = 0
    orphaned_records: int = 0
    missing_policies: int = 0
    orphaned_policies: int = 0
    not_ready: int = 0
    #: Records whose rule counts do not add up to their event count.
    inconsistent: int = 0
    records: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.doubled
            or self.orphaned_records
            or self.missing_policies
            or self.orphaned_policies
            or self.not_ready
            or self.inconsistent
        )


@dataclass
class Result:
    scenario: str
    events: int
    converged_s: float | None
    check: Check
    note: str = ""
    #: Lines the operators logged at warning or above during the scenario, and tracebacks.
    warnings: int = 0
    tracebacks: int = 0


@dataclass
class Lab:
    """The cluster, the node, the Tetragon pod, the operators, and the truth."""

    control_plane: ControlPlane
    kwok: KwokNode
    workdir: Path
    namespaces: int = 10
    peering_lifetime: int = 20
    converge_timeout: float = 300.0
    #: The operators' --resolve-interval (the sweep, and its LIST of every policy); None: theirs.
    resolve_interval: float | None = None
    #: Events written per policy per round, and the pause between rounds.
    per_round: int = 1
    round_s: float = 0.5
    truth: Counter[Key] = field(default_factory=Counter)
    operators: list[OperatorProcess] = field(default_factory=list)
    _priorities: Iterator[int] = field(default_factory=lambda: itertools.count(100))
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    _tetragon: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(7))
    _created: itertools.count[int] = field(default_factory=itertools.count)
    #: Profiles being deleted: the writer stops writing for them before the delete is sent.
    _deleting: set[tuple[str, str]] = field(default_factory=set)
    #: Namespaces the cluster profile selects, and since when (the writer waits until the
    #: operator has certainly seen the change, as Tetragon would only later load the policy).
    _selected: dict[str, float] = field(default_factory=dict)
    applied: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    _cluster_policy: tuple[str, set[str]] | None = None
    _host_policy: str | None = None

    # ---- set-up ----------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        return self.control_plane.api_client()

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    def workload_namespaces(self) -> list[str]:
        return [f"faults-{i:02d}" for i in range(self.namespaces)]

    def setup(self) -> None:
        docs = list(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        docs += load_yaml_documents([REPO / "charts/agentdetect/crds/kopf.dev_peerings.yaml"])
        self.control_plane.install_crds(docs)
        self.custom.create_cluster_custom_object(
            "kopf.dev",
            "v1",
            "clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}},
        )
        for ns in [TETRAGON_NS, *self.workload_namespaces()]:
            self.core.create_namespace({"metadata": {"name": ns}})
        for ns in self.workload_namespaces():
            self.kwok.create_pod(ns, POD, ["app"], {})
        self._start_tetragon()
        self.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "clusteragentdetectionprofiles",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": CADP,
                "metadata": {"name": HOST_PROFILE},
                "spec": {"hostProcesses": True, "processes": {"presets": ["shells"]}},
            },
        )

    def tetragon_log(self) -> Path:
        return self.workdir / f"tetragon-{self._tetragon}.log"

    def _start_tetragon(self) -> None:
        self.kwok.create_pod(
            TETRAGON_NS,
            f"tetragon-{self._tetragon}",
            ["tetragon", "export-stdout"],
            {"export-stdout": self.tetragon_log()},
            labels=TETRAGON_LABELS,
        )

    def start_operator(self, priority: int | None = None) -> OperatorProcess:
        n = len(self.operators)
        op = OperatorProcess(
            AGENTDETECT,
            self.control_plane.kubeconfig,
            self.workdir / f"operator-{n}.log",
            f"--tetragon-namespace={TETRAGON_NS}",
            f"--flush-interval={FLUSH_INTERVAL}",
            f"--peering={PEERING}",
            f"--priority={priority if priority is not None else next(self._priorities)}",
            f"--peering-lifetime={self.peering_lifetime}",
            "--log-format=json",
            *([f"--resolve-interval={self.resolve_interval}"] if self.resolve_interval else []),
        )
        self.operators.append(op)
        return op.start()

    def stop_operators(self) -> None:
        for op in self.operators:
            if op.proc is not None and op.proc.poll() is None:
                op.stop()

    # ---- profiles --------------------------------------------------------------------------

    def create_profile(self, prefix: str = "p") -> tuple[str, str]:
        n = next(self._created)
        ns = self.workload_namespaces()[n % self.namespaces]
        name = f"{prefix}-{n:04d}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": ADP,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"processes": {"presets": ["shells"]}},
        }
        _retrying(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "agentdetectionprofiles", body
            )
        )
        return ns, name

    def delete_profile(self, ns: str, name: str) -> None:
        with self.log_lock:
            self._deleting.add((ns, name))
        _retrying(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, "agentdetectionprofiles", name
            )
        )

    def create_cluster_profile(self) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": CADP,
            "metadata": {"name": CLUSTER_PROFILE},
            "spec": {
                "namespaceSelector": {"matchLabels": {SELECTED: "yes"}},
                "processes": {"presets": ["shells"]},
            },
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, "clusteragentdetectionprofiles", body)

    def select(self, ns: str, on: bool) -> None:
        """Relabel a namespace in or out of the cluster profile's selector. Out: the writer
        stops first and gives the operator two seconds to read what it wrote (README: an event
        read after its namespace left a selector is matched against the new selection)."""
        if not on:
            with self.log_lock:
                self._selected.pop(ns, None)
            time.sleep(2.0)
        _retrying(
            lambda: self.core.patch_namespace(ns, {"metadata": {"labels": {SELECTED: "yes" if on else None}}})
        )
        if on:
            with self.log_lock:
                self._selected.setdefault(ns, time.monotonic())

    # ---- the writer (Tetragon) -------------------------------------------------------------

    def _refresh_applied(self) -> None:
        """Which profiles are Applied and their policies; kept as it was while the API is away,
        as Tetragon keeps reporting through an API server outage."""
        try:
            got = self.custom.list_cluster_custom_object(
                GROUP, VERSION, "agentdetectionprofiles", _request_timeout=5
            )
            cluster = self.custom.list_cluster_custom_object(
                TETRAGON_GROUP, TETRAGON_VERSION, POLICY_PLURALS["TracingPolicy"], _request_timeout=5
            )
        except Exception:  # an outage: keep writing for what we knew
            return
        applied = []
        for obj in got["items"]:
            status = obj.get("status") or {}
            cond = _ready(obj)
            if cond is None or cond.get("reason") != "Applied":
                continue
            names = [p["name"] for p in status.get("policies") or []]
            applied.append((ADP, obj["metadata"]["namespace"], obj["metadata"]["name"], names))
        self.applied = applied
        self._cluster_policy = None
        self._host_policy = None
        for pol in cluster["items"]:
            owner = pol["metadata"].get("labels", {}).get("agentdetect.io/profile-name")
            if owner == CLUSTER_PROFILE:
                self._cluster_policy = (pol["metadata"]["name"], _selected_by(pol))
            elif owner == HOST_PROFILE:
                self._host_policy = pol["metadata"]["name"]

    def write_round(self) -> int:
        self._refresh_applied()
        stamp = cri_timestamp()
        lines: list[bytes] = []
        counted: Counter[Key] = Counter()
        with self.log_lock:
            for kind, ns, name, policies in self.applied:
                if (ns, name) in self._deleting:
                    continue
                for policy in policies:
                    for _ in range(self.per_round):
                        lines.append(event_line(policy, ns, stamp))
                counted[(kind, ns, name, ns, POD)] += self.per_round * len(policies)
            if self._cluster_policy is not None:
                policy, live = self._cluster_policy
                settled = time.monotonic() - 2.0
                for ns, since in self._selected.items():
                    if since < settled and ns in live:
                        lines += [event_line(policy, ns, stamp) for _ in range(self.per_round)]
                        counted[(CADP, "", CLUSTER_PROFILE, ns, POD)] += self.per_round
            if self._host_policy is not None:
                lines += [host_event_line(self._host_policy, stamp) for _ in range(self.per_round)]
                counted[(CADP, "", HOST_PROFILE, "", "")] += self.per_round
            if lines:
                append_log_lines(self.tetragon_log(), lines)
                self.truth.update(counted)
        return len(lines)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The writer runs in the background for the body of the block."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.write_round()
                stop.wait(self.round_s)

        thread = threading.Thread(target=loop, name="faults-writer", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)

    def restart_tetragon(self) -> None:
        """A new Tetragon pod (a new name, a new log) replaces the old, as a DaemonSet rollout."""
        old = f"tetragon-{self._tetragon}"
        with self.log_lock:
            self.kwok.delete_pod(TETRAGON_NS, old)
            self._tetragon += 1
            self._start_tetragon()

    def rotate_log(self) -> None:
        """As the kubelet rotates a container log: the file is renamed, a new one takes its name."""
        with self.log_lock:
            path = self.tetragon_log()
            os.replace(path, path.with_name(path.name + f".{int(time.time())}"))
            path.touch()

    # ---- the check -------------------------------------------------------------------------

    def check(self) -> Check:
        c = Check()
        profiles = self.custom.list_cluster_custom_object(GROUP, VERSION, "agentdetectionprofiles")["items"]
        profiles += self.custom.list_cluster_custom_object(GROUP, VERSION, "clusteragentdetectionprofiles")[
            "items"
        ]
        live_profiles = {
            (p["kind"], p["metadata"].get("namespace") or "", p["metadata"]["name"]): p for p in profiles
        }
        listed: set[tuple[str, str]] = set()
        for p in live_profiles.values():
            cond = _ready(p)
            status = p.get("status") or {}
            if (
                cond is None
                or cond.get("reason") != "Applied"
                or status.get("observedGeneration") != p["metadata"]["generation"]
            ):
                c.not_ready += 1
            listed |= {(r.get("namespace") or "", r["name"]) for r in status.get("policies") or []}

        live_policies: dict[tuple[str, str], dict[str, Any]] = {}
        for kind, plural in POLICY_PLURALS.items():
            del kind
            items = self.custom.list_cluster_custom_object(
                TETRAGON_GROUP, TETRAGON_VERSION, plural, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"
            )["items"]
            for pol in items:
                live_policies[(pol["metadata"].get("namespace") or "", pol["metadata"]["name"])] = pol
        c.missing_policies = len(listed - live_policies.keys())
        c.orphaned_policies = len(live_policies.keys() - listed)
        if (CADP, "", CLUSTER_PROFILE) in live_profiles:
            wanted = self._labelled_namespaces()
            selecting = [
                _selected_by(pol)
                for pol in live_policies.values()
                if pol["metadata"].get("labels", {}).get("agentdetect.io/profile-name") == CLUSTER_PROFILE
            ]
            c.missing_policies += sum(len(got ^ wanted) for got in selecting) if selecting else len(wanted)

        actual: Counter[Key] = Counter()
        host = live_profiles.get((CADP, "", HOST_PROFILE))
        if host is not None:
            summary = ((host.get("status") or {}).get("detections") or {}).get("hostProcesses") or {}
            actual[(CADP, "", HOST_PROFILE, "", "")] = summary.get("events", 0)
        records = self.custom.list_cluster_custom_object(GROUP, VERSION, "agentdetections")["items"]
        c.records = len(records)
        for r in records:
            prof, pod = r["profile"], r["pod"]
            key: Key = (
                prof["kind"],
                prof.get("namespace") or "",
                prof["name"],
                pod["namespace"],
                pod["name"],
            )
            if key[:3] not in live_profiles:
                c.orphaned_records += 1
                continue
            actual[key] += r["summary"]["events"]
            if sum(d["count"] for d in r.get("detections") or []) != r["summary"]["events"]:
                c.inconsistent += 1
        with self.log_lock:
            truth = {k: v for k, v in self.truth.items() if k[:3] in live_profiles}
        for key in truth.keys() | actual.keys():
            diff = actual.get(key, 0) - truth.get(key, 0)
            c.lost += max(0, -diff)
            c.doubled += max(0, diff)
        return c

    def _labelled_namespaces(self) -> set[str]:
        got = self.core.list_namespace(label_selector=f"{SELECTED}=yes")
        return {ns.metadata.name for ns in got.items}

    def converge(self, since: float) -> tuple[float | None, Check]:
        """Seconds from ``since`` until the check is clean and stays clean for four flushes."""
        deadline = since + self.converge_timeout
        last = Check()
        while time.monotonic() < deadline:
            try:
                last = self.check()
            except ApiException:
                time.sleep(0.5)
                continue
            if last.clean:
                at = time.monotonic() - since
                time.sleep(4 * FLUSH_INTERVAL)
                last = self.check()
                if last.clean:
                    return at, last
            time.sleep(0.25)
        return None, last

    # ---- scenarios -------------------------------------------------------------------------

    def run(self, scenario: str, profiles: int) -> Result:
        begin_truth = sum(self.truth.values())
        offsets = {op.log: op.log.stat().st_size for op in self.operators if op.log.exists()}
        since, note = getattr(self, "_" + scenario.replace("-", "_"))(profiles)
        converged, check = self.converge(since)
        result = Result(scenario, sum(self.truth.values()) - begin_truth, converged, check, note)
        for op in self.operators:
            with op.log.open("rb") as fh:
                fh.seek(offsets.get(op.log, 0))
                for line in fh:
                    result.warnings += b'"severity": "warning"' in line or b'"severity": "error"' in line
                    result.tracebacks += b"Traceback" in line
        return result

    def _current(self) -> OperatorProcess:
        live = [op for op in self.operators if op.proc is not None and op.proc.poll() is None]
        return live[-1]

    def _sigkill_during_burst(self, profiles: int) -> tuple[float, str]:
        """``profiles`` created by 8 clients at once while Tetragon reports; halfway through the
        operator is killed (SIGKILL) and a new one starts, as a Deployment would."""
        if not self.operators:
            self.start_operator()
        since = time.monotonic()
        with self.writing(), concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(self.create_profile) for _ in range(profiles)]
            for i, fut in enumerate(concurrent.futures.as_completed(futures)):
                fut.result()
                if i == profiles // 2:
                    victim = self._current().proc
                    assert victim is not None
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
                    self.start_operator()
                    since = time.monotonic()
            time.sleep(2.0)
        return since, f"killed after {profiles // 2 + 1} of {profiles} creates"

    def _graceful_restart(self, profiles: int) -> tuple[float, str]:
        with self.writing():
            time.sleep(2.0)
            self._current().stop()
            time.sleep(2.0)  # events keep coming while no operator runs
            self.start_operator()
            since = time.monotonic()
            time.sleep(2.0)
        return since, "SIGTERM, 2 s without an operator"

    def _failover(self, profiles: int) -> tuple[float, str]:
        active = self._current()
        self.start_operator(priority=1)  # the standby
        with self.writing():
            time.sleep(2.0)
            assert active.proc is not None
            active.proc.send_signal(signal.SIGKILL)
            active.proc.wait(10)
            since = time.monotonic()
            # The standby takes over once the killed replica's peering entry expires.
            time.sleep(min(self.peering_lifetime + 5.0, 20.0))
        # The next restarts outrank the dead replica's entry at once.
        return since, f"active replica SIGKILLed; peering lifetime {self.peering_lifetime} s"

    def _apiserver_restart(self, profiles: int) -> tuple[float, str]:
        with self.writing():
            time.sleep(2.0)
            took = self.control_plane.restart("kube-apiserver", down_for=3.0)
            since = time.monotonic()
            time.sleep(2.0)
        return since, f"down 3 s, ready {took:.1f} s after its start"

    def _tetragon_restart(self, profiles: int) -> tuple[float, str]:
        with self.writing():
            time.sleep(2.0)
            self.restart_tetragon()
            since = time.monotonic()
            time.sleep(2.0)
        return since, "new pod, new log"

    def _log_rotation(self, profiles: int) -> tuple[float, str]:
        with self.writing():
            time.sleep(2.0)
            self.rotate_log()
            since = time.monotonic()
            time.sleep(2.0)
        return since, "renamed and re-created while followed"

    def _dropped_streams(self, profiles: int) -> tuple[float, str]:
        with self.writing():
            time.sleep(2.0)
            self.kwok.restart(down_for=3.0)
            since = time.monotonic()
            time.sleep(2.0)
        return since, "kubelet (kwok) down 3 s: every stream ends"

    def _churn(self, profiles: int) -> tuple[float, str]:
        """``profiles`` operations from 8 clients at once: half creates, a quarter deletes of
        existing profiles, a quarter namespace relabels that move a cluster profile's selection."""
        if not any(True for _ in self._cluster_profiles()):
            self.create_cluster_profile()
        existing = [
            (p["metadata"]["namespace"], p["metadata"]["name"])
            for p in self.custom.list_cluster_custom_object(GROUP, VERSION, "agentdetectionprofiles")["items"]
        ]
        creates, deletes, relabels = profiles // 2, profiles // 4, profiles - profiles // 2 - profiles // 4
        ops: list[Callable[[], object]] = [
            functools.partial(self.create_profile, "c") for _ in range(creates)
        ]
        ops += [functools.partial(self.delete_profile, *v) for v in self._rng.sample(existing, deletes)]
        names = self.workload_namespaces()
        ops += [
            functools.partial(self.select, self._rng.choice(names), self._rng.random() < 0.6)
            for _ in range(relabels)
        ]
        self._rng.shuffle(ops)
        with self.writing(), concurrent.futures.ThreadPoolExecutor(8) as pool:
            for fut in [pool.submit(op) for op in ops]:
                fut.result()
            since = time.monotonic()
            time.sleep(2.0)
        return since, f"{creates} creates, {deletes} deletes, {relabels} relabels"

    def _cluster_profiles(self) -> list[dict[str, Any]]:
        return list(
            self.custom.list_cluster_custom_object(GROUP, VERSION, "clusteragentdetectionprofiles")["items"]
        )


# ---- helpers ---------------------------------------------------------------------------------


def _retrying(call: Callable[[], object], attempts: int = 20) -> None:
    """A client call through an API server that may be restarting; 404/409 are answers."""
    for i in range(attempts):
        try:
            call()
            return
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            if exc.status and exc.status < 500 and exc.status != 429:
                raise
        except Exception:  # connection refused while it restarts
            pass
        time.sleep(min(0.2 * 2**i, 2.0))
    raise RuntimeError("the API server did not answer")


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )


def _selected_by(policy: dict[str, Any]) -> set[str]:
    """The namespaces a cluster policy's pod selector admits (render.pod_selector's ``In``)."""
    found: set[str] = set()
    for expr in (policy["spec"].get("podSelector") or {}).get("matchExpressions") or []:
        if expr.get("key") == POD_NAMESPACE_LABEL and expr.get("operator") == "In":
            found |= set(expr.get("values") or [])
    return found


def host_event_line(policy: str, stamp: str) -> bytes:
    """What Tetragon exports for a process outside any pod: no ``process.pod``."""
    doc = kprobe_event(hook="execve", policy=policy, namespace="", pod="", target="/bin/sh", time=stamp)
    del doc["process_kprobe"]["process"]["pod"]
    return orjson.dumps(doc)


def event_line(policy: str, namespace: str, stamp: str) -> bytes:
    return orjson.dumps(
        kprobe_event(hook="execve", policy=policy, namespace=namespace, pod=POD, target="/bin/sh", time=stamp)
    )


@contextmanager
def lab(
    workdir: Path, namespaces: int, peering_lifetime: int, tetragon_docs: list[dict[str, Any]]
) -> Iterator[Lab]:
    cp = ControlPlane(binaries.ensure())
    cp.start()
    try:
        cp.install_crds(tetragon_docs)
        node = KwokNode(cp, find_kwok_binary(), name="faults-node", source=find_kwok_source())
        node.start()
        the_lab = Lab(cp, node, workdir, namespaces=namespaces, peering_lifetime=peering_lifetime)
        try:
            the_lab.setup()
            yield the_lab
        finally:
            the_lab.stop_operators()
            node.stop()
    finally:
        cp.stop()


def print_table(results: list[Result]) -> None:
    print(
        "| scenario | events written | converged (s) | lost | double-counted | orphaned records "
        "| missing policies | orphaned policies | warnings logged (tracebacks) | fault |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r.check
        conv = f"{r.converged_s:.1f}" if r.converged_s is not None else "not converged"
        print(
            f"| {r.scenario} | {r.events:,} | {conv} | {c.lost} | {c.doubled} | {c.orphaned_records} "
            f"| {c.missing_policies} | {c.orphaned_policies} | {r.warnings} ({r.tracebacks}) | {r.note} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=200, help="created in the burst; operations in churn")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--peering-lifetime", type=int, default=20, help="the operator's default, 20")
    parser.add_argument(
        "--only", nargs="*", choices=SCENARIOS, help="these scenarios (the burst always runs)"
    )
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s in args.only or s == SCENARIOS[0]]
    results = []
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="agentdetect-faults-") as tmp,
        lab(Path(tmp), args.namespaces, args.peering_lifetime, tetragon_crds.load()) as the_lab,
    ):
        for scenario in chosen:
            results.append(the_lab.run(scenario, args.profiles))
            print(f"  {scenario}: done", file=sys.stderr)
        records = results[-1].check.records
    print(
        f"faults: {args.profiles} profiles over {args.namespaces} namespaces, one kwok node, "
        f"{os.cpu_count()} cores; {sum(the_lab.truth.values()):,} events in all, {records} AgentDetections "
        f"at the end; {time.monotonic() - began:.0f} s\n"
    )
    print_table(results)
    print("\nfloor: 0 lost, 0 double-counted, 0 orphaned or missing in every scenario")


if __name__ == "__main__":
    main()
