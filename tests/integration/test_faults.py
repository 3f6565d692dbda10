"""The fault suite, small: each fault an operator lives through, and afterwards every record
equals what Tetragon reported and every profile's policies are exactly there.

The scenarios, the writer that plays Tetragon and the check are ``bench/faults.py``'s (the
benchmark runs them at 200 profiles and prints the figures); here they run at 12 in their own
control plane, because they restart its API server and its kubelet.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.faults import CLUSTER_PROFILE, FLUSH_INTERVAL, POD, SCENARIOS, Lab, event_line, lab
from kubernetes import client

from agentdetect.api.models import GROUP, VERSION
from tests.kwoknode import append_log_lines, cri_timestamp

PROFILES = 12


@pytest.fixture(scope="module")
def faults_lab(
    tmp_path_factory: pytest.TempPathFactory, tetragon_crd_docs: tuple[list[dict[str, Any]], str | None]
) -> Iterator[Lab]:
    workdir: Path = tmp_path_factory.mktemp("faults")
    with lab(workdir, namespaces=3, peering_lifetime=10, tetragon_docs=tetragon_crd_docs[0]) as the_lab:
        the_lab.converge_timeout = 120.0
        # The sweep's LIST of every policy every 5 s, not 5 min: through every fault below it
        # must report no PolicyRestored nobody caused, and the last test needs it.
        the_lab.resolve_interval = 5.0
        yield the_lab


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fault(faults_lab: Lab, scenario: str) -> None:
    result = faults_lab.run(scenario, PROFILES)
    check = result.check
    assert result.events > 0, "the writer wrote nothing: the scenario tested nothing"
    assert result.converged_s is not None, f"{scenario} did not converge: {check}"
    assert (check.lost, check.doubled) == (0, 0), check
    assert (check.orphaned_records, check.missing_policies, check.orphaned_policies) == (0, 0, 0), check
    assert check.records > 0


def test_the_check_sees_a_miscount(faults_lab: Lab) -> None:
    """The negative control: events Tetragon reports that the truth does not know of show up
    as double-counted, and ones the truth knows of but nobody wrote as lost."""
    (_, ns, name, policies) = next(a for a in faults_lab.applied if a[2] != CLUSTER_PROFILE)
    with faults_lab.log_lock:
        lines = [event_line(policies[0], ns, cri_timestamp()) for _ in range(3)]
        append_log_lines(faults_lab.tetragon_log(), lines)
    key = ("AgentDetectionProfile", ns, name, ns, POD)
    deadline = time.monotonic() + 30
    while faults_lab.check().doubled != 3:
        assert time.monotonic() < deadline, faults_lab.check()
        time.sleep(FLUSH_INTERVAL)
    faults_lab.truth[key] += 5
    assert (faults_lab.check().lost, faults_lab.check().doubled) == (2, 0)
    faults_lab.truth[key] -= 2
    assert faults_lab.check().clean


PROFILE_LABEL = "agentdetect.io/profile-name"


def _policy_restored_events(lab: Lab) -> list[Any]:
    events = client.CoreV1Api(lab.api).list_event_for_all_namespaces(field_selector="reason=PolicyRestored")
    return list(events.items)


def _first_restored(lab: Lab, profile: str) -> list[Any]:
    """The PolicyRestored Events of a profile, once there is one (a sweep pass may take 90 s)."""
    deadline = time.monotonic() + 90
    while not (found := [e for e in _policy_restored_events(lab) if e.involved_object.name == profile]):
        assert time.monotonic() < deadline, "no PolicyRestored Event"
        time.sleep(0.5)
    return found


def _applied(lab: Lab, ns: str, name: str) -> list[str]:
    """The policies of a profile the lab created, once it is Applied."""
    deadline = time.monotonic() + 60
    while not (mine := [a for a in lab.applied if a[1:3] == (ns, name)]):
        assert time.monotonic() < deadline, f"{ns}/{name} was not Applied"
        time.sleep(0.5)
        lab._refresh_applied()
    return mine[0][3]


def test_a_profile_deleted_in_the_foreground_goes_with_its_policies_and_no_alarm(faults_lab: Lab) -> None:
    """Argo CD prunes with foreground deletion: the garbage collector deletes the policies while
    the profile is still there, being deleted (here held so by a finalizer of the test's, as
    any other controller's may). Each deletion's watch event, and the sweep's LIST, read as a
    tamper: the operator put the policies back, fighting the collector, and posted
    PolicyRestored for what the profile's own owner did."""
    lab = faults_lab
    if not any(op.proc is not None and op.proc.poll() is None for op in lab.operators):
        lab.start_operator()
    ns, name = lab.create_profile("foreground")
    policies = _applied(lab, ns, name)
    custom: Any = client.CustomObjectsApi(lab.api)
    hold = {"metadata": {"finalizers": ["test.agentdetect.io/hold"]}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "agentdetectionprofiles", name, hold)
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, "agentdetectionprofiles", name, propagation_policy="Foreground"
    )

    def left() -> list[str]:
        found = custom.list_namespaced_custom_object(
            "cilium.io", "v1alpha1", ns, "tracingpoliciesnamespaced", label_selector=f"{PROFILE_LABEL}={name}"
        )["items"]
        return [p["metadata"]["name"] for p in found]

    deadline = time.monotonic() + 60
    while left():
        assert time.monotonic() < deadline, (left(), policies)
        time.sleep(0.5)
    time.sleep(12.0)  # the drift events handled, and two sweep passes (every 5 s here)
    try:
        assert left() == []
        assert [e.message for e in _policy_restored_events(lab) if e.involved_object.name == name] == []
    finally:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "agentdetectionprofiles", name, {"metadata": {"finalizers": None}}
        )
    deadline = time.monotonic() + 30
    while any(
        p["metadata"]["name"] == name
        for p in custom.list_namespaced_custom_object(GROUP, VERSION, ns, "agentdetectionprofiles")["items"]
    ):
        assert time.monotonic() < deadline, "the profile was not deleted"
        time.sleep(0.5)


