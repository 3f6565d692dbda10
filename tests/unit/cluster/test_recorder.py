"""The Event queue (cluster/recorder.py): what is tried again, what is not, and that a
reconcile never waits for the API server. The POSTs themselves are held to the real API
server in tests/integration/test_kube_writes.py."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from agentdetect.cluster.recorder import EventCounts, EventRecorder, event_for, retried

BODY = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "AgentDetectionProfile",
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
}


class Server:
    """Answers each POST with the next of ``answers`` (None: created), then creates."""

    def __init__(self, *answers: Exception | None, gate: threading.Event | None = None) -> None:
        self.answers = list(answers)
        self.gate = gate
        self.created: list[tuple[str, str]] = []
        self.tries = 0
        self.entered = threading.Event()

    def __call__(self, namespace: str, event: dict[str, Any]) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.tries += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.created.append((namespace, event["reason"]))


def status(code: int) -> ApiException:
    return ApiException(status=code, reason=f"status {code}")


def recorder(server: Server, **kwargs: Any) -> EventRecorder:
    kwargs.setdefault("retry_after", 0.001)
    return EventRecorder(server, "agentdetect", "agentdetect.io/operator", jitter=lambda: 0.5, **kwargs)


@pytest.mark.parametrize(
    ("exc", "again"),
    [
        (status(0), True),  # no answer at all
        (status(429), True),
        (status(500), True),
        (status(503), True),
        (status(504), True),
        (urllib3.exceptions.MaxRetryError(None, "/", "refused"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("reset"), True),
        (status(400), False),
        (status(403), False),
        (status(404), False),  # the namespace is gone
        (status(409), False),
        (status(422), False),  # invalid, or a terminating namespace (Forbidden 403 in fact)
    ],
)
def test_what_is_tried_again(exc: Exception, again: bool) -> None:
    assert retried(exc) is again


def test_events_are_posted_in_the_order_recorded() -> None:
    server = Server()
    events = recorder(server)
    for reason in ("Applied", "BudgetExceeded", "PolicyRestored"):
        events.record(BODY, "Normal", reason, "m")
    assert events.flush(10)
    assert server.created == [("ns", "Applied"), ("ns", "BudgetExceeded"), ("ns", "PolicyRestored")]
    assert events.snapshot() == (EventCounts(posted=3), 0)
    events.close()


def test_record_does_not_wait_for_the_api_server() -> None:
    gate = threading.Event()
    server = Server(gate=gate)
    events = recorder(server)
    events.record(BODY, "Normal", "Applied", "m")  # returns while the POST hangs
    events.record(BODY, "Warning", "BudgetExceeded", "m")
    assert events.snapshot() == (EventCounts(), 2)
    assert not events.flush(0.05)
    gate.set()
    assert events.flush(10)
    assert events.snapshot() == (EventCounts(posted=2), 0)
    events.close()


def test_an_unanswered_post_is_tried_again_and_the_event_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A failed POST used to lose the transition's Event for good: the status said the new
    state already, so no later reconcile saw a transition to report."""
    server = Server(status(503), urllib3.exceptions.ProtocolError("reset"), None)
    events = recorder(server, retry_after=0.01)
    events.record(BODY, "Normal", "Applied", "m")
    events.record(BODY, "Normal", "Second", "m")
    assert events.flush(10)
    assert server.tries == 4
    assert server.created == [("ns", "Applied"), ("ns", "Second")]
    assert events.counts == EventCounts(posted=2)
    assert "(try 1 of 12; again in 0.0 s)" in caplog.text  # the first wait: a random part of 10 ms
    events.close()


