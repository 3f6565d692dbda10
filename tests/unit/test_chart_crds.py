"""The chart installs exactly the CRDs the models generate (crds/), plus kopf's peering CRDs."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_CRDS = REPO / "charts" / "agentdetect" / "crds"


def test_chart_crds_are_identical_to_crds() -> None:
    ours = sorted((REPO / "crds").glob("*.yaml"))
    assert ours, "crds/ is empty"
    for path in ours:
        copy = CHART_CRDS / path.name
        assert copy.exists(), f"{copy} missing: cp crds/*.yaml charts/agentdetect/crds/"
        assert copy.read_bytes() == path.read_bytes(), (
            f"{copy} differs from {path}: cp crds/*.yaml {CHART_CRDS}/"
        )


def test_chart_has_nothing_else_but_kopfs_peering_crds() -> None:
    extra = {p.name for p in CHART_CRDS.glob("*.yaml")} - {p.name for p in (REPO / "crds").glob("*.yaml")}
    assert extra == {"kopf.dev_peerings.yaml"}
    names = {
        d["metadata"]["name"] for d in yaml.safe_load_all((CHART_CRDS / "kopf.dev_peerings.yaml").read_text())
    }
    assert names == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
