"""Which replica is active, for the work kopf's peering does not pause.

kopf pauses its handlers on every replica but the highest-priority one, but not the threads we
run ourselves: following Tetragon's logs and writing detections. Two replicas doing that would
double the API writes and race each other's status patches, so detection asks the same peering
object kopf uses and runs only on the replica kopf runs.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from agentdetect.cluster.kube import REQUEST_TIMEOUT, WithTimeout
from agentdetect.detection.sources import RateLimitedLog, failure_reason

log = logging.getLogger(__name__)


def _parse(stamp: str) -> datetime.datetime:
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def active_among(
    peers: Mapping[str, Any], priority: int, now: datetime.datetime, announced: bool = False
) -> tuple[bool, bool]:
    """(active, ours_seen). Active when no other live peer has a higher or equal priority
    (equal ones all pause in kopf) and kopf has announced us: a live entry with our priority
    now, or one seen before (``announced``). ``peers`` is the peering object's status:
    identity -> {priority, lifetime, lastseen}. Waiting for our own first entry keeps two
    replicas starting together from both being active until they see each other; after that,
    our own entry going stale (kopf could not renew it through an API server outage) does not
    pause us, as it does not pause kopf: only a live peer that outranks us does."""
    ours_seen = False
    for info in peers.values():
        if not isinstance(info, Mapping):
            continue
        try:
            their = int(info.get("priority", 0))
            deadline = _parse(str(info["lastseen"])) + datetime.timedelta(
                seconds=int(info.get("lifetime", 60))
            )
        except (KeyError, TypeError, ValueError):
            continue
        if deadline <= now:
            continue  # dead: kopf ignores it too
        if their == priority and not ours_seen:
            ours_seen = True  # the first live entry at our priority is taken to be us
            continue
        if their >= priority:
            return False, ours_seen
    return ours_seen or announced, ours_seen


class PeeringGate:
    """Reads the peering object at most every ``ttl`` seconds; errors keep the last answer."""

    def __init__(
        self, api: client.ApiClient, name: str, priority: int, namespace: str | None = None, ttl: float = 5.0
    ) -> None:
        self.custom = WithTimeout(client.CustomObjectsApi(api), REQUEST_TIMEOUT)
        self.name = name
        self.priority = priority
        self.namespace = namespace
        self.ttl = ttl
        self._checked = float("-inf")
        self._active = False
        #: kopf has listed us in the peering object at least once.
        self._announced = False
        self._failures = RateLimitedLog(log)
        #: Called when this replica is seen to go standby (whoever asks the gate: the detection
        #: writer every flush, the sweep every few seconds, a scrape).
        self.on_standby: list[Callable[[], object]] = []

    def __call__(self) -> bool:
        if time.monotonic() - self._checked < self.ttl:
            return self._active
        try:
            if self.namespace is None:
                obj = self.custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", self.name
                )
            else:
                obj = self.custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", self.namespace, "kopfpeerings", self.name
                )
        except Exception as exc:  # an API server away (refused, 5xx): keep the role we have
            reason = failure_reason(exc)
            self._failures.warning(
                "peering", "reading peering %s failed: %s; staying %s", self.name, reason, self._state()
            )
            return self._active
        peers = (obj.get("status") or {}) if isinstance(obj, dict) else {}
        now = datetime.datetime.now(datetime.UTC)
        active, ours_seen = active_among(peers, self.priority, now, self._announced)
        self._announced = self._announced or ours_seen
        if active != self._active:
            log.info("peering %s: this replica is now %s", self.name, "active" if active else "standby")
            if not active:
                for listener in self.on_standby:
                    try:
                        listener()
                    except Exception:  # the caller (the sweep, a flush) goes on regardless
                        log.exception("a standby listener failed")
        self._active, self._checked = active, time.monotonic()
        return active

    def _state(self) -> str:
        return "active" if self._active else "standby"
