"""argocd/health.lua, run by a real Lua 5.1 interpreter the way Argo CD runs it, on profiles shaped
like the CRDs; argocd/argocd-cm.yaml embeds exactly that script; the example Applications."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]
import pytest
import yaml

from agentdetect.api.models import ProfileStatus
from agentdetect.controller.reconcile import (
    TETRAGON_INSTALL_HINT,
    describe_invalid,
    ready_condition,
)
from agentdetect.policy.profiles import parse_profile

REPO = Path(__file__).resolve().parents[3]
HEALTH_LUA = REPO / "argocd" / "health.lua"
ARGOCD_CM = REPO / "argocd" / "argocd-cm.yaml"
APPLICATIONS = REPO / "examples" / "argocd" / "application.yaml"
EXAMPLES = REPO / "examples"
CRDS = REPO / "crds"

KINDS = ["AgentDetectionProfile", "ClusterAgentDetectionProfile"]
#: What Argo CD accepts from a health script (anything else becomes Unknown, "invalid health status").
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
NOW = "2025-01-01T00:00:00Z"
WAITING = "Waiting for the agentdetect operator to reconcile the profile"


# ---- Argo CD's Lua environment ----------------------------------------------------------------


def run_health(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD's controller makes of ``obj`` (util/lua: gopher-lua, a Lua 5.1).

    The object is JSON-decoded into nested tables (arrays 1-indexed, nulls absent) in the global
    ``obj``; the script runs as a chunk and returns a table. Argo CD opens only the base, package
    and table libraries (and a reduced os) for scripts from argocd-cm, so the others are removed.
    """
    lua = lua51.LuaRuntime()
    lua.execute(
        "debug.setmetatable('', nil)"  # no ('x'):format(...) either
        "; string, math, io, debug, coroutine, os = nil, nil, nil, nil, nil, nil"
    )
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    assert lua.eval("type")(result) == "table", f"the script returned {result!r}, not a table"
    hs = {str(k): v for k, v in result.items()}
    assert set(hs) == {"status", "message"}, hs
    assert hs["status"] in ARGOCD_STATUSES, hs
    assert isinstance(hs["message"], str), hs
    return {"status": str(hs["status"]), "message": str(hs["message"])}


# ---- sample objects: the repository's examples, as the API server would return them -------------


def _example(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(doc, dict)
    return doc


#: One example per kind; the namespaced one also names hostnames (so it can fail resolution).
EXAMPLE_FOR = {
    "AgentDetectionProfile": "llm-egress.yaml",
    "ClusterAgentDetectionProfile": "credential-access.yaml",
}


def profile(
    kind: str,
    *,
    generation: int = 3,
    observed: int | None = 3,
    ready: bool | None = None,
    reason: str = "Applied",
    message: str = "2 policies applied",
    example: str | None = None,
) -> dict[str, Any]:
    """An example profile at ``generation``, with the status the operator writes after reconciling
    generation ``observed`` (ready=None: not reconciled yet, no status)."""
    body = _example(example or EXAMPLE_FOR[kind])
    assert body["kind"] == kind
    body["metadata"].update(
        uid="6f1c2a9e-0d1b-4c57-9a51-3f0e2b7d8c41",
        generation=generation,
        resourceVersion="4711",
        creationTimestamp=NOW,
    )
    if ready is not None:
        body["status"] = {
            "observedGeneration": observed,
            "conditions": ready_condition([], observed, ready, reason, message, NOW),
        }
    return body


@functools.cache
def _crd_schemas() -> dict[str, dict[str, Any]]:
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))]
    return {c["spec"]["names"]["kind"]: c for c in crds}


