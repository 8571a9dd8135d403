"""The four PATCH flavours of the Kubernetes API, applied to plain dicts.

Strategic merge matters because kubectl and the Python client send it by default for built-in kinds:
a plain JSON merge would drop list items (containers, env, ports) that the patch does not mention.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from sandbox.store import ApiError, Obj

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_PATCH, JSON_PATCH, APPLY_PATCH)

_NAME_KEYED = {"containers", "initContainers", "ephemeralContainers", "volumes", "env"}
_CONTAINER_LISTS = {"containers", "initContainers", "ephemeralContainers"}


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def json_patch(target: Obj, operations: Any) -> Obj:
    """RFC 6902; a failing operation is the client's error (422), as on a real server."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError) as exc:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
        ) from None
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "json patch result is not an object")
    return result


def merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    """The patchMergeKey of the list at ``path`` (dict keys only, list positions left out)."""
    if not path:
        return None
    last = path[-1]
    if last in _NAME_KEYED:
        return "name"
    if last == "volumeMounts":
        return "mountPath"
    if last == "ports":
        if len(path) >= 2 and path[-2] in _CONTAINER_LISTS:
            return "containerPort"
        if kind == "Service" and path == ("spec", "ports"):
            return "port"
    return None


def strategic_merge_patch(target: Obj, patch: Obj, kind: str) -> Obj:
    """Strategic merge for built-in kinds, honouring the ``$``-directives kubectl sends."""
    if not isinstance(patch, dict):
        raise ApiError(400, "BadRequest", "strategic merge patch must be an object")
    result = _smp_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch, kind, ())
    return result if isinstance(result, dict) else {}


_DELETE = object()


def _smp_map(target: dict[str, Any], patch: dict[str, Any], kind: str, path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return _strip_directives(body)
    if directive not in (None, "merge"):
        raise ApiError(400, "BadRequest", f"unknown patch type: {directive!r}")
    retain = body.pop("$retainKeys", None)
    orders: dict[str, list[Any]] = {}
    deletes: dict[str, list[Any]] = {}
    for key in list(body):
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = body.pop(key) or []
        elif key.startswith("$deleteFromPrimitiveList/"):
            deletes[key.split("/", 1)[1]] = body.pop(key) or []
    for key, value in body.items():
        sub = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(target[key] if isinstance(target.get(key), dict) else {}, value, kind, sub)
            if merged is _DELETE:
                target.pop(key, None)
            else:
                target[key] = merged
        elif isinstance(value, list):
            target[key] = _smp_list(target.get(key), value, kind, sub)
        else:
            target[key] = value
    for key, values in deletes.items():
        if isinstance(target.get(key), list):
            target[key] = [v for v in target[key] if v not in values]
    for key, order in orders.items():
        if isinstance(target.get(key), list):
            target[key] = _apply_order(target[key], order, merge_key(kind, (*path, key)))
    if retain is not None:
        keep = set(retain)
        for key in list(target):
            if key not in keep:
                del target[key]
    return target


def _smp_list(current: Any, patch: list[Any], kind: str, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    key = merge_key(kind, path)
    if key is None or not isinstance(current, list):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "delete")]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            if not (isinstance(item, dict) and item.get("$patch")):
                result.append(_strip_directives(item))
            continue
        idx = next((n for n, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del result[idx]
            continue
        if idx is None:
            result.append(_strip_directives(item))
        else:
            merged = _smp_map(result[idx], item, kind, path)
            if merged is _DELETE:
                del result[idx]
            else:
                result[idx] = merged
    return result


def _apply_order(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """Sort the items named in ``$setElementOrder`` into that order; the others follow as they were."""

    def ident(item: Any) -> Any:
        if key and isinstance(item, dict):
            return item.get(key)
        return item

    wanted = [ident(o) for o in order]
    placed: list[Any] = []
    rest: list[Any] = []
    by_id: dict[str, Any] = {}
    for item in items:
        marker = json.dumps(ident(item), sort_keys=True)
        if ident(item) in wanted and marker not in by_id:
            by_id[marker] = item
        else:
            rest.append(item)
    for w in wanted:
        marker = json.dumps(w, sort_keys=True)
        if marker in by_id:
            placed.append(by_id.pop(marker))
    return placed + rest


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not (
                k == "$patch"
                or k == "$retainKeys"
                or k.startswith("$setElementOrder/")
                or k.startswith("$deleteFromPrimitiveList/")
            )
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def apply_patch(current: Obj, patch: Any, content_type: str, *, kind: str, custom: bool) -> Obj:
    """Apply one PATCH of the given content type to ``current``; returns the new object."""
    if content_type == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "merge patch must be an object")
        result = json_merge_patch(current, patch)
        return result if isinstance(result, dict) else {}
    if content_type == JSON_PATCH:
        return json_patch(current, patch)
    if content_type == STRATEGIC_PATCH:
        if custom:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        return strategic_merge_patch(current, patch, kind)
    if content_type == APPLY_PATCH:
        return server_side_apply(current, patch, kind=kind, custom=custom)
    raise ApiError(415, "UnsupportedMediaType", f"the media type {content_type!r} is not supported for PATCH")


def server_side_apply(current: Obj, config: Any, *, kind: str, custom: bool) -> Obj:
    """Merge an apply configuration into ``current`` (field ownership is not tracked)."""
    if not isinstance(config, dict):
        raise ApiError(400, "BadRequest", "apply configuration must be an object")
    config = copy.deepcopy(config)
    config.get("metadata", {}).pop("managedFields", None)
    if custom:
        result = json_merge_patch(current, config)
        return result if isinstance(result, dict) else {}
    return strategic_merge_patch(current, config, kind)
