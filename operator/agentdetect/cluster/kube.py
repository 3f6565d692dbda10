"""The Kubernetes edge: every API call the reconciler makes, and nothing else."""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentdetect.api.models import GROUP, VERSION
from agentdetect.policy.render import (
    LABEL_MANAGED_BY,
    LABEL_PROFILE_KIND,
    LABEL_PROFILE_NAME,
    LABEL_PROFILE_NAMESPACE,
)
from agentdetect.policy.render import MANAGED_BY as _MANAGED_BY

log = logging.getLogger(__name__)
TETRAGON_GROUP, TETRAGON_VERSION = "cilium.io", "v1alpha1"
POLICY_PLURALS = {"TracingPolicy": "tracingpolicies", "TracingPolicyNamespaced": "tracingpoliciesnamespaced"}
PROFILE_PLURALS = {
    "AgentDetectionProfile": "agentdetectionprofiles",
    "ClusterAgentDetectionProfile": "clusteragentdetectionprofiles",
}
FIELD_MANAGER = "agentdetect"
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
_JSON = "application/json"
#: An Event POST's (connect, read) timeouts, seconds: shorter, since the recorder tries it again.
EVENT_TIMEOUT = (5.0, 15.0)
#: Every other request's (connect, read) timeouts, seconds: without one, an API server that
#: vanished mid-request (a node lost, a connection dropped by a middlebox) holds the calling
#: thread, a kopf worker or the detection writer, for good. The read timeout is the longest
#: silence between two reads, not the whole answer, and is longer than the API server's own
#: limit: it answers a request it could not finish within --request-timeout (60 s by default,
#: kube-apiserver's options) with 504 itself. Per try: urllib3's default Retry sends a GET or
#: DELETE again after a read timeout, up to three times (a PATCH or POST never). Watches and
#: log follows, which may be quiet for minutes, have their own (cluster/informer.py) or rely
#: on TCP keepalive (keepalive_options).
REQUEST_TIMEOUT = (10.0, 65.0)
#: TCP keepalive as client-go dials the API server: probes after 30 s idle, 15 s apart, 9 of
#: them (k8s.io/client-go/transport/cache.go: net.Dialer KeepAlive 30 s; Go's net package
#: leaves the interval and count at 15 s and 9). A connection whose peer is gone without a
#: word, which no read timeout may end (a followed log stream is quiet as long as Tetragon
#: is), is then closed within about three minutes, and its follower reconnects.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 15, 9


def keepalive_options() -> list[tuple[int, int, int]]:
    """urllib3 socket options: its own defaults (no Nagle), which a list given replaces, and
    TCP keepalive. Options the platform lacks are left out."""
    options = [*urllib3.connection.HTTPConnection.default_socket_options]
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    idle = "TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE"  # macOS: the latter
    probes = ((idle, KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL), ("TCP_KEEPCNT", KEEPALIVE_COUNT))
    for name, value in probes:
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


@dataclass(frozen=True)
class ObjectKey:
    kind: str
    namespace: str | None
    name: str


def key_of(obj: dict[str, Any]) -> ObjectKey:
    meta = obj["metadata"]
    return ObjectKey(obj["kind"], meta.get("namespace"), meta["name"])


#: (kind, namespace, name, uid, generation): one version of one profile.
ProfileVersion = tuple[str, str | None, str, str, int]


def profile_version(body: Mapping[str, Any]) -> ProfileVersion:
    meta = body["metadata"]
    uid, generation = meta.get("uid") or "", meta.get("generation") or 0
    return (body["kind"], meta.get("namespace"), meta["name"], uid, generation)


class WithTimeout:
    """A generated API object whose every method is called with ``_request_timeout`` unless
    the call names its own (the informers do: a watch is quiet for minutes)."""

    def __init__(self, api: object, timeout: tuple[float, float]) -> None:
        self._api = api
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._api, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return functools.partial(attr, _request_timeout=self._timeout)


