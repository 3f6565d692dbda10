"""Node mode's profile status: rolled up from the AgentDetections every node agent writes,
one status patch per changed profile per flush, none when nothing changed."""

from __future__ import annotations

from typing import Any

from agentdetect.detection.aggregate import PodDetections, RuleStats
from agentdetect.detection.records import detection_object
from agentdetect.detection.rollup import DetectionRollup
from tests.unit.detection.test_detections import FakeCluster

PROFILE = ("AgentDetectionProfile", "team-a", "llm")
OTHER = ("ClusterAgentDetectionProfile", None, "shells")


def record(profile: tuple[str, str | None, str], pod: str, count: int, last: str) -> dict[str, Any]:
    det = PodDetections("chatbot", node="node-1")
    det.rules["openai"] = RuleStats(
        "tcp_connect", count, "2026-11-24T12:00:00Z", last, 0, "/bin/py", "1.2.3.4"
    )
    det.events, det.last = count, last
    return detection_object((profile, "team-a", pod), det).dump()


def test_status_is_the_sum_of_the_records_and_written_once_per_change() -> None:
    cluster = FakeCluster()
    rollup = DetectionRollup(cluster)
    rollup.handle("ADDED", record(PROFILE, "a", 3, "2026-11-24T12:00:03Z"))
    rollup.handle("ADDED", record(PROFILE, "b", 4, "2026-11-24T12:00:04Z"))
    rollup.handle("ADDED", record(OTHER, "a", 1, "2026-11-24T12:00:01Z"))
    assert rollup.flush() == 2
    by_profile = {(k, ns, n): s["detections"] for k, n, ns, s in cluster.statuses}
    mine = by_profile[PROFILE]
    assert (mine["pods"], mine["events"], mine["lastDetection"]) == (2, 7, "2026-11-24T12:00:04Z")
    assert [p["pod"] for p in mine["byPod"]] == ["b", "a"]
    assert by_profile[OTHER]["events"] == 1

    assert rollup.flush() == 0, "nothing changed: no write"
    # The same record again (a relist): the status is what was written, so no write either.
    rollup.handle("MODIFIED", record(PROFILE, "a", 3, "2026-11-24T12:00:03Z"))
    assert rollup.flush() == 0
    rollup.handle("MODIFIED", record(PROFILE, "a", 9, "2026-11-24T12:00:09Z"))
    rollup.handle("DELETED", record(PROFILE, "b", 4, "2026-11-24T12:00:04Z"))
    assert rollup.flush() == 1
    last = cluster.statuses[-1][3]["detections"]
    assert (last["pods"], last["events"]) == (1, 9)


def test_a_failed_patch_is_owed_until_it_succeeds() -> None:
    cluster = FakeCluster()
    cluster.fail_status = 1
    rollup = DetectionRollup(cluster)
    rollup.handle("ADDED", record(PROFILE, "a", 3, "2026-11-24T12:00:03Z"))
    assert rollup.flush() == 0
    assert rollup.flush() == 1
    assert cluster.statuses[-1][3]["detections"]["events"] == 3


def test_records_that_are_not_ours_are_ignored() -> None:
    rollup = DetectionRollup(FakeCluster())
    rollup.handle("ADDED", {"kind": "AgentDetection", "metadata": {"name": "x"}})
    assert rollup.flush() == 0
