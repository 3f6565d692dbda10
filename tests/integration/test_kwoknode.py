"""kwok as a fake node: pods run, and their logs are read and followed through kube-apiserver."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.kwoknode import (
    FakePod,
    KwokError,
    KwokNode,
    append_log_lines,
    cri_timestamp,
    end_log_streams,
)

CONTAINER = "export-stdout"


class StreamLines:
    """Reads a ``_preload_content=False`` response in a thread; hands out complete lines."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp
        self.lines: queue.Queue[str] = queue.Queue()
        self.tail = b""  # what followed the last newline when the stream ended
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="log-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = b""
        try:
            for chunk in self.resp.stream(64 * 1024):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    self.lines.put(line.decode())
        except BaseException as exc:
            self.error = exc
        finally:
            self.tail = buffer
            self.done.set()

    def next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no log line within {timeout:.0f}s (stream ended: {self.done.is_set()})"
            ) from None

    def close(self) -> None:
        self.resp.close()


def follow(api: Any, pod: FakePod, container: str = CONTAINER) -> StreamLines:
    resp = client.CoreV1Api(api).read_namespaced_pod_log(
        pod.name, pod.namespace, container=container, follow=True, timestamps=True, _preload_content=False
    )
    return StreamLines(resp)


def start_pod(kwok_node: KwokNode, namespace: str, tmp_path: Path, name: str) -> FakePod:
    log = tmp_path / f"{name}.log"
    append_log_lines(log, ["before the stream"])
    return kwok_node.create_pod(
        namespace,
        name,
        containers=[CONTAINER, "tetragon"],
        log_files={CONTAINER: log},
        labels={"app.kubernetes.io/name": "tetragon"},
    )


def test_pod_runs_and_followed_log_streams_appended_lines_until_deleted(
    kwok_node: KwokNode, namespace: str, api: Any, tmp_path: Path
) -> None:
    pod = start_pod(kwok_node, namespace, tmp_path, "tetragon-a")

    got: Any = client.CoreV1Api(api).read_namespaced_pod(pod.name, namespace)
    assert got.status.phase == "Running"
    assert got.spec.node_name == kwok_node.name
    assert {s.name: bool(s.state.running) for s in got.status.container_statuses} == {
        CONTAINER: True,
        "tetragon": True,
    }

    stream = follow(api, pod)
    try:
        first = stream.next_line(timeout=30)
        assert first.endswith(" before the stream")
        # Written only now, after the stream is open: they must arrive within seconds.
        for batch in (["after 1", "after 2"], ['{"process_exec": {"process": {"binary": "/bin/sh"}}}']):
            t0 = time.monotonic()
            stamps = pod.append_log(CONTAINER, *batch)
            for stamp, text in zip(stamps, batch, strict=True):
                # timestamps=true: each line is prefixed with the timestamp from its CRI line.
                assert stream.next_line(timeout=15) == f"{stamp} {text}"
            assert time.monotonic() - t0 < 15
            time.sleep(0.5)

        kwok_node.delete_pod(namespace, pod.name)
        assert stream.done.wait(30), "the followed stream did not end after the pod was deleted"
        assert stream.error is None, f"stream ended with {stream.error!r}"
        assert stream.lines.empty(), f"unexpected lines: {list(stream.lines.queue)}"
        # kwok's last words when its reader fails: text without a newline, which a
        # follower splitting on newlines never sees as a line.
        assert stream.tail.startswith(b"failed to open log file"), stream.tail
    finally:
        stream.close()


def test_kwok_alone_does_not_end_a_followed_stream_when_the_pod_goes(
    kwok_node: KwokNode, namespace: str, api: Any, tmp_path: Path
) -> None:
    pod = start_pod(kwok_node, namespace, tmp_path, "tetragon-b")
    stream = follow(api, pod)
    try:
        stream.next_line(timeout=30)
        kwok_node.delete_pod(namespace, pod.name, end_streams=False)
        assert not stream.done.wait(3), "kwok ended the stream by itself (the workaround may be moot)"
        end_log_streams(pod.log_files[CONTAINER])
        assert stream.done.wait(30), "end_log_streams did not end the stream"
    finally:
        stream.close()


def test_since_tail_and_timestamps_are_honoured(
    kwok_node: KwokNode, namespace: str, api: Any, tmp_path: Path
) -> None:
    log = tmp_path / "history.log"
    hour_ago = time.time_ns() - 3600 * 1_000_000_000
    append_log_lines(log, ["old 1", "old 2"], timestamp_ns=hour_ago)
    second = (time.time_ns() // 1_000_000_000 - 5) * 1_000_000_000
    recent = [
        *append_log_lines(log, ["new 1"], timestamp_ns=second + 200_000_000),
        *append_log_lines(log, ["new 2"], timestamp_ns=second + 700_000_000),
    ]
    pod = kwok_node.create_pod(namespace, "history", [CONTAINER], {CONTAINER: log})
    core = client.CoreV1Api(api)

    def read(**kwargs: Any) -> list[str]:
        text = core.read_namespaced_pod_log(pod.name, namespace, container=CONTAINER, **kwargs)
        return str(text).splitlines()

    assert read() == ["old 1", "old 2", "new 1", "new 2"]
    assert read(since_seconds=600) == ["new 1", "new 2"]
    assert read(tail_lines=1, timestamps=True) == [f"{recent[1]} new 2"]
    assert read(limit_bytes=4) == ["old "]

    # The Python client has no sinceTime; kubectl sends it. It is a metav1.Time, which
    # travels in whole seconds: "new 2"'s time selects the whole second, "new 1" included.
    def since_time(stamp: str) -> list[str]:
        out = kwok_node.control_plane.kubectl(
            "-n", namespace, "logs", pod.name, "-c", CONTAINER, f"--since-time={stamp}"
        )
        return out.stdout.splitlines()

    assert since_time(recent[1]) == ["new 1", "new 2"]
    assert since_time(cri_timestamp(second + 1_000_000_000)) == []
    kwok_node.delete_pod(namespace, pod.name)


def test_log_file_in_neither_cri_nor_docker_format_is_refused(
    kwok_node: KwokNode, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "plain.log"
    log.write_text("plain text\n")
    with pytest.raises(KwokError, match="unsupported log format"):
        kwok_node.create_pod(namespace, "plain", [CONTAINER], {CONTAINER: log}, timeout=60)
    kwok_node.delete_pod(namespace, "plain")
