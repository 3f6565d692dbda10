from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentdetect.app.runner import OperatorThread
from agentdetect.controller.reconcile import Config
from agentdetect.local.controlplane import ControlPlane
from agentdetect.policy.resolve import StaticResolver
from tests.integration.helpers import temporary_namespace
from tests.kwoknode import KwokNode, find_kwok_binary, find_kwok_source

#: What the operator's resolver answers in tests: this machine has no DNS to the internet.
TEST_HOSTS: dict[str, list[str]] = {
    "api.openai.com": ["104.18.6.192", "2606:4700::6812:6c0"],
    "api.anthropic.com": ["160.79.104.10"],
    "llm.example.com": ["10.1.2.3"],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


def following_config(tetragon_ns: str) -> Config:
    """An operator that follows the Tetragon pods of ``tetragon_ns`` (kwok serves their logs)."""
    return Config(
        resolver=StaticResolver(TEST_HOSTS),
        detect=True,
        flush_interval=0.5,
        retry_delay=1.0,
        tetragon_namespace=tetragon_ns,
    )


@pytest.fixture(scope="module")
def resolver() -> StaticResolver:
    """One per module: tests may change answers to exercise re-resolution."""
    return StaticResolver(TEST_HOSTS)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, profile_crds: list[str], policy_kinds: bool, resolver: StaticResolver
) -> Iterator[OperatorThread]:
    cfg = Config(resolver=resolver, resolve_interval=2.0, retry_delay=1.0)
    with OperatorThread(cfg, control_plane.kubeconfig) as op:
        yield op


@pytest.fixture
def tetragon_ns(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace for Tetragon pods that kwok runs; modules may narrow it to their scope."""
    with temporary_namespace(control_plane.api_client(), "tetragon") as name:
        yield name


@pytest.fixture(scope="session")
def kwok_node(control_plane: ControlPlane) -> Iterator[KwokNode]:
    """kwok as a node: pods become Running and serve logs through the API server. Built by the
    test command (``agentdetect binaries --kwok``); a failure to get it fails, never skips."""
    node = KwokNode(control_plane, find_kwok_binary(), name="kwok-test-node", source=find_kwok_source())
    node.start()
    try:
        yield node
    finally:
        node.stop()
        assert node.process is not None and node.process.exited() is not None, "kwok still running"
