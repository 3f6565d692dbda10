"""The demo's bundled Tetragon export: in step with the example profiles and the templates
(policy names carry a hash of what was rendered), and it exercises what the demo claims."""

from __future__ import annotations

import json
import subprocess
import sys

from agentdetect.local import demo
from tests.unit.detect_helpers import REPO


def test_bundled_events_are_what_the_generator_makes() -> None:
    expected = b"".join(line + b"\n" for line in demo.sample_events())
    assert demo.EVENTS_FILE.read_bytes() == expected, (
        "examples/tetragon-events.jsonl is stale: run `agentdetect demo --write-events`"
    )


def test_bundled_examples_are_the_repository_examples() -> None:
    assert demo.EXAMPLES.resolve() == (REPO / "examples").resolve()


def test_replaying_the_sample_gives_one_row_per_pod_and_profile() -> None:
    # Cluster profiles select namespaces by label: give replay the demo's namespaces.
    namespaces = [
        f"--namespace={ns}:{','.join(f'{k}={v}' for k, v in labels.items())}"
        for ns, labels in demo.NAMESPACES.items()
    ]
    args = [
        "replay",
        str(demo.EVENTS_FILE),
        "-f",
        str(demo.EXAMPLES),
        "--static-hosts",
        str(demo.STATIC_HOSTS),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "agentdetect.app.cli", *args, *namespaces, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {(d["pod"]["name"], d["profile"]["name"]): d["summary"] for d in json.loads(proc.stdout)}
    bot1, bot2, indexer, api = (p.name for p in demo.PODS)
    assert rows[(bot1, "llm-egress")]["events"] == 52
    assert rows[(bot1, "llm-egress")]["targets"] == "openai, llm-gateway"  # most frequent first
    assert rows[(bot2, "llm-egress")]["events"] == 28
    assert rows[(bot2, "credential-access")]["targets"] == "serviceaccount-token"
    assert rows[(indexer, "vector-databases")]["events"] == 22
    assert rows[(api, "credential-access")]["targets"] == "ssh-keys"
    assert rows[(api, "shells-in-production")]["targets"] == "network-tools"
    assert len(rows) == 7
    # The noise is counted, not fatal: one other event kind, one truncated line.
    assert "1 other events" in proc.stderr and "1 truncated" in proc.stderr
