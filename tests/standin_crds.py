"""Stand-ins for Tetragon's two policy CRDs, used only when the real ones cannot be obtained.

They are NOT Tetragon's schema: they register the same group, kinds, plurals and scopes with
no schema at all, so the API server stores, watches, garbage-collects and server-side-applies
TracingPolicy objects as it would on a cluster. That is what reconciliation tests exercise.
Whether a rendered policy is valid for Tetragon is only ever claimed by tests that use the
real CRDs (the ``tetragon`` fixture), which skip naming the exact error when they are missing.
"""

from __future__ import annotations

from typing import Any

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
