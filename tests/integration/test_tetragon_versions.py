"""Every supported Tetragon release's CRDs accept what we render: each release's CRDs in an API
server of its own (the CRDs are cluster-scoped, so two releases cannot share one), and a
server-side dry run of the examples' policies and of profiles at every limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentdetect.controller.reconcile import targets_for
from agentdetect.local import binaries, tetragon_crds
from agentdetect.local.controlplane import ControlPlane
from agentdetect.policy import yamlout
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import hostnames_of, render
from agentdetect.policy.resolve import StaticResolver, resolve_all
from tests.unit.policy.test_generated_profiles import HashResolver, maximal_spec

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"
NAMESPACES = [
    ("rag-a", {"data-tier": "rag"}),
    ("prod", {"environment": "production"}),
    ("ai", {"tier": "ai"}),
]


@pytest.fixture(scope="module", params=tetragon_crds.SUPPORTED_VERSIONS)
def release(request: pytest.FixtureRequest) -> Iterator[tuple[str, ControlPlane]]:
    version: str = request.param
    try:
        crds = tetragon_crds.load(version)
    except tetragon_crds.TetragonCRDsUnavailable as exc:
        pytest.skip(f"Tetragon {version} CRDs unavailable: {exc}")
    cp = ControlPlane(binaries.ensure())
    cp.start()
    try:
        cp.install_crds(crds)
        yield version, cp
    finally:
        cp.stop()


def _examples() -> list[dict[str, Any]]:
    table = yaml.safe_load((REPO / "examples" / "static-hosts.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        if path.name == "static-hosts.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            profile = parse_profile(doc)
            resolved = resolve_all(hostnames_of(profile.spec), StaticResolver(table), {}, NOW)
            docs += render(profile, targets_for(profile, NAMESPACES), resolved)
    return docs


def _at_every_limit() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for cluster in (False, True):
        for mode in ("Monitor", "Enforce"):
            kind = "ClusterAgentDetectionProfile" if cluster else "AgentDetectionProfile"
            meta = {"name": f"max-{mode.lower()}"} | ({} if cluster else {"namespace": "team-a"})
            profile = parse_profile({"kind": kind, "metadata": meta, "spec": maximal_spec(cluster, mode)})
            resolved = resolve_all(hostnames_of(profile.spec), HashResolver(), {}, NOW)
            docs += render(profile, targets_for(profile, NAMESPACES), resolved)
    return docs


@pytest.mark.parametrize("corpus", [_examples, _at_every_limit], ids=["examples", "every-limit"])
def test_every_supported_release_accepts_our_policies(release: tuple[str, ControlPlane], corpus: Any) -> None:
    version, cp = release
    docs = corpus()
    assert docs
    for ns in sorted({d["metadata"].get("namespace") for d in docs} - {None}):
        cp.kubectl("create", "namespace", ns, check=False)  # may exist from the other corpus
    # kubectl reads YAML with Go: this is also the `agentdetect render | kubectl apply` path.
    result = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=yamlout.dump_all(docs), check=False)
    assert result.returncode == 0, f"Tetragon {version}: {result.stderr[-3000:]}"
    assert result.stdout.count("(server dry run)") == len(docs)
