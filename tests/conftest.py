"""Session fixtures: one real control plane for the whole run, Tetragon's CRDs in it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentdetect import binaries, tetragon_crds
from agentdetect.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    cp = ControlPlane(binaries.ensure())
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
        left = [p.name for p in cp.processes if p.exited() is None]
        assert not left, f"control-plane processes still running after stop: {left}"


@pytest.fixture(scope="session")
def tetragon(control_plane: ControlPlane) -> list[str]:
    """Installs Tetragon's CRDs; skips, naming the exact error, where they cannot be obtained."""
    try:
        docs = tetragon_crds.load()
    except tetragon_crds.TetragonCRDsUnavailable as exc:
        pytest.skip(f"Tetragon CRDs unavailable: {exc}")
    return control_plane.install_crds(docs)


@pytest.fixture
def api(control_plane: ControlPlane) -> Any:
    return control_plane.api_client()


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)
