from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentdetect.local import tetragon_crds


def _crd(name: str, **extra: object) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, **extra},
        "spec": {"group": "cilium.io"},
    }


def test_directory_override_is_read_and_server_fields_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [
        _crd("tracingpoliciesnamespaced.cilium.io", uid="1234", resourceVersion="7"),
        _crd("podinfo.cilium.io"),
        {**_crd("tracingpolicies.cilium.io"), "status": {"acceptedNames": {}}},
    ]
    (tmp_path / "from-cluster.yaml").write_text(yaml.safe_dump_all(docs))
    monkeypatch.setenv("TETRAGON_CRDS_DIR", str(tmp_path))
    crds = tetragon_crds.load()
    assert [c["metadata"]["name"] for c in crds] == list(tetragon_crds.CRD_NAMES)
    assert crds[1]["metadata"] == {"name": "tracingpoliciesnamespaced.cilium.io"}
    assert "status" not in crds[0]


def test_directory_without_the_crds_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_crd("tracingpolicies.cilium.io")))
    monkeypatch.setenv("TETRAGON_CRDS_DIR", str(tmp_path))
    with pytest.raises(tetragon_crds.TetragonCRDsUnavailable, match=r"tracingpoliciesnamespaced\.cilium\.io"):
        tetragon_crds.load()
