from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentdetect.controlplane import ControlPlane
from agentdetect.reconcile import Config
from agentdetect.resolve import StaticResolver
from agentdetect.runner import OperatorThread

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