def test_the_first_wait_is_a_random_part_of_the_next() -> None:
    waits: list[float] = []
    server = Server(status(503), status(503), None)
    events = EventRecorder(server, "c", "rc", retry_after=0.02, jitter=lambda: 0.25)
    original = events._closing.wait

    def wait(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        return original(timeout)

    events._closing.wait = wait  # type: ignore[method-assign]
    events.record(BODY, "Normal", "Applied", "m")
    assert events.flush(10)
    assert waits == [0.005, 0.02]
    events.close()


def test_a_refused_post_is_not_tried_again() -> None:
    server = Server(status(403), None)
    events = recorder(server)
    events.record(BODY, "Normal", "Applied", "m")
    events.record(BODY, "Normal", "Next", "m")
    assert events.flush(10)
    assert server.tries == 2 and server.created == [("ns", "Next")]
    assert events.counts == EventCounts(posted=1, refused=1)
    events.close()


def test_an_event_is_given_up_after_twelve_tries(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(*[status(500)] * 20)
    events = recorder(server)
    events.record(BODY, "Normal", "Applied", "m")
    assert events.flush(10)
    assert server.tries == 12
    assert events.counts == EventCounts(abandoned=1)
    assert "(gave up after 12 tries)" in caplog.text
    events.close()


def test_a_full_queue_drops_the_new_event_not_the_reconcile(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    server = Server(gate=gate)
    events = recorder(server, max_queued=2)
    events.record(BODY, "Normal", "A", "m")
    assert server.entered.wait(10)  # A is being posted: B and C wait, D finds the queue full
    for reason in ("B", "C", "D"):
        events.record(BODY, "Normal", reason, "m")
    gate.set()
    assert events.flush(10)
    assert [reason for _, reason in server.created] == ["A", "B", "C"]
    assert events.counts == EventCounts(posted=3, dropped=1)
    assert "could not post Event D on AgentDetectionProfile p: 2 Events already queued" in caplog.text
    events.close()


def test_close_cuts_a_retry_wait_short_and_tries_once_more(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(status(503), status(503), None)
    events = recorder(server, retry_after=60.0)
    events.record(BODY, "Normal", "Applied", "m")
    events.record(BODY, "Normal", "Queued", "m")
    for _ in range(1000):  # logged just before the thread waits
        if "again in 30.0 s" in caplog.text:
            break
        threading.Event().wait(0.01)
    assert "again in 30.0 s" in caplog.text
    started = time.monotonic()
    events.close(timeout=10)
    assert time.monotonic() - started < 5  # not 30 s (jitter 0.5)
    # Applied: tried, waited, cut short, tried once more (503), abandoned; Queued: one try, posted.
    assert server.tries == 3 and server.created == [("ns", "Queued")]
    assert events.counts == EventCounts(posted=1, abandoned=1)
    events.record(BODY, "Normal", "Late", "m")  # after close: counted, not queued
    assert events.counts == EventCounts(posted=1, abandoned=2)


def test_a_bug_in_the_post_does_not_stop_later_events() -> None:
    server = Server(TypeError("not JSON serialisable"), None)
    events = recorder(server)
    events.record(BODY, "Normal", "Broken", "m")
    events.record(BODY, "Normal", "Fine", "m")
    assert events.flush(10)
    assert server.created == [("ns", "Fine")]
    assert events.counts == EventCounts(posted=1, abandoned=1)
    events.close()


def test_the_event_carries_the_time_it_was_recorded_and_is_named_by_it() -> None:
    at = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=datetime.UTC)
    now_ns = int(at.timestamp()) * 1_000_000_000 + 123
    namespace, event = event_for(BODY, "Warning", "BudgetExceeded", "x" * 2000, "agentdetect", "rc", now_ns)
    assert namespace == "ns"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-11-25T10:00:00Z"
    assert event["metadata"] == {"name": f"p.{now_ns:x}"}
    assert event["involvedObject"] == {
        "apiVersion": "agentdetect.io/v1alpha1",
        "kind": "AgentDetectionProfile",
        "name": "p",
        "uid": "u-1",
        "namespace": "ns",
    }
    assert len(event["message"]) == 1024


def test_an_event_about_a_cluster_scoped_object_is_stored_in_default() -> None:
    body = {
        "apiVersion": "agentdetect.io/v1alpha1",
        "kind": "ClusterAgentDetectionProfile",
        "metadata": {"name": "c"},
    }
    namespace, event = event_for(body, "Normal", "Applied", "m", "agentdetect", "rc", 1)
    assert namespace == "default" and "namespace" not in event["involvedObject"]


def test_a_long_name_is_cut_to_stay_a_valid_event_name() -> None:
    body = {"kind": "AgentDetectionProfile", "metadata": {"name": "a" * 199 + "-b" * 20, "namespace": "ns"}}
    _, event = event_for(body, "Normal", "Applied", "m", "agentdetect", "rc", 2**60)
    name = event["metadata"]["name"]
    assert name == "a" * 199 + f".{2**60:x}" and len(name) <= 253


def test_each_event_has_a_name_of_its_own() -> None:
    """Names are made from the clock, which may repeat a reading."""
    names: list[str] = []
    events = EventRecorder(lambda namespace, event: names.append(event["metadata"]["name"]), "c", "rc")
    for _ in range(200):
        events.record(BODY, "Normal", "Applied", "m")
    assert events.flush(10)
    assert len(set(names)) == 200
    events.close()


def test_a_try_the_server_stored_but_did_not_answer_is_not_posted_twice() -> None:
    """The first POST timed out after the server stored the Event; the second finds its name
    taken (409): posted once, counted once. A 409 on the first try is a refusal."""
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")  # type: ignore[arg-type]
    server = Server(timeout, status(409), status(409))
    events = recorder(server)
    events.record(BODY, "Normal", "Applied", "m")
    events.record(BODY, "Normal", "Taken", "m")
    assert events.flush(10)
    assert server.tries == 3
    assert events.counts == EventCounts(posted=1, refused=1)
    events.close()


def test_a_thread_that_cannot_start_drops_the_event_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()
    events = recorder(server)
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    events.record(BODY, "Normal", "Lost", "m")  # does not raise into the reconcile
    assert events.counts == EventCounts(dropped=1)
    assert "could not start the Event thread: can't start new thread" in caplog.text
    monkeypatch.setattr(threading.Thread, "start", start)
    events.record(BODY, "Normal", "Applied", "m")
    assert events.flush(10)
    assert server.created == [("ns", "Applied")]
    events.close()
