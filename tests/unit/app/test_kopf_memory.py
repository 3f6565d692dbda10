"""kopf's state kept in memory: no PATCH of the profile for kopf's own bookkeeping; and its
essence of a profile built without copying all of it."""

from __future__ import annotations

from typing import Any, cast

import kopf

from agentdetect.app.handlers import MemoryDiffBase, MemoryProgress


def _body(annotations: dict[str, str] | None = None, uid: str = "u1") -> kopf.Body:
    meta: dict[str, Any] = {"name": "p", "namespace": "team", "uid": uid}
    if annotations is not None:
        meta["annotations"] = annotations
    return kopf.Body(cast(kopf.RawBody, {"metadata": meta, "spec": {}}))


def test_progress_is_kept_in_memory_and_patches_nothing() -> None:
    storage = MemoryProgress()
    body, patch = _body(), kopf.Patch()
    record: kopf.ProgressRecord = {"started": "2026-01-01T00:00:00", "retries": 1, "success": False}
    storage.store(key=kopf.HandlerId("reconcile"), record=record, body=body, patch=patch)
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body) == record
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=_body(uid="u2")) is None
    storage.purge(key=kopf.HandlerId("reconcile"), body=body, patch=patch)
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body) is None
    assert not patch, "kopf's annotations storage marks every object it handles: a PATCH each"


def test_a_delayed_retry_is_still_woken_by_an_annotation_removed_when_done() -> None:
    """kopf wakes a retry by touching the object (a watch event): that write is kept, and the
    touch is taken away again once the handler is done."""
    storage = MemoryProgress()
    touch = kopf.Patch()
    storage.touch(body=_body(), patch=touch, value="2026-01-01T00:00:10")
    (key,) = [k for k in touch["metadata"]["annotations"] if k.endswith("touch-dummy")]
    touched = _body({key: "2026-01-01T00:00:10", "agentdetect.io/kopf-managed": "yes"})
    done = kopf.Patch()
    storage.purge(key=kopf.HandlerId("reconcile"), body=touched, patch=done)
    assert done["metadata"]["annotations"] == {key: None}


def test_a_deleted_profile_is_forgotten() -> None:
    storage = MemoryProgress()
    record: kopf.ProgressRecord = {"retries": 2}
    for uid in ("u1", "u2"):
        storage.store(key=kopf.HandlerId("reconcile"), record=record, body=_body(uid=uid), patch=kopf.Patch())
    storage.forget("u1")
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=_body(uid="u1")) is None
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=_body(uid="u2")) == record


def _profile_body() -> kopf.Body:
    """A profile as the watch delivers it: spec, labels, annotations (kopf's, kubectl's, a
    user's), status and managedFields."""
    return kopf.Body(
        cast(
            kopf.RawBody,
            {
                "apiVersion": "agentdetect.io/v1alpha1",
                "kind": "AgentDetectionProfile",
                "metadata": {
                    "name": "p",
                    "namespace": "team",
                    "uid": "u1",
                    "resourceVersion": "42",
                    "generation": 3,
                    "labels": {"app": "agents"},
                    "annotations": {
                        "team": "a",
                        "kubectl.kubernetes.io/last-applied-configuration": "{}",
                        "agentdetect.io/kopf-managed": "yes",
                        "agentdetect.io/touch-dummy": "2026-01-01T00:00:00",
                    },
                    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                },
                "spec": {"files": {"presets": ["credentials"]}, "network": {"providers": ["openai"]}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}], "policyCount": 2},
            },
        )
    )


def test_the_essence_is_kopfs_without_copying_the_whole_body() -> None:
    storage = MemoryDiffBase()
    body = _profile_body()
    mine = storage.build(body=body)
    assert mine == kopf.DiffBaseStorage.build(storage, body=body)
    assert mine == {
        "metadata": {"labels": {"app": "agents"}, "annotations": {"team": "a"}},
        "spec": {"files": {"presets": ["credentials"]}, "network": {"providers": ["openai"]}},
    }
    mine["spec"]["files"]["presets"].append("ssh-keys")  # a copy: the body is not changed
    assert body["spec"]["files"]["presets"] == ["credentials"]
    # Fields asked for besides (no handler here does) are kopf's business.
    extra = storage.build(body=body, extra_fields=["status.policyCount"])
    assert extra == kopf.DiffBaseStorage.build(storage, body=body, extra_fields=["status.policyCount"])
    assert extra["status"] == {"policyCount": 2}


def test_objects_without_change_handlers_get_an_empty_essence() -> None:
    """kopf builds one for every event of every watched object; only the profiles have change
    handlers, and a policy's spec is the largest thing the operator watches."""
    storage = MemoryDiffBase()
    policy = kopf.Body(
        cast(
            kopf.RawBody,
            {
                "apiVersion": "cilium.io/v1alpha1",
                "kind": "TracingPolicyNamespaced",
                "metadata": {"name": "x", "namespace": "team", "labels": {"a": "b"}},
                "spec": {"kprobes": [{"call": "tcp_connect"}]},
            },
        )
    )
    assert storage.build(body=policy) == {}
    assert storage.build(body=_profile_body())["spec"]
    assert MemoryDiffBase(kinds=["TracingPolicyNamespaced"]).build(body=policy)["spec"]
