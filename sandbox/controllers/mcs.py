"""The Multi-Cluster Services API as Cilium's operator implements it (1.17+): ServiceExport → ServiceImport.

Where a cluster's cilium-config says ``clustermesh-enable-mcs-api: "true"`` (the chart renders it from
``clustermesh.enableMCSAPISupport`` up to 1.19, ``clustermesh.mcsapi.enabled`` from 1.19; :func:`mcs_config`),
a ServiceExport of a Service (same namespace and name, ``multicluster.x-k8s.io/v1alpha1``) makes, in that
cluster and in every configured peer that has MCS-API on too:

- a ServiceImport of the same name (``type: ClusterSetIP``, the ports, ``spec.ips`` = the derived Service's
  ClusterIP once allocated, ``status.clusters`` = the members that export it), and
- the derived Service ``derived-<hash of namespace/name>``: the same name in every member, annotated global,
  labelled ``multicluster.kubernetes.io/service-name``, selecting the local exported Service's pods (none where
  the cluster does not export it). Being global under one name everywhere, the agents merge every member's
  backends into it as for any global service (``sandbox.datapath.services``), so failover when one member's
  backends go to zero is the datapath's ordinary behaviour; on 1.20 the namespace must be global, as for any
  global service.

DNS: ``<svc>.<ns>.svc.clusterset.local`` answers with the ServiceImport's ``spec.ips`` (what CoreDNS's
``multicluster`` plugin serves; the sandbox assumes CoreDNS is configured for it). The sandbox serves both CRDs
whatever the version, as if installed (from 1.19 the operator installs them, ``mcsapi.installCRDs``).
"""

from __future__ import annotations

from typing import Any

from sandbox.controllers.base import CMS, NS, SVCS, SimCluster, _hash_name
from sandbox.datapath.state import _get, _object, _objects, _secret_files
from sandbox.store import Obj, Store

MCS_GROUP = "multicluster.x-k8s.io"
EXPORTS = f"{MCS_GROUP}/v1alpha1/serviceexports"
IMPORTS = f"{MCS_GROUP}/v1alpha1/serviceimports"
MCS_API_CONFIG_KEY = "clustermesh-enable-mcs-api"
INSTALL_CRDS_CONFIG_KEY = "clustermesh-mcs-api-install-crds"
SERVICE_NAME_LABEL = "multicluster.kubernetes.io/service-name"
CLUSTERSET_SUFFIX = ".svc.clusterset.local"
_MESH_SECRETS = ("cilium-clustermesh", "cilium-kvstoremesh")
_GLOBAL = {"service.cilium.io/global": "true", "io.cilium/global-service": "true"}


def mcs_config(version: tuple[int, int, int], values: dict[str, Any]) -> dict[str, str]:
    """The cilium-config keys the chart renders for MCS-API: from 1.16 always (``"false"`` when off)."""
    if version < (1, 16, 0):
        return {}
    mesh = values.get("clustermesh") or {}
    mcsapi = mesh.get("mcsapi") or {}
    old, new = mesh.get("enableMCSAPISupport") is True, mcsapi.get("enabled") is True
    enabled = new if version >= (1, 20, 0) else (new or old) if version >= (1, 19, 0) else old
    data = {MCS_API_CONFIG_KEY: "true" if enabled else "false"}
    if version >= (1, 19, 0):
        data[INSTALL_CRDS_CONFIG_KEY] = "false" if mcsapi.get("installCRDs") is False else "true"
    return data


def mcs_enabled(store: Store) -> bool:
    config = _object(store, CMS, NS, "cilium-config") or {}
    return str((config.get("data") or {}).get(MCS_API_CONFIG_KEY, "")).lower() == "true"


def derived_name(namespace: str, name: str) -> str:
    """The derived Service's name: the same in every member (a hash of namespace and name)."""
    return f"derived-{_hash_name(f'{namespace}/{name}')}"


def clusterset_address(store: Store, host: str) -> str | None:
    """What ``<svc>.<ns>.svc.clusterset.local`` resolves to in this cluster: the ServiceImport's first IP."""
    if not host.endswith(CLUSTERSET_SUFFIX) or not mcs_enabled(store):
        return None
    parts = host[: -len(CLUSTERSET_SUFFIX)].split(".")
    if len(parts) != 2:
        return None
    imported = _object(store, IMPORTS, parts[1], parts[0])
    ips = _get(imported or {}, "spec", "ips", default=[]) or []
    return str(ips[0]) if ips else None


def _cilium_name(store: Store) -> str:
    config = _object(store, CMS, NS, "cilium-config") or {}
    return str((config.get("data") or {}).get("cluster-name") or "")


def _configured_peers(store: Store) -> set[str]:
    """Peer names of the agents' (or KVStoreMesh's) mesh configuration: one file per peer, without a dot."""
    names: set[str] = set()
    for secret in _MESH_SECRETS:
        names.update(k for k in _secret_files(_object(store, "v1/secrets", NS, secret)) if "." not in k)
    return names