def _schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The structural checks the API server makes against an openAPIV3Schema (CEL rules aside)."""
    kind = schema.get("type")
    types: dict[str, type | tuple[type, ...]] = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    if kind in types and (
        not isinstance(value, types[kind]) or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f"{path or '.'}: {value!r} is not {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{path}: length {len(value)} out of bounds")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += _schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict) and path != ".metadata":
        errors += [f"{path}.{key}: required" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                errors += _schema_errors(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += _schema_errors(item, extra, f"{path}.{key}")
            elif properties is not None:
                errors.append(f"{path}.{key}: unknown field")
    return errors


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse (or prune) ``obj`` as a profile; [] when it fits the CRD."""
    crd = _crd_schemas()[obj["kind"]]
    version = crd["spec"]["versions"][0]
    errors = []
    if obj.get("apiVersion") != f"{crd['spec']['group']}/{version['name']}":
        errors.append(f"apiVersion {obj.get('apiVersion')!r}")
    if bool(obj["metadata"].get("namespace")) != (crd["spec"]["scope"] == "Namespaced"):
        errors.append(f"metadata.namespace for a {crd['spec']['scope']} kind")
    return errors + _schema_errors(obj, version["schema"]["openAPIV3Schema"])


def assert_valid_profile(obj: dict[str, Any], *, spec_valid: bool = True) -> None:
    assert crd_errors(obj) == []
    if "status" in obj:
        ProfileStatus.model_validate(obj["status"])
    if spec_valid:
        parse_profile(obj)


def test_the_crd_check_is_not_vacuous() -> None:
    obj = profile("AgentDetectionProfile", ready=True)
    obj["status"]["conditions"][0]["status"] = "Maybe"
    obj["status"]["oops"] = 1
    del obj["metadata"]["namespace"]
    errors = crd_errors(obj)
    assert any("'Maybe' not in" in e for e in errors), errors
    assert ".status.oops: unknown field" in errors
    assert any("metadata.namespace" in e for e in errors), errors


# ---- the health of well-formed profiles ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ready_and_current_is_healthy(kind: str) -> None:
    obj = profile(kind, ready=True, message="2 policies applied")
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Healthy", "message": "2 policies applied"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_generation_not_observed_yet_is_progressing(kind: str) -> None:
    obj = profile(kind, generation=4, observed=3, ready=True)
    assert_valid_profile(obj)
    assert run_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the agentdetect operator to observe generation 4 (last observed: 3)",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_of_the_previous_generation_is_progressing_not_degraded(kind: str) -> None:
    # The spec was fixed (generation 5) but the operator has not got to it yet.
    obj = profile(kind, generation=5, observed=4, ready=False, reason="InvalidSpec", message="bad")
    assert_valid_profile(obj)
    assert run_health(obj)["status"] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_status_observed_generation_counts_when_the_condition_has_none(kind: str) -> None:
    obj = profile(kind, ready=True)
    del obj["status"]["conditions"][0]["observedGeneration"]
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Healthy", "message": "2 policies applied"}
    obj["status"]["observedGeneration"] = 2
    assert run_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the agentdetect operator to observe generation 3 (last observed: 2)",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_no_observed_generation_anywhere_is_progressing(kind: str) -> None:
    obj = profile(kind, ready=True)
    del obj["status"]["conditions"][0]["observedGeneration"]
    del obj["status"]["observedGeneration"]
    assert_valid_profile(obj)
    assert run_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the agentdetect operator to observe generation 3",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_an_invalid_spec_is_degraded_with_the_reason_and_message(kind: str) -> None:
    obj = profile(kind)
    # A spec the CRD schema admits but the operator refuses: a hostname outside azure-openai's.
    obj["spec"]["network"] = {
        "destinations": [{"name": "azure", "provider": "azure-openai", "hostnames": ["evil.example.com"]}]
    }
    with pytest.raises(ValueError) as refused:
        parse_profile(obj)
    message = describe_invalid(refused.value) + "; existing policies were left as they were"
    obj["status"] = {
        "observedGeneration": 3,
        "conditions": ready_condition([], 3, False, "InvalidSpec", message, NOW),
    }
    assert_valid_profile(obj, spec_valid=False)
    assert "are not azure-openai endpoints" in message
    assert run_health(obj) == {"status": "Degraded", "message": f"InvalidSpec: {message}"}


