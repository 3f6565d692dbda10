from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentdetect.local import binaries

GOMOD = """module k8s.io/kubernetes

go 1.25.0

require (
\tgithub.com/spf13/cobra v1.10.0
\tgo.etcd.io/etcd/server/v3 v3.6.5 // indirect
\tk8s.io/api v0.0.0
\tk8s.io/kube-openapi v0.0.0-20250910181357-589584f1c912
\tk8s.io/client-go v0.0.0
)

replace k8s.io/api => ./staging/src/k8s.io/api
"""


def test_staging_modules_are_replaced_with_the_matching_tag() -> None:
    assert binaries.staging_replaces(GOMOD, "v1.35.4") == {
        "k8s.io/api": "v0.35.4",
        "k8s.io/client-go": "v0.35.4",
    }


def test_pseudo_versions_and_other_modules_are_left_alone() -> None:
    replaces = binaries.staging_replaces(GOMOD, "v1.35.4")
    assert "k8s.io/kube-openapi" not in replaces
    assert not any(m.startswith("go.etcd.io") for m in replaces)


def test_bad_version_is_refused() -> None:
    with pytest.raises(binaries.BinariesError, match=r"v1\.MINOR\.PATCH"):
        binaries.staging_replaces(GOMOD, "1.35")


def test_wrapper_gomod_requires_kubernetes_and_replaces_staging() -> None:
    text = binaries.wrapper_gomod("v1.35.4", {"k8s.io/api": "v0.35.4"})
    assert "require k8s.io/kubernetes v1.35.4" in text
    assert "\tk8s.io/api => k8s.io/api v0.35.4" in text


def test_version_is_stamped_for_server_and_client() -> None:
    flags = binaries._ldflags("v1.35.4")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.35.4" in flags
        assert f"-X {pkg}.gitMinor=35" in flags


def test_etcd_is_the_release_kubernetes_pins() -> None:
    assert binaries.pinned_etcd(GOMOD) == "v3.6.5"


def _fake_assets(directory: Path, names: tuple[str, ...], recipe: int | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    if recipe is not None:
        (directory / binaries.BUILD_INFO).write_text(json.dumps({"recipe": recipe}))


def test_kubebuilder_assets_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_assets(tmp_path, binaries.BINARIES)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert binaries.ensure().directory == tmp_path


def test_kubebuilder_assets_missing_controller_manager_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_assets(tmp_path, ("etcd", "kube-apiserver", "kubectl"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(binaries.BinariesError, match="lacks kube-controller-manager"):
        binaries.ensure()


def test_cached_binaries_are_reused_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("AGENTDETECT_CACHE", str(tmp_path))
    _fake_assets(tmp_path / "k8s-v1.99.0", binaries.BINARIES, recipe=binaries.BUILD_RECIPE)

    def no_build(*args: object) -> None:
        raise AssertionError("must not build when the cache is complete")

    monkeypatch.setattr(binaries, "build", no_build)
    assert binaries.ensure("v1.99.0").directory == tmp_path / "k8s-v1.99.0"


def test_cache_from_an_older_recipe_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("AGENTDETECT_CACHE", str(tmp_path))
    dest = tmp_path / "k8s-v1.99.0"
    _fake_assets(dest, binaries.BINARIES, recipe=binaries.BUILD_RECIPE - 1)
    built: list[tuple[str, Path]] = []

    def fake_build(version: str, into: Path, log: Path) -> None:
        built.append((version, into))
        _fake_assets(into, binaries.BINARIES, recipe=binaries.BUILD_RECIPE)

    monkeypatch.setattr(binaries, "build", fake_build)
    assert binaries.ensure("v1.99.0", quiet=True).directory == dest
    assert built == [("v1.99.0", dest)]


def test_a_second_run_says_it_waits_for_the_build_and_a_build_says_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first build printed one line and then nothing for minutes; a second run waiting on
    the lock printed nothing at all."""
    import fcntl
    import threading
    import time

    from agentdetect.local.binaries import _exclusive, _progress

    lock_path = tmp_path / ".k8s.lock"
    entered = threading.Event()
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)

        def second() -> None:
            with _exclusive(lock_path, "Kubernetes v9", quiet=False):
                entered.set()

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        assert not entered.is_set()
    waiter.join(5)
    assert entered.is_set()
    assert "another process is building Kubernetes v9; waiting for it" in capsys.readouterr().err

    with _progress("Kubernetes v9", tmp_path / "build.log", quiet=False, estimate=332, every=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "still building Kubernetes v9" in err and "of about 6 min on 2 cores" in err
