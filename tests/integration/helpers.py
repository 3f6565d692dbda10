"""Small readers over the API for profile tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.api.models import GROUP, VERSION
from agentdetect.local.controlplane import ControlPlane
from tests.waiting import eventually


def profile(api: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    if namespace:
        got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "agentdetectionprofiles", name)
    else:
        got = custom.get_cluster_custom_object(GROUP, VERSION, "clusteragentdetectionprofiles", name)
    assert isinstance(got, dict)
    return got


def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def wait_condition(
    api: Any, name: str, namespace: str | None, reason: str, timeout: float = 30
) -> dict[str, Any]:
    """The profile once its Ready condition has ``reason`` for its current generation."""

    def probe() -> dict[str, Any] | None:
        obj = profile(api, name, namespace)
        cond = ready(obj)
        current = obj["status"].get("observedGeneration") == obj["metadata"]["generation"] if cond else False
        return obj if cond and cond["reason"] == reason and current else None

    last: dict[str, Any] = {}

    def tracked() -> dict[str, Any] | None:
        nonlocal last
        got = probe()
        if got is None:
            last = profile(api, name, namespace)
        return got

    try:
        return eventually(tracked, timeout=timeout, what=f"Ready reason {reason} on {namespace}/{name}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {last.get('status')}") from None


def policies(api: Any, namespace: str | None = None, label_selector: str = "") -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    if namespace:
        resp = custom.list_namespaced_custom_object(
            "cilium.io", "v1alpha1", namespace, "tracingpoliciesnamespaced", label_selector=label_selector
        )
    else:
        resp = custom.list_cluster_custom_object(
            "cilium.io", "v1alpha1", "tracingpoliciesnamespaced", label_selector=label_selector
        )
    assert isinstance(resp, dict)
    return list(resp["items"])


def cluster_policies(api: Any, label_selector: str = "") -> list[dict[str, Any]]:
    resp = client.CustomObjectsApi(api).list_cluster_custom_object(
        "cilium.io", "v1alpha1", "tracingpolicies", label_selector=label_selector
    )
    assert isinstance(resp, dict)
    return list(resp["items"])


def gone(read: Any) -> bool:
    try:
        read()
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def apply_profile(control_plane: ControlPlane, namespace: str, name: str, spec: str) -> None:
    """``kubectl apply`` an AgentDetectionProfile; ``spec`` is YAML flow text, e.g.
    ``{processes: {presets: [shells]}}``."""
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=f"apiVersion: {GROUP}/{VERSION}\nkind: AgentDetectionProfile\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n",
    )


def detections(api: Any, namespace: str) -> list[dict[str, Any]]:
    got = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "agentdetections"
    )
    assert isinstance(got, dict)
    return list(got["items"])


def detection_of(api: Any, namespace: str, pod: str) -> dict[str, Any] | None:
    return next((d for d in detections(api, namespace) if d["pod"]["name"] == pod), None)


@contextmanager
def temporary_namespace(api: Any, prefix: str, length: int = 6) -> Iterator[str]:
    """A namespace with a random suffix, deleted afterwards (with all it holds)."""
    name = f"{prefix}-{uuid.uuid4().hex[:length]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)
