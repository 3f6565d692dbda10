"""Which replica runs detection: the one kopf's peering keeps active."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from agentdetect.detection.peering import PeeringGate
from agentdetect.detection.peering import active_among as _active_among

NOW = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=datetime.UTC)


def active_among(
    peers: Mapping[str, object], priority: int, now: datetime.datetime, announced: bool = False
) -> bool:
    return _active_among(peers, priority, now, announced)[0]


def peer(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_highest_live_priority_is_active() -> None:
    peers = {"a": peer(200), "b": peer(100)}
    assert active_among(peers, 200, NOW)
    assert not active_among(peers, 100, NOW)


def test_not_active_until_announced() -> None:
    assert not active_among({}, 100, NOW)
    assert not active_among({"other": peer(50)}, 100, NOW)
    assert active_among({"other": peer(50), "me": peer(100)}, 100, NOW)


def test_dead_peers_do_not_count() -> None:
    peers = {"gone": peer(300, seconds_ago=120), "me": peer(100)}
    assert active_among(peers, 100, NOW)
    assert not active_among({"me": peer(100, seconds_ago=61)}, 100, NOW)


def test_equal_priorities_pause_everyone_as_kopf_does() -> None:
    assert not active_among({"a": peer(100), "b": peer(100)}, 100, NOW)


def test_kopf_timestamps_and_garbage_are_handled() -> None:
    peers = {
        "me": {"priority": 7, "lifetime": 60, "lastseen": "2026-11-24T01:59:59.5+00:00"},
        "naive": {"priority": 1, "lifetime": 60, "lastseen": "2026-11-24T01:59:59"},
        "junk": {"priority": "high", "lastseen": "yesterday"},
        "not-a-dict": "x",
    }
    assert active_among(peers, 7, NOW)


def test_our_own_entry_going_stale_does_not_pause_us_once_announced() -> None:
    """Through an API server outage kopf cannot renew our entry; kopf does not pause for that,
    so neither does detection (a pause there dropped what it had read but not yet written)."""
    stale = {"me": peer(100, seconds_ago=61)}
    assert _active_among(stale, 100, NOW, announced=False) == (False, False)
    assert _active_among(stale, 100, NOW, announced=True) == (True, False)
    assert _active_among({"me": peer(100)}, 100, NOW) == (True, True)
    # A live peer that outranks us still does.
    assert not active_among({**stale, "other": peer(200)}, 100, NOW, announced=True)


def test_going_standby_is_told_to_the_listeners() -> None:
    """The reconciler forgets which policies it knew stored (what the active replica writes
    meanwhile is no one's tamper): told once per change to standby, not once per read."""

    def fresh(priority: int) -> dict[str, object]:
        seen = datetime.datetime.now(datetime.UTC).isoformat()
        return {"priority": priority, "lifetime": 60, "lastseen": seen}

    peers: dict[str, object] = {}

    class Peering:
        def get_cluster_custom_object(self, *_: Any, **__: Any) -> dict[str, Any]:
            return {"status": dict(peers)}

    gate = PeeringGate(client.ApiClient(), "agentdetect", priority=100, ttl=0)
    gate.custom = Peering()  # type: ignore[assignment]
    told: list[str] = []
    gate.on_standby.append(lambda: told.append("standby"))
    peers["me"] = fresh(100)
    assert gate() and gate()
    peers["other"] = fresh(200)
    assert not gate() and not gate()
    assert told == ["standby"]
    del peers["other"]
    assert gate()
    assert told == ["standby"]
