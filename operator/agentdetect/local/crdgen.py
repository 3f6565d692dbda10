"""Generate the CRDs in ``crds/`` from the pydantic models.

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: no
``$ref``, no ``anyOf`` for optionals, no ``title``, no ``additionalProperties: false``
beside ``properties``, no ``uniqueItems``. This module does exactly that conversion,
then adds what only Kubernetes knows: scope, short names, printer columns, the status
subresource.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from agentdetect.api.models import (
    GROUP,
    VERSION,
    AgentDetection,
    ClusterProfileSpec,
    ProfileSpec,
    ProfileStatus,
)

_DROP = {"title"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _inline(merged, defs)
    any_of = schema.get("anyOf")
    if any_of is not None:
        # Optional[X] is anyOf [X, null]: the API server expresses "optional" by absence.
        options = [s for s in any_of if s.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {any_of!r} in a structural schema")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _inline({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and (value is None or isinstance(value, (list, dict))):
            continue  # absent means empty; only scalar defaults (mode: Monitor) are worth stating
        if key == "additionalProperties" and value is False:
            continue  # the server prunes unknown fields; kubectl's strict field validation reports them
        if key == "uniqueItems":
            continue  # forbidden in structural schemas; lists say x-kubernetes-list-type instead
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key == "maxLength" and schema.get("type") == "array":
            out["maxItems"] = value
        else:
            out[key] = _inline(value, defs)
    if out.get("type") == "object" and "additionalProperties" in out and "maxProperties" not in out:
        out["maxProperties"] = 64
    return out


def openapi(model: type[BaseModel], description: str | None = None) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    if description:
        schema["description"] = description
    return schema


def _crd(
    kind: str, plural: str, short: str, scope: str, spec_model: type[BaseModel], description: str
) -> dict[str, Any]:
    spec_schema = openapi(spec_model)
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": "size(self.metadata.name) <= 63",
                "message": "profile names are at most 63 characters: they label the policies they render",
                "fieldPath": ".metadata.name",
                "reason": "FieldValueInvalid",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Declared so the rule above can name .metadata.name as its field (a CRD may
            # constrain only name and generateName under metadata).
            # The API server documents ObjectMeta itself and refuses anything else here.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "At most 63 characters: it labels the policies the profile renders.",
                    }
                },
            },
            "spec": spec_schema,
            "status": openapi(
                ProfileStatus, "What the operator rendered and applied, and whether it is Ready."
            ),
        },
    }
    columns = [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "Policies", "type": "integer", "jsonPath": ".status.policyCount"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        # -o wide: what was detected, whether detection runs, and the message behind Reason.
        {"name": "Pods", "type": "integer", "jsonPath": ".status.detections.pods", "priority": 1},
        {"name": "Events", "type": "integer", "jsonPath": ".status.detections.events", "priority": 1},
        {
            "name": "Last Detection",
            "type": "date",
            "jsonPath": ".status.detections.lastDetection",
            "priority": 1,
        },
        {
            "name": "Detecting",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Detecting")].status',
            "priority": 1,
        },
        {
            "name": "Message",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
            "priority": 1,
        },
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "agentdetect", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["agentdetect"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def _detection_crd() -> dict[str, Any]:
    schema = openapi(AgentDetection)
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"type": "string"}
    schema["properties"]["kind"] = {"type": "string"}
    schema["required"] = [
        r for r in schema.get("required", []) if r not in ("metadata", "apiVersion", "kind")
    ]
    columns = [
        {"name": "Pod", "type": "string", "jsonPath": ".pod.name"},
        {"name": "Profile", "type": "string", "jsonPath": ".profile.name"},
        {"name": "Rules", "type": "integer", "jsonPath": ".summary.rules"},
        {"name": "Targets", "type": "string", "jsonPath": ".summary.targets"},
        {"name": "Events", "type": "integer", "jsonPath": ".summary.events"},
        {"name": "Last Seen", "type": "date", "jsonPath": ".summary.lastSeen"},
        {"name": "Action", "type": "string", "jsonPath": ".summary.action"},
        # -o wide: which workload, and which kind of profile in which namespace.
        {"name": "Workload", "type": "string", "jsonPath": ".workload", "priority": 1},
        {"name": "Profile Kind", "type": "string", "jsonPath": ".profile.kind", "priority": 1},
        {"name": "Profile Namespace", "type": "string", "jsonPath": ".profile.namespace", "priority": 1},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"agentdetections.{GROUP}",
            "labels": {"app.kubernetes.io/name": "agentdetect", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "AgentDetection",
                "listKind": "AgentDetectionList",
                "plural": "agentdetections",
                "singular": "agentdetection",
                "shortNames": ["adet"],
                "categories": ["agentdetect"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _detection_crd(),
        _crd(
            "AgentDetectionProfile",
            "agentdetectionprofiles",
            "adp",
            "Namespaced",
            ProfileSpec,
            "What to detect in the pods of this namespace: LLM and vector-database connections, "
            "sensitive files opened, programs executed. Rendered into TracingPolicyNamespaced objects "
            "in the same namespace.",
        ),
        _crd(
            "ClusterAgentDetectionProfile",
            "clusteragentdetectionprofiles",
            "cadp",
            "Cluster",
            ClusterProfileSpec,
            "A detection profile for many namespaces, chosen by namespaceSelector. Rendered into one "
            "TracingPolicy, or one TracingPolicyNamespaced per selected namespace.",
        ),
    ]


def crds_yaml() -> dict[str, str]:
    """File name in ``crds/`` to content."""
    header = (
        "# Generated by `agentdetect crds --write crds/` from operator/agentdetect/api/models.py. "
        "Do not edit.\n"
    )
    return {
        f"{doc['spec']['group']}_{doc['spec']['names']['plural']}.yaml": header
        + yaml.safe_dump(doc, sort_keys=False, width=100)
        for doc in crds()
    }
