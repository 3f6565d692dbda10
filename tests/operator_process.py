"""`agentdetect run` as its own process, as the image runs it: started, probed over HTTP like
the kubelet and Prometheus would, and stopped with SIGTERM like a pod is."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from agentdetect.local.controlplane import free_port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


class OperatorProcess:
    def __init__(self, agentdetect: Path, kubeconfig: Path, log: Path, *extra: str) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log = log
        self.args = [
            str(agentdetect),
            "run",
            f"--kubeconfig={kubeconfig}",
            "--bind=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDETECT_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentdetect run exited with {self.proc.returncode}:\n{self.output()}")
            if self.healthz()[0] == 200:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"/healthz not OK after {timeout:.0f}s:\n{self.output()}")

    def healthz(self) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.health_port}/healthz")

    def metrics(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the kubelet does; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"agentdetect run ignored SIGTERM for {timeout:.0f}s") from None
        return self.proc.returncode

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
