"""What kubectl shows, from the real API server: explain documents every field, and -o wide
adds the columns a user reaches for."""

from __future__ import annotations

from typing import Any

import pytest

from agentdetect.local.controlplane import ControlPlane
from tests.waiting import eventually

FIELDS = [
    "agentdetectionprofiles.spec.network.destinations",
    "agentdetectionprofiles.spec.network.destinations.cidrs",
    "agentdetectionprofiles.spec.files.paths",
    "agentdetectionprofiles.status.conditions",
    "clusteragentdetectionprofiles.status.detections.byPod",
    "agentdetections.summary",
    "agentdetections.detections.count",
    "agentdetections.pod",
]


@pytest.mark.parametrize("field", FIELDS)
def test_explain_documents_the_field_and_its_children(
    control_plane: ControlPlane, profile_crds: list[str], field: str
) -> None:
    def explained() -> str | None:
        out = control_plane.kubectl("explain", field, "--recursive=false", check=False)
        return out.stdout if out.returncode == 0 else None  # the OpenAPI is published a moment later

    text = eventually(explained, timeout=30, what=f"kubectl explain {field}")
    assert "<no description>" not in text, text
    assert "``" not in text and ":class:" not in text, text


def test_wide_columns(control_plane: ControlPlane, profile_crds: list[str], api: Any, namespace: str) -> None:
    for resource in ("adp", "cadp", "agentdetections"):
        out = control_plane.kubectl("get", resource, "-A", "-o", "wide", check=False)
        assert out.returncode == 0, out.stderr
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"apiVersion: agentdetect.io/v1alpha1\nkind: AgentDetectionProfile\n"
        f"metadata: {{name: wide, namespace: {namespace}}}\nspec: {{processes: {{presets: [shells]}}}}\n",
    )
    header = control_plane.kubectl("get", "adp", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "MODE", "READY", "REASON", "POLICIES", "AGE"]
    assert header[6:] == ["PODS", "EVENTS", "LAST", "DETECTION", "DETECTING", "MESSAGE"]
