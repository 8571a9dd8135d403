"""The kinds a simulated cluster serves, how ``kubectl get`` shows them, and their OpenAPI v3 documents.

kubectl needs Table columns to print more than NAME/AGE, and the OpenAPI documents (with a
``fieldValidation`` parameter) before it will ``apply`` or ``edit`` anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.selectors import selector_string
from sandbox.store import Obj, ResourceType

APPINSTALL_GROUP = "apps.kubermatic.k8c.io"
CILIUM_GROUP = "cilium.io"
MCS_GROUP = "multicluster.x-k8s.io"  # ServiceExport/ServiceImport (sandbox/controllers/mcs.py)
CUSTOM_GROUPS = {APPINSTALL_GROUP, CILIUM_GROUP, MCS_GROUP}
_MCS_KINDS = ("ServiceExport", "ServiceImport")


def builtin_types() -> list[ResourceType]:
    """Every kind a sandbox cluster serves."""
    return [
        ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",), singular="namespace"),
        ResourceType(
            "",
            "v1",
            "nodes",
            "Node",
            namespaced=False,
            short_names=("no",),
            singular="node",
            subresources=("status",),
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "Pod",
            short_names=("po",),
            singular="pod",
            subresources=("status", "exec", "log"),
            categories=("all",),
        ),
        ResourceType("", "v1", "secrets", "Secret", singular="secret"),
        ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",), singular="configmap"),
        ResourceType(
            "",
            "v1",
            "services",
            "Service",
            short_names=("svc",),
            singular="service",
            subresources=("status",),
            categories=("all",),
        ),
        ResourceType("", "v1", "endpoints", "Endpoints", short_names=("ep",), singular="endpoints"),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",), singular="serviceaccount"),
        ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", singular="endpointslice"),
        ResourceType(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            short_names=("deploy",),
            singular="deployment",
            subresources=("status", "scale"),
            categories=("all",),
        ),
        ResourceType(
            "apps",
            "v1",
            "daemonsets",
            "DaemonSet",
            short_names=("ds",),
            singular="daemonset",
            subresources=("status",),
            categories=("all",),
        ),
        ResourceType(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            short_names=("rs",),
            singular="replicaset",
            subresources=("status", "scale"),
            categories=("all",),
        ),
        # certgen's CronJob and the Jobs made from it (``kubectl create job --from=cronjob/...``)
        ResourceType("batch", "v1", "cronjobs", "CronJob", short_names=("cj",), singular="cronjob"),
        ResourceType("batch", "v1", "jobs", "Job", singular="job", subresources=("status",), categories=("all",)),
        ResourceType(
            APPINSTALL_GROUP,
            "v1",
            "applicationinstallations",
            "ApplicationInstallation",
            short_names=("appinstall",),
            singular="applicationinstallation",
            subresources=("status",),
        ),
        ResourceType(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            short_names=("netpol",),
            singular="networkpolicy",
        ),
        # Cilium's policy CRDs: stored and listed (step 1 reads them), not enforced.
        ResourceType(
            CILIUM_GROUP,
            "v2",
            "ciliumnetworkpolicies",
            "CiliumNetworkPolicy",
            short_names=("cnp", "ciliumnp"),
            singular="ciliumnetworkpolicy",
            subresources=("status",),
            categories=("cilium", "ciliumpolicy"),
        ),
        ResourceType(
            CILIUM_GROUP,
            "v2",
            "ciliumclusterwidenetworkpolicies",
            "CiliumClusterwideNetworkPolicy",
            namespaced=False,
            short_names=("ccnp",),
            singular="ciliumclusterwidenetworkpolicy",
            subresources=("status",),
            categories=("cilium", "ciliumpolicy"),
        ),
        *(ResourceType(MCS_GROUP, "v1alpha1", f"{k.lower()}s", k, singular=k.lower()) for k in _MCS_KINDS),
    ]


def is_custom(rt: ResourceType) -> bool:
    """CRDs refuse strategic merge patches; built-ins accept them."""
    return rt.group in CUSTOM_GROUPS


# ---- Table output ----------------------------------------------------------------------------------


def human_age(timestamp: str | None, now: datetime | None = None) -> str:
    """Age the way kubectl prints it (``5s``, ``3m2s``, ``4h``, ``12d``)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 8:
        return f"{hours}h{mins % 60}m" if mins % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


