"""Tetragon as the judge: ``tpjudge`` (Tetragon v1.7.0's own policy checks, see
``../shared/tools/tetragon-judge/README.md``) run over policies we rendered.

Every policy rendered anywhere in a test session is recorded (``Recorder``, wired in
``tests/conftest.py``) and judged once at the end of the session. tpjudge's ``sensor`` stage
builds the agent's sensors against this machine's kernel BTF and costs about 0.3 s a policy, so
every distinct policy goes through the stages that look at values (schema, CEL, policy filter,
selector compilation: lengths, counts, CIDRs, ports) and one policy of each distinct *shape*
(kind, selectors' presence, calls, argument types, operators and actions per selector: what
the sensor stage looks at) through the sensor stage as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdetect.policy.render import yaml_json

ENV = "TETRAGON_JUDGE"


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    stage: str
    error: str


def binary() -> Path | None:
    path = os.environ.get(ENV)
    return Path(path) if path else None


def judge(docs: list[dict[str, Any]], sensor: bool = True, timeout: float = 1800) -> list[Verdict]:
    """One verdict per document, in order. Raises if tpjudge itself fails (exit 2, no output)."""
    exe = binary()
    if exe is None:
        raise RuntimeError(f"{ENV} is not set")
    if not docs:
        return []
    argv = [str(exe), *([] if sensor else ["-no-sensor"]), "-"]
    # JSON documents (JSON is YAML): what the operator sends the API server, and no string can
    # be read back as another type by a YAML 1.1 reader (the CLI's YAML is judged separately).
    proc = subprocess.run(
        argv,
        input="\n---\n".join(yaml_json(d) for d in docs),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 1) or len(lines) != len(docs):
        raise RuntimeError(
            f"tpjudge exited {proc.returncode} with {len(lines)} verdicts for {len(docs)} policies: "
            f"{proc.stderr.strip()[-2000:]}"
        )
    by_doc = sorted(lines, key=lambda v: int(v["doc"]))
    return [Verdict(v["name"], bool(v["ok"]), v.get("stage", ""), v.get("error", "")) for v in by_doc]


def shape(doc: dict[str, Any]) -> str:
    """What the sensor stage looks at, without the values the other stages check."""
    spec = doc.get("spec", {})
    probes = [
        {
            "call": k.get("call"),
            "syscall": k.get("syscall"),
            "args": k.get("args"),
            # Which kinds of selector, not how many or in which order: counts and values are
            # what the selectors stage checks, on every policy.
            "selectors": sorted(
                {
                    json.dumps(
                        [
                            [(a.get("index"), a.get("operator")) for a in s.get("matchArgs", [])],
                            [a.get("action") for a in s.get("matchActions", [])],
                        ]
                    )
                    for s in k.get("selectors", [])
                }
            ),
        }
        for k in spec.get("kprobes", [])
    ]
    key = [doc.get("kind"), "podSelector" in spec, "containerSelector" in spec, probes]
    return json.dumps(key, sort_keys=True)


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class Recorder:
    """Distinct rendered policies, each with the first test that rendered it."""

    docs: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    rendered: int = 0
    current_test: str = "(outside a test)"
    #: Set while a test marked ``unjudged`` runs: it renders invalid input on purpose.
    paused: bool = False
    summary: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, docs: Iterable[dict[str, Any]], test: str | None = None) -> None:
        if self.paused and test is None:
            return
        with self._lock:
            for doc in docs:
                self.rendered += 1
                self.docs.setdefault(_digest(doc), (json.loads(json.dumps(doc)), test or self.current_test))

    def judge(self) -> tuple[str, list[str]]:
        """A summary line and one line per refused policy."""
        entries = list(self.docs.values())
        docs = [d for d, _ in entries]
        verdicts = judge(docs, sensor=False)
        shapes: dict[str, int] = {}
        for i, doc in enumerate(docs):
            shapes.setdefault(shape(doc), i)
        sensor_idx = sorted(shapes.values())
        sensor_verdicts = judge([docs[i] for i in sensor_idx], sensor=True)
        refused = [
            f"{v.name} ({entries[i][1]}): stage {v.stage}: {v.error}"
            for i, v in enumerate(verdicts)
            if not v.ok
        ]
        refused += [
            f"{v.name} ({entries[i][1]}): stage {v.stage}: {v.error}"
            for i, v in zip(sensor_idx, sensor_verdicts, strict=True)
            if not v.ok
        ]
        self.summary = (
            f"tpjudge: {len(docs)} distinct policies judged ({self.rendered} rendered), "
            f"{len(sensor_idx)} distinct shapes through the agent's sensor stage: {len(refused)} refused"
        )
        return self.summary, refused


@contextlib.contextmanager
def watch_policies(api: Any, recorder: Recorder) -> Iterator[None]:
    """Records every TracingPolicy(Namespaced) of ours the API server stores, from any process."""
    from kubernetes import client, watch

    stop = threading.Event()
    custom = client.CustomObjectsApi(api)

    def follow(plural: str) -> None:
        while not stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for item in stream.stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object,
                    "cilium.io",
                    "v1alpha1",
                    plural,
                    label_selector="app.kubernetes.io/managed-by=agentdetect",
                    timeout_seconds=5,
                ):
                    if item["type"] in ("ADDED", "MODIFIED"):
                        recorder.add([_as_applied(item["object"])], test="(applied by an operator process)")
                    if stop.is_set():
                        break
            except Exception:  # the API server going away at the end of the session
                stop.wait(1)

    threads = [
        threading.Thread(target=follow, args=(p,), daemon=True, name=f"judge-{p}")
        for p in ("tracingpolicies", "tracingpoliciesnamespaced")
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def _as_applied(obj: dict[str, Any]) -> dict[str, Any]:
    """What was applied, without what the server adds to metadata."""
    meta = obj.get("metadata", {})
    kept = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": kept,
        "spec": obj.get("spec", {}),
    }
