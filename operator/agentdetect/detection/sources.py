"""Where Tetragon's events come from: a file or standard input, or the export-stdout container
of every Tetragon pod, followed through the Kubernetes API.

Following logs is at-least-once by nature (a dropped stream is reopened with a since-time
of whole seconds), so each line carries the kubelet's nanosecond timestamp and a follower
drops anything at or before the last line it delivered. That makes delivery exactly-once
across reconnects.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.cluster.kube import REQUEST_TIMEOUT

log = logging.getLogger(__name__)
#: Seconds of margin when a dropped stream is reopened (StreamState.since_seconds).
CLOCK_SKEW_MARGIN_S = 60
#: A partial line longer than this is dropped unparsed (the parser skips such lines anyway).
MAX_PARTIAL_LINE = 1024 * 1024
#: A line's payload, the stream it came from (the Tetragon pod, namespace/name) and the
#: kubelet's timestamp of it in nanoseconds: where a record of counts stands in that stream.
Sink = Callable[[bytes, str, int], None]


def file_lines(path: str) -> Iterator[bytes]:
    """Lines of a file, or of standard input for ``-``."""
    stream = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    try:
        yield from stream
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _sever(resp: Any) -> None:
    """End a streaming response as a network failure would. Closing it from another thread
    blocks on the reader's buffer lock, so the socket is shut down under the reader instead."""
    conn = getattr(resp, "connection", None)
    sock = getattr(conn, "sock", None)
    with contextlib.suppress(Exception):  # a dead connection may fail to close in many ways
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        else:
            resp.close()


def parse_timestamp(stamp: bytes) -> int:
    """RFC 3339 with up to nanoseconds (as the kubelet writes it) to integer nanoseconds."""
    text = stamp.decode()
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return int(seconds) * 1_000_000_000 + nanos


@dataclass
class StreamState:
    """Per Tetragon pod: where delivery stands, so a reconnect neither loses nor repeats."""

    last_ns: int = -1
    #: Lines delivered with timestamp ``last_ns`` (equal timestamps are possible).
    at_last: set[int] = field(default_factory=set)
    reconnects: int = 0
    lines: int = 0
    duplicates_dropped: int = 0
    oversized: int = 0

    def admit(self, stamp_ns: int, payload: bytes) -> bool:
        if stamp_ns < self.last_ns:
            self.duplicates_dropped += 1
            return False
        digest = hash(payload)
        if stamp_ns == self.last_ns:
            if digest in self.at_last:
                self.duplicates_dropped += 1
                return False
            self.at_last.add(digest)
        else:
            self.last_ns = stamp_ns
            self.at_last = {digest}
        self.lines += 1
        return True

    def since_seconds(self, now_ns: int) -> int | None:
        """Whole seconds back from now, rounded up, plus a margin: the last line's timestamp is
        the kubelet's clock and ``now`` this process's, and a clock behind the node's would
        otherwise reopen the stream after lines not yet read. Lines read twice are dropped by
        ``admit``; the margin costs only their replay."""
        if self.last_ns < 0:
            return None
        return max(1, (now_ns - self.last_ns) // 1_000_000_000 + 1 + CLOCK_SKEW_MARGIN_S)


class Backoff:
    """Exponential delays with full jitter, reset by a success: many followers retrying the
    same API server never retry in step."""

    def __init__(self, base: float, cap: float = 30.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** min(self.failures, 16)))

    def reset(self) -> None:
        self.failures = 0


#: What a call raises when the API server is away or refuses: the client's own error, and
#: the transport's (urllib3's, and the socket's) that the generated client lets through.
TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def failure_reason(exc: BaseException) -> str:
    """A failed API call, in a word or two for a log line: the API server's reason, else the
    transport error's type."""
    return str(exc.reason) if isinstance(exc, ApiException) else type(exc).__name__


class RateLimitedLog:
    """One log line per failure class per interval, however many streams or objects fail."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def _take(self, cls: str) -> int | None:
        """None while ``cls`` was logged within the interval; else how many were held back."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(cls, -1e18) < self.interval:
                self._suppressed[cls] = self._suppressed.get(cls, 0) + 1
                return None
            self._last[cls] = now
            return self._suppressed.pop(cls, 0)

    def allow(self, cls: str) -> bool:
        """For a caller that logs itself (with a traceback): whether it may now."""
        return self._take(cls) is not None

    def warning(self, cls: str, message: str, *args: Any) -> None:
        suppressed = self._take(cls)
        if suppressed is None:
            return
        suffix = f" ({suppressed} more like it in the last {self.interval:.0f}s)" if suppressed else ""
        self.logger.warning(message + suffix, *args)


