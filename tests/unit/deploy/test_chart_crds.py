"""The chart carries exactly the CRDs the models generate (crds/), as templates so that
`helm upgrade` upgrades them, plus kopf's peering CRDs in crds/ (installed once, never changed)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "agentdetect"
TEMPLATED = CHART / "files" / "crds"


def test_chart_crds_are_identical_to_crds() -> None:
    ours = sorted((REPO / "crds").glob("*.yaml"))
    assert ours, "crds/ is empty"
    for path in ours:
        copy = TEMPLATED / path.name
        assert copy.exists(), f"{copy} missing: cp crds/*.yaml {TEMPLATED}/"
        assert copy.read_bytes() == path.read_bytes(), (
            f"{copy} differs from {path}: cp crds/*.yaml {TEMPLATED}/"
        )
    assert {p.name for p in TEMPLATED.glob("*.yaml")} == {p.name for p in ours}


def test_helms_crds_directory_has_only_kopfs_peering_crds() -> None:
    assert {p.name for p in (CHART / "crds").glob("*")} == {"kopf.dev_peerings.yaml"}
    names = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())
    }
    assert names == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
