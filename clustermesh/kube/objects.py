"""The server's JSON objects as the client hands them out: list items, PUT bodies, "already as wanted".

Helpers of :meth:`ClusterClient.create_or_replace <clustermesh.kube.client.ClusterClient.create_or_replace>`
and the reads: which kinds it writes and through which calls, the body of a replacement (keeping what
others and the server own) and whether the current object already holds every field of a manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KINDS", "Applied", "Kind", "as_object", "contains", "items", "replacement"]


@dataclass(frozen=True)
class Applied:
    """An object as the server holds it after :meth:`ClusterClient.create_or_replace`, and what it took."""

    object: dict[str, Any]
    action: Literal["created", "replaced", "unchanged"]


@dataclass(frozen=True)
class Kind:
    plural: str
    namespaced: bool
    api: Literal["core", "apps"]
    read: str
    create: str
    replace: str


KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "Namespace"): Kind("namespaces", False, "core", "read_namespace", "create_namespace", "replace_namespace"),
    ("v1", "Service"): Kind(
        "services",
        True,
        "core",
        "read_namespaced_service",
        "create_namespaced_service",
        "replace_namespaced_service",
    ),
    ("apps/v1", "Deployment"): Kind(
        "deployments",
        True,
        "apps",
        "read_namespaced_deployment",
        "create_namespaced_deployment",
        "replace_namespaced_deployment",
    ),
}


def as_object(answer: Any) -> dict[str, Any]:
    return answer if isinstance(answer, dict) else {}


def items(answer: Any, kind: str, api_version: str) -> list[dict[str, Any]]:
    """List items, given back the kind and apiVersion the server leaves off items in a list."""
    listed = answer.get("items") if isinstance(answer, dict) else None
    out: list[dict[str, Any]] = []
    for item in listed or []:
        if isinstance(item, dict):
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            out.append(item)
    return out


def replacement(current: Mapping[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The PUT body: desired state, plus what others and the server own on the current object."""
    body = copy.deepcopy(desired)
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    current_meta = current.get("metadata") or {}
    for key in ("labels", "annotations"):
        merged = dict(current_meta.get(key) or {})
        merged.update(meta.get(key) or {})
        if merged:
            meta[key] = merged
    meta["resourceVersion"] = current_meta.get("resourceVersion")
    spec = body.get("spec")
    current_spec = current.get("spec") or {}
    if isinstance(spec, dict) and body.get("kind") == "Service":
        for key in ("clusterIP", "clusterIPs", "healthCheckNodePort"):
            if key not in spec and key in current_spec:
                spec[key] = copy.deepcopy(current_spec[key])
        current_ports = {
            (p.get("port"), p.get("protocol", "TCP")): p for p in current_spec.get("ports") or [] if isinstance(p, dict)
        }
        for port in spec.get("ports") or []:
            old = current_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if old and "nodePort" not in port and "nodePort" in old:
                port["nodePort"] = old["nodePort"]
    if (
        isinstance(spec, dict)
        and body.get("kind") == "Deployment"
        and "replicas" not in spec
        and "replicas" in current_spec
    ):
        spec["replicas"] = current_spec["replicas"]
    return body


def contains(have: object, want: object) -> bool:
    """Whether every field of ``want`` holds in ``have`` (lists item by item, same length)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return have == want
