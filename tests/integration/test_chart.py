"""The Helm chart against the real control plane: lint, every rendered object accepted by the
API server (server-side dry run), the values schema enforced, and the chart's RBAC proven
sufficient and least-privilege by running the operator, as two peered replicas, with the
chart's ServiceAccount token and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.app import runner
from agentdetect.cluster.kube import Cluster
from agentdetect.local import binaries
from agentdetect.local.controlplane import ControlPlane, kubeconfig_dict
from agentdetect.local.samples import kprobe_event
from tests.integration.helpers import apply_profile, detection_of, temporary_namespace, wait_condition
from tests.kwoknode import KwokNode
from tests.operator_process import OperatorProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "agentdetect"
KUBE_VERSION = binaries.KUBERNETES_VERSION.lstrip("v")
#: A release verified by the Go checksum database, whose module carries its CRDs.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
#: Every optional feature on, including a policy template override (layered over the built-ins).
SPEC = "{network: {providers: [openai]}, processes: {presets: [shells]}}"
ALL_ON_VALUES = {
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "grafanaDashboard": {"enabled": True},
    "policyTemplates": {"execve.yaml.j2": "{# tuned #}\n{% include 'execve.yaml.j2' %}\n"},
}


@pytest.fixture(scope="module")
def all_on(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("values") / "all-on.yaml"
    path.write_text(yaml.safe_dump(ALL_ON_VALUES))
    return [f"--values={path}"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(binaries.ensure_helm()), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}", *values)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def chart_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (crds/) and ours (templates, from files/crds/)."""
    paths = sorted((CHART / "crds").glob("*.yaml")) + sorted((CHART / "files" / "crds").glob("*.yaml"))
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.fixture(scope="module")
def installed_crds(control_plane: ControlPlane, policy_kinds: bool) -> list[str]:
    """The chart's CRDs (ours and kopf's peering), installed before the rest, as a first
    `helm install` does."""
    return control_plane.install_crds(chart_crds())


@pytest.fixture(scope="module")
def monitoring_crds(control_plane: ControlPlane) -> list[str]:
    proc = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], capture_output=True, text=True
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        pytest.skip(f"Prometheus Operator CRDs unavailable: {info.get('Error') or proc.stderr.strip()}")
    crd_dir = Path(info["Dir"]) / "example" / "prometheus-operator-crd"
    docs = [
        yaml.safe_load((crd_dir / f"monitoring.coreos.com_{plural}.yaml").read_text())
        for plural in ("servicemonitors", "prometheusrules")
    ]
    return control_plane.install_crds(docs)


def _dry_run(control_plane: ControlPlane, docs: list[dict[str, Any]]) -> str:
    """Every object carries its namespace (helm template -n sets it), so none is passed here."""
    proc = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=helm",
        "--force-conflicts",  # the CRDs exist already, applied by another field manager
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )
    assert proc.returncode == 0, f"the API server refused rendered objects:\n{proc.stderr}"
    return proc.stdout


def test_lint_strict_defaults_and_all_options(all_on: list[str]) -> None:
    helm("lint", "--strict", str(CHART), f"--kube-version={KUBE_VERSION}")
    helm(
        "lint",
        "--strict",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        *all_on,
        "--set=watchNamespaces={a,b}",
    )


def test_values_schema_rejects_bad_values_naming_them() -> None:
    for bad, said in (
        ("--set=replicaCount=two", "/replicaCount"),
        ("--set=unknownKey=1", "unknownKey"),
        ("--set=logging.format=xml", "/logging/format"),
        ("--set=metrics.port=70000", "/metrics/port"),
    ):
        proc = helm("template", "t", str(CHART), f"--kube-version={KUBE_VERSION}", bad, check=False)
        assert proc.returncode != 0 and said in proc.stderr, (bad, proc.stderr)


