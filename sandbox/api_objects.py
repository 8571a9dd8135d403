"""Server-side views and defaults of objects the simulated API serves: the Scale subresource, the defaults
clients rely on, and the exec Status that carries an exit code."""

from __future__ import annotations

import base64
from typing import Any

from sandbox.selectors import selector_string
from sandbox.store import Obj, ResourceType

__all__ = ["defaulted", "exit_status", "scale_of"]


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def exit_status(exit_code: int) -> Obj:
    """The channel-3 Status kubectl and the Python client turn into an exit code."""
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command [...]: "
        f"exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale view of a Deployment or ReplicaSet."""
    meta = obj.get("metadata", {})
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": int(_get(obj, "spec", "replicas") or 0)},
        "status": {
            "replicas": int(_get(obj, "status", "replicas") or 0),
            "selector": selector_string(_get(obj, "spec", "selector", "matchLabels")),
        },
    }


def defaulted(rt: ResourceType, obj: Obj) -> Obj:
    """The few server-side defaults clients rely on (replicas, Secret type and stringData, ...)."""
    obj = dict(obj)
    if rt.kind in ("Deployment", "ReplicaSet"):
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict) and spec.get("replicas") is None:
            spec["replicas"] = 1
    elif rt.kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = dict(obj.get("data") or {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data
    elif rt.kind == "Service":
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
    elif rt.kind == "Namespace":
        status = obj.get("status")
        if not isinstance(status, dict) or "phase" not in status:
            obj["status"] = {**(status if isinstance(status, dict) else {}), "phase": "Active"}
    return obj