def _etcd_delete(etcd_url: str, key: str) -> int:
    """Delete one key in etcd itself (its v3 JSON gateway), under a stopped API server: how a
    deletion happens that no watch reports. In a real cluster, one made while the operator's
    watch is away (an API server restart, a partition) longer than the watch cache keeps."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(f"{etcd_url}/v3/kv/deleterange", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(json.load(resp).get("deleted", 0))


def test_a_policy_deleted_while_the_watch_was_away_is_restored_and_said_so(faults_lab: Lab) -> None:
    """Review finding (a): the sweep's LIST found such a policy missing and put it back with no
    PolicyRestored Event, so a security team never heard that someone deleted it."""
    lab = faults_lab
    if not any(op.proc is not None and op.proc.poll() is None for op in lab.operators):
        lab.start_operator()
    ns, name = lab.create_profile("tampered")
    victim = _applied(lab, ns, name)[0]  # applied, and its apply returned: the operator knows it stored
    deleted: list[int] = []
    lab.control_plane.restart(
        "kube-apiserver",
        down_for=1.0,
        while_down=lambda: deleted.append(
            _etcd_delete(
                lab.control_plane.etcd_url, f"/registry/cilium.io/tracingpoliciesnamespaced/{ns}/{victim}"
            )
        ),
    )
    assert deleted == [1]
    custom = client.CustomObjectsApi(lab.api)
    want = (
        f"TracingPolicyNamespaced {ns}/{victim} was deleted outside agentdetect; restored "
        "(found by a periodic list; the watch did not see it)"
    )
    found = _first_restored(lab, name)
    assert [(e.type, e.message) for e in found] == [("Warning", want)]
    custom.get_namespaced_custom_object("cilium.io", "v1alpha1", ns, "tracingpoliciesnamespaced", victim)
    converged, check = lab.converge(time.monotonic())
    assert converged is not None, check


def test_a_policy_stripped_of_its_label_is_restored_and_said_changed(faults_lab: Lab) -> None:
    """Someone removed agentdetect's managed-by label: the watch (filtered by it) and the
    sweep's LIST (selected by it) stop showing the policy, but it is there. The sweep puts the
    label back and says the policy was changed, not deleted: the apply found it (200)."""
    lab = faults_lab
    if not any(op.proc is not None and op.proc.poll() is None for op in lab.operators):
        lab.start_operator()
    ns, name = lab.create_profile("tampered")
    victim = _applied(lab, ns, name)[0]
    custom: Any = client.CustomObjectsApi(lab.api)
    strip = {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}}
    custom.patch_namespaced_custom_object(
        "cilium.io", "v1alpha1", ns, "tracingpoliciesnamespaced", victim, strip
    )
    want = (
        f"TracingPolicyNamespaced {ns}/{victim} was changed outside agentdetect; restored "
        "(found by a periodic list; the watch did not see it)"
    )
    found = _first_restored(lab, name)
    time.sleep(6.0)  # another sweep pass: nothing more to say
    found = _first_restored(lab, name)
    assert [(e.type, e.message) for e in found] == [("Warning", want)]
    live = custom.get_namespaced_custom_object(
        "cilium.io", "v1alpha1", ns, "tracingpoliciesnamespaced", victim
    )
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agentdetect"


def test_no_policy_was_reported_restored_that_nobody_touched(faults_lab: Lab) -> None:
    """Every fault above (kills, a failover, an API server restart, churn, a foreground
    deletion) with the sweep comparing a LIST of every policy against what was applied every
    5 s: a policy of ours in flight, or one the watch had not shown yet, is never taken for
    someone else's edit. The one tamper above was reported: the check could have failed."""
    assert len(faults_lab.operators) >= 3, "the scenarios above did not run: nothing was checked"
    found = [(e.involved_object.name, e.message) for e in _policy_restored_events(faults_lab)]
    assert [name for name, _ in found if name.startswith("tampered-")], "the tamper test did not run"
    assert [(name, message) for name, message in found if not name.startswith("tampered-")] == []


def test_the_operators_were_quiet_through_it_all(faults_lab: Lab) -> None:
    """Every operator of the suite, as its own process: no traceback, and none of kopf's INFO
    line per watch event ("Handler 'pod-deleted' succeeded." on every pod event in the cluster)."""
    from agentdetect.app.handlers import WATCH_EVENT_HANDLERS

    assert len(faults_lab.operators) >= 3
    for op in faults_lab.operators:
        text = op.output()
        assert "Traceback" not in text, text[-3000:]
        for hid in WATCH_EVENT_HANDLERS:
            assert f"Handler '{hid}' succeeded." not in text