@pytest.mark.parametrize("kind", KINDS)
def test_enforcement_not_allowed_is_degraded(kind: str) -> None:
    message = "spec.mode is Enforce and ... ask(s) for enforcement, but this operator runs without ..."
    example = "enforce-agent-sandbox.yaml" if kind == "AgentDetectionProfile" else None
    obj = profile(kind, ready=False, reason="EnforcementNotAllowed", message=message, example=example)
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Degraded", "message": f"EnforcementNotAllowed: {message}"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("reason", "message"),
    [
        # Nothing applied until someone installs Tetragon; the operator turns it Healthy then.
        ("TetragonNotInstalled", TETRAGON_INSTALL_HINT),
        # Applied without a hostname that never resolved: detection is partial.
        (
            "ResolutionFailed",
            "could not resolve llm-gateway.internal.example.com: NXDOMAIN; 3 policies applied "
            "without them, retrying every 300s",
        ),
        ("RenderFailed", "template tcp_connect.yaml.j2: boom; existing policies were left as they were"),
    ],
)
def test_failures_that_need_a_person_are_degraded(kind: str, reason: str, message: str) -> None:
    obj = profile(kind, ready=False, reason=reason, message=message)
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Degraded", "message": f"{reason}: {message}"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reason", ["ApplyFailed", "SomeFutureReason"])
def test_failures_the_operator_retries_are_progressing(kind: str, reason: str) -> None:
    obj = profile(kind, ready=False, reason=reason, message="Operation cannot be fulfilled")
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Progressing", "message": f"{reason}: Operation cannot be fulfilled"}


@pytest.mark.parametrize("kind", KINDS)
def test_ready_unknown_is_progressing(kind: str) -> None:
    obj = profile(kind, ready=True)
    obj["status"]["conditions"][0].update(status="Unknown", reason="Reconciling", message="applying")
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Progressing", "message": "Reconciling: applying"}
    obj["status"]["conditions"][0]["message"] = ""
    assert run_health(obj) == {"status": "Progressing", "message": "Reconciling"}


@pytest.mark.parametrize("kind", KINDS)
def test_no_status_is_progressing(kind: str) -> None:
    obj = profile(kind)
    assert "status" not in obj
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Progressing", "message": WAITING}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "status",
    [
        pytest.param({}, id="empty-status"),
        pytest.param({"observedGeneration": 3}, id="no-conditions"),
        pytest.param({"observedGeneration": 3, "conditions": []}, id="empty-conditions"),
        pytest.param(
            {
                "observedGeneration": 3,
                "conditions": [
                    {"type": "Synced", "status": "True", "reason": "Done", "lastTransitionTime": NOW}
                ],
            },
            id="no-ready-condition",
        ),
    ],
)
def test_no_ready_condition_is_progressing(kind: str, status: dict[str, Any]) -> None:
    obj = {**profile(kind), "status": status}
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Progressing", "message": WAITING}


@pytest.mark.parametrize("kind", KINDS)
def test_the_ready_condition_is_found_among_others(kind: str) -> None:
    obj = profile(kind, ready=True)
    other = {"type": "Synced", "status": "False", "reason": "X", "lastTransitionTime": NOW}
    obj["status"]["conditions"].insert(0, other)
    assert_valid_profile(obj)
    assert run_health(obj) == {"status": "Healthy", "message": "2 policies applied"}


