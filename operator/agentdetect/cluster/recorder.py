"""Kubernetes Events, posted from a queue of their own, modelled on client-go's recorder
(``tools/record/event.go``: ``recordToSink``, ``recordEvent``, ``makeEvent``).

A reconcile used to post its Event itself, after writing the status. One failed POST then lost
that transition's Event for good: the status already said the new state, so no later reconcile
saw a transition to report. Now the reconcile puts the Event on this queue and goes on, and one
thread posts the queue in order:

- a POST the API server did not carry out (a connection error or timeout, 429, 500, 502, 503,
  504) is tried again, up to 12 times, 10 s apart, the first wait a random part of that so
  that replicas do not retry in step (client-go's figures). client-go's recorder tries again
  on transport errors only and leaves 429 and 5xx to its REST client's own retries, which
  this Python client does not have; ``Retry-After`` is not read;
- a POST it refused (403, 404, 422, a terminating namespace) is logged and dropped: the same
  request would be refused again;
- each Event is named when it is recorded (the object's name and the time in nanoseconds, as
  client-go's ``makeEvent``), so a POST tried again after the server stored it but the answer
  was lost (a timeout, a reset connection) gets 409 AlreadyExists, counted as posted, and not
  a second copy;
- a full queue (1,000 Events, client-go's ``maxQueuedEvents``) drops the new Event with a log
  line rather than make a reconcile wait;
- stopping cuts a wait between tries short: each Event still queued, the one waiting
  included, gets one more try, and what is left after ``close``'s timeout is abandoned.

Each Event carries the time it was recorded, not the time it was posted. The counts by outcome
are exported as ``agentdetect_kubernetes_events`` (app/metrics.py).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import urllib3
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

#: client-go: maxTriesPerEvent, defaultSleepDuration, maxQueuedEvents (tools/record/event.go).
MAX_TRIES: Final = 12
RETRY_AFTER: Final = 10.0
MAX_QUEUED: Final = 1000
#: Statuses of a request the API server did not carry out but may later: too many requests, or
#: the server (or a proxy in front of it) failing. Every other status is a refusal.
_RETRIED_STATUSES: Final = frozenset({0, 429, 500, 502, 503, 504})

#: Posts one Event into a namespace; raises ApiException or a urllib3 error when it fails.
CreateEvent = Callable[[str, dict[str, Any]], None]


def event_for(
    body: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    component: str,
    reporting_component: str,
    now_ns: int,
) -> tuple[str, dict[str, Any]]:
    """The core/v1 Event about ``body``, recorded at ``now_ns`` (ns since the epoch, which also
    names it), and the namespace it is stored in. An Event about a cluster-scoped object is
    stored in ``default`` and names no namespace in involvedObject, which is where
    ``kubectl describe`` looks for it."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    seconds = now_ns // 1_000_000_000
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = (meta.get("name") or "agentdetect")[:200].rstrip("-.")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{base}.{now_ns:x}"},
        "involvedObject": {
            k: v
            for k, v in (
                ("apiVersion", body.get("apiVersion")),
                ("kind", body.get("kind")),
                ("name", meta.get("name")),
                ("uid", meta.get("uid")),
                ("namespace", namespace or None),
            )
            if v is not None
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": reporting_component,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    return namespace or "default", event


def retried(exc: Exception) -> bool:
    """Whether a failed POST may succeed if sent again (see the module docstring). A 409 is
    not: it is :meth:`EventRecorder._post`'s to read as an earlier try stored."""
    if isinstance(exc, ApiException):
        return (exc.status or 0) in _RETRIED_STATUSES
    return isinstance(exc, urllib3.exceptions.HTTPError)


@dataclass
class EventCounts:
    posted: int = 0
    #: The API server refused it; not tried again.
    refused: int = 0
    #: The queue was full when it was recorded.
    dropped: int = 0
    #: Every try failed, the recorder was closed before it could be posted, or posting it
    #: raised something unexpected (logged).
    abandoned: int = 0


@dataclass
class _Queued:
    namespace: str
    event: dict[str, Any]
    what: str


class EventRecorder:
    """One queue and one posting thread per operator instance; the thread starts with the first
    Event. ``jitter`` draws the part of ``retry_after`` the first wait takes (tests fix it)."""

    def __init__(
        self,
        create: CreateEvent,
        component: str,
        reporting_component: str,
        *,
        max_queued: int = MAX_QUEUED,
        max_tries: int = MAX_TRIES,
        retry_after: float = RETRY_AFTER,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._create = create
        self.component, self.reporting_component = component, reporting_component
        self.max_queued, self.max_tries, self.retry_after = max_queued, max_tries, retry_after
        self._jitter = jitter
        self.counts = EventCounts()
        self._queue: collections.deque[_Queued] = collections.deque()
        #: Guards the queue, the counts, ``_busy`` and the thread; notified on each change.
        self._cond = threading.Condition()
        self._busy = False  # an Event is taken off the queue and not yet settled
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ns = 0  # names are unique even if the clock repeats or steps back

    def record(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event about ``body``; never blocks on the API server and never raises for it."""
        what = f"{reason} on {body.get('kind')} {(body.get('metadata') or {}).get('name')}"
        why = ""
        with self._cond:
            now_ns = self._last_ns = max(time.time_ns(), self._last_ns + 1)
            if self._closing.is_set():
                self.counts.abandoned += 1
                why = "the operator is stopping"
            elif len(self._queue) >= self.max_queued:
                self.counts.dropped += 1
                why = f"{len(self._queue)} Events already queued"
            elif not self._started():
                self.counts.dropped += 1
                why = "no thread to post it from"
            else:
                namespace, event = event_for(
                    body, type_, reason, message, self.component, self.reporting_component, now_ns
                )
                self._queue.append(_Queued(namespace, event, what))
                self._cond.notify_all()
        if why:
            log.warning("could not post Event %s: %s", what, why)

    def _started(self) -> bool:
        """Under the lock: the posting thread runs, started now if it was not (a failed start
        is tried again with the next Event)."""
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="agentdetect-events", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread"
                log.error("could not start the Event thread: %s", exc)
                return False
            self._thread = thread
        return True

    def snapshot(self) -> tuple[EventCounts, int]:
        """The counts by outcome, and how many Events are recorded and not yet settled."""
        with self._cond:
            return dataclasses.replace(self.counts), len(self._queue) + (1 if self._busy else 0)

    def flush(self, timeout: float) -> bool:
        """Wait until no Event is queued or being posted (those recorded meanwhile included);
        False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop: an Event waiting between tries and each one queued get one more try within
        ``timeout``, and what is left after it is logged as abandoned."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            left = len(self._queue)
            if left:
                self.counts.abandoned += left
                self._queue.clear()
                log.warning("%d Events not posted: the operator stopped before they were", left)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
            outcome = "abandoned"
            try:
                outcome = self._post(item)
            except Exception as exc:  # a bug must not stop every later Event
                log.error("could not post Event %s: %r", item.what, exc)
            finally:
                with self._cond:
                    self._busy = False
                    setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
                    self._cond.notify_all()

    def _post(self, item: _Queued) -> str:
        """Posts one Event, trying again while the failure is one the server may get over;
        returns the EventCounts field that counts the outcome."""
        tries = 0
        while True:
            tries += 1
            try:
                self._create(item.namespace, item.event)
                return "posted"
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                why = exc.reason if isinstance(exc, ApiException) else exc
                if isinstance(exc, ApiException) and exc.status == 409:
                    if tries > 1:
                        return "posted"  # an earlier try was stored; its answer was lost
                    log.warning("could not post Event %s: %s (its name is taken)", item.what, why)
                    return "refused"
                if not retried(exc):
                    log.warning("could not post Event %s: %s (refused; not tried again)", item.what, why)
                    return "refused"
                if tries >= self.max_tries or self._closing.is_set():
                    log.warning("could not post Event %s: %s (gave up after %d tries)", item.what, why, tries)
                    return "abandoned"
                delay = self.retry_after * (self._jitter() if tries == 1 else 1.0)
                log.warning(
                    "could not post Event %s: %s (try %d of %d; again in %.1f s)",
                    item.what,
                    why,
                    tries,
                    self.max_tries,
                    delay,
                )
            # Closing cuts the wait short, and the next try is then the last.
            self._closing.wait(delay)
