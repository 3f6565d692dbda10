"""The README's first command: `agentdetect demo` runs the whole product and cleans up."""

from __future__ import annotations

import io
import os
from pathlib import Path

from agentdetect.local import demo


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_demo_shows_policies_and_detections_and_leaves_nothing_behind() -> None:
    before = _children()
    out = io.StringIO()
    assert demo.run(out=out) == 0
    text = out.getvalue()
    assert "$ kubectl get agentdetections -A" in text
    table = text.split("$ kubectl get agentdetections -A", 1)[1]
    rows = [line.split() for line in table.splitlines() if line.startswith(("support ", "rag ", "payments "))]
    assert len(rows) == 7, table
    assert any("support-bot-7c9d4-x2k4p" in r and "llm-egress" in r and "52" in r for r in rows), table
    assert "EnforcementNotAllowed" in text  # the sandbox profile is refused without --allow-enforcement
    assert "kind: TracingPolicyNamespaced" in text and "call: tcp_connect" in text
    assert "control plane stopped" in text
    assert _children() <= before, "the demo left processes running"
