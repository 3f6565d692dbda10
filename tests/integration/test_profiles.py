"""Namespaced profiles against the real API server: apply, update, prune, drift, restart, GC."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from agentdetect.api.models import GROUP, VERSION
from agentdetect.app.runner import OperatorThread
from agentdetect.cluster.kube import Cluster
from agentdetect.controller.reconcile import Config
from agentdetect.local.controlplane import ControlPlane
from tests.integration.helpers import gone, policies, profile, ready, wait_condition
from tests.waiting import eventually

PROFILE = """
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: chatbot, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: chatbot}}}}
  network:
    providers: [openai, anthropic]
    destinations:
      - {{name: internal-vllm, cidrs: [10.20.0.0/16], ports: [8000]}}
  files:
    presets: [serviceaccount-token]
  processes:
    presets: [shells]
"""


def apply(cp: ControlPlane, text: str) -> None:
    cp.kubectl("apply", "-f", "-", input=text)


def by_hook(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["labels"]["agentdetect.io/hook"]: p for p in items}


def test_profile_renders_owned_policies_and_reports_them(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    apply(control_plane, PROFILE.format(ns=namespace))
    obj = wait_condition(api, "chatbot", namespace, "Applied")
    status = obj["status"]
    assert status["policyCount"] == 3
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][0]["observedGeneration"] == obj["metadata"]["generation"]
    live = by_hook(policies(api, namespace))
    assert set(live) == {"tcp_connect", "fd_install", "execve"}
    assert sorted(p["name"] for p in status["policies"]) == sorted(
        p["metadata"]["name"] for p in live.values()
    )
    for pol in live.values():
        (ref,) = pol["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == (
            "AgentDetectionProfile",
            obj["metadata"]["uid"],
            True,
        )
        assert pol["spec"]["podSelector"] == {"matchLabels": {"app": "chatbot"}}
    net = live["tcp_connect"]["spec"]["kprobes"][0]
    addresses = [
        a for s in net["selectors"] for m in s["matchArgs"] if m["operator"] == "DAddr" for a in m["values"]
    ]
    assert "104.18.6.192/32" in addresses and "160.79.104.10/32" in addresses and "10.20.0.0/16" in addresses
    resolved = {r["hostname"]: r for r in status["resolved"]}
    assert resolved["api.openai.com"]["addresses"] == ["104.18.6.192", "2606:4700::6812:6c0"]
    assert resolved["api.openai.com"]["name"] == "openai"

    def applied_event() -> list[Any]:
        events = (
            client.CoreV1Api(api)
            .list_namespaced_event(
                namespace,
                field_selector="involvedObject.kind=AgentDetectionProfile,involvedObject.name=chatbot",
            )
            .items
        )
        return [e for e in events if e.reason == "Applied" and e.type == "Normal"]

    (event,) = eventually(applied_event, what="an Applied Event on the profile")
    assert event.message == "3 policies applied"

    # A reconcile that changes nothing (a label is not the spec, but kopf calls it an update)
    # posts no Event: Events are for transitions.
    assert operator.runtime is not None
    registry = operator.runtime.metrics.registry
    labels = {"kind": "AgentDetectionProfile", "result": "applied", "reason": "Applied"}
    before = registry.get_sample_value("agentdetect_reconciles_total", labels) or 0
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "agentdetectionprofiles",
        "chatbot",
        {"metadata": {"labels": {"touched": "yes"}}},
        _content_type="application/merge-patch+json",
    )
    eventually(
        lambda: (registry.get_sample_value("agentdetect_reconciles_total", labels) or 0) > before,
        what="the profile reconciled again",
    )
    assert len(applied_event()) == 1
    # kopf keeps its state in memory: no annotation of its own on the profile, ever.
    annotations = profile(api, "chatbot", namespace)["metadata"].get("annotations") or {}
    assert not [a for a in annotations if a.startswith(f"{GROUP}/")], annotations


def test_update_prunes_and_delete_collects(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentdetect.app.handlers")
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    doc = yaml.safe_load(PROFILE.format(ns=namespace))
    del doc["spec"]["processes"]
    apply(control_plane, yaml.safe_dump(doc))
    obj = wait_condition(api, "chatbot", namespace, "Applied")
    assert obj["status"]["policyCount"] == 2
    eventually(
        lambda: set(by_hook(policies(api, namespace))) == {"tcp_connect", "fd_install"},
        what="the execve policy pruned",
    )

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "agentdetectionprofiles", "chatbot"
    )
    eventually(lambda: policies(api, namespace) == [], what="policies garbage-collected with their profile")
    # Neither the prune nor the garbage collection reads as drift to be restored.
    assert not [r for r in caplog.records if "drifted" in r.getMessage() and namespace in r.getMessage()]


def test_drifted_policy_is_restored(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    custom = client.CustomObjectsApi(api)
    net = by_hook(policies(api, namespace))["tcp_connect"]
    name = net["metadata"]["name"]
    original = net["spec"]

    tampered = {
        "spec": {
            "kprobes": [{**original["kprobes"][0], "selectors": original["kprobes"][0]["selectors"][:1]}]
        }
    }
    custom.patch_namespaced_custom_object(
        "cilium.io",
        "v1alpha1",
        namespace,
        "tracingpoliciesnamespaced",
        name,
        tampered,
        _content_type="application/merge-patch+json",
    )
    eventually(
        lambda: (
            custom.get_namespaced_custom_object(  # type: ignore[index]
                "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", name
            )["spec"]
            == original
        ),
        timeout=10,
        what="edited policy restored",
    )

    custom.delete_namespaced_custom_object(
        "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", name
    )
    restored = eventually(
        lambda: by_hook(policies(api, namespace)).get("tcp_connect"),
        timeout=10,
        what="deleted policy recreated",
    )
    assert restored["metadata"]["name"] == name and restored["spec"] == original

    def restored_events() -> list[Any]:
        items = (
            client.CoreV1Api(api)
            .list_namespaced_event(namespace, field_selector="involvedObject.name=chatbot")
            .items
        )
        return [e for e in items if e.reason == "PolicyRestored"]

    def both() -> list[Any] | None:
        found = restored_events()
        return found if len(found) >= 2 else None

    found = eventually(both, what="a PolicyRestored Event for the edit and one for the delete")
    messages = sorted(e.message for e in found)
    assert all(e.type == "Warning" for e in found)
    assert messages == [
        f"TracingPolicyNamespaced {namespace}/{name} was changed outside agentdetect; restored",
        f"TracingPolicyNamespaced {namespace}/{name} was deleted outside agentdetect; restored",
    ]


def test_restart_recreates_nothing_and_catches_up(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    apply(control_plane, PROFILE.format(ns=namespace))
    before = wait_condition(api, "chatbot", namespace, "Applied")
    live = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in policies(api, namespace)}

    hooks = by_hook(policies(api, namespace))
    edited_spec = hooks["fd_install"]["spec"]

    operator.stop()
    try:
        # While the operator is away, someone deletes one policy and edits another.
        custom = client.CustomObjectsApi(api)
        gone_name = hooks["execve"]["metadata"]["name"]
        edited_name = hooks["fd_install"]["metadata"]["name"]
        custom.delete_namespaced_custom_object(
            "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", gone_name
        )
        custom.patch_namespaced_custom_object(
            "cilium.io",
            "v1alpha1",
            namespace,
            "tracingpoliciesnamespaced",
            edited_name,
            {"spec": {"kprobes": [{**edited_spec["kprobes"][0], "selectors": []}]}},
            _content_type="application/merge-patch+json",
        )
        cfg: Config = operator.cfg
        with OperatorThread(cfg, control_plane.kubeconfig):
            eventually(
                lambda: len(policies(api, namespace)) == 3, what="the deleted policy recreated on resume"
            )
            eventually(
                lambda: by_hook(policies(api, namespace))["fd_install"]["spec"] == edited_spec,
                what="the edited policy restored on resume",
            )
            after = {
                p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in policies(api, namespace)
            }
            untouched = {n: v for n, v in live.items() if n not in (gone_name, edited_name)}
            assert len(untouched) == 1
            assert {n: after[n] for n in untouched} == untouched, "resume rewrote policies that were in sync"
            status = profile(api, "chatbot", namespace)["status"]
            assert status["policies"] == before["status"]["policies"]

            # Said, as the watch would have had it been running; once each.
            def both() -> list[Any] | None:
                found = restored_events(api, namespace)
                return found if len(found) >= 2 else None

            found = eventually(both, what="a PolicyRestored Event for the deletion and one for the edit")
            time.sleep(1.0)  # a second Event for either would be posted by now
            how = "(found by this process's first reconcile of the profile; no watch of agentdetect saw it)"
            kind = f"TracingPolicyNamespaced {namespace}"
            assert sorted(e.message for e in restored_events(api, namespace)) == sorted(
                [
                    f"{kind}/{edited_name} was changed outside agentdetect; restored {how}",
                    f"{kind}/{gone_name} was deleted outside agentdetect; restored {how}",
                ]
            )
            assert all(e.type == "Warning" for e in found)
    finally:
        operator.start()


def restored_events(api: Any, namespace: str) -> list[Any]:
    items = (
        client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector="involvedObject.name=chatbot")
        .items
    )
    return [e for e in items if e.reason == "PolicyRestored"]


def test_a_policy_the_spec_dropped_while_the_operator_was_down_is_pruned_without_listing(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new process has applied nothing yet: what the old spec left is known from the policy
    watch's index, which kopf fills before any handler runs, not from a LIST per reconcile."""
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    live = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in policies(api, namespace)}

    operator.stop()
    try:
        doc = yaml.safe_load(PROFILE.format(ns=namespace))
        del doc["spec"]["processes"]
        apply(control_plane, yaml.safe_dump(doc))  # while no operator runs

        def no_list(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise AssertionError("a reconcile listed the policies it owns")

        monkeypatch.setattr(Cluster, "list_owned", no_list)
        with OperatorThread(operator.cfg, control_plane.kubeconfig):
            obj = wait_condition(api, "chatbot", namespace, "Applied")
            assert obj["status"]["policyCount"] == 2
            eventually(
                lambda: set(by_hook(policies(api, namespace))) == {"tcp_connect", "fd_install"},
                what="the execve policy pruned after the restart",
            )
            after = {
                p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in policies(api, namespace)
            }
            assert {n: live[n] for n in after} == after, "the restart rewrote policies that were in sync"
            time.sleep(1.0)  # the reconcile's Events are posted from a queue of their own
            assert restored_events(api, namespace) == [], "a spec change read as a tamper"
    finally:
        monkeypatch.undo()
        operator.start()


def test_a_deletion_the_watch_missed_is_restored_from_a_list(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a watch gap (an API server restart, a standby replica) kopf lists again but
    reports no deletion, and its index keeps the policy that is gone. Here the operator is
    made to miss the DELETED event and its index to keep the policy; the sweep's LIST (every
    2 s in these tests) finds it missing and the profile is reconciled from the list."""
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    reconciler = operator.reconciler
    assert reconciler is not None and reconciler.owned is not None
    net = by_hook(policies(api, namespace))["tcp_connect"]
    name = net["metadata"]["name"]
    index = reconciler.owned
    key = ("AgentDetectionProfile", namespace, "chatbot")
    stale = {**net, "kind": "TracingPolicyNamespaced"}
    monkeypatch.setattr(reconciler, "owned", lambda k: [*index(k), stale] if k == key else index(k))
    real_drifted = reconciler.drifted
    monkeypatch.setattr(
        reconciler,
        "drifted",
        lambda type_, obj, **kw: None if type_ == "DELETED" else real_drifted(type_, obj, **kw),
    )

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", name
    )
    restored = eventually(
        lambda: by_hook(policies(api, namespace)).get("tcp_connect"),
        timeout=15,
        what="the policy restored by the sweep's list",
    )
    assert restored["metadata"]["name"] == name and restored["spec"] == net["spec"]


def test_a_profile_deleted_while_the_watch_was_away_is_forgotten(
    control_plane: ControlPlane,
    api: Any,
    operator: OperatorThread,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's relist after a watch gap reports no deletion, so the profile's DELETED event
    never comes. Here the operator is made to miss it; the reconcile its policies' deletion
    or the sweep asks for finds the profile gone (a GET) and forgets it, or its rules would
    keep matching events and its policies keep counting against the policy-filter budget."""
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    reconciler = operator.reconciler
    assert reconciler is not None
    key = ("AgentDetectionProfile", namespace, "chatbot")
    assert reconciler.board.has(key)
    assert [k for k, _ in reconciler.desired.items() if k.namespace == namespace]
    real_forget = reconciler.forget
    missed: list[tuple[Any, ...]] = []

    def forget(kind: str, name: str, ns: str | None, uid: str | None = None, only_uid: bool = False) -> bool:
        if not only_uid:  # the DELETED event's path: missed
            missed.append((kind, name, ns))
            return False
        return real_forget(kind, name, ns, uid, only_uid=True)

    monkeypatch.setattr(reconciler, "forget", forget)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "agentdetectionprofiles", "chatbot"
    )
    eventually(lambda: not reconciler.board.has(key), timeout=15, what="the deleted profile forgotten")
    assert missed, "the DELETED event was not the one missed"
    assert reconciler.reconciled.uid(key) is None
    assert not [k for k, _ in reconciler.desired.items() if k.namespace == namespace]