def test_every_rendered_object_is_accepted_by_the_api_server(
    control_plane: ControlPlane,
    installed_crds: list[str],
    monitoring_crds: list[str],
    namespace: str,
    all_on: list[str],
) -> None:
    defaults = template("agentdetect", namespace)
    kinds = sorted({d["kind"] for d in defaults})
    assert kinds == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    out = _dry_run(control_plane, defaults)
    assert out.count("serverside-applied (server dry run)") == len(defaults)

    client.CoreV1Api(control_plane.api_client()).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=f"{namespace}-b"))
    )
    everything = template(
        "agentdetect", namespace, *all_on, f"--set=watchNamespaces={{{namespace},{namespace}-b}}"
    )
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "KopfPeering"} <= {d["kind"] for d in everything}
    out = _dry_run(control_plane, everything)
    assert out.count("serverside-applied (server dry run)") == len(everything)
    client.CoreV1Api(control_plane.api_client()).delete_namespace(f"{namespace}-b")


def test_deployment_is_hardened_and_probed(namespace: str) -> None:
    (deploy,) = [d for d in template("agentdetect", namespace) if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTDETECT_PEERING"] == "agentdetect" and env["AGENTDETECT_LOG_FORMAT"] == "json"
    assert deploy["spec"]["replicas"] == 2


def test_rbac_has_no_wildcards(namespace: str) -> None:
    for values in ([], ["--set=watchNamespaces={a,b}"]):
        for doc in template("agentdetect", namespace, *values):
            for rule in doc.get("rules") or []:
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(key, []), (doc["metadata"]["name"], rule)


# ---- the chart's identity, for real ------------------------------------------------------------


class Release:
    """The chart's ServiceAccount and RBAC (and peering object) applied for real, and a
    kubeconfig holding a token for that ServiceAccount."""

    def __init__(
        self, control_plane: ControlPlane, namespace: str, tetragon_ns: str, workdir: Path, *values: str
    ) -> None:
        self.name = f"ad-{uuid.uuid4().hex[:6]}"
        self.namespace = namespace
        docs = template(
            self.name,
            namespace,
            f"--set=fullnameOverride={self.name}",
            "--set=crds.enabled=false",  # installed by the installed_crds fixture, for the session
            f"--set=detection.tetragon.namespace={tetragon_ns}",
            "--set=detection.tetragon.selector=app.kubernetes.io/name=tetragon",
            *values,
        )
        self.objects = [d for d in docs if d["kind"] not in ("Deployment", "Service", "PodDisruptionBudget")]
        control_plane.kubectl(
            "apply", "--server-side", "--field-manager=helm", "-f", "-",
            input=yaml.safe_dump_all(self.objects),
        )  # fmt: skip
        self.sa = f"system:serviceaccount:{namespace}:{self.name}"
        token = control_plane.kubectl(
            "create", "token", self.name, "-n", namespace, "--duration=1h"
        ).stdout.strip()
        self.kubeconfig = workdir / f"{self.name}.kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(kubeconfig_dict(control_plane.server, str(control_plane.ca_file), self.sa, token))
        )

    def can(self, control_plane: ControlPlane, *args: str) -> bool:
        proc = control_plane.kubectl("auth", "can-i", f"--as={self.sa}", *args, check=False)
        return proc.stdout.strip() == "yes"

    def delete(self, control_plane: ControlPlane) -> None:
        control_plane.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            input=yaml.safe_dump_all(self.objects), check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def tetragon_ns(control_plane: ControlPlane) -> Iterator[str]:
    with temporary_namespace(control_plane.api_client(), "tetragon") as name:
        yield name


@pytest.fixture
def release(
    control_plane: ControlPlane, installed_crds: list[str], namespace: str, tetragon_ns: str, tmp_path: Path
) -> Iterator[Release]:
    core = client.CoreV1Api(control_plane.api_client())
    # The embedded control plane runs no service-account controller: the pods need "default".
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )
    r = Release(control_plane, namespace, tetragon_ns, tmp_path)
    yield r
    r.delete(control_plane)


