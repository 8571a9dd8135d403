"""The HTTP face of one simulated cluster: a Kubernetes API over a ``Store``, as Starlette app.

It follows ``reference/kube-api.md`` closely enough that the official Python client and kubectl 1.32
work unchanged (discovery, OpenAPI v3, Tables, the four patch types, watch, /status, /scale, exec
over WebSocket). Handlers run on the event loop that owns the store, so every store call is atomic.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from sandbox import patching
from sandbox.api_guard import ApiFaults, _error_response, _Guard
from sandbox.api_objects import defaulted, exit_status, scale_of
from sandbox.resources import group_versions, is_custom, openapi_document, openapi_index, table
from sandbox.selectors import matcher
from sandbox.store import ApiError, Obj, ResourceType, Store, not_found
from sandbox.virtual_calendar import DateHeader

log = logging.getLogger(__name__)

NAMESPACES = "v1/namespaces"
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"


@dataclass
class ExecResult:
    """What a command run in a simulated container produced."""

    exit_code: int
    stdout: bytes
    stderr: bytes = b""


ExecHandler = Callable[[str, str, str, list[str]], ExecResult]
"""(namespace, pod, container, argv) -> ExecResult; called on the loop thread, so it may read the store."""


def _status(code: int, reason: str, message: str) -> Obj:
    return ApiError(code, reason, message).status()


def _truthy(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.lower() in ("true", "1", "yes")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _wants_table(request: Request) -> bool:
    return "as=Table" in request.headers.get("accept", "")


def _get(obj: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


class KubeApi:
    """Request handlers for one cluster; one instance per ``create_app`` call."""

    def __init__(
        self,
        store: Store,
        *,
        exec_handler: ExecHandler | None,
        kubernetes_version: tuple[int, int],
    ) -> None:
        self.store = store
        self.exec_handler = exec_handler
        self.kubernetes_version = kubernetes_version

    # ---- discovery ---------------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        major, minor = self.kubernetes_version
        return JSONResponse(
            {
                "major": str(major),
                "minor": str(minor),
                "gitVersion": f"v{major}.{minor}.0",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.23.4",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    def _types(self) -> list[ResourceType]:
        return list(self.store.types.values())

    async def api_versions(self, request: Request) -> Response:
        host = request.headers.get("host", "127.0.0.1")
        return JSONResponse(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        )

    async def api_groups(self, request: Request) -> Response:
        groups = []
        for group, version in group_versions(self._types()):
            if not group:
                continue
            gv = {"groupVersion": f"{group}/{version}", "version": version}
            groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def core_resources(self, request: Request) -> Response:
        return JSONResponse(self._resource_list("", "v1"))

    async def group_resources(self, request: Request) -> Response:
        group, version = request.path_params["group"], request.path_params["version"]
        if (group, version) not in group_versions(self._types()):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return JSONResponse(self._resource_list(group, version))

    def _resource_list(self, group: str, version: str) -> Obj:
        resources: list[Obj] = []
        for rt in self._types():
            if (rt.group, rt.version) != (group, version):
                continue
            entry: Obj = {
                "name": rt.plural,
                "singularName": rt.singular or rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(rt.verbs) + (["deletecollection"] if rt.namespaced else []),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            for sub in rt.subresources:
                sub_entry: Obj = {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                }
                if sub == "scale":
                    sub_entry |= {"group": "autoscaling", "version": "v1", "kind": "Scale"}
                    sub_entry["verbs"] = ["get", "patch", "update"]
                elif sub == "status":
                    sub_entry |= {"kind": rt.kind, "verbs": ["get", "patch", "update"]}
                elif sub == "exec":
                    sub_entry |= {"kind": "PodExecOptions", "verbs": ["create", "get"]}
                elif sub == "log":
                    sub_entry |= {"kind": rt.kind, "verbs": ["get"]}
                else:
                    sub_entry |= {"kind": rt.kind, "verbs": ["get"]}
                resources.append(sub_entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    async def openapi_v3_index(self, request: Request) -> Response:
        return JSONResponse(openapi_index(self._types()))

    async def openapi_v3_document(self, request: Request) -> Response:
        path = request.path_params["path"].strip("/")
        for group, version in group_versions(self._types()):
            if path == (f"apis/{group}/{version}" if group else f"api/{version}"):
                return JSONResponse(openapi_document(group, version, self._types()))
        raise ApiError(404, "NotFound", f"the server could not find the OpenAPI document for {path!r}")

    async def openapi_v2(self, request: Request) -> Response:
        raise ApiError(404, "NotFound", "OpenAPI v2 is not served; use /openapi/v3")

    # ---- resource routing --------------------------------------------------------------------------

    def _resolve(self, group: str, version: str, rest: str) -> tuple[ResourceType, str | None, str | None, str]:
        """Split ``[namespaces/{ns}/]{plural}[/{name}[/{sub}]]`` into its parts."""
        api_version = f"{group}/{version}" if group else version
        by_plural = {rt.plural: rt for rt in self._types() if rt.api_version == api_version}
        parts = [p for p in rest.split("/") if p]
        namespace: str | None = None
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] in by_plural and by_plural[parts[2]].namespaced:
            namespace = parts[1]
            parts = parts[2:]
        if not parts or parts[0] not in by_plural or len(parts) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = by_plural[parts[0]]
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else ""
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub and sub not in rt.subresources:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({rt.plural}/{sub})")
        return rt, namespace, name, sub

    async def core_resource(self, request: Request) -> Response:
        if request.path_params["version"] != "v1":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._dispatch(request, "", "v1", request.path_params["rest"])

    async def group_resource(self, request: Request) -> Response:
        p = request.path_params
        return await self._dispatch(request, p["group"], p["version"], p["rest"])

    async def _dispatch(self, request: Request, group: str, version: str, rest: str) -> Response:
        rt, ns, name, sub = self._resolve(group, version, rest)
        method = request.method
        if _truthy(request.query_params.get("dryRun")) or request.query_params.get("dryRun") == "All":
            raise ApiError(400, "BadRequest", "dryRun is not supported by the sandbox API server")
        if name is None:
            if method == "GET":
                if _truthy(request.query_params.get("watch")):
                    return self._watch(request, rt, ns)
                return self._list(request, rt, ns)
            if method == "POST" and (ns is not None or not rt.namespaced):
                return await self._create(request, rt, ns)
            if method == "DELETE":
                return self._delete_collection(request, rt, ns)
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {rt.plural}")
        if sub == "scale":
            return await self._scale(request, rt, ns, name)
        if sub == "exec":
            raise ApiError(400, "BadRequest", "Upgrade request required: exec is served over WebSocket only")
        if sub == "log":
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "log supports GET only")
            self.store.get(rt.key, ns, name)
            return PlainTextResponse("")
        if method == "GET":
            obj = self.store.get(rt.key, ns, name)
            if _wants_table(request) and not sub:
                return JSONResponse(table(rt, [obj], obj["metadata"]["resourceVersion"]))
            return JSONResponse(obj)
        if method == "PUT":
            return await self._replace(request, rt, ns, name, sub)
        if method == "PATCH":
            return await self._patch(request, rt, ns, name, sub)
        if method == "DELETE" and not sub:
            return self._delete(rt, ns, name)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {rt.plural}")

    # ---- reads -------------------------------------------------------------------------------------

    def _match(self, request: Request) -> Callable[[Obj], bool] | None:
        return matcher(request.query_params.get("labelSelector"), request.query_params.get("fieldSelector"))

    def _list(self, request: Request, rt: ResourceType, ns: str | None) -> Response:
        items = self.store.list(rt.key, ns, self._match(request))
        rv = self.store.resource_version
        if _wants_table(request):
            return JSONResponse(table(rt, items, rv))
        return JSONResponse(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    def _watch(self, request: Request, rt: ResourceType, ns: str | None) -> Response:
        match = self._match(request)  # parse now: a bad selector is a 400, not a broken stream
        as_table = _wants_table(request)
        raw_timeout = request.query_params.get("timeoutSeconds")
        try:
            timeout = float(raw_timeout) if raw_timeout else 1800.0
            raw_rv = request.query_params.get("resourceVersion") or ""
            since = int(raw_rv) if raw_rv not in ("", "0") else None
        except ValueError:
            raise ApiError(400, "BadRequest", "timeoutSeconds and resourceVersion must be integers") from None
        store = self.store

        def selected(obj: Obj) -> bool:
            if ns and obj.get("metadata", {}).get("namespace") != ns:
                return False
            return match is None or match(obj)

        def line(event_type: str, obj: Obj) -> bytes:
            if as_table and event_type != "ERROR":
                obj = table(rt, [obj], obj.get("metadata", {}).get("resourceVersion", ""))
            return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"

        async def events() -> AsyncIterator[bytes]:
            # everything up to the first yield runs in one step of the loop: no change can slip between
            # the snapshot and the listener
            queue: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()

            def listener(event_type: str, rtype: ResourceType, obj: Obj) -> None:
                if rtype.key == rt.key and selected(obj):
                    queue.put_nowait((event_type, obj))

            initial: list[tuple[str, Obj]]
            if since is None:
                initial = [("ADDED", o) for o in store.list(rt.key, ns, match)]
            else:
                history = store.events_since(rt.key, since)
                if history is None:
                    expired = _status(410, "Expired", f"too old resource version: {since} ({store.resource_version})")
                    yield line("ERROR", expired)
                    return
                initial = [(e.type, e.object) for e in history if selected(e.object)]
            store.add_listener(listener)
            try:
                for event_type, obj in initial:
                    yield line(event_type, obj)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event_type, obj = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                    yield line(event_type, obj)
            finally:
                store.remove_listener(listener)

        return StreamingResponse(events(), media_type="application/json", headers={"Cache-Control": "no-cache"})

    # ---- writes ------------------------------------------------------------------------------------

    async def _body(
        self, request: Request, *, allow: tuple[str, ...] = ("", "application/json", "application/yaml")
    ) -> Any:
        media = _media_type(request)
        if media not in allow:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({media}) - accepted media types include: "
                + ", ".join(t for t in allow if t),
            )
        raw = await request.body()
        if not raw.strip():
            raise ApiError(400, "BadRequest", "the request body is empty")
        try:
            if media in ("application/yaml", patching.APPLY_PATCH):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None

    def _check_object(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        kind = body.get("kind")
        if kind and kind != rt.kind:
            raise ApiError(
                400, "BadRequest", f"the kind of the object ({kind}) does not match the resource ({rt.kind})"
            )
        api_version = body.get("apiVersion")
        if api_version and api_version != rt.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version of the object ({api_version}) does not match the request ({rt.api_version})",
            )
        return body

    def _require_namespace(self, rt: ResourceType, ns: str | None) -> None:
        if rt.namespaced and ns and self.store.try_get(NAMESPACES, None, ns) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{ns}" not found',
                {"name": ns, "group": "", "kind": "namespaces"},
            )

    async def _create(self, request: Request, rt: ResourceType, ns: str | None) -> Response:
        body = self._check_object(rt, await self._body(request))
        self._require_namespace(rt, ns)
        created = self.store.create(rt.key, defaulted(rt, body), ns)
        return JSONResponse(created, status_code=201)

    async def _replace(self, request: Request, rt: ResourceType, ns: str | None, name: str, sub: str) -> Response:
        body = self._check_object(rt, await self._body(request))
        if sub == "status":
            return JSONResponse(self.store.replace(rt.key, ns, name, body, subresource="status"))
        return JSONResponse(self.store.replace(rt.key, ns, name, defaulted(rt, body)))

    async def _patch(self, request: Request, rt: ResourceType, ns: str | None, name: str, sub: str) -> Response:
        media = _media_type(request)
        body = await self._body(request, allow=patching.PATCH_TYPES)
        current = self.store.try_get(rt.key, ns, name)
        if current is None:
            if media == patching.APPLY_PATCH and not sub:
                obj = self._check_object(rt, body)
                self._require_namespace(rt, ns)
                obj.setdefault("metadata", {}).setdefault("name", name)
                obj["metadata"].pop("managedFields", None)
                return JSONResponse(self.store.create(rt.key, defaulted(rt, obj), ns), status_code=201)
            raise not_found(rt, name)
        if media == patching.APPLY_PATCH:
            self._check_object(rt, body)
        patched = patching.apply_patch(current, body, media, kind=rt.kind, custom=is_custom(rt))
        if sub == "status":
            return JSONResponse(self.store.replace(rt.key, ns, name, patched, subresource="status"))
        return JSONResponse(self.store.replace(rt.key, ns, name, defaulted(rt, patched)))

    def _delete(self, rt: ResourceType, ns: str | None, name: str) -> Response:
        deleted = self.store.delete(rt.key, ns, name)
        if rt.key == NAMESPACES:
            self._empty_namespace(name)
        return JSONResponse(deleted)

    def _delete_collection(self, request: Request, rt: ResourceType, ns: str | None) -> Response:
        items = []
        for obj in self.store.list(rt.key, ns, self._match(request)):
            meta = obj["metadata"]
            items.append(self.store.delete(rt.key, meta.get("namespace"), meta["name"]))
            if rt.key == NAMESPACES:
                self._empty_namespace(meta["name"])
        rv = self.store.resource_version
        return JSONResponse(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    def _empty_namespace(self, namespace: str) -> None:
        """What the namespace controller would do eventually, done at once (no finalizers here)."""
        for rt in self._types():
            if rt.namespaced:
                for obj in self.store.list(rt.key, namespace):
                    self.store.delete(rt.key, namespace, obj["metadata"]["name"])

    # ---- /scale ------------------------------------------------------------------------------------

    async def _scale(self, request: Request, rt: ResourceType, ns: str | None, name: str) -> Response:
        current = self.store.get(rt.key, ns, name)
        if request.method == "GET":
            return JSONResponse(scale_of(current))
        if request.method == "PUT":
            wanted = await self._body(request)
        elif request.method == "PATCH":
            media = _media_type(request)
            body = await self._body(request, allow=patching.PATCH_TYPES)
            # a Scale is no built-in with merge keys: strategic and apply both merge like JSON merge
            kind = patching.MERGE_PATCH if media in (patching.STRATEGIC_PATCH, patching.APPLY_PATCH) else media
            wanted = patching.apply_patch(scale_of(current), body, kind, kind="Scale", custom=False)
        else:
            raise ApiError(405, "MethodNotAllowed", "scale supports GET, PUT and PATCH")
        if not isinstance(wanted, dict):
            raise ApiError(400, "BadRequest", "a Scale must be an object")
        replicas = _get(wanted, "spec", "replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: must be >= 0')
        new = dict(current)
        new["spec"] = {**current.get("spec", {}), "replicas": replicas}
        sent_rv = _get(wanted, "metadata", "resourceVersion")
        new["metadata"] = {
            **current["metadata"],
            "resourceVersion": sent_rv or current["metadata"]["resourceVersion"],
        }
        return JSONResponse(scale_of(self.store.replace(rt.key, ns, name, new)))

    # ---- exec --------------------------------------------------------------------------------------

    async def exec_ws(self, websocket: WebSocket) -> None:
        ns = websocket.path_params["namespace"]
        name = websocket.path_params["name"]
        pod = self.store.try_get("v1/pods", ns, name)
        if pod is None:
            err = not_found(self.store.type("v1/pods"), name)
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(_error_response(err))
            else:
                await websocket.close()
            return
        offered = list(websocket.scope.get("subprotocols", []))
        chosen = (
            V5
            if V5 in offered
            else V4
            if V4 in offered
            else next((p for p in offered if p.endswith("channel.k8s.io")), None)
        )
        await websocket.accept(subprotocol=chosen)
        params = websocket.query_params
        result, refusal = self._run_exec(pod, ns, name, params.getlist("command"), params.get("container"))
        if refusal is None:
            if result.stdout and _truthy(params.get("stdout"), True):
                await websocket.send_bytes(b"\x01" + result.stdout)
            if result.stderr and _truthy(params.get("stderr"), True):
                await websocket.send_bytes(b"\x02" + result.stderr)
        final = refusal if refusal is not None else exit_status(result.exit_code)
        await websocket.send_bytes(b"\x03" + json.dumps(final).encode())
        await websocket.close(1000)

    def _run_exec(
        self, pod: Obj, ns: str, name: str, argv: list[str], container: str | None
    ) -> tuple[ExecResult, Obj | None]:
        """Run the handler, or explain on the error channel why not (a Status instead of an exit code)."""
        nothing = ExecResult(exit_code=-1, stdout=b"")
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
        if container is None:
            main = [c.get("name") for c in spec.get("containers") or []]
            if len(main) != 1:
                return nothing, _status(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(map(str, main))}]",
                )
            container = str(main[0])
        if container not in names:
            return nothing, _status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if not argv:
            return nothing, _status(400, "BadRequest", "you must specify at least 1 command")
        if self.exec_handler is None:
            return nothing, _status(500, "InternalError", "exec is not available in this sandbox cluster")
        try:
            result = self.exec_handler(ns, name, container, list(argv))
        except ApiError as err:
            return nothing, err.status()
        except Exception as exc:  # noqa: BLE001 - a broken handler is reported to the client, not the loop
            log.exception("exec handler failed for %s/%s", ns, name)
            return nothing, _status(500, "InternalError", f"exec failed: {type(exc).__name__}")
        return result, None


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequest")
        return JSONResponse(_status(exc.status_code, reason, str(exc.detail)), status_code=exc.status_code)
    return JSONResponse(_status(500, "InternalError", "internal error"), status_code=500)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("sandbox API handler failed: %s %s", request.method, request.url.path)
    return JSONResponse(_status(500, "InternalError", f"internal error: {type(exc).__name__}"), status_code=500)


def create_app(
    store: Store,
    *,
    token: str,
    exec_handler: ExecHandler | None = None,
    faults: ApiFaults | None = None,
    kubernetes_version: tuple[int, int] = (1, 32),
) -> Starlette:
    """The ASGI app serving ``store`` as a Kubernetes API, guarded by ``token`` and ``faults``."""
    api = KubeApi(store, exec_handler=exec_handler, kubernetes_version=kubernetes_version)
    all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(
        routes=[
            Route("/version", api.version, methods=["GET"]),
            Route("/api", api.api_versions, methods=["GET"]),
            Route("/apis", api.api_groups, methods=["GET"]),
            Route("/api/v1", api.core_resources, methods=["GET"]),
            Route("/apis/{group}/{version}", api.group_resources, methods=["GET"]),
            Route("/openapi/v3", api.openapi_v3_index, methods=["GET"]),
            Route("/openapi/v3/{path:path}", api.openapi_v3_document, methods=["GET"]),
            Route("/openapi/v2", api.openapi_v2, methods=["GET"]),
            WebSocketRoute("/api/v1/namespaces/{namespace}/pods/{name}/exec", api.exec_ws),
            Route("/api/{version}/{rest:path}", api.core_resource, methods=all_methods),
            Route("/apis/{group}/{version}/{rest:path}", api.group_resource, methods=all_methods),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.add_middleware(_Guard, token=token, faults=faults)
    app.add_middleware(DateHeader, store=store)  # the cluster's clock: its World's calendar
    return app