Cell = Callable[[Obj], Any]
Column = tuple[str, str, int, str, Cell]  # name, type, priority, description, cell


def _get(obj: Obj, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return default
        cur = cur.get(p)
    return default if cur is None else cur


def _name(obj: Obj) -> str:
    return str(_get(obj, "metadata", "name", default=""))


def _age(obj: Obj) -> str:
    return human_age(_get(obj, "metadata", "creationTimestamp"))


def _pod_ready(obj: Obj) -> str:
    statuses = _get(obj, "status", "containerStatuses", default=[])
    total = len(_get(obj, "spec", "containers", default=[]))
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{total}"


def _pod_status(obj: Obj) -> str:
    if _get(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    for s in _get(obj, "status", "containerStatuses", default=[]):
        reason = _get(s, "state", "waiting", "reason")
        if reason:
            return str(reason)
    return str(_get(obj, "status", "reason") or _get(obj, "status", "phase", default="Pending"))


def _pod_restarts(obj: Obj) -> int:
    return sum(int(s.get("restartCount", 0)) for s in _get(obj, "status", "containerStatuses", default=[]))


def _svc_external(obj: Obj) -> str:
    ips = [i.get("ip") or i.get("hostname") for i in _get(obj, "status", "loadBalancer", "ingress", default=[])]
    ips = [i for i in ips if i] + list(_get(obj, "spec", "externalIPs", default=[]))
    if ips:
        return ",".join(ips)
    return "<pending>" if _get(obj, "spec", "type") == "LoadBalancer" else "<none>"


def _svc_ports(obj: Obj) -> str:
    out = []
    for p in _get(obj, "spec", "ports", default=[]):
        text = str(p.get("port", ""))
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _node_status(obj: Obj) -> str:
    for c in _get(obj, "status", "conditions", default=[]):
        if c.get("type") == "Ready":
            return "Ready" if c.get("status") == "True" else "NotReady"
    return "Unknown"


def _node_roles(obj: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in _get(obj, "metadata", "labels", default={}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _endpoints(obj: Obj) -> str:
    out = []
    for subset in _get(obj, "subsets", default=[]):
        ports = [p.get("port") for p in subset.get("ports", [])] or [None]
        for a in subset.get("addresses", []):
            out += [f"{a.get('ip')}:{p}" if p else str(a.get("ip")) for p in ports]
    return ",".join(out) or "<none>"


def _ai_condition(obj: Obj) -> str:
    cond = _get(obj, "status", "conditions", "Ready", default={})
    return str(cond.get("status", "")) if isinstance(cond, dict) else ""


_NAME: Column = ("Name", "string", 0, "Name must be unique within a namespace.", _name)
_AGE: Column = ("Age", "string", 0, "CreationTimestamp of the object.", _age)

TABLE_COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        _NAME,
        ("Ready", "string", 0, "The aggregate readiness state of this pod.", _pod_ready),
        ("Status", "string", 0, "The aggregate status of the containers in this pod.", _pod_status),
        (
            "Restarts",
            "string",
            0,
            "The number of times the containers in this pod have been restarted.",
            _pod_restarts,
        ),
        _AGE,
        (
            "IP",
            "string",
            1,
            "IP address allocated to the pod.",
            lambda o: _get(o, "status", "podIP", default="<none>"),
        ),
        ("Node", "string", 1, "Name of the node.", lambda o: _get(o, "spec", "nodeName", default="<none>")),
    ],
    "Service": [
        _NAME,
        (
            "Type",
            "string",
            0,
            "The type of the service.",
            lambda o: _get(o, "spec", "type", default="ClusterIP"),
        ),
        (
            "Cluster-IP",
            "string",
            0,
            "The cluster IP.",
            lambda o: _get(o, "spec", "clusterIP", default="<none>"),
        ),
        ("External-IP", "string", 0, "The external IP.", _svc_external),
        ("Port(s)", "string", 0, "The ports of the service.", _svc_ports),
        _AGE,
        (
            "Selector",
            "string",
            1,
            "The label selector of the service.",
            lambda o: selector_string(_get(o, "spec", "selector")) or "<none>",
        ),
    ],
    "Deployment": [
        _NAME,
        (
            "Ready",
            "string",
            0,
            "Ready replicas.",
            lambda o: f"{_get(o, 'status', 'readyReplicas', default=0)}/{_get(o, 'spec', 'replicas', default=1)}",
        ),
        (
            "Up-to-date",
            "integer",
            0,
            "Updated replicas.",
            lambda o: _get(o, "status", "updatedReplicas", default=0),
        ),
        (
            "Available",
            "integer",
            0,
            "Available replicas.",
            lambda o: _get(o, "status", "availableReplicas", default=0),
        ),
        _AGE,
    ],
    "DaemonSet": [
        _NAME,
        ("Desired", "integer", 0, "", lambda o: _get(o, "status", "desiredNumberScheduled", default=0)),
        ("Current", "integer", 0, "", lambda o: _get(o, "status", "currentNumberScheduled", default=0)),
        ("Ready", "integer", 0, "", lambda o: _get(o, "status", "numberReady", default=0)),
        ("Up-to-date", "integer", 0, "", lambda o: _get(o, "status", "updatedNumberScheduled", default=0)),
        ("Available", "integer", 0, "", lambda o: _get(o, "status", "numberAvailable", default=0)),
        (
            "Node Selector",
            "string",
            0,
            "",
            lambda o: selector_string(_get(o, "spec", "template", "spec", "nodeSelector")) or "<none>",
        ),
        _AGE,
    ],
    "ReplicaSet": [
        _NAME,
        ("Desired", "integer", 0, "", lambda o: _get(o, "spec", "replicas", default=1)),
        ("Current", "integer", 0, "", lambda o: _get(o, "status", "replicas", default=0)),
        ("Ready", "integer", 0, "", lambda o: _get(o, "status", "readyReplicas", default=0)),
        _AGE,
    ],
    "Secret": [
        _NAME,
        ("Type", "string", 0, "The type of the secret.", lambda o: _get(o, "type", default="Opaque")),
        ("Data", "string", 0, "The number of entries.", lambda o: len(_get(o, "data", default={}))),
        _AGE,
    ],
    "ConfigMap": [
        _NAME,
        ("Data", "string", 0, "The number of entries.", lambda o: len(_get(o, "data", default={}))),
        _AGE,
    ],
    "Node": [
        _NAME,
        ("Status", "string", 0, "The status of the node.", _node_status),
        ("Roles", "string", 0, "The roles of the node.", _node_roles),
        _AGE,
        (
            "Version",
            "string",
            0,
            "Kubelet version.",
            lambda o: _get(o, "status", "nodeInfo", "kubeletVersion", default=""),
        ),
    ],
    "Namespace": [
        _NAME,
        (
            "Status",
            "string",
            0,
            "The status of the namespace.",
            lambda o: _get(o, "status", "phase", default="Active"),
        ),
        _AGE,
    ],
    "Endpoints": [_NAME, ("Endpoints", "string", 0, "Endpoints.", _endpoints), _AGE],
    "ApplicationInstallation": [
        _NAME,
        ("App", "string", 0, "", lambda o: _get(o, "spec", "applicationRef", "name", default="")),
        ("Version", "string", 0, "", lambda o: _get(o, "spec", "applicationRef", "version", default="")),
        ("Status", "string", 0, "", lambda o: _get(o, "status", "helmRelease", "info", "status", default="")),
        ("Ready", "string", 0, "", _ai_condition),
        _AGE,
    ],
}


def table_columns(kind: str) -> list[Column]:
    return TABLE_COLUMNS.get(kind, [_NAME, _AGE])


def _partial_metadata(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(rt: ResourceType, objects: list[Obj], resource_version: str) -> Obj:
    """A ``meta.k8s.io/v1`` Table, what ``kubectl get`` asks for to print kind-specific columns."""
    cols = table_columns(rt.kind)
    rows = []
    for obj in objects:
        cells = []
        for *_meta, cell in cols:
            try:
                cells.append(cell(obj))
            except Exception:  # noqa: BLE001 - a malformed object must not break listing
                cells.append("<unknown>")
        rows.append({"cells": cells, "object": _partial_metadata(obj)})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": n, "type": t, "format": "name" if n == "Name" else "", "description": d, "priority": p}
            for n, t, p, d, _c in cols
        ],
        "rows": rows,
    }


# ---- OpenAPI v3 ------------------------------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def group_versions(types: list[ResourceType]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for rt in types:
        if (rt.group, rt.version) not in seen:
            seen.append((rt.group, rt.version))
    return seen


_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Ignore, Warn or Strict: how the server treats unknown or duplicate fields.",
    "schema": {"type": "string", "uniqueItems": True},
}
_FIELD_MANAGER = {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
_DRY_RUN = {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _schema_ref(rt: ResourceType) -> str:
    return f"#/components/schemas/{_schema_name(rt)}"


def _schema_name(rt: ResourceType) -> str:
    group = rt.group or "core"
    return f"{group}.{rt.version}.{rt.kind}"


def _content(rt: ResourceType, types: tuple[str, ...] = ("application/json", "application/yaml")) -> Obj:
    return {t: {"schema": {"$ref": _schema_ref(rt)}} for t in types}


def openapi_document(group: str, version: str, types: list[ResourceType]) -> Obj:
    """The OpenAPI v3 document of one group-version: paths with post/put/patch and loose schemas.

    Strategic merge is deliberately not listed among the patch body types: kubectl then computes
    strategic patches for built-ins from its compiled-in types instead of from these loose schemas.
    """
    paths: dict[str, Obj] = {}
    schemas: dict[str, Obj] = {}
    prefix = "/" + _gv_path(group, version)
    for rt in types:
        if (rt.group, rt.version) != (group, version):
            continue
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
        ok = {"200": {"description": "OK", "content": _content(rt)}}
        collection: Obj = {
            "get": {
                "operationId": f"list{rt.kind}",
                "x-kubernetes-action": "list",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            },
            "post": {
                "operationId": f"create{rt.kind}",
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
                "requestBody": {"content": _content(rt), "required": True},
                "responses": {**ok, "201": {"description": "Created", "content": _content(rt)}},
            },
        }
        item: Obj = {
            "get": {
                "operationId": f"read{rt.kind}",
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok,
            },
            "put": {
                "operationId": f"replace{rt.kind}",
                "x-kubernetes-action": "put",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
                "requestBody": {"content": _content(rt), "required": True},
                "responses": ok,
            },
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    _DRY_RUN,
                    _FIELD_MANAGER,
                    _FIELD_VALIDATION,
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "content": {
                        t: {"schema": {"type": "object"}}
                        for t in (
                            "application/json-patch+json",
                            "application/merge-patch+json",
                            "application/apply-patch+yaml",
                        )
                    },
                    "required": True,
                },
                "responses": ok,
            },
            "delete": {
                "operationId": f"delete{rt.kind}",
                "x-kubernetes-action": "delete",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            },
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        }
        if rt.namespaced:
            ns_param = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
            collection["parameters"] = [ns_param]
            item["parameters"].append(ns_param)
        paths[base] = collection
        paths[f"{base}/{{name}}"] = item
        schemas[_schema_name(rt)] = {
            "type": "object",
            "description": f"{rt.kind} (schema kept open: the sandbox validates on the server side).",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [gvk],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def document_hash(doc: Obj) -> str:
    """A content hash for the index URL, so kubectl's immutable cache re-reads a changed schema."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha512(raw).hexdigest()[:128].upper()


def openapi_index(types: list[ResourceType]) -> Obj:
    """``GET /openapi/v3``: each group-version's document URL carrying its content hash."""
    paths = {}
    for group, version in group_versions(types):
        doc = openapi_document(group, version, types)
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={document_hash(doc)}"}
    return {"paths": paths}
