"""Session fixtures: one real control plane for the whole run, Tetragon's CRDs in it; every
policy rendered anywhere in the run recorded, for Tetragon's own checks at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentdetect.local import binaries, tetragon_crds
from agentdetect.local.controlplane import ControlPlane, load_yaml_documents
from agentdetect.policy import render as render_module
from tests.standin_crds import standin_tetragon_crds
from tests.tetragon_judge import Recorder, watch_policies

REPO = Path(__file__).resolve().parent.parent
#: Every policy rendered in this run (tests/tetragon_judge.py); judged by the last test.
RENDERED = Recorder()
JUDGE_LAST = "judge_last"


@pytest.fixture(scope="session", autouse=True)
def _record_rendered_policies() -> Iterator[None]:
    """Wraps the one function every policy comes out of, in this process (the CLI, the
    reconciler, operator threads, benchmarks' helpers): nothing rendered escapes the judge."""
    original = render_module.render_hook

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        doc = original(*args, **kwargs)
        RENDERED.add([doc])
        return doc

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_module, "render_hook", recording)
        yield


@pytest.fixture(autouse=True)
def _name_the_renderer(request: pytest.FixtureRequest) -> Iterator[None]:
    unjudged = request.node.get_closest_marker("unjudged") is not None
    RENDERED.current_test = request.node.nodeid
    RENDERED.paused = unjudged
    yield
    RENDERED.paused = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The judge runs after everything that renders."""
    last = [i for i in items if i.get_closest_marker(JUDGE_LAST)]
    items[:] = [i for i in items if not i.get_closest_marker(JUDGE_LAST)] + last


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RENDERED.summary:
        terminalreporter.write_line(RENDERED.summary)


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
def tetragon_crd_docs() -> tuple[list[dict[str, Any]], str | None]:
    """Tetragon's real CRDs, or the stand-ins and the exact reason the real ones are missing."""
    try:
        return tetragon_crds.load(), None
    except tetragon_crds.TetragonCRDsUnavailable as exc:
        return standin_tetragon_crds(), str(exc)


@pytest.fixture(scope="session")
def policy_kinds(
    control_plane: ControlPlane, tetragon_crd_docs: tuple[list[dict[str, Any]], str | None]
) -> Iterator[bool]:
    """TracingPolicy kinds served by the API server; True when they carry Tetragon's real schema.
    While they are served, every policy of ours the API server stores is recorded for the judge
    too: operators run as their own processes (the chart and packaging tests) render there."""
    docs, missing = tetragon_crd_docs
    control_plane.install_crds(docs)
    with watch_policies(control_plane.api_client(), RENDERED):
        yield missing is None


@pytest.fixture(scope="session")
def tetragon(policy_kinds: bool, tetragon_crd_docs: tuple[list[dict[str, Any]], str | None]) -> None:
    """For tests about Tetragon's schema: skips, naming the exact error, without the real CRDs."""
    if not policy_kinds:
        pytest.skip(f"Tetragon CRDs unavailable: {tetragon_crd_docs[1]}")


@pytest.fixture(scope="session")
def profile_crds(control_plane: ControlPlane) -> list[str]:
    return control_plane.install_crds(load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))


@pytest.fixture
def api(control_plane: ControlPlane) -> Any:
    return control_plane.api_client()


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    from tests.integration.helpers import temporary_namespace

    with temporary_namespace(api, "t", length=10) as name:
        yield name
