"""The API server readiness probe while kube-apiserver is still writing its certificate."""

from __future__ import annotations

from pathlib import Path

from agentdetect.local.binaries import Binaries
from agentdetect.local.controlplane import ControlPlane


def test_a_certificate_file_not_written_yet_is_not_ready_rather_than_an_error(tmp_path: Path) -> None:
    cp = ControlPlane(Binaries(tmp_path / "bin"), workdir=tmp_path, server="https://127.0.0.1:1")
    url = f"{cp.server}/readyz"
    assert cp._get_ok(url) is False  # no file yet
    (tmp_path / "pki").mkdir()
    cp.ca_file.write_text("")  # created, nothing written yet: ssl finds no certificate
    assert cp._get_ok(url) is False
    cp.ca_file.write_text("-----BEGIN CERTIFICATE-----\nMIIB")  # cut off mid-write
    assert cp._get_ok(url) is False
