"""Profile objects read into the policy layer's terms: the spec parsed, what was resolved, and,
for the node agent, what a reconciled profile rendered (read back from its status and its
policies instead of rendered again). Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentdetect.api.models import ClusterProfileSpec, ProfileSpec
from agentdetect.policy.board import ProfileState
from agentdetect.policy.render import POD_NAMESPACE_LABEL, Profile, ProfileKind, Target
from agentdetect.policy.resolve import Resolution


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # Profile names label the policies they render, and label values stop at 63 characters.
    name: str = Field(min_length=1, max_length=63)
    namespace: str | None = None


class _Namespaced(BaseModel):
    model_config = ConfigDict(extra="ignore")
    metadata: _Meta
    spec: ProfileSpec


class _Clustered(BaseModel):
    model_config = ConfigDict(extra="ignore")
    metadata: _Meta
    spec: ClusterProfileSpec


def parse_profile(body: Mapping[str, Any]) -> Profile:
    """Raises ``ValidationError`` whose locations are field paths such as ``spec.network...``."""
    kind: ProfileKind = body["kind"]
    doc = {"metadata": body.get("metadata") or {}, "spec": body.get("spec") or {}}
    parsed = (_Clustered if kind == "ClusterAgentDetectionProfile" else _Namespaced).model_validate(doc)
    if kind == "AgentDetectionProfile" and not parsed.metadata.namespace:
        raise ValueError("an AgentDetectionProfile needs metadata.namespace")
    return Profile(kind, parsed.metadata.name, parsed.metadata.namespace, parsed.spec)


def previous_resolutions(status: Mapping[str, Any] | None) -> dict[str, Resolution]:
    out = {}
    for r in (status or {}).get("resolved", []) or []:
        out[r["hostname"]] = Resolution(tuple(r.get("addresses", [])), r["resolvedAt"], r.get("error"))
    return out


def selected_namespaces(policy: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The namespaces a cluster-wide policy of a profile with a namespaceSelector is narrowed
    to: the ``In`` expression on the pod's namespace that render.pod_selector appends last.
    None when it is not narrowed."""
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    for expr in reversed(selector.get("matchExpressions") or []):
        if expr.get("key") == POD_NAMESPACE_LABEL and expr.get("operator") == "In":
            return tuple(sorted(expr.get("values") or []))
    return None


def reconciled_state(
    body: Mapping[str, Any], policy_namespaces: Mapping[str, tuple[str, ...] | None]
) -> ProfileState | None:
    """What the operator rendered for this profile, as its status says: the spec, the
    addresses it resolved, and where its policies went (``policy_namespaces``: a cluster-wide
    policy's name -> the namespaces it selects, from the policies themselves). None when the
    profile has no policies, or its spec cannot be read.

    The node agent matches with this instead of rendering again: it has no resolver of its own,
    and its rules must be those of the policies that produce the events."""
    status = body.get("status") or {}
    refs = status.get("policies") or []
    if not refs:
        return None
    try:
        profile = parse_profile(body)
    except (ValidationError, ValueError):
        return None
    if profile.kind == "AgentDetectionProfile":
        targets = (Target("TracingPolicyNamespaced", profile.namespace),)
    else:
        spec = profile.spec
        assert isinstance(spec, ClusterProfileSpec)
        narrowed = spec.namespace_selector is not None and not spec.namespace_selector.selects_all()
        namespaces: tuple[str, ...] | None = None
        names = [ref.get("name", "") for ref in refs]
        # Until every policy is seen (its watch event may come after the status's), none is
        # narrowed here: Tetragon's policy filter narrows its events anyway.
        if narrowed and all(name in policy_namespaces for name in names):
            namespaces = tuple(sorted({ns for name in names for ns in policy_namespaces[name] or ()}))
        targets = (Target("TracingPolicy", None, namespaces),)
    return ProfileState(profile, targets, previous_resolutions(status))


def current(body: Mapping[str, Any]) -> bool:
    """Whether the status describes the spec as it is now (its generation was reconciled)."""
    meta = body.get("metadata") or {}
    return (body.get("status") or {}).get("observedGeneration") == meta.get("generation")