def test_chart_rbac_grants_what_the_operator_does_and_no_more(
    control_plane: ControlPlane, release: Release, tetragon_ns: str, namespace: str
) -> None:
    can = release.can
    assert can(control_plane, "patch", "agentdetectionprofiles.agentdetect.io", "--subresource=status", "-A")
    assert can(control_plane, "patch", "clusteragentdetectionprofiles.agentdetect.io", "--subresource=status")
    assert can(control_plane, "create", "tracingpoliciesnamespaced.cilium.io", "-n", namespace)
    assert can(control_plane, "delete", "tracingpolicies.cilium.io")
    # blockOwnerDeletion on the policies, under OwnerReferencesPermissionEnforcement.
    assert can(
        control_plane, "update", "agentdetectionprofiles.agentdetect.io", "--subresource=finalizers", "-A"
    )
    assert can(
        control_plane, "update", "clusteragentdetectionprofiles.agentdetect.io", "--subresource=finalizers"
    )
    assert can(control_plane, "create", "agentdetections.agentdetect.io", "-n", namespace)
    assert can(control_plane, "deletecollection", "agentdetections.agentdetect.io", "-n", namespace)
    assert can(control_plane, "list", "agentdetections.agentdetect.io", "-A")
    assert can(control_plane, "get", "pods", "--subresource=log", "-n", tetragon_ns)
    assert can(control_plane, "create", "events", "-n", namespace)
    # A policy deleted by hand is restored unless its namespace is terminating (a GET).
    assert can(control_plane, "get", f"namespaces/{namespace}")
    assert can(control_plane, "patch", f"clusterkopfpeerings.kopf.dev/{release.name}")
    # ... and nothing it has no use for.
    assert not can(control_plane, "get", "secrets", "-A")
    assert not can(control_plane, "get", "pods", "--subresource=log", "-n", namespace)
    assert not can(control_plane, "delete", "namespaces")
    assert not can(control_plane, "delete", "agentdetectionprofiles.agentdetect.io", "-A")
    assert not can(control_plane, "update", "agentdetectionprofiles.agentdetect.io", "-A")
    assert not can(control_plane, "create", "pods", "-n", namespace)
    assert not can(control_plane, "patch", "clusterkopfpeerings.kopf.dev/someone-else")
    assert not can(control_plane, "*", "*")


def test_watch_namespaces_rbac_lets_the_sweep_list_and_a_deletion_be_restored(
    control_plane: ControlPlane, installed_crds: list[str], namespace: str, tetragon_ns: str, tmp_path: Path
) -> None:
    """With watchNamespaces the chart grants the namespaced policies only in those namespaces:
    the sweep's LIST of every policy of ours (handlers.verify) is made per watched namespace,
    and the namespace GET before restoring a deleted policy is allowed in every mode."""
    release = Release(
        control_plane, namespace, tetragon_ns, tmp_path, f"--set=watchNamespaces={{{namespace}}}"
    )
    try:
        cluster = Cluster(runner.api_client(release.kubeconfig))
        policy = {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": "TracingPolicyNamespaced",
            "metadata": {
                "name": "agentdetect-listed",
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "agentdetect"},
            },
            "spec": {},
        }
        client.CustomObjectsApi(control_plane.api_client()).create_namespaced_custom_object(
            "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", policy
        )
        listed = cluster.list_ours([namespace])
        assert [(p["kind"], p["metadata"]["name"]) for p in listed] == [
            ("TracingPolicyNamespaced", "agentdetect-listed")
        ]
        with pytest.raises(ApiException) as refused:  # what the sweep did before: every namespace
            cluster.list_ours()
        assert refused.value.status == 403
        assert cluster.namespace_active(namespace)
        assert not cluster.namespace_active(f"{namespace}-gone")
    finally:
        release.delete(control_plane)


