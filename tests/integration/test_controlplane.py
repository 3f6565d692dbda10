"""The embedded control plane is a real one: it validates, authorises and collects garbage."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.local.binaries import KUBERNETES_VERSION, Binaries
from agentdetect.local.controlplane import UNPRIVILEGED_USER, ControlPlane, ControlPlaneError
from tests.waiting import eventually

TCP_CONNECT_POLICY: dict[str, Any] = {
    "kprobes": [
        {
            "call": "tcp_connect",
            "syscall": False,
            "args": [{"index": 0, "type": "sock"}],
            "selectors": [
                {
                    "matchArgs": [{"index": 0, "operator": "DAddr", "values": ["104.18.6.192/32"]}],
                    "matchActions": [{"action": "Post"}],
                }
            ],
        }
    ]
}


def _status(exc: ApiException) -> dict[str, Any]:
    return dict(json.loads(exc.body or "{}"))


def _config_map(name: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"k": "v"})


def test_server_reports_the_built_version(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("version", "-o", "json").stdout
    versions = json.loads(out)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_tracing_policy_round_trip(api: Any, tetragon: None, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    name = f"tp-{namespace}"
    custom.create_cluster_custom_object(
        "cilium.io",
        "v1alpha1",
        "tracingpolicies",
        {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": name},
            "spec": TCP_CONNECT_POLICY,
        },
    )
    try:
        got: Any = custom.get_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", name)
        assert got["spec"]["kprobes"][0]["call"] == "tcp_connect"
        assert got["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"] == ["104.18.6.192/32"]
    finally:
        custom.delete_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", name)

    custom.create_namespaced_custom_object(
        "cilium.io",
        "v1alpha1",
        namespace,
        "tracingpoliciesnamespaced",
        {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": "TracingPolicyNamespaced",
            "metadata": {"name": "tpn"},
            "spec": TCP_CONNECT_POLICY,
        },
    )
    got = custom.get_namespaced_custom_object(
        "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", "tpn"
    )
    assert got["metadata"]["namespace"] == namespace
    # Tetragon's schema fills in its defaults (maxData, resolve, returnCopy on each arg).
    (arg,) = got["spec"]["kprobes"][0]["args"]
    assert arg["index"] == 0 and arg["type"] == "sock"
    assert {k: arg[k] for k in ("maxData", "returnCopy")} == {"maxData": False, "returnCopy": False}


def test_tracing_policy_with_wrong_type_is_rejected(api: Any, tetragon: None) -> None:
    bad = {"kprobes": [{**TCP_CONNECT_POLICY["kprobes"][0], "args": [{"index": "zero", "type": "sock"}]}]}
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "cilium.io",
            "v1alpha1",
            "tracingpolicies",
            {
                "apiVersion": "cilium.io/v1alpha1",
                "kind": "TracingPolicy",
                "metadata": {"name": "bad"},
                "spec": bad,
            },
        )
    assert err.value.status == 422
    message = _status(err.value)["message"]
    assert "spec.kprobes[0].args[0].index" in message
    assert "integer" in message


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.controlplane.test.agentdetect.io"},
    "spec": {
        "group": "controlplane.test.agentdetect.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 0},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def test_installed_crd_schema_is_enforced(control_plane: ControlPlane, api: Any, namespace: str) -> None:
    """Schema validation of custom resources, independent of Tetragon's CRDs being available."""
    assert control_plane.install_crds([WIDGET_CRD]) == ["widgets.controlplane.test.agentdetect.io"]
    custom = client.CustomObjectsApi(api)
    group, version, plural = "controlplane.test.agentdetect.io", "v1", "widgets"
    ok = {
        "apiVersion": f"{group}/{version}",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"replicas": 2},
    }
    custom.create_namespaced_custom_object(group, version, namespace, plural, ok)
    bad = {**ok, "metadata": {"name": "w2"}, "spec": {"replicas": "two"}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(group, version, namespace, plural, bad)
    assert err.value.status == 422
    assert "spec.replicas" in _status(err.value)["message"]


def test_dependent_is_garbage_collected(api: Any, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, _config_map("owner"))
    assert owner.metadata is not None and owner.metadata.uid
    dependent = _config_map("dependent")
    assert dependent.metadata is not None
    dependent.metadata.owner_references = [
        client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    ]
    core.create_namespaced_config_map(namespace, dependent)
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(dependent_gone, what="garbage collection of the dependent ConfigMap")


def test_namespace_with_objects_is_deleted_completely(api: Any) -> None:
    core = client.CoreV1Api(api)
    ns = "t-doomed"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_config_map(ns, _config_map("cm"))
    core.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"})
    )
    core.delete_namespace(ns)

    def namespace_gone() -> bool:
        try:
            core.read_namespace(ns)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(namespace_gone, timeout=60, what=f"deletion of namespace {ns}")