class TetragonLogSource:
    """Follows the ``export-stdout`` container of each Tetragon pod, one thread per pod,
    picking up pods as they come and dropping those that go."""

    def __init__(
        self,
        api: client.ApiClient,
        sink: Sink,
        namespace: str = "kube-system",
        label_selector: str = "app.kubernetes.io/name=tetragon",
        container: str = "export-stdout",
        rediscover_every: float = 5.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.sink = sink
        self.namespace = namespace
        self.label_selector = label_selector
        self.container = container
        self.rediscover_every = rediscover_every
        self.retry_delay = retry_delay
        self.states: dict[str, StreamState] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._gone: set[str] = set()
        self._stop = threading.Event()
        self._responses: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log)
        #: "No Tetragon pod" is said at once, then every ten minutes while it lasts.
        self._none_log = RateLimitedLog(log, interval=600.0)
        self._discoverer: threading.Thread | None = None
        #: Running Tetragon pods at the last listing; None before the first one succeeded.
        self.found: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> TetragonLogSource:
        discoverer = threading.Thread(target=self._discover_loop, name="tetragon-discover", daemon=True)
        self._discoverer = discoverer
        discoverer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses.values())
        for resp in responses:
            _sever(resp)
        for t in list(self._threads.values()):
            t.join(5)
        if self._discoverer is not None:
            self._discoverer.join(5)

    @property
    def followed(self) -> int:
        """Tetragon pods whose log is followed now (a pod that went is no longer counted)."""
        with self._lock:
            return len(set(self._threads) - self._gone)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.states.values())

    def drop_connection(self, pod: str) -> None:
        """Close one pod's stream as a network failure would (used by tests)."""
        with self._lock:
            resp = self._responses.get(pod)
        if resp is not None:
            _sever(resp)

    # ---- pods --------------------------------------------------------------------------------

    def _discover_loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.label_selector, _request_timeout=REQUEST_TIMEOUT
                ).items
                live: set[str] = {
                    p.metadata.name
                    for p in pods
                    if p.metadata and p.metadata.name and p.status and p.status.phase == "Running"
                }
                with self._lock:
                    for name in live - set(self._threads):
                        self.states.setdefault(name, StreamState())
                        t = threading.Thread(
                            target=self._follow, args=(name,), name=f"tetragon-log-{name}", daemon=True
                        )
                        self._threads[name] = t
                        t.start()
                    self._gone = set(self._threads) - live
                    # A followed stream need not end when its pod goes; end it here.
                    gone_streams = [self._responses[p] for p in self._gone if p in self._responses]
                for resp in gone_streams:
                    _sever(resp)
                if not live:
                    self._none_log.warning(
                        "none",
                        "no Tetragon pod to follow in %s matching %s (container %s): nothing is detected; "
                        "check --tetragon-namespace and --tetragon-selector (README: Configure Tetragon)",
                        self.namespace,
                        self.label_selector,
                        self.container,
                    )
                elif self.found == 0:
                    log.info("Tetragon pods found in %s: %d", self.namespace, len(live))
                self.found = len(live)
            except ApiException as exc:
                self._log.warning(
                    "list", "listing Tetragon pods in %s failed: %s", self.namespace, exc.reason
                )
            except Exception as exc:  # keep discovering whatever the transport did
                self._log.warning("list", "listing Tetragon pods failed: %s", exc)
            self._stop.wait(self.rediscover_every)

    def _follow(self, pod: str) -> None:
        state = self.states[pod]
        backoff = Backoff(self.retry_delay)
        first = first_open = True
        while not self._stop.is_set():
            with self._lock:
                if pod in self._gone:
                    self._threads.pop(pod, None)
                    self._gone.discard(pod)
                    return
            if not first:
                state.reconnects += 1
            first = False
            try:
                since = state.since_seconds(time.time_ns())
                resp = self.core.read_namespaced_pod_log(
                    pod,
                    self.namespace,
                    container=self.container,
                    follow=True,
                    timestamps=True,
                    since_seconds=since,
                    _preload_content=False,
                )
                with self._lock:
                    self._responses[pod] = resp
                if first_open:
                    log.info(
                        "following Tetragon's export: %s/%s container %s", self.namespace, pod, self.container
                    )
                    first_open = False
                lines_before = state.lines
                self._pump(resp, state, f"{self.namespace}/{pod}")
                if state.lines > lines_before:
                    backoff.reset()
            except ApiException as exc:
                if exc.status == 404:
                    log.info("Tetragon pod %s is gone", pod)
                else:
                    self._log.warning("stream", "log stream of %s failed: %s", pod, exc.reason)
            except Exception as exc:  # a dropped connection surfaces in many types
                if not self._stop.is_set():
                    self._log.warning(
                        "dropped", "log stream of %s dropped (%s); reconnecting", pod, type(exc).__name__
                    )
            finally:
                with self._lock:
                    self._responses.pop(pod, None)
            self._stop.wait(backoff.next_delay())

    def _pump(self, resp: Any, state: StreamState, stream: str) -> None:
        buffer = b""
        for chunk in resp.stream(64 * 1024):
            if self._stop.is_set():
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_PARTIAL_LINE:  # no newline in sight: not a line to keep
                state.oversized += 1
                buffer = b""
            for line in lines:
                stamp, _, payload = line.partition(b" ")
                try:
                    stamp_ns = parse_timestamp(stamp)
                except ValueError:
                    continue  # not a timestamped line: kubelet always prefixes with timestamps=true
                if payload and state.admit(stamp_ns, payload):
                    try:
                        self.sink(payload, stream, stamp_ns)
                    except Exception:  # our bug, not a dropped stream: say so, keep reading
                        log.exception("handling a line of %s failed", stream)