def test_two_replicas_with_the_chart_identity_one_active_then_failover(
    control_plane: ControlPlane,
    api: Any,
    release: Release,
    kwok_node: KwokNode,
    tetragon_ns: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Everything the operator does in production (reconcile, detect from Tetragon's log,
    write AgentDetections and status, post Events, peer), done with only the chart's RBAC."""
    script = Path(sys.executable).with_name("agentdetect")
    common = [
        f"--peering={release.name}",
        f"--tetragon-namespace={tetragon_ns}",
        "--flush-interval=0.5",
        "--static-hosts",
        str(REPO / "examples" / "static-hosts.yaml"),
    ]
    active = OperatorProcess(script, release.kubeconfig, tmp_path / "active.log", *common, "--priority=200")
    standby = OperatorProcess(script, release.kubeconfig, tmp_path / "standby.log", *common, "--priority=100")
    with active, standby:
        apply_profile(control_plane, namespace, "first", SPEC)
        obj = wait_condition(api, "first", namespace, "Applied", timeout=60)
        policy = next(p["name"] for p in obj["status"]["policies"] if p["hook"] == "execve")

        def peers() -> list[int]:
            got = client.CustomObjectsApi(api).get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", release.name
            )
            assert isinstance(got, dict)
            return sorted(p["priority"] for p in (got.get("status") or {}).values())

        # Both replicas announce themselves in the peering object; only the higher one works.
        eventually(lambda: peers() == [100, 200], what="both replicas in the peering object")
        assert f"{namespace}/first: applied" in active.output()
        assert f"{namespace}/first: applied" not in standby.output()

        # Detection with only the chart's permissions: a Tetragon pod's log, followed.
        kwok_node.create_pod(namespace, "agent-1", ["app"], {})
        tetragon = kwok_node.create_pod(
            tetragon_ns, f"tetragon-{release.name}", ["tetragon", "export-stdout"],
            {"export-stdout": tmp_path / "export.log"}, labels={"app.kubernetes.io/name": "tetragon"},
        )  # fmt: skip
        line = orjson.dumps(
            kprobe_event(hook="execve", policy=policy, namespace=namespace, pod="agent-1", target="/bin/sh")
        )
        tetragon.append_log("export-stdout", line)

        def detected() -> bool:
            return detection_of(api, namespace, "agent-1") is not None

        eventually(
            detected,
            timeout=60,
            what="an AgentDetection written with the chart's identity; the active's log:\n"
            + "\n".join(line for line in active.output().splitlines() if "/healthz" not in line)[-4000:],
        )

        # kopf pauses the standby's handlers; detection (our own threads) follows suit.
        assert "agentdetect_events_read_total 1.0" in active.metrics()
        assert "agentdetect_events_read_total 0.0" in standby.metrics()

        # The active replica goes (a rollout, a node drain): the standby takes over.
        assert active.stop() == 0
        apply_profile(control_plane, namespace, "second", SPEC)
        wait_condition(api, "second", namespace, "Applied", timeout=60)
        assert f"{namespace}/second: applied" in standby.output()
        assert f"{namespace}/second: applied" not in active.output()
        # ... and detection: it starts from the AgentDetections, the log read again from its start
        # adds nothing they already count, and new events are added.
        eventually(lambda: "agentdetect_events_read_total 1.0" in standby.metrics(), what="standby reading")
        tetragon.append_log("export-stdout", line)
        eventually(
            lambda: _events(api, namespace, "agent-1") == 2, timeout=30, what="2 events after failover"
        )
        kwok_node.delete_pod(tetragon_ns, tetragon.name)
    for proc in (active, standby):
        # No permission the chart forgot. A write refused because another test's namespace is
        # being deleted is not a permission problem, and may happen in any run.
        denied = [
            line
            for line in proc.output().splitlines()
            if ("forbidden" in line.lower() or " 403" in line) and "being terminated" not in line
        ]
        assert not denied, "\n".join(denied[:20])


def _events(api: Any, namespace: str, pod: str) -> int | None:
    det = detection_of(api, namespace, pod)
    return None if det is None else int(det["summary"]["events"])


def test_notes_say_how_to_configure_tetragon(control_plane: ControlPlane, installed_crds: list[str]) -> None:
    """NOTES.txt, as ``helm install`` prints it: where detections come from and the Tetragon
    values they depend on (README, Configure Tetragon)."""
    out = helm(
        "install",
        "notes",
        str(CHART),
        "-n",
        "agentdetect-system",
        "--dry-run=client",
        "--set=crds.enabled=false",  # they exist already, not owned by a release
        f"--kubeconfig={control_plane.kubeconfig}",
    ).stdout
    notes = out[out.index("NOTES:") :]
    for needed in ("exportDenyList", "exportAllowList", "exportRateLimit", "export.mode", "Detecting=False"):
        assert needed in notes, needed


# ---- detection.mode=node -------------------------------------------------------------------------