def test_a_failure_left_by_another_replica_is_reconciled_by_the_sweep(
    api: Any, control_plane: ControlPlane, operator: OperatorThread, namespace: str
) -> None:
    """kopf keeps a failed reconcile's retry in the memory of the replica that failed. If that
    replica goes and one that handled the same spec before takes over, kopf sees nothing to do
    and the profile keeps the failure its status shows. Here that status is written as the
    replica that failed left it; the sweep (every 2 s in these tests) reconciles the profile,
    which names no hostname, so nothing else would."""
    apply(
        control_plane,
        f"""
apiVersion: agentdetect.io/v1alpha1
kind: AgentDetectionProfile
metadata: {{name: plain, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: plain}}}}
  processes: {{presets: [shells]}}
""",
    )
    obj = wait_condition(api, "plain", namespace, "Applied")
    conditions = [
        {**c, "status": "False", "reason": "ApplyFailed", "message": "the API server said 500"}
        if c["type"] == "Ready"
        else c
        for c in obj["status"]["conditions"]
    ]
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "agentdetectionprofiles", "plain", {"status": {"conditions": conditions}}
    )
    left = ready(profile(api, "plain", namespace))
    assert left is not None and left["reason"] == "ApplyFailed"
    wait_condition(api, "plain", namespace, "Applied", timeout=15)

    def applied_events() -> list[Any] | None:
        items = (
            client.CoreV1Api(api)
            .list_namespaced_event(namespace, field_selector="involvedObject.name=plain")
            .items
        )
        found = [e for e in items if e.reason == "Applied"]
        return found if len(found) >= 2 else None

    # The recovery is a transition from what the status showed (the GET's), not from what this
    # replica last wrote itself: one Applied Event for the create, one for the recovery.
    assert len(eventually(applied_events, timeout=10, what="an Applied Event for the recovery")) == 2


def test_profile_in_one_namespace_never_touches_another(
    control_plane: ControlPlane, api: Any, operator: OperatorThread, namespace: str
) -> None:
    apply(control_plane, PROFILE.format(ns=namespace))
    wait_condition(api, "chatbot", namespace, "Applied")
    mine = policies(api, None, f"agentdetect.io/profile-namespace={namespace}")
    assert mine and {p["metadata"]["namespace"] for p in mine} == {namespace}
    assert gone(
        lambda: client.CustomObjectsApi(api).get_cluster_custom_object(
            "cilium.io", "v1alpha1", "tracingpolicies", mine[0]["metadata"]["name"]
        )
    )
