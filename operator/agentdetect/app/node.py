"""Run a node agent (``agentdetect node``): detection for the node it runs on, with /metrics
and /healthz, until SIGTERM (a clean stop writes what was counted)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agentdetect.app.metrics import NodeAgentCollector
from agentdetect.app.runner import api_client
from agentdetect.cluster.kube import Cluster
from agentdetect.detection.nodeagent import NodeAgent, NodeSettings

log = logging.getLogger(__name__)


def http_server(
    bind: str, port: int, registry: CollectorRegistry | None, healthy: Callable[[], bool]
) -> ThreadingHTTPServer:
    """/metrics (when ``registry``) and /healthz, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics") and registry is not None:
                body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok = healthy()
                body, status, ctype = (b"ok\n" if ok else b"unhealthy\n"), (200 if ok else 503), "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per probe and scrape is noise

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server


def run_node(
    settings: NodeSettings,
    kubeconfig: Path | None = None,
    metrics_port: int | None = None,
    health_port: int | None = None,
    bind: str = "0.0.0.0",
    stop: threading.Event | None = None,
) -> NodeAgent:
    """Until ``stop`` is set (by SIGTERM/SIGINT when run from the command line)."""
    stop = stop or threading.Event()
    agent = NodeAgent(Cluster(api_client(kubeconfig)), settings)
    registry = CollectorRegistry()
    registry.register(NodeAgentCollector(agent))
    servers = []
    if metrics_port:
        servers.append(http_server(bind, metrics_port, registry, agent.healthy))
    if health_port:
        servers.append(http_server(bind, health_port, None, agent.healthy))
    agent.start()
    try:
        stop.wait()
    finally:
        log.info("node %s: stopping; writing what was counted", settings.node)
        agent.stop()
        for server in servers:
            server.shutdown()
            server.server_close()
    return agent


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
