"""Global services (backends per cluster, affinity), remote-cluster status and the agent snapshot."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.cilium_model import (
    AgentSnapshot,
    Backend,
    HealthReport,
    MeshConfigCheck,
    PeerStatus,
    ServiceEntry,
)
from sandbox.datapath.facts import _FACTS_CACHE_LIMIT, _Facts, _PeerConfig
from sandbox.datapath.links import _health, _Mesh
from sandbox.datapath.remote_cache import stale_peers
from sandbox.datapath.state import Clusters, Connection, MeshFaults, _get, _is_true, _ready
from sandbox.store import Obj, Store
from sandbox.versions import affinity_none_drops_remote
from sandbox.versions import facts as version_facts


def _annotation(svc: Obj, ver: tuple[int, int, int], new: str, old: str) -> str | None:
    """An annotation as this Cilium version reads it: 1.13 knows only the ``io.cilium/*`` names."""
    ann = _get(svc, "metadata", "annotations", default={}) or {}
    if version_facts(ver).service_cilium_io_annotations and new in ann:
        return str(ann[new])
    return str(ann[old]) if old in ann else None


def _is_global(svc: Obj, f: _Facts) -> bool:
    """Annotated global; from 1.20 also in a global namespace (its annotation, else cilium-config's default)."""
    if not _is_true(_annotation(svc, f.ver, "service.cilium.io/global", "io.cilium/global-service")):
        return False
    if not version_facts(f.ver).global_namespaces:
        return True
    namespace = str(_get(svc, "metadata", "namespace", default=""))
    return f.namespace_global.get(namespace, f.default_global_namespace)


def _is_shared(svc: Obj, ver: tuple[int, int, int]) -> bool:
    value = _annotation(svc, ver, "service.cilium.io/shared", "io.cilium/shared-service")
    return value is None or value.strip().lower() != "false"


def _affinity(svc: Obj, ver: tuple[int, int, int]) -> str | None:
    value = _annotation(svc, ver, "service.cilium.io/affinity", "io.cilium/service-affinity")
    return value.strip().lower() if value is not None else None


def _selects(selector: dict[str, Any], pod: Obj) -> bool:
    labels = _get(pod, "metadata", "labels", default={}) or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _target_port(port: Obj, pod: Obj) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    text = str(target)
    if text.isdigit():
        return int(text)
    for container in _get(pod, "spec", "containers", default=[]) or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == text and cport.get("containerPort"):
                return int(cport["containerPort"])
    return None


@dataclass(frozen=True)
class _Backend:
    """A backend with where it lives, which the datapath needs and ``Backend`` does not carry."""

    backend: Backend
    cluster: _Facts
    node: str | None
    local: bool


def _pod_backends(f: _Facts, svc: Obj, port: Obj, local: bool) -> list[_Backend]:
    selector = _get(svc, "spec", "selector", default={}) or {}
    if not selector:
        return []  # no selector: endpoints are managed by hand, which the sandbox does not model
    ns = str(_get(svc, "metadata", "namespace", default=""))
    proto = str(port.get("protocol") or "TCP")
    out = []
    for pod in f.pods_by_ns.get(ns, []):
        ip = _get(pod, "status", "podIP")
        if not ip or not _selects(selector, pod) or _get(pod, "status", "phase") in ("Succeeded", "Failed"):
            continue
        if _get(pod, "metadata", "deletionTimestamp"):
            state = "terminating"
        elif _ready(pod):
            state = "active"
        else:
            continue
        target = _target_port(port, pod)
        if target is None:
            continue
        node = _get(pod, "spec", "nodeName")
        backend = Backend(str(ip), target, proto, state, node_name=str(node) if local and node else None)
        out.append(_Backend(backend, f, str(node) if node else None, local))
    return out


def _matching_port(svc: Obj, port: Obj) -> Obj | None:
    """The remote service's port that merges with the local one: by name, or by number when unnamed."""
    for candidate in _get(svc, "spec", "ports", default=[]) or []:
        if port.get("name") and candidate.get("name") == port.get("name"):
            return dict(candidate)
        if not port.get("name") and candidate.get("port") == port.get("port"):
            return dict(candidate)
    return None


def _with_affinity(backends: list[_Backend], affinity: str | None, ver: tuple[int, int, int]) -> list[_Backend]:
    """Mark preferred backends as the agent's affinity logic does, and apply the 1.18 ``none`` bug."""
    if affinity == "none" and affinity_none_drops_remote(ver):
        return [b for b in backends if b.local]  # cilium#46623: remote backends dropped
    if affinity not in ("local", "remote"):
        return backends
    want_local = affinity == "local"
    if not any(b.local == want_local and b.backend.state == "active" for b in backends):
        return backends  # nothing to prefer: the other side serves, none preferred
    out = []
    for b in backends:
        if b.local == want_local and b.backend.state == "active":
            b = _Backend(dataclasses.replace(b.backend, preferred=True), b.cluster, b.node, b.local)
        out.append(b)
    return out


@dataclass(frozen=True)
class _Frontend:
    entry: ServiceEntry
    backends: list[_Backend]
    service: Obj
    port: Obj


_FrontendKey = tuple[str, str, str, str, int, str, str]  # uid, ns, name, ip (or "<node>"), port, proto, type


@dataclass
class _IdAllocator:
    """Service IDs of one cluster, handed out once per frontend and never reused, like the agent's."""

    store: Store
    ids: dict[_FrontendKey, int] = field(default_factory=dict)
    next_id: int = 1

    def assign(self, keys: list[_FrontendKey]) -> dict[_FrontendKey, int]:
        live = set(keys)
        for gone in [k for k in self.ids if k not in live]:
            del self.ids[gone]
        for key in keys:
            if key not in self.ids:
                self.ids[key] = self.next_id
                self.next_id += 1
        return self.ids


_ID_ALLOCATORS: dict[int, _IdAllocator] = {}


def _allocator(store: Store) -> _IdAllocator:
    found = _ID_ALLOCATORS.get(id(store))
    if found is None or found.store is not store:
        if len(_ID_ALLOCATORS) >= _FACTS_CACHE_LIMIT:
            _ID_ALLOCATORS.pop(next(iter(_ID_ALLOCATORS)))
        found = _ID_ALLOCATORS[id(store)] = _IdAllocator(store)
    return found


@dataclass
class _PlannedPort:
    """One port of a service with the frontends it gets (ID, address, port, type), before any backend."""

    service: Obj
    port: Obj
    frontends: list[tuple[int, str, int, str]]


def _plan_frontends(mesh: _Mesh, src: _Facts, node: str) -> list[_PlannedPort]:
    """Every frontend the agent on ``node`` programs, with its ID: cheap, no backends looked up yet.

    IDs are allocated the first time the sandbox sees a frontend (services first seen together in
    creation order), so they stay put when services appear or an address is added later. Every agent
    exec plans (whatever it prints), so IDs are handed out at the same moments however lazily the
    backends are looked up.
    """
    me = src.node_by_name.get(node)
    pending: list[tuple[_FrontendKey, str, int, str, int]] = []  # key, ip, port, type, index in ports
    ports: list[tuple[Obj, Obj]] = []
    for svc in src.services:
        spec = svc.get("spec") or {}
        cluster_ip = str(spec.get("clusterIP") or "")
        if not cluster_ip or cluster_ip == "None":
            continue
        uid = str(_get(svc, "metadata", "uid", default=""))
        ns = str(_get(svc, "metadata", "namespace", default=""))
        name = str(_get(svc, "metadata", "name", default=""))
        svc_type = str(spec.get("type") or "ClusterIP")
        lb_ips = [
            str(i["ip"])
            for i in _get(svc, "status", "loadBalancer", "ingress", default=[]) or []
            if isinstance(i, dict) and i.get("ip")
        ]
        for port in spec.get("ports") or []:
            proto = str(port.get("protocol") or "TCP")
            svc_port = int(port.get("port") or 0)
            addrs: list[tuple[str, str, int, str]] = [(cluster_ip, cluster_ip, svc_port, "ClusterIP")]
            addrs += [(str(ip), str(ip), svc_port, "ExternalIPs") for ip in spec.get("externalIPs") or []]
            node_port = port.get("nodePort")
            if svc_type in ("NodePort", "LoadBalancer") and node_port:
                if me is not None and me.ip:
                    addrs.append((me.ip, "<node>", int(node_port), "NodePort"))  # same ID on every node
                addrs.append(("0.0.0.0", "0.0.0.0", int(node_port), "NodePort"))
            if svc_type == "LoadBalancer":
                addrs += [(ip, ip, svc_port, "LoadBalancer") for ip in lb_ips]
            for ip, key_ip, fport, kind in addrs:
                pending.append(((uid, ns, name, key_ip, fport, proto, kind), ip, fport, kind, len(ports)))
            ports.append((svc, port))
    ids = _allocator(mesh.states[src.name].store).assign([p[0] for p in pending])
    planned = [_PlannedPort(svc, port, []) for svc, port in ports]
    for key, ip, fport, kind, index in pending:
        planned[index].frontends.append((ids[key], ip, fport, kind))
    return planned


def _frontends(mesh: _Mesh, src: _Facts, node: str, plan: list[_PlannedPort] | None = None) -> list[_Frontend]:
    """The planned frontends (``_plan_frontends``, planned now unless given) with their backends, by ID."""
    if plan is None:
        plan = _plan_frontends(mesh, src, node)
    peers = mesh.connected_peers(src, node) if plan else []
    if plan and mesh.agents_ready(src, node).ok:
        peers += stale_peers(mesh, src)  # lost but still held (remote_cache): until resync or cacheTTL
    out: list[_Frontend] = []
    for planned in plan:
        svc, port = planned.service, planned.port
        spec = svc.get("spec") or {}
        ns = str(_get(svc, "metadata", "namespace", default=""))
        name = str(_get(svc, "metadata", "name", default=""))
        is_global = _is_global(svc, src)
        affinity = _affinity(svc, src.ver) if is_global else None
        policy = str(spec.get("externalTrafficPolicy") or "Cluster")
        backends = _pod_backends(src, svc, port, local=True)
        if is_global:
            for dst in peers:
                remote = dst.services_by_key.get((ns, name))
                if remote is None or not _is_global(remote, dst) or not _is_shared(remote, dst.ver):
                    continue
                remote_port = _matching_port(remote, port)
                if remote_port is not None:
                    backends.extend(_pod_backends(dst, remote, remote_port, local=False))
        backends = _with_affinity(backends, affinity, src.ver)
        proto = str(port.get("protocol") or "TCP")
        for frontend_id, ip, fport, kind in planned.frontends:
            entry = ServiceEntry(
                id=frontend_id,
                frontend_ip=ip,
                frontend_port=fport,
                protocol=proto,
                type=kind,
                name=name,
                namespace=ns,
                backends=[b.backend for b in backends],
                traffic_policy=policy,
            )
            out.append(_Frontend(entry, backends, svc, port))
    return sorted(out, key=lambda fe: fe.entry.id)


def service_entries(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, *, now: datetime | None = None
) -> list[ServiceEntry]:
    """``cilium service list`` of the agent on ``node``: the truth, before any version's display quirks."""
    mesh = _Mesh(clusters, faults, now)
    return [fe.entry for fe in _frontends(mesh, mesh.facts(cluster), node)]


# ---- public: cilium status and the snapshot ------------------------------------------------------------


def _global_count(f: _Facts) -> int:
    return sum(1 for s in f.services if _is_global(s, f))


def _peer_status(mesh: _Mesh, src: _Facts, node: str, peer: _PeerConfig) -> PeerStatus:
    dst = next((d for d in mesh.others(src) if d.cilium_name == peer.name), None)
    if dst is not None:
        conn = mesh.connected(src, dst, node)
    else:
        server, conn = mesh.dial(src, peer)
        if conn.ok:
            conn = Connection(False, "remote cluster configuration required but not found")
    if dst is None or not conn.ok:
        return PeerStatus(name=peer.name, ready=False, num_failures=1, last_failure=mesh.now, error=conn.reason)
    pods = [p for ps in dst.pods_by_ns.values() for p in ps if _get(p, "status", "podIP")]
    workload = [p for p in pods if not _get(p, "spec", "hostNetwork")]
    identities = {
        (
            str(_get(p, "metadata", "namespace", default="")),
            tuple(sorted((_get(p, "metadata", "labels") or {}).items())),
        )
        for p in workload
    }
    shared = sum(1 for s in dst.services if _is_global(s, dst) and _is_shared(s, dst.ver))
    return PeerStatus(
        name=peer.name,
        ready=True,
        num_nodes=len(dst.nodes),
        num_identities=len(identities),
        num_services=shared,
        num_endpoints=len(workload) + sum(1 for n in dst.nodes if n.pod_cidr is not None),
        cluster_id=dst.cluster_id or 0,
    )


def peer_statuses(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, now: datetime | None = None
) -> list[PeerStatus]:
    """The ClusterMesh part of ``cilium status``: one entry per configured peer; none while restarting."""
    mesh = _Mesh(clusters, faults, now)
    return _peers(mesh, mesh.facts(cluster), node)


def _peers(mesh: _Mesh, src: _Facts, node: str) -> list[PeerStatus]:
    if not src.agent_ready.get(node, False):
        return []
    stale_peers(mesh, src)  # the agents notice a lost or returned peer here too (remote_cache's record)
    return [_peer_status(mesh, src, node, src.peers[name]) for name in sorted(src.peers)]


class _LazySnapshot(AgentSnapshot):
    """The ``AgentSnapshot`` of one agent, with each costly part computed when the CLI first reads it.

    One exec prints one thing: ``cilium-health status`` the health report (every node of the mesh),
    ``cilium service list`` the services, ``cilium status -o json`` the peers. The service IDs are
    still allocated here, for every exec, as when every part was computed up front.
    """

    def __init__(self, mesh: _Mesh, src: _Facts, node: str, ready: bool | None = None) -> None:
        # not the dataclass __init__: the fields below are set, the rest are the properties
        if ready is False and src.agent_ready.get(node, False):
            # the exec'd pod itself is restarting even though another agent pod on the node is ready
            src = dataclasses.replace(src, agent_ready={**src.agent_ready, node: False})
        for name, value in (
            ("_mesh", mesh),
            ("_src", src),
            ("_plan", _plan_frontends(mesh, src, node)),
            ("cilium_version", src.version),
            ("cluster_name", src.cilium_name),
            ("cluster_id", src.cluster_id or 0),
            ("node_name", node),
            ("mesh_enabled", src.mesh_configured or bool(src.peers)),
            ("kube_proxy_replacement", src.kpr),
        ):
            object.__setattr__(self, name, value)

    @functools.cached_property
    def health(self) -> HealthReport:  # type: ignore[override]
        return _health(self._mesh, self._src, self.node_name)

    @functools.cached_property
    def services(self) -> list[ServiceEntry]:  # type: ignore[override]
        return [fe.entry for fe in _frontends(self._mesh, self._src, self.node_name, self._plan)]

    @functools.cached_property
    def peers(self) -> list[PeerStatus]:  # type: ignore[override]
        return _peers(self._mesh, self._src, self.node_name)

    @functools.cached_property
    def global_services(self) -> int:  # type: ignore[override]
        return _global_count(self._src)

    @functools.cached_property
    def mesh_checks(self) -> list[MeshConfigCheck]:  # type: ignore[override]
        from sandbox.datapath.troubleshoot import mesh_checks  # only ``troubleshoot clustermesh`` reads it

        return mesh_checks(self._mesh, self._src)

    def resolved(self) -> AgentSnapshot:
        """A plain ``AgentSnapshot`` with every part computed."""
        return AgentSnapshot(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AgentSnapshot)})


def agent_snapshot(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, now: datetime | None = None
) -> AgentSnapshot:
    """Everything the agent on ``node`` of sandbox cluster ``cluster`` can print right now."""
    mesh = _Mesh(clusters, faults, now)
    return _LazySnapshot(mesh, mesh.facts(cluster), node).resolved()


# ---- public: kubectl exec ----------------------------------------------------------------------------
