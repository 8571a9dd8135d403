"""The object store of one simulated cluster: what etcd plus the API server's registry would hold.

Everything runs on one asyncio event loop (the sandbox's), and no method here awaits, so every
operation is atomic without locks. Controllers (``sandbox.world``) and the HTTP layer
(``sandbox.kubeapi``) both go through this class; listeners hear about every change.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
INITIAL_RESOURCE_VERSION = 999  # what an empty store reports; watches from before it are "too old"
Listener = Callable[[str, "ResourceType", Obj], None]


@dataclass(frozen=True)
class ResourceType:
    """One kind the API serves. ``key`` (e.g. ``apps/v1/deployments``, ``v1/pods``) names it everywhere."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    singular: str = ""
    subresources: tuple[str, ...] = ()  # "status", "scale", "exec", "log"
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.plural}"


class ApiError(Exception):
    """An error the API answers with a ``Status`` object (code, reason, message)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(rt: ResourceType, name: str) -> ApiError:
    group = rt.group or ""
    return ApiError(
        404,
        "NotFound",
        f'{rt.plural}{"." + group if group else ""} "{name}" not found',
        {"name": name, "group": group, "kind": rt.plural},
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    object: Obj
    resource_version: int


@dataclass
class Store:
    types: dict[str, ResourceType] = field(default_factory=dict)
    _objects: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(INITIAL_RESOURCE_VERSION + 1))
    _last_rv: int = INITIAL_RESOURCE_VERSION
    _listeners: list[Listener] = field(default_factory=list)
    # a short history of events per type, for watches that start from a resourceVersion
    _history: dict[str, list[WatchEvent]] = field(default_factory=dict)
    history_limit: int = 5000
    # per type: the newest resourceVersion whose events were dropped from the history (initially
    # everything before the store existed), so a watch from before it gets 410 Expired
    _compacted: dict[str, int] = field(default_factory=dict)

    def register(self, types: Iterable[ResourceType]) -> None:
        for rt in types:
            self.types[rt.key] = rt
            self._objects.setdefault(rt.key, {})
            self._history.setdefault(rt.key, [])

    def type(self, key: str) -> ResourceType:
        try:
            return self.types[key]
        except KeyError:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({key})") from None

    @property
    def resource_version(self) -> str:
        return str(self._last_rv)

    def add_listener(self, fn: Listener) -> None:
        """``fn(event_type, resource_type, object)`` runs synchronously after every change."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        """Forget a listener (a watch that ended); unknown listeners are ignored."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    # ---- reads -------------------------------------------------------------------------------------

    def try_get(self, key: str, namespace: str | None, name: str) -> Obj | None:
        rt = self.type(key)
        obj = self._objects[key].get((namespace or "" if rt.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def get(self, key: str, namespace: str | None, name: str) -> Obj:
        obj = self.try_get(key, namespace, name)
        if obj is None:
            raise not_found(self.type(key), name)
        return obj

    def list(
        self,
        key: str,
        namespace: str | None = None,
        match: Callable[[Obj], bool] | None = None,
    ) -> list[Obj]:
        """Objects of a type, in one namespace or all, sorted by namespace and name.

        ``match`` filters (the HTTP layer builds it from label and field selectors).
        """
        self.type(key)
        out = []
        for (ns, _name), obj in sorted(self._objects[key].items()):
            if namespace and ns != namespace:
                continue
            if match is not None and not match(obj):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def events_since(self, key: str, resource_version: int) -> list[WatchEvent] | None:
        """Events after ``resource_version``; None when the history no longer reaches back that far."""
        self.type(key)
        if resource_version < self._compacted.get(key, INITIAL_RESOURCE_VERSION):
            return None
        return [e for e in self._history[key] if e.resource_version > resource_version]

    # ---- writes ------------------------------------------------------------------------------------

    def create(self, key: str, obj: Obj, namespace: str | None = None) -> Obj:
        rt = self.type(key)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = ns
        else:
            ns = ""
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{rt.kind} is invalid: metadata.name: Required value: name is required")
        if (ns, name) in self._objects[key]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" already exists',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        meta.pop("deletionTimestamp", None)
        return self._put(rt, ns, name, obj, "ADDED")

    def replace(self, key: str, namespace: str | None, name: str, obj: Obj, *, subresource: str = "") -> Obj:
        """PUT semantics: 409 when the body carries a stale ``metadata.resourceVersion``.

        With ``subresource="status"`` only ``status`` is taken from the body; otherwise ``status``
        is kept from the stored object for kinds that have a status subresource.
        """
        rt = self.type(key)
        ns = (namespace or "") if rt.namespaced else ""
        current = self._objects[key].get((ns, name))
        if current is None:
            raise not_found(rt, name)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        sent_rv = meta.get("resourceVersion")
        if sent_rv and str(sent_rv) != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.plural}{"." + rt.group if rt.group else ""} "{name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = obj.get("status", {})
        else:
            new = obj
            new["apiVersion"] = rt.api_version
            new["kind"] = rt.kind
            for k in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                if k in current["metadata"]:
                    new["metadata"][k] = current["metadata"][k]
            if "status" in rt.subresources:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            if _spec_of(new) != _spec_of(current):
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if _without_rv(new) == _without_rv(current):
            return copy.deepcopy(current)  # a no-op write does not bump the resourceVersion
        return self._put(rt, ns, name, new, "MODIFIED")

    def mutate(self, key: str, namespace: str | None, name: str, fn: Callable[[Obj], None]) -> Obj:
        """Controller-side read-modify-write: ``fn`` edits a copy in place; nothing is stored if unchanged.

        Changes to ``status`` and to the rest go through the same path (controllers own both).
        """
        rt = self.type(key)
        ns = (namespace or "") if rt.namespaced else ""
        current = self._objects[key].get((ns, name))
        if current is None:
            raise not_found(rt, name)
        new = copy.deepcopy(current)
        fn(new)
        if new == current:
            return copy.deepcopy(current)
        if _spec_of(new) != _spec_of(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return self._put(rt, ns, name, new, "MODIFIED")

    def delete(self, key: str, namespace: str | None, name: str) -> Obj:
        rt = self.type(key)
        ns = (namespace or "") if rt.namespaced else ""
        current = self._objects[key].pop((ns, name), None)
        if current is None:
            raise not_found(rt, name)
        rv = next(self._rv)
        self._last_rv = rv
        current = copy.deepcopy(current)
        current["metadata"]["resourceVersion"] = str(rv)
        self._record(rt, "DELETED", current, rv)
        return current

    # ---- internals ---------------------------------------------------------------------------------

    def _put(self, rt: ResourceType, ns: str, name: str, obj: Obj, event: str) -> Obj:
        rv = next(self._rv)
        self._last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        self._objects[rt.key][(ns, name)] = obj
        stored = copy.deepcopy(obj)
        self._record(rt, event, stored, rv)
        return copy.deepcopy(obj)

    def _record(self, rt: ResourceType, event: str, obj: Obj, rv: int) -> None:
        hist = self._history[rt.key]
        hist.append(WatchEvent(event, obj, rv))
        if len(hist) > self.history_limit:
            dropped = len(hist) - self.history_limit
            self._compacted[rt.key] = hist[dropped - 1].resource_version
            del hist[:dropped]
        for fn in list(self._listeners):
            fn(event, rt, obj)


def _spec_of(obj: Obj) -> Obj:
    """Everything but metadata and status: what ``generation`` counts changes of."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_rv(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out
