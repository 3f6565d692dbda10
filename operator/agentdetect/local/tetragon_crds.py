"""Find Tetragon's own CRDs (TracingPolicy, TracingPolicyNamespaced) without copying them.

They are read from the Tetragon Go module that generates them, fetched by
``go mod download`` at a pinned release, so the API server validates our policies
against exactly the schema Tetragon ships. ``TETRAGON_CRDS_DIR`` points at any
directory of CRD YAML instead (a Tetragon checkout, or ``kubectl get crd -o yaml``
output from a cluster that runs Tetragon).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

#: The Tetragon releases whose CRDs every rendered policy must pass (README: supported versions).
SUPPORTED_VERSIONS = ("v1.6.0", "v1.7.0")
TETRAGON_VERSION = SUPPORTED_VERSIONS[-1]
TETRAGON_MODULE = "github.com/cilium/tetragon/pkg/k8s"
CRD_SUBDIR = "apis/cilium.io/client/crds/v1alpha1"
CRD_NAMES = ("tracingpolicies.cilium.io", "tracingpoliciesnamespaced.cilium.io")


class TetragonCRDsUnavailable(RuntimeError):
    """Neither ``TETRAGON_CRDS_DIR`` nor the Go module proxy could provide the CRDs."""


def _crds_in(directory: Path) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                name = doc.get("metadata", {}).get("name")
                if name in CRD_NAMES:
                    found[name] = _clean(doc)
    missing = [n for n in CRD_NAMES if n not in found]
    if missing:
        raise TetragonCRDsUnavailable(f"{directory} has no CRD named {', '.join(missing)}")
    return [found[n] for n in CRD_NAMES]


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop what a server added (``kubectl get -o yaml``) so the CRD can be applied again."""
    meta = doc.get("metadata", {})
    doc["metadata"] = {k: v for k, v in meta.items() if k in ("name", "labels", "annotations")}
    doc.pop("status", None)
    return doc


def module_dir(version: str = TETRAGON_VERSION) -> Path:
    if shutil.which("go") is None:
        raise TetragonCRDsUnavailable(
            "`go` is not on PATH; set TETRAGON_CRDS_DIR to a directory of Tetragon CRDs"
        )
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{TETRAGON_MODULE}@{version}"],
        capture_output=True,
        text=True,
        env={**os.environ, "GOTOOLCHAIN": "local"},
    )
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {}
    if proc.returncode != 0 or "Dir" not in info:
        error = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        raise TetragonCRDsUnavailable(f"go mod download {TETRAGON_MODULE}@{version}: {error}")
    return Path(info["Dir"]) / CRD_SUBDIR


def load(version: str | None = None) -> list[dict[str, Any]]:
    """The two Tetragon CRDs as dicts, ready to apply: without ``version``, from
    ``TETRAGON_CRDS_DIR`` if set; a given release from ``TETRAGON_CRDS_ROOT/<version>/crds``
    if set (the layout of a directory that holds several releases); else from the module."""
    override = os.environ.get("TETRAGON_CRDS_DIR")
    if version is None and override:
        return _crds_in(Path(override))
    version = version or TETRAGON_VERSION
    root = os.environ.get("TETRAGON_CRDS_ROOT")
    if root:
        directory = Path(root) / version / "crds"
        if not directory.is_dir():
            raise TetragonCRDsUnavailable(f"TETRAGON_CRDS_ROOT has no {version}/crds ({directory})")
        return _crds_in(directory)
    return _crds_in(module_dir(version))


# ---- stand-ins ---------------------------------------------------------------------------------
# NOT Tetragon's schema: the same group, kinds, plurals and scopes with no schema at all, so the
# API server stores, watches, garbage-collects and server-side-applies TracingPolicy objects as
# on a cluster. Used only when the real CRDs cannot be had (the local demo says so loudly;
# tests that claim Tetragon-validity use the real ones and skip naming the error).

STANDIN_ANNOTATION = "agentdetect.io/test-stand-in"


def standin_tetragon_crds() -> list[dict[str, Any]]:
    out = []
    for kind, plural, scope in (
        ("TracingPolicy", "tracingpolicies", "Cluster"),
        ("TracingPolicyNamespaced", "tracingpoliciesnamespaced", "Namespaced"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": f"{plural}.cilium.io",
                    "annotations": {STANDIN_ANNOTATION: "no schema: Tetragon's CRDs were unavailable"},
                },
                "spec": {
                    "group": "cilium.io",
                    "names": {
                        "kind": kind,
                        "listKind": f"{kind}List",
                        "plural": plural,
                        "singular": kind.lower(),
                    },
                    "scope": scope,
                    "versions": [
                        {
                            "name": "v1alpha1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out