def _exports(store: Store) -> dict[tuple[str, str], Obj]:
    """(namespace, name) → the exported Service, for every ServiceExport whose Service exists."""
    found: dict[tuple[str, str], Obj] = {}
    for export in _objects(store, EXPORTS):
        ns, name = export["metadata"]["namespace"], export["metadata"]["name"]
        svc = _object(store, SVCS, ns, name)
        if svc is not None:
            found[(ns, name)] = svc
    return found


class McsApi:
    """Cilium's MCS-API controllers: every member's ServiceImports and derived Services (see the module)."""

    clusters: list[SimCluster]

    def _reconcile_mcs(self, c: SimCluster) -> None:
        """Bring every MCS-API member to what the members' exports say. Imports depend on the peers' exports,
        so one reconcile looks at all of them (writes only what differs; the writes kick the others)."""
        members = [m for m in self.clusters if mcs_enabled(m.store)]
        exports = {m.name: _exports(m.store) for m in members}
        names = {m.name: _cilium_name(m.store) for m in members}
        for importer in members:
            peers = _configured_peers(importer.store)
            seen = [m for m in members if m is importer or names[m.name] in peers]
            wanted: dict[tuple[str, str], list[SimCluster]] = {}
            for member in seen:
                for key in exports[member.name]:
                    wanted.setdefault(key, []).append(member)
            for (ns, name), exporters in sorted(wanted.items()):
                if _object(importer.store, "v1/namespaces", "", ns) is None:
                    continue  # the operator imports into existing namespaces only
                self._import(importer, ns, name, exporters, exports)
            self._drop_stale(importer, set(wanted))

    def _import(
        self, c: SimCluster, ns: str, name: str, exporters: list[SimCluster], exports: dict[str, dict[Any, Obj]]
    ) -> None:
        local = exports[c.name].get((ns, name))
        source = local if local is not None else exports[exporters[0].name][(ns, name)]
        ports = [
            {k: p[k] for k in ("name", "port", "protocol", "targetPort") if k in p}
            for p in _get(source, "spec", "ports", default=[]) or []
        ]
        derived = derived_name(ns, name)
        spec: Obj = {"type": "ClusterIP", "ports": ports}
        if local is not None and _get(local, "spec", "selector"):
            spec["selector"] = dict(local["spec"]["selector"])
        meta = {"labels": {SERVICE_NAME_LABEL: name}, "annotations": dict(_GLOBAL)}
        _ensure(c.store, SVCS, ns, derived, meta, {"spec": spec}, keep=("clusterIP", "clusterIPs"))
        cluster_ip = _get(_object(c.store, SVCS, ns, derived) or {}, "spec", "clusterIP")
        members = sorted({_cilium_name(m.store) for m in exporters})
        imported: Obj = {
            "spec": {
                "type": "ClusterSetIP",
                "ports": [{k: p[k] for k in ("name", "port", "protocol") if k in p} for p in ports],
                "ips": [str(cluster_ip)] if cluster_ip else [],
            },
            "status": {"clusters": [{"cluster": m} for m in members]},
        }
        _ensure(c.store, IMPORTS, ns, name, {"labels": {SERVICE_NAME_LABEL: name}}, imported)

    def _drop_stale(self, c: SimCluster, wanted: set[tuple[str, str]]) -> None:
        """ServiceImports (and their derived Services) no member exports any more."""
        for imported in _objects(c.store, IMPORTS):
            ns, name = imported["metadata"]["namespace"], imported["metadata"]["name"]
            if (ns, name) in wanted:
                continue
            c.store.delete(IMPORTS, ns, name)
            if _object(c.store, SVCS, ns, derived_name(ns, name)) is not None:
                c.store.delete(SVCS, ns, derived_name(ns, name))


def _ensure(store: Store, key: str, ns: str, name: str, meta: Obj, body: Obj, *, keep: tuple[str, ...] = ()) -> None:
    """Create the object, or bring its labels, annotations and ``body`` parts to these (``keep``: spec fields
    others allocate, left as they are); writes nothing when it already holds them."""
    current = _object(store, key, ns, name)
    if current is None:
        store.create(key, {"metadata": {"name": name, "namespace": ns, **meta}, **body})
        return
    same = all((current.get("metadata") or {}).get(k) == v for k, v in meta.items())
    for part, value in body.items():
        have = dict(current.get(part) or {})
        for field in keep:
            have.pop(field, None)
        same = same and have == value
    if same:
        return

    def update(obj: Obj) -> None:
        obj["metadata"].update(meta)
        for part, value in body.items():
            kept = {f: obj[part][f] for f in keep if f in (obj.get(part) or {})}
            obj[part] = {**value, **kept}

    store.mutate(key, ns, name, update)