def test_node_mode_renders_a_hardened_daemonset_and_no_log_access(namespace: str) -> None:
    docs = template("agentdetect", namespace, "--set=detection.mode=node")
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["node"]
    # Root, to read Tetragon's 0600 file as its owner; no capability, nothing writable.
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tetragon-export"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tetragon-export"]
    assert volume["hostPath"] == {"path": "/var/run/cilium/tetragon", "type": "Directory"}
    env = {e["name"]: e.get("value") or e.get("valueFrom") for e in container["env"]}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["AGENTDETECT_EXPORT_FILE"] == "/export/tetragon.log"
    assert env["AGENTDETECT_COUNT_REFRESH"] == "60"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The operator's selectors never match the node agents' pods.
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    operator_selector = deploy["spec"]["selector"]["matchLabels"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in operator_selector.items())
    op_env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert op_env["AGENTDETECT_DETECTION_MODE"] == "node"
    # Nobody follows Tetragon's logs in node mode: no Role for them.
    assert not [d for d in docs if d["kind"] == "Role"]


def test_node_mode_is_accepted_and_needs_the_privileged_pod_security_level(
    control_plane: ControlPlane, installed_crds: list[str], namespace: str
) -> None:
    docs = template("agentdetect", namespace, "--set=detection.mode=node")
    out = _dry_run(control_plane, docs)
    assert out.count("serverside-applied (server dry run)") == len(docs)
    # Under "baseline" the API server warns that the DaemonSet's pods would be refused.
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline", "--overwrite"
    )
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    proc = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump(ds), check=False
    )
    assert proc.returncode == 0 and 'violate PodSecurity "baseline' in proc.stderr, proc.stderr
    assert "hostPath" in proc.stderr


def test_node_agent_rbac_grants_what_it_does_and_no_more(
    control_plane: ControlPlane, installed_crds: list[str], namespace: str
) -> None:
    name = f"ad-{uuid.uuid4().hex[:6]}"
    docs = template(
        name,
        namespace,
        f"--set=fullnameOverride={name}",
        "--set=crds.enabled=false",
        "--set=detection.mode=node",
    )
    objects = [
        d
        for d in docs
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    control_plane.kubectl(
        "apply", "--server-side", "--field-manager=helm", "-f", "-", input=yaml.safe_dump_all(objects)
    )
    try:

        def can(sa: str, *args: str) -> bool:
            as_ = f"--as=system:serviceaccount:{namespace}:{sa}"
            proc = control_plane.kubectl("auth", "can-i", as_, *args, check=False)
            return proc.stdout.strip() == "yes"

        node = f"{name}-node"
        # What the node agent does: its node's pods, what it matches, its records.
        assert can(node, "list", "pods", "-A") and can(node, "watch", "pods", "-A")
        assert can(node, "get", "pods", "-n", namespace)
        assert can(node, "list", "agentdetectionprofiles.agentdetect.io", "-A")
        assert can(node, "watch", "clusteragentdetectionprofiles.agentdetect.io")
        assert can(node, "watch", "tracingpolicies.cilium.io")
        assert can(node, "list", "agentdetections.agentdetect.io", "-A")
        assert can(node, "create", "agentdetections.agentdetect.io", "-n", namespace)
        assert can(node, "patch", "agentdetections.agentdetect.io", "-n", namespace)
        # ... and nothing else.
        assert not can(node, "patch", "agentdetectionprofiles.agentdetect.io", "--subresource=status", "-A")
        assert not can(node, "patch", "agentdetectionprofiles.agentdetect.io", "-A")
        assert not can(node, "delete", "agentdetections.agentdetect.io", "-n", namespace)
        assert not can(node, "deletecollection", "agentdetections.agentdetect.io", "-n", namespace)
        assert not can(node, "get", "pods", "--subresource=log", "-n", namespace)
        assert not can(node, "create", "tracingpolicies.cilium.io")
        assert not can(node, "list", "tracingpoliciesnamespaced.cilium.io", "-A")
        assert not can(node, "get", "secrets", "-A")
        assert not can(node, "create", "pods", "-n", namespace)
        assert not can(node, "create", "events", "-n", namespace)
        # The operator in node mode: watches the records, follows no logs, reads no pods.
        assert can(name, "watch", "agentdetections.agentdetect.io", "-A")
        assert can(name, "deletecollection", "agentdetections.agentdetect.io", "-n", namespace)
        assert not can(name, "create", "agentdetections.agentdetect.io", "-n", namespace)
        assert not can(name, "get", "pods", "--subresource=log", "-A")
        assert not can(name, "list", "pods", "-A")
    finally:
        control_plane.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            "-",
            input=yaml.safe_dump_all(objects),
            check=False,
        )
