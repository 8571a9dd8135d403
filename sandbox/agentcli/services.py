"""``cilium service list`` (``--clustermesh-affinity``, ``-o json``): the table and the service API model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from sandbox.agentcli.go import TabWriter, Version
from sandbox.cilium_model import Backend, ServiceEntry


def _addr(ip: str, port: int, protocol: str, scope: str, version: Version) -> str:
    """``L3n4Addr.String()``: ``ip:port``, ``/TCP`` from 1.17, ``/i`` for the internal scope."""
    host = f"[{ip}]" if ":" in ip else ip
    text = f"{host}:{port}"
    if version >= (1, 17):
        text += f"/{protocol.upper()}"
    if scope == "internal":
        text += "/i"
    return text


def _listed_backends(svc: ServiceEntry, version: Version) -> list[tuple[Backend, bool]]:
    """Backends as the agent's API lists them, with the ``preferred`` flag it reports.

    1.18+ (cilium#43681): with any preferred backend only those are listed; with none, all are listed;
    either way every listed backend is reported as preferred.
    """
    if version >= (1, 18):
        preferred = [b for b in svc.backends if b.preferred]
        return [(b, True) for b in (preferred or svc.backends)]
    return [(b, b.preferred) for b in svc.backends]


def _service_json(svc: ServiceEntry, version: Version) -> dict[str, Any]:
    frontend: dict[str, Any] = {"ip": svc.frontend_ip, "port": svc.frontend_port, "scope": svc.scope}
    if version >= (1, 17):
        frontend["protocol"] = svc.protocol.upper()
    flags: dict[str, Any] = {
        "extTrafficPolicy": svc.ext_traffic_policy or svc.traffic_policy,
        "intTrafficPolicy": svc.int_traffic_policy or svc.traffic_policy,
        "name": svc.name,
        "namespace": svc.namespace,
        "trafficPolicy": svc.traffic_policy,
        "type": svc.type,
    }
    if svc.remote or svc.cluster:
        flags["cluster"] = svc.cluster or "remote"
    backends: list[dict[str, Any]] = []
    for backend, preferred in _listed_backends(svc, version):
        item: dict[str, Any] = {"ip": backend.ip, "port": backend.port, "state": backend.state, "weight": 100}
        if backend.node_name:
            item["nodeName"] = backend.node_name
        if preferred:
            item["preferred"] = True
        if version >= (1, 17):
            item["protocol"] = backend.protocol.upper()
        if backend.zone and version >= (1, 16):
            item["zone"] = backend.zone
        backends.append(item)
    spec = {"backend-addresses": backends, "flags": flags, "frontend-address": frontend, "id": svc.id}
    return {"spec": spec, "status": {"realized": copy.deepcopy(spec)}}


def _format_service_list(
    services: Sequence[ServiceEntry], version: Version, affinity: bool, *, id_column: bool = True
) -> str:
    """``printServiceList``: tabwriter(5, 0, 3), every cell tab-terminated, rows sorted by ID.

    ``id_column=False`` prints the layout without the ``ID`` column (cilium#29055's printing code, which
    sorts by frontend); no released line is known to print it, the parser tests use it.
    """
    w = TabWriter(5, 0, 3)
    if not id_column:
        return _format_service_list_without_id(w, services, version, affinity)
    w.write("ID\tFrontend\tService Type\tBackend\t\n")
    for svc in sorted(services, key=lambda s: s.id):
        frontend = _addr(svc.frontend_ip, svc.frontend_port, svc.protocol, svc.scope, version)
        rows = _backend_rows(svc, version, affinity)
        w.write(f"{svc.id}\t{frontend}\t{_service_type(svc, version)}\t{rows[0] if rows else ''}\t\n")
        for row in rows[1:]:
            w.write(f"\t\t\t{row}\t\n")
    return w.getvalue()


def _service_type(svc: ServiceEntry, version: Version) -> str:
    return svc.type + (" (Remote)" if (svc.remote or svc.cluster) and version >= (1, 14) else "")


def _backend_rows(svc: ServiceEntry, version: Version, affinity: bool) -> list[str]:
    rows: list[str] = []
    for i, (backend, preferred) in enumerate(_listed_backends(svc, version), start=1):
        address = _addr(backend.ip, backend.port, backend.protocol, "external", version)
        text = f"{i} => {address} ({backend.state})"
        rows.append(text + (" (preferred)" if affinity and preferred else ""))
    return rows


def _format_service_list_without_id(
    w: TabWriter, services: Sequence[ServiceEntry], version: Version, affinity: bool
) -> str:
    """The ``Frontend  Service Type  Backend`` table, sorted by the frontend text (as Go's string sort)."""
    w.write("Frontend\tService Type\tBackend\t\n")
    table = sorted(
        ((_addr(s.frontend_ip, s.frontend_port, s.protocol, s.scope, version), s) for s in services),
        key=lambda pair: pair[0].encode(),
    )
    for frontend, svc in table:
        rows = _backend_rows(svc, version, affinity)
        w.write(f"{frontend}\t{_service_type(svc, version)}\t{rows[0] if rows else ''}\t\n")
        for row in rows[1:]:
            w.write(f"\t\t{row}\t\n")
    return w.getvalue()
