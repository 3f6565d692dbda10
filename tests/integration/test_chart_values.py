"""The chart's values a platform team expects (compared with cert-manager's and Kyverno's), and
its CRD upgrade story, with Helm against a control plane of its own: install, upgrade to a CRD
with a new field, uninstall, and the CRDs (and so every profile) are still there."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane
from tests.integration.test_chart import CHART, helm, template

DIGEST = "sha256:" + "ab" * 32


def _deployment(*values: str) -> dict[str, Any]:
    (deploy,) = [d for d in template("agentdetect", "ns", *values) if d["kind"] == "Deployment"]
    return deploy


def test_image_registry_and_digest() -> None:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/example/agentdetect:0.1.0"
    (container,) = _deployment("--set=image.registry=mirror.example.com", f"--set=image.digest={DIGEST}")[
        "spec"
    ]["template"]["spec"]["containers"]
    assert container["image"] == f"mirror.example.com/ghcr.io/example/agentdetect@{DIGEST}"
    bad = helm("template", "x", str(CHART), "--set=image.digest=latest", check=False)
    assert bad.returncode != 0 and "digest" in bad.stderr


def test_security_contexts_fit_openshift_restricted_v2_and_can_be_set() -> None:
    """No fixed UID or fsGroup (restricted-v2 assigns its own from the namespace's range)."""
    pod = _deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    custom = _deployment(
        '--set-json=podSecurityContext={"runAsNonRoot":true,"runAsUser":1000720000,"fsGroup":1000720000}',
        "--set=containerSecurityContext.capabilities=null",  # Helm merges maps; null removes a key
    )["spec"]["template"]["spec"]
    assert custom["securityContext"]["runAsUser"] == 1000720000
    assert custom["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
    }


def test_probes_spread_volumes_and_common_labels() -> None:
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "{{ .Release.Name }}"}},
        }
    ]
    deploy = _deployment(
        "--set=livenessProbe.periodSeconds=7",
        "--set=readinessProbe.failureThreshold=9",
        f"--set-json=topologySpreadConstraints={json.dumps(spread)}",
        '--set-json=extraVolumes=[{"name":"ca","configMap":{"name":"ca"}}]',
        '--set-json=extraVolumeMounts=[{"name":"ca","mountPath":"/etc/ca"}]',
    )
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["periodSeconds"] == 7 and container["livenessProbe"]["httpGet"]["path"]
    assert container["readinessProbe"]["failureThreshold"] == 9
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "agentdetect"
    }
    assert {"name": "ca", "configMap": {"name": "ca"}} in pod["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ca"} in container["volumeMounts"]
    for doc in template("agentdetect", "ns", "--set=commonLabels.team=platform"):
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]


def test_crds_are_templates_kept_on_uninstall_and_can_be_left_out() -> None:
    crds = [d for d in template("agentdetect", "ns") if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == [
        "agentdetectionprofiles.agentdetect.io",
        "agentdetections.agentdetect.io",
        "clusteragentdetectionprofiles.agentdetect.io",
    ]
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in crds)
    loose = [
        d
        for d in template("agentdetect", "ns", "--set=crds.keep=false")
        if d["kind"] == "CustomResourceDefinition"
    ]
    assert all("helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {}) for d in loose)
    assert not [
        d
        for d in template("agentdetect", "ns", "--set=crds.enabled=false")
        if d["kind"] == "CustomResourceDefinition"
    ]


@pytest.fixture(scope="module")
def own_control_plane() -> Iterator[ControlPlane]:
    """Helm owns the CRDs here: the session's control plane has them installed by the tests."""
    cp = ControlPlane(binaries.ensure())
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _has_host_processes(cp: ControlPlane) -> bool:
    crd: Any = client.ApiextensionsV1Api(cp.api_client()).read_custom_resource_definition(
        "clusteragentdetectionprofiles.agentdetect.io"
    )
    spec = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
    return "hostProcesses" in (spec.properties or {})


def test_helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = own_control_plane
    kube = ["-n", "agentdetect-system", f"--kubeconfig={cp.kubeconfig}"]
    # The release before: its cluster-profile CRD has no spec.hostProcesses yet.
    old = tmp_path / "agentdetect"
    shutil.copytree(CHART, old)
    crd_file = old / "files" / "crds" / "agentdetect.io_clusteragentdetectionprofiles.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del schema["properties"]["hostProcesses"]
    schema["x-kubernetes-validations"] = [
        r for r in schema.get("x-kubernetes-validations", []) if "hostProcesses" not in r["rule"]
    ]
    crd_file.write_text(yaml.safe_dump(crd))

    helm("install", "agentdetect", str(old), "--create-namespace", *kube)
    assert not _has_host_processes(cp)
    helm("upgrade", "agentdetect", str(CHART), *kube)
    assert _has_host_processes(cp), "helm upgrade did not upgrade the CRD"

    cp.kubectl(
        "apply",
        "-f",
        "-",
        input="apiVersion: agentdetect.io/v1alpha1\nkind: ClusterAgentDetectionProfile\n"
        "metadata: {name: kept}\nspec: {hostProcesses: true, processes: {presets: [shells]}}\n",
    )
    helm("uninstall", "agentdetect", *kube)
    # Kept: deleting the CRD would have deleted every profile with it.
    assert _has_host_processes(cp)
    assert cp.kubectl("get", "cadp", "kept", "-o", "name").stdout.strip() == (
        "clusteragentdetectionprofile.agentdetect.io/kept"
    )
