"""The API server itself rejects bad profiles at `kubectl apply`, naming the field."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentdetect.app.runner import OperatorThread
from agentdetect.local.controlplane import ControlPlane
from tests.integration.helpers import wait_condition

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if p.name != "static-hosts.yaml")


def _profile(spec: str, name: str = "bad") -> str:
    return f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: {name}, namespace: default}}
spec:
{spec}
"""


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (
            "  network: {destinations: [{name: x, cidrs: [10.0.0.300/8]}]}",
            "spec.network.destinations[0].cidrs[0]",
            "must be a CIDR",
        ),
        (
            "  network: {destinations: [{name: x, cidrs: [10.0.0.0/8], ports: [70000]}]}",
            "spec.network.destinations[0].ports[0]",
            "less than or equal to 65535",
        ),
        ("  mode: Monitor", "spec", "a profile must detect something"),
        ("  network: {providers: [chatgpt]}", "spec.network.providers[0]", "Unsupported value"),
        ("  files: {presets: [passwords]}", "spec.files.presets[0]", "Unsupported value"),
        ("  processes: {presets: [bash]}", "spec.processes.presets[0]", "Unsupported value"),
        (
            "  files: {paths: [{prefix: /etc/, postfix: shadow}]}",
            "spec.files.paths[0]",
            "exactly one of equal, prefix, postfix",
        ),
        ("  files: {paths: [{prefix: etc/}]}", "spec.files.paths[0]", "must be absolute"),
        (
            "  network: {destinations: [{name: x, ports: [443]}]}",
            "spec.network.destinations[0]",
            "give a provider, cidrs or hostnames",
        ),
        ("  mode: Sometimes\n  files: {presets: [credentials]}", "spec.mode", "Unsupported value"),
        (
            "  selector: {matchExpressions: [{key: app, operator: In}]}\n  files: {presets: [credentials]}",
            "spec.selector",
            "In and NotIn need values",
        ),
        # Tetragon's limits, in UTF-8 bytes as it counts them (models.TETRAGON_POSTFIX_MAX_BYTES).
        (
            "  files: {paths: [{postfix: /" + "a" * 127 + "}]}",
            "spec.files.paths[0].postfix",
            "may not be more than 127",
        ),
        (
            "  files: {paths: [{postfix: /" + "\u00e9" * 64 + "}]}",  # 129 bytes, 65 characters
            "spec.files.paths[0].postfix",
            "at most 127 bytes of UTF-8",
        ),
        (
            "  processes: {binaries: [{prefix: /" + "\u00e9" * 128 + "}]}",  # 257 bytes, 129 characters
            "spec.processes.binaries[0].prefix",
            "at most 255 bytes of UTF-8",
        ),
    ],
)
def test_bad_profile_is_rejected_naming_the_field(
    control_plane: ControlPlane, profile_crds: list[str], spec: str, field: str, says: str
) -> None:
    result = control_plane.kubectl("apply", "-f", "-", input=_profile(spec), check=False)
    assert result.returncode != 0, f"accepted: {spec}"
    assert field in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


@pytest.mark.parametrize(
    "extra",
    ["mode: Enforce", "selector: {matchLabels: {app: x}}", "namespaceSelector: {}", "containerSelector: {}"],
)
def test_host_processes_stand_alone(control_plane: ControlPlane, profile_crds: list[str], extra: str) -> None:
    """Host processes (kubelet, the runtime, node agents) are watched only when asked, and
    never killed."""
    doc = f"""
apiVersion: agentdetect.io/v1alpha1
kind: ClusterAgentDetectionProfile
metadata: {{name: host-bad}}
spec:
  hostProcesses: true
  {extra}
  processes: {{presets: [shells]}}
"""
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=doc, check=False)
    assert result.returncode != 0, f"accepted: {extra}"
    assert "spec.hostProcesses" in result.stderr and "cannot be combined" in result.stderr, result.stderr


def test_overlong_name_is_rejected(control_plane: ControlPlane, profile_crds: list[str]) -> None:
    result = control_plane.kubectl(
        "apply", "-f", "-", input=_profile("  files: {presets: [credentials]}", name="x" * 64), check=False
    )
    assert result.returncode != 0 and "at most 63 characters" in result.stderr, result.stderr
    assert "metadata.name" in result.stderr and "<nil>" not in result.stderr, result.stderr


def _namespaces_of(docs: list[dict[str, Any]], cp: ControlPlane) -> None:
    for ns in {d["metadata"].get("namespace") for d in docs} - {None}:
        cp.kubectl("create", "namespace", ns, check=False)  # may exist from another example


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_examples_are_accepted(control_plane: ControlPlane, profile_crds: list[str], example: Path) -> None:
    _namespaces_of(list(yaml.safe_load_all(example.read_text())), control_plane)
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


def test_printer_columns_through_the_table_api(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=_profile(
            "  files: {presets: [credentials, ssh-keys]}\n  processes: {presets: [shells]}", name="columns"
        ).replace("namespace: default", f"namespace: {namespace}"),
    )
    wait_condition(api, "columns", namespace, "Applied")
    url = f"{control_plane.server}/apis/agentdetect.io/v1alpha1/namespaces/{namespace}/agentdetectionprofiles"
    req = urllib.request.Request(
        url,
        headers={
            "Authorization": f"Bearer {control_plane.admin_token}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
        },
    )
    ctx = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with urllib.request.urlopen(req, context=ctx) as resp:
        table = json.load(resp)
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"] if not c.get("priority")]
    assert columns == ["Name", "Mode", "Ready", "Reason", "Policies", "Age"]
    wide = [c["name"] for c in table["columnDefinitions"] if c.get("priority") == 1]
    assert wide == ["Pods", "Events", "Last Detection", "Detecting", "Message"]
    (row,) = table["rows"]
    assert row["cells"][:5] == ["columns", "Monitor", "True", "Applied", 2]

    out = control_plane.kubectl("get", "adp", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "MODE", "READY", "REASON", "POLICIES", "AGE"]
    assert out[1].split()[:5] == ["columns", "Monitor", "True", "Applied", "2"]
