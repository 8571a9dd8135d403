"""What Cilium agents' output says, as the pipeline sees it: health nodes, services and their backends.

Built only by the parsers (``health_output``, ``service_output``); frozen, so a parsed answer cannot be
edited into a different one on its way to a decision.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["Backend", "HealthNode", "HealthStatus", "Service"]


class HealthNode(BaseModel):
    """One node as seen by the local agent's health prober."""

    model_config = ConfigDict(frozen=True)

    name: str
    """As Cilium prints it (`cluster-1/node-a`), without the ` (localhost)` marker."""
    cluster: str | None
    """Part before `/`; None when Cilium prints no prefix (cluster named `default`)."""
    node: str
    reachable: bool
    """Every probed path OK; unknown or missing results count as not reachable."""
    local: bool
    host_ip: str | None
    endpoint_ip: str | None
    failures: list[str]
    """One entry per failing path, e.g. `endpoint ICMP: Connection timed out`."""


class HealthStatus(BaseModel):
    """The whole `cilium-health status` answer of one agent."""

    model_config = ConfigDict(frozen=True)

    nodes: list[HealthNode]
    """Nodes as listed. The succinct layout omits healthy nodes, so compare with `summary_total`."""
    timestamp: datetime | None
    local: str | None
    """Name of the node the command ran on."""
    summary_reachable: int | None = None
    """`N` of the `Cluster health: N/M reachable` line (succinct, 1.17+ layouts); None otherwise."""
    summary_total: int | None = None
    """`M` of that line: how many nodes the agent knows, listed or not."""
    probe_interval: str | None = None
    """1.18+: `(Probe interval: …)` / JSON `probeInterval`, as printed."""

    @property
    def lists_every_node(self) -> bool:
        """False when the layout left healthy nodes out (succinct, summary-only)."""
        return self.summary_total is None or len(self.nodes) >= self.summary_total


class Backend(BaseModel):
    """One backend of a load-balanced frontend."""

    model_config = ConfigDict(frozen=True)

    address: str
    """`ip:port`, IPv6 as `[ip]:port`, without protocol."""
    ip: str
    port: int
    protocol: str | None
    state: str
    preferred: bool
    """Affinity marker; on 1.18+ set on every backend (cilium#43681), so not proof of affinity there."""
    node_name: str | None
    """JSON only, and only on some local backends: its absence does not prove a remote backend."""


class Service(BaseModel):
    """One frontend of `cilium service list` (one per protocol on 1.17+)."""

    model_config = ConfigDict(frozen=True)

    id: int | None
    frontend: str
    """`ip:port`, without the `/PROTO` suffix."""
    protocol: str | None
    type: str
    """`ClusterIP`, `NodePort`, …, without ` (Remote)`."""
    remote: bool
    name: str | None
    namespace: str | None
    backends: list[Backend]
