"""List, then watch: a local copy of a set of objects kept current in a thread, for the node
agent (which runs without kopf: it watches its own node's pods through a field selector, which
kopf cannot ask the API server for) and for the operator's index of AgentDetections.

The contract is client-go's reflector's (k8s.io/client-go/tools/cache/reflector.go): list,
watch from the list's resourceVersion, resume a dropped watch from the last version seen, and
on 410 Gone list again; a relist reports objects that vanished meanwhile as DELETED, so the
handler never keeps a deleted object.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

#: (namespace, name)
ObjectName = tuple[str, str]
#: (event type, object): ADDED, MODIFIED or DELETED.
Handler = Callable[[str, dict[str, Any]], None]
#: A generated client's list call (list_pod_for_all_namespaces, list_cluster_custom_object,
#: with their positional arguments bound): called with watch, resource_version and
#: _preload_content keywords.
ListCall = Callable[..., Any]


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _name_of(obj: dict[str, Any]) -> ObjectName:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class Informer:
    def __init__(
        self,
        name: str,
        list_call: ListCall,
        handler: Handler,
        kind: str | None = None,
        retry: float = 1.0,
        watch_timeout: int = 300,
        request_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.list_call = list_call
        self.handler = handler
        #: Set on every object handed over (a list's items carry no kind).
        self.kind = kind
        self.retry = retry
        self.watch_timeout = watch_timeout
        #: Seconds to connect, and to wait for a list's answer.
        self.request_timeout = request_timeout
        #: The resourceVersion of the last event handled.
        self.version = ""
        #: Set once the first list was handed over: the local copy is complete.
        self.synced = threading.Event()
        self.objects: dict[ObjectName, dict[str, Any]] = {}
        self.lists = 0
        self.watches = 0
        self.errors = 0
        self._stop = threading.Event()
        self._resp: Any = None
        self._warned_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Unblocks a read in progress (urllib3 >= 2.3); if it cannot, the watch timeout ends it.
            with contextlib.suppress(Exception):
                resp.shutdown()
        self._thread.join(5)

    def _emit(self, type_: str, obj: dict[str, Any]) -> None:
        if self.kind is not None and "kind" not in obj:
            obj["kind"] = self.kind
        try:
            self.handler(type_, obj)
        except Exception:  # a handler's bug must not end the watch
            log.exception("%s: handling %s %s failed", self.name, type_, _name_of(obj))

    def _list(self) -> str:
        # From the API server's watch cache (resourceVersion "0", as client-go's reflector
        # lists): every agent relisting at once after an API server restart does not reach etcd.
        resp = self.list_call(
            resource_version="0", _preload_content=False, _request_timeout=self.request_timeout
        )
        try:
            doc = orjson.loads(resp.data)
        finally:
            resp.release_conn()
        self.lists += 1
        fresh = {_name_of(o): o for o in doc.get("items") or []}
        for name in [n for n in self.objects if n not in fresh]:
            self._emit("DELETED", self.objects.pop(name))
        for name, obj in fresh.items():
            before = self.objects.get(name)
            self.objects[name] = obj
            if before is not None and _uid(before) != _uid(obj):
                # Deleted and created again under its name while the watch was away.
                self._emit("DELETED", before)
                before = None
            if before is None:
                self._emit("ADDED", obj)
            elif (before.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                "resourceVersion"
            ):
                self._emit("MODIFIED", obj)
        self.synced.set()
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str | None:
        """Until the watch ends; the last version seen, or None when it has expired (410).
        The last version seen is kept in :attr:`version` as events come, so a watch cut off
        mid-stream resumes after them rather than replaying them."""
        self.version = version
        resp = self.list_call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            # A half-open connection ends here, not when TCP gives up hours later; the server
            # sends a bookmark about every minute, and ends the watch at watch_timeout.
            _request_timeout=(self.request_timeout, self.watch_timeout + 30),
        )
        self._resp = resp
        self.watches += 1
        partial = b""
        try:
            for chunk in resp.stream(1 << 16, decode_content=True):
                if self._stop.is_set():
                    return version
                partial += chunk
                *lines, partial = partial.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    type_, obj = event.get("type"), event.get("object") or {}
                    if type_ == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    self.version = version
                    if type_ == "BOOKMARK":
                        continue
                    name = _name_of(obj)
                    if type_ == "DELETED":
                        self.objects.pop(name, None)
                    else:
                        self.objects[name] = obj
                    self._emit(str(type_), obj)
        finally:
            self._resp = None
            resp.release_conn()
        return version

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.errors += 1
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = None
                elif version is not None:
                    version = self.version  # resume after the last event handled
                # Once a minute at most: during an API server outage every retry fails.
                now = time.monotonic()
                if now - self._warned_at >= 60.0:
                    self._warned_at = now
                    log.warning(
                        "%s: list/watch failed (%s); retrying every %.0fs", self.name, exc, self.retry
                    )
                self._stop.wait(self.retry)
