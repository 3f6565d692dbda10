"""The fault suite, small: each fault an operator lives through, and afterwards every record
equals what Tetragon reported and every profile's policies are exactly there.

The scenarios, the writer that plays Tetragon and the check are ``bench/faults.py``'s (the
benchmark runs them at 200 profiles and prints the figures); here they run at 12 in their own
control plane, because they restart its API server and its kubelet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.faults import CLUSTER_PROFILE, FLUSH_INTERVAL, POD, SCENARIOS, Lab, event_line, lab

from tests.kwoknode import append_log_lines, cri_timestamp

PROFILES = 12


@pytest.fixture(scope="module")
def faults_lab(
    tmp_path_factory: pytest.TempPathFactory, tetragon_crd_docs: tuple[list[dict[str, Any]], str | None]
) -> Iterator[Lab]:
    workdir: Path = tmp_path_factory.mktemp("faults")
    with lab(workdir, namespaces=3, peering_lifetime=10, tetragon_docs=tetragon_crd_docs[0]) as the_lab:
        the_lab.converge_timeout = 120.0
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