# ---- shapes the CRD would refuse: the script must not crash (Argo CD would show an error) ----------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param("broken", ("Progressing", WAITING), id="status-a-string"),
        pytest.param({"conditions": "Ready"}, ("Progressing", WAITING), id="conditions-a-string"),
        pytest.param(
            {"conditions": {"type": "Ready", "status": "True"}},
            ("Progressing", WAITING),
            id="conditions-a-map",
        ),
        pytest.param({"conditions": [None, 3, "Ready", []]}, ("Progressing", WAITING), id="odd-entries"),
        pytest.param(
            {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "True", "message": {"a": 1}}],
            },
            ("Healthy", "Ready"),
            id="message-a-map",
        ),
        pytest.param(
            {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": 7}],
            },
            ("Degraded", "InvalidSpec: 7"),
            id="message-a-number",
        ),
        pytest.param(
            {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "False", "reason": ["x"]}]},
            ("Progressing", "Waiting for the profile to become ready"),
            id="reason-a-list",
        ),
        pytest.param(
            {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}],
            },
            ("Degraded", "InvalidSpec"),
            id="no-message",
        ),
        pytest.param(
            {"observedGeneration": "3", "conditions": [{"type": "Ready", "status": "True"}]},
            (
                "Progressing",
                "Waiting for the agentdetect operator to observe generation 3 (last observed: 3)",
            ),
            id="generation-a-string",
        ),
    ],
)
def test_malformed_status_does_not_crash(status: Any, expected: tuple[str, str]) -> None:
    obj = {**profile("AgentDetectionProfile"), "status": status}
    assert crd_errors(obj) != []
    assert run_health(obj) == {"status": expected[0], "message": expected[1]}


def test_missing_metadata_or_generation_does_not_crash() -> None:
    obj = profile("ClusterAgentDetectionProfile", ready=True)
    del obj["metadata"]["generation"]
    assert run_health(obj) == {"status": "Healthy", "message": "2 policies applied"}
    del obj["metadata"]
    assert run_health(obj) == {"status": "Healthy", "message": "2 policies applied"}
    assert run_health({}) == {"status": "Progressing", "message": WAITING}


# ---- argocd-cm.yaml: the same script, for both kinds ------------------------------------------------


def test_argocd_cm_registers_exactly_health_lua_for_both_kinds() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    keys = {
        f"resource.customizations.health.{crd['spec']['group']}_{kind}"
        for kind, crd in _crd_schemas().items()
        if kind in KINDS
    }
    assert keys == {
        "resource.customizations.health.agentdetect.io_AgentDetectionProfile",
        "resource.customizations.health.agentdetect.io_ClusterAgentDetectionProfile",
    }
    assert set(cm["data"]) == keys
    script = HEALTH_LUA.read_text()
    for key in sorted(keys):
        assert cm["data"][key] == script, (
            f"{ARGOCD_CM.relative_to(REPO)}: {key} differs from argocd/health.lua; "
            "paste the script again, indented by four spaces"
        )


# ---- the example Applications -------------------------------------------------------------------


def test_example_applications_install_the_chart_before_the_profiles() -> None:
    operator, profiles = yaml.safe_load_all(APPLICATIONS.read_text())
    assert operator["kind"] == profiles["kind"] == "Application"
    wave = "argocd.argoproj.io/sync-wave"
    assert int(operator["metadata"]["annotations"][wave]) < int(profiles["metadata"]["annotations"][wave])
    assert operator["spec"]["source"]["path"] == "charts/agentdetect"
    assert operator["spec"]["destination"]["namespace"] == "agentdetect-system"
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(
        operator["spec"]["syncPolicy"]["syncOptions"]
    )
    assert profiles["spec"]["source"]["path"] == "examples"


def test_the_profiles_application_syncs_only_valid_profiles() -> None:
    _, profiles = yaml.safe_load_all(APPLICATIONS.read_text())
    directory = profiles["spec"]["source"]["directory"]
    assert not directory.get("recurse")
    excluded = set(re.fullmatch(r"\{(.*)\}", directory["exclude"]).group(1).split(","))  # type: ignore[union-attr]
    synced = [p for p in sorted(EXAMPLES.glob("*.yaml")) if p.name not in excluded]
    assert len(synced) >= 2
    for path in synced:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] in KINDS, path
            doc["metadata"]["uid"] = "x"
            assert_valid_profile(doc)