def test_rbac_is_enforced(control_plane: ControlPlane, api: Any, namespace: str) -> None:
    nobody = client.CoreV1Api(control_plane.api_client(control_plane.unprivileged_kubeconfig))
    with pytest.raises(ApiException) as err:
        nobody.list_namespaced_config_map(namespace)
    assert err.value.status == 403
    assert "forbidden" in _status(err.value)["message"]

    # Granting the right makes the same call succeed: RBAC decides, not a blanket deny.
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-cm"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="read-cm"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-cm"),
            subjects=[
                client.RbacV1Subject(
                    api_group="rbac.authorization.k8s.io", kind="User", name=UNPRIVILEGED_USER
                )
            ],
        ),
    )
    eventually(
        lambda: nobody.list_namespaced_config_map(namespace).items is not None,
        what="list allowed after RoleBinding",
    )
    with pytest.raises(ApiException) as err:
        nobody.list_namespaced_secret(namespace)
    assert err.value.status == 403


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_leaves_no_process(control_plane: ControlPlane) -> None:
    cp = ControlPlane(control_plane.binaries)
    cp.start()
    pids = cp.pids
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    workdir = cp.workdir
    cp.stop()
    assert not any(_alive(p) for p in pids)
    assert workdir is not None and not workdir.exists()


def test_failed_start_reports_log_tail_and_cleans_up(control_plane: ControlPlane, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("etcd", "kube-controller-manager", "kubectl"):
        (fake / name).symlink_to(control_plane.binaries.path(name))
    broken = fake / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'E1123 boom: cannot listen' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)

    cp = ControlPlane(Binaries(fake))
    with pytest.raises(ControlPlaneError) as err:
        cp.start()
    assert "kube-apiserver exited with code 3" in str(err.value)
    assert "boom: cannot listen" in str(err.value)
    assert [p.name for p in cp.processes] == ["etcd", "kube-apiserver"]
    assert all(p.exited() is not None for p in cp.processes), "etcd must be stopped after the failed start"


OWNER_SCRIPT = """
import json, signal, sys, time
# As under a terminal: a shell starts a background job with SIGINT ignored, and the child
# would inherit that whether or not the suite runs in the foreground.
signal.signal(signal.SIGINT, signal.default_int_handler)
from agentdetect.local.binaries import Binaries
from agentdetect.local.controlplane import ControlPlane
with ControlPlane(Binaries(__import__("pathlib").Path(sys.argv[1]))) as cp:
    print(json.dumps(cp.pids), flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_processes_die_with_their_owner(control_plane: ControlPlane, sig: signal.Signals) -> None:
    """Ctrl-C runs the normal stop; SIGKILL, which runs nothing, is covered by PR_SET_PDEATHSIG."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(control_plane.binaries.directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pids = json.loads(owner.stdout.readline())
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    owner.send_signal(sig)
    owner.wait(30)
    eventually(lambda: not any(_alive(p) for p in pids), timeout=15, what="control-plane processes gone")