class Cluster:
    """Thin typed wrapper over the generated client; one instance per operator."""

    def __init__(
        self,
        api: client.ApiClient,
        field_manager: str = FIELD_MANAGER,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        event_timeout: tuple[float, float] = EVENT_TIMEOUT,
    ) -> None:
        self.api = api
        # request_timeout: (connect, read) seconds of every call but the informers' and the
        # Event POST (event_timeout).
        self.custom: Any = WithTimeout(client.CustomObjectsApi(api), request_timeout)
        self.core: Any = WithTimeout(client.CoreV1Api(api), request_timeout)
        self.field_manager = field_manager
        self._timeout = urllib3.Timeout(connect=request_timeout[0], read=request_timeout[1])
        self._event_timeout = urllib3.Timeout(connect=event_timeout[0], read=event_timeout[1])
        self._tetragon_seen_at = 0.0

    # ---- writes ----------------------------------------------------------------------------
    # The writes on the reconcile and detection paths go straight to the client's connection
    # pool with a body orjson encodes. The generated methods validate every argument through
    # pydantic, walk the body to sanitise it and encode it with the json module: a py-spy
    # profile of bench/profiles.py put about an eighth of the operator's interpreter time there.
    # Authentication (token refresh included) and TLS stay the client's own.

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        content_type: str,
        query: Mapping[str, str] | None = None,
        timeout: urllib3.Timeout | None = None,
    ) -> int:
        """One write; the response body is not decoded, its status is returned. A status
        outside 2xx raises the ApiException subclass the generated client would
        (NotFoundException for 404, ...)."""
        headers = {**self.api.default_headers, "Content-Type": content_type, "Accept": _JSON}
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, method, None)
        url = self.api.configuration.host + path
        if query:
            url += "?" + urlencode(query)
        pool = self.api.rest_client.pool_manager
        data = orjson.dumps(body)
        timeout = self._timeout if timeout is None else timeout
        resp = pool.request(method, url, body=data, headers=headers, preload_content=True, timeout=timeout)
        if not 200 <= resp.status <= 299:
            ApiException.from_response(http_resp=resp, body=resp.data.decode("utf-8", "replace"), data=None)
        return int(resp.status)

    def _apply(
        self, group: str, version: str, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> int:
        """Server-side apply, forcing our field manager's ownership back (drift repair)."""
        query = {"fieldManager": self.field_manager, "force": "true"}
        return self._send("PATCH", _object_path(group, version, plural, namespace, name), body, _APPLY, query)

    # ---- discovery -------------------------------------------------------------------------

    def tetragon_installed(self, ttl: float = 60.0) -> bool:
        """Whether both Tetragon policy kinds are served. A positive answer is cached for ``ttl``;
        a negative one is asked again every time, so installing Tetragon is noticed at once."""
        if time.monotonic() - self._tetragon_seen_at < ttl:
            return True
        try:
            resources = self.custom.get_api_resources(TETRAGON_GROUP, TETRAGON_VERSION)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        names = {r.name for r in resources.resources or []}
        if set(POLICY_PLURALS.values()) <= names:
            self._tetragon_seen_at = time.monotonic()
            return True
        return False

    # ---- policies --------------------------------------------------------------------------

    def list_owned(self, profile_kind: str, name: str, namespace: str | None) -> list[dict[str, Any]]:
        """Policies labelled as rendered from this profile: what pruning compares against."""
        selector = profile_selector(profile_kind, name, namespace)
        items: list[dict[str, Any]] = []
        if namespace:  # a namespaced profile only ever owns policies in its own namespace
            resp = self.custom.list_namespaced_custom_object(
                TETRAGON_GROUP,
                TETRAGON_VERSION,
                namespace,
                POLICY_PLURALS["TracingPolicyNamespaced"],
                label_selector=selector,
            )
            items.extend(_with_kind(resp, "TracingPolicyNamespaced"))
            return items
        for kind, plural in POLICY_PLURALS.items():
            resp = self.custom.list_cluster_custom_object(
                TETRAGON_GROUP, TETRAGON_VERSION, plural, label_selector=selector
            )
            items.extend(_with_kind(resp, kind))
        return items

    def list_ours(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every policy agentdetect made, of both kinds: two LISTs, or with ``namespaces`` (the
        operator's watchNamespaces) the namespaced kind listed in each of them only, since
        the chart grants it there and nowhere else."""
        selector = f"{LABEL_MANAGED_BY}={_MANAGED_BY}"
        items: list[dict[str, Any]] = []
        for kind, plural in POLICY_PLURALS.items():
            if kind == "TracingPolicyNamespaced" and namespaces:
                for namespace in namespaces:
                    resp = self.custom.list_namespaced_custom_object(
                        TETRAGON_GROUP, TETRAGON_VERSION, namespace, plural, label_selector=selector
                    )
                    items.extend(_with_kind(resp, kind))
                continue
            resp = self.custom.list_cluster_custom_object(
                TETRAGON_GROUP, TETRAGON_VERSION, plural, label_selector=selector
            )
            items.extend(_with_kind(resp, kind))
        return items

    def apply(self, doc: dict[str, Any], owner: dict[str, Any]) -> bool:
        """A policy, server-side applied with the profile as its controlling owner; whether the
        API server created it (201: it did not exist, whatever a lagging index says). The body
        is not read: the drift watch reports what the API server stored."""
        body = {**doc, "metadata": {**doc["metadata"], "ownerReferences": [owner]}}
        key = key_of(doc)
        return (
            self._apply(
                TETRAGON_GROUP, TETRAGON_VERSION, POLICY_PLURALS[key.kind], key.namespace, key.name, body
            )
            == 201
        )

    def delete(self, key: ObjectKey) -> None:
        plural = POLICY_PLURALS[key.kind]
        try:
            if key.namespace:
                self.custom.delete_namespaced_custom_object(
                    TETRAGON_GROUP, TETRAGON_VERSION, key.namespace, plural, key.name
                )
            else:
                self.custom.delete_cluster_custom_object(TETRAGON_GROUP, TETRAGON_VERSION, plural, key.name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---- detections ------------------------------------------------------------------------

    def apply_detection(self, doc: dict[str, Any], owner: dict[str, Any]) -> None:
        """AgentDetection, owned by its Pod so it is garbage-collected with it."""
        meta = doc["metadata"]
        body = {**doc, "metadata": {**meta, "ownerReferences": [owner]}}
        self._apply(GROUP, VERSION, "agentdetections", meta["namespace"], meta["name"], body)

    def delete_detections(self, profile_kind: str, name: str, namespace: str | None) -> int:
        """Delete the AgentDetections of a profile, in every namespace they are in (one
        deletecollection per namespace); the number deleted."""
        selector = profile_selector(profile_kind, name, namespace)
        found = _obj(
            self.custom.list_cluster_custom_object(GROUP, VERSION, "agentdetections", label_selector=selector)
        ).get("items", [])
        for ns in sorted({d["metadata"]["namespace"] for d in found}):
            try:
                self.custom.delete_collection_namespaced_custom_object(
                    GROUP, VERSION, ns, "agentdetections", label_selector=selector
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return len(found)

    def list_detections(self, label_selector: str = "") -> list[dict[str, Any]]:
        """Every AgentDetection of ours, in every namespace (narrowed by ``label_selector``)."""
        selector = ",".join(s for s in (f"{LABEL_MANAGED_BY}={_MANAGED_BY}", label_selector) if s)
        resp = self.custom.list_cluster_custom_object(
            GROUP, VERSION, "agentdetections", label_selector=selector
        )
        return list(_with_kind(resp, "AgentDetection"))

    def list_call(
        self, plural: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> Callable[..., Any]:
        """A cluster-wide list (and, with watch=True, watch) of pods or of one of our or
        Tetragon's resources, for an Informer."""
        if plural == "pods":
            return functools.partial(
                self.core.list_pod_for_all_namespaces,
                label_selector=label_selector,
                field_selector=field_selector,
            )
        group, version = (
            (TETRAGON_GROUP, TETRAGON_VERSION) if plural in POLICY_PLURALS.values() else (GROUP, VERSION)
        )
        return functools.partial(
            self.custom.list_cluster_custom_object,
            group,
            version,
            plural,
            label_selector=label_selector,
            field_selector=field_selector,
        )

    def list_profiles(self) -> list[dict[str, Any]]:
        """Every profile of both kinds, each with its ``kind`` set."""
        out: list[dict[str, Any]] = []
        for kind, plural in PROFILE_PLURALS.items():
            for item in _obj(self.custom.list_cluster_custom_object(GROUP, VERSION, plural)).get("items", []):
                out.append({**item, "kind": kind})
        return out

    def detection_profiles(self) -> set[tuple[str, str | None, str]]:
        """(kind, namespace, name) of every profile some AgentDetection names."""
        items = _obj(
            self.custom.list_cluster_custom_object(
                GROUP, VERSION, "agentdetections", label_selector=f"{LABEL_MANAGED_BY}={_MANAGED_BY}"
            )
        ).get("items", [])
        out = set()
        for d in items:
            labels = d["metadata"].get("labels") or {}
            kind, name = labels.get(LABEL_PROFILE_KIND), labels.get(LABEL_PROFILE_NAME)
            if kind and name:
                out.add((kind, labels.get(LABEL_PROFILE_NAMESPACE), name))
        return out

    def pod_uid(self, namespace: str, name: str) -> str | None:
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return pod.metadata.uid if pod.metadata else None

    # ---- Events --------------------------------------------------------------------------

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        """POST one core/v1 Event; raises what the API server answers (cluster/recorder.py
        decides what to try again). From any thread: kopf.event needs kopf's handler context,
        which the re-resolution sweep and the detection threads do not have. With a timeout:
        one hung connection must not hold every later Event (a timeout is tried again)."""
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        self._send("POST", path, event, _JSON, timeout=self._event_timeout)

    # ---- profiles and namespaces -----------------------------------------------------------

    def get_profile(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        plural = PROFILE_PLURALS[kind]
        try:
            if namespace:
                return _obj(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
            return _obj(self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        path = _object_path(GROUP, VERSION, PROFILE_PLURALS[kind], namespace, name) + "/status"
        try:
            self._send("PATCH", path, {"status": status}, _MERGE)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report to
                raise

    def namespace_active(self, name: str) -> bool:
        """Whether the namespace exists and is not being deleted."""
        try:
            ns = self.core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                # An identity without get on namespaces (an older chart's RBAC): not knowing,
                # putting the policy back is the safe side; a terminating namespace refuses it.
                return True
            raise
        return not (ns.status is not None and ns.status.phase == "Terminating")

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        """Active namespaces and their labels (a terminating one accepts no new objects)."""
        out = []
        for ns in self.core.list_namespace().items:
            if ns.status is not None and ns.status.phase == "Terminating":
                continue
            meta = ns.metadata
            assert meta is not None and meta.name is not None
            out.append((meta.name, dict(meta.labels or {})))
        return out


def profile_selector(profile_kind: str, name: str, namespace: str | None) -> str:
    """The label selector of what agentdetect made for one profile (policies, detections)."""
    return ",".join(
        [
            f"{LABEL_MANAGED_BY}={_MANAGED_BY}",
            f"{LABEL_PROFILE_KIND}={profile_kind}",
            f"{LABEL_PROFILE_NAME}={name}",
        ]
        + ([f"{LABEL_PROFILE_NAMESPACE}={namespace}"] if namespace else [f"!{LABEL_PROFILE_NAMESPACE}"])
    )


def _object_path(group: str, version: str, plural: str, namespace: str | None, name: str) -> str:
    """The URL path of one object of a custom resource (or one of Tetragon's)."""
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"/apis/{group}/{version}{where}/{plural}/{quote(name, safe='')}"


def _obj(value: object) -> dict[str, Any]:
    """The custom-objects API is typed ``object``; it returns decoded JSON objects."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object from the API, got {type(value).__name__}")
    return value


def _with_kind(resp: object, kind: str) -> Iterable[dict[str, Any]]:
    for item in _obj(resp).get("items", []):
        item.setdefault("kind", kind)  # list items may omit kind
        yield item


def owner_reference(profile: dict[str, Any]) -> dict[str, Any]:
    meta = profile["metadata"]
    return {
        "apiVersion": profile.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": profile["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
