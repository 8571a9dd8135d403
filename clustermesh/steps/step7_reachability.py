"""Step 7 of the guide for N clusters: the firewall openings a mesh needs, and which of them are shut.

The guide lists "UDP 8472 and TCP 4240 between the worker nodes"; in practice ICMP (the health probe's
echo) and TCP 2379 to each peer's clustermesh-apiserver matter too (reference/cilium.md §4, pitfall 9).
The pipeline cannot open a firewall, so it says exactly what to open (``firewall_rules``) and, from
the health matrix, what is evidently closed (``blocked_paths``): an operator acts on "UDP 8472 from
cluster-1 to cluster-2", not on "health check failed".

Blocked paths are kept per direction (src → dst), never merged: firewalls are often asymmetric, and
the matrix cell of each direction is its own evidence.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from clustermesh.steps.step8_health import HealthCell, HealthClient, HealthMatrix, probe_mesh

__all__ = [
    "APISERVER_PATH",
    "BlockedPath",
    "FirewallReport",
    "FirewallRule",
    "ICMP_PATH",
    "NodeAddress",
    "TCP_4240_PATH",
    "UDP_8472_PATH",
    "blocked_paths",
    "check_reachability",
    "firewall_report",
    "firewall_rules",
    "list_node_addresses",
    "rules_table",
]

UDP_8472_PATH = "UDP 8472 (VXLAN)"
TCP_4240_PATH = "TCP 4240"
ICMP_PATH = "ICMP"
HOST_PROBE_PATH = "TCP 4240 or ICMP"
NODE_DOWN_PATH = "all traffic to the nodes (nodes down, or UDP 8472, TCP 4240 and ICMP all blocked)"
APISERVER_PATH = "TCP 2379 to the clustermesh-apiserver, or the mesh configuration (addresses/certificates)"


class NodeClient(Protocol):
    def list_nodes(self) -> list[dict[str, Any]]: ...


class NodeAddress(BaseModel):
    """A worker node and the address its peers' firewalls see (the InternalIP, as Cilium probes it)."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    node: str
    internal_ip: str | None


def list_node_addresses(client: NodeClient, cluster: str) -> list[NodeAddress]:
    """Nodes sorted by name; ``internal_ip`` is None for a node that reports none (rules skip it)."""
    out = []
    for n in client.list_nodes():
        name = str((n.get("metadata") or {}).get("name") or "")
        addresses = (n.get("status") or {}).get("addresses") or []
        ip = next(
            (str(a.get("address")) for a in addresses if isinstance(a, dict) and a.get("type") == "InternalIP"),
            None,
        )
        out.append(NodeAddress(cluster=cluster, node=name, internal_ip=ip))
    return sorted(out, key=lambda a: a.node)


class FirewallRule(BaseModel):
    """One opening, from every node of ``src_cluster`` to the addresses of ``dst_cluster``."""

    model_config = ConfigDict(frozen=True)

    src_cluster: str
    dst_cluster: str
    protocol: Literal["udp", "tcp", "icmp"]
    port: int | None
    purpose: str
    sources: list[str]
    """Host routes (``10.0.0.2/32``, ``fd00::2/128``); a name when the address is not an IP."""
    destinations: list[str]


def _host_route(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a hostname (LoadBalancer with a DNS name): the firewall admin resolves it
    return f"{ip}/{ip.max_prefixlen}"


_NODE_OPENINGS: tuple[tuple[Literal["udp", "tcp", "icmp"], int | None, str], ...] = (
    ("udp", 8472, "VXLAN: pod traffic between the clusters"),
    ("tcp", 4240, "cilium-health HTTP checks between nodes"),
    ("icmp", None, "cilium-health ICMP echo between nodes"),
)


def firewall_rules(
    nodes: Mapping[str, list[NodeAddress]], apiservers: Mapping[str, tuple[str, int]]
) -> list[FirewallRule]:
    """Every opening the mesh needs, for every ordered pair of distinct clusters.

    ``apiservers`` maps a cluster to its clustermesh-apiserver ``(address, port)`` (LoadBalancer
    address and 2379, or a node address and the nodePort); a cluster without one gets no 2379 rule.
    """
    routes = {c: [_host_route(a.internal_ip) for a in addrs if a.internal_ip] for c, addrs in nodes.items()}
    rules: list[FirewallRule] = []
    for src, sources in routes.items():
        for dst, destinations in routes.items():
            if src == dst:
                continue
            for protocol, port, purpose in _NODE_OPENINGS:
                rules.append(
                    FirewallRule(
                        src_cluster=src,
                        dst_cluster=dst,
                        protocol=protocol,
                        port=port,
                        purpose=purpose,
                        sources=list(sources),
                        destinations=list(destinations),
                    )
                )
            if dst in apiservers:
                address, port = apiservers[dst]
                rules.append(
                    FirewallRule(
                        src_cluster=src,
                        dst_cluster=dst,
                        protocol="tcp",
                        port=port,
                        purpose=f"agents of {src} read {dst}'s state from its clustermesh-apiserver",
                        sources=list(sources),
                        destinations=[_host_route(address)],
                    )
                )
    return rules


def rules_table(rules: Sequence[FirewallRule]) -> list[dict[str, str]]:
    """One row per rule, for a table artifact."""
    return [
        {
            "from": r.src_cluster,
            "to": r.dst_cluster,
            "protocol": r.protocol.upper(),
            "port": "echo" if r.port is None else str(r.port),
            "sources": ", ".join(r.sources),
            "destinations": ", ".join(r.destinations),
            "purpose": r.purpose,
        }
        for r in rules
    ]


class BlockedPath(BaseModel):
    """Something evidently closed from ``src_cluster`` to ``dst_cluster``, with the probes that show it."""

    model_config = ConfigDict(frozen=True)

    src_cluster: str
    dst_cluster: str
    what: str
    evidence: list[str]


def _evidence(cell: HealthCell, prefixes: tuple[str, ...], limit: int = 3) -> list[str]:
    picked = [f for f in cell.failures if any(f": {p}" in f for p in prefixes)]
    return picked[:limit] or [cell.describe()]


def _classify(cell: HealthCell, reverse: HealthCell | None) -> list[BlockedPath]:
    """Which openings a cell's failing probes point at (reference/cilium.md §4, pitfall 9)."""
    found: list[BlockedPath] = []

    def add(what: str, evidence: list[str]) -> None:
        found.append(BlockedPath(src_cluster=cell.src, dst_cluster=cell.dst, what=what, evidence=evidence))

    if cell.missing:
        add(
            APISERVER_PATH,
            [
                f"agents of {cell.src} do not list {len(cell.missing)} node(s) of {cell.dst}: "
                + ", ".join(cell.missing[:5])
            ],
        )
    paths = set(cell.failing_paths)
    host_icmp, host_http = "host ICMP" in paths, "host HTTP" in paths
    endpoint = bool(paths & {"endpoint ICMP", "endpoint HTTP", "endpoint"})
    if host_icmp and host_http and endpoint:
        add(NODE_DOWN_PATH, _evidence(cell, ("host", "endpoint")))
        return found
    if host_http:
        add(TCP_4240_PATH, _evidence(cell, ("host HTTP",)))
    if host_icmp:
        add(ICMP_PATH, _evidence(cell, ("host ICMP",)))
    if "host" in paths and not (host_icmp or host_http):  # table layouts do not say which probe
        add(HOST_PROBE_PATH, _evidence(cell, ("host",)))
    if endpoint:
        evidence = _evidence(cell, ("endpoint",))
        if reverse is not None and reverse.missing:
            evidence.append(
                f"or {cell.dst} is not connected back to {cell.src} (see {reverse.src} → {reverse.dst}): "
                "replies to pods cannot be routed"
            )
        add(UDP_8472_PATH, evidence)
    return found


def blocked_paths(matrix: HealthMatrix) -> list[BlockedPath]:
    """What the health failures say is closed, per direction between distinct clusters.

    Local cells are left out: traffic inside one cluster is not this pipeline's firewall.
    """
    out: list[BlockedPath] = []
    for cell in matrix.cells:
        if cell.src == cell.dst or cell.healthy or cell.agents == 0:
            continue
        reverse = next((c for c in matrix.cells if c.src == cell.dst and c.dst == cell.src), None)
        out.extend(_classify(cell, reverse))
    return out


class FirewallReport(BaseModel):
    """Step 7's result: what must be open, and what the health probes show is not."""

    model_config = ConfigDict(frozen=True)

    rules: list[FirewallRule]
    blocked: list[BlockedPath]
    measured: HealthMatrix | None = Field(default=None, exclude=True, repr=False)
    """The health matrix ``blocked`` was read from, kept for step 8 to start from; left out of dumps
    (the setup reports step 8's matrix)."""

    @property
    def ok(self) -> bool:
        return not self.blocked


def firewall_report(rules: Sequence[FirewallRule], matrix: HealthMatrix | None) -> FirewallReport:
    """Rules plus what a health matrix (if already taken) shows blocked."""
    blocked = blocked_paths(matrix) if matrix is not None else []
    return FirewallReport(rules=list(rules), blocked=blocked, measured=matrix)


def check_reachability(
    clients: Mapping[str, HealthClient], apiservers: Mapping[str, tuple[str, int]], *, exec_timeout: float
) -> FirewallReport:
    """Step 7: the rules the mesh needs, and what one health probe of every agent shows blocked.

    The report keeps the probe's matrix (``measured``) so step 8 starts from it
    (``wait_for_mesh_health(first=…)``) instead of asking every agent again: a mesh already healthy
    here is probed once for both steps.
    """
    nodes = {name: list_node_addresses(client, name) for name, client in clients.items()}
    matrix = probe_mesh(clients, exec_timeout=exec_timeout)
    return firewall_report(firewall_rules(nodes, apiservers), matrix)
