"""What a simulated Cilium agent knows at one moment, handed from the world to the output renderers.

``sandbox.world`` builds these from the cluster state; ``sandbox.cilium_cli`` prints them in the exact
format of a Cilium version. Neither knows how the other works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Probe:
    """One ICMP or HTTP probe: ok with a round-trip time, or an error text as Cilium prints it."""

    rtt_ns: int | None = None
    error: str | None = None  # e.g. "Connection timed out"; None means OK

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ProbedPath:
    """The host or health-endpoint address of a node, probed with ICMP and HTTP (port 4240)."""

    ip: str
    icmp: Probe
    http: Probe


@dataclass(frozen=True)
class HealthNode:
    """A node as ``cilium-health status`` lists it."""

    cluster: str  # the cluster name ("default" means: print the node name without a prefix)
    name: str  # node name without cluster prefix
    host: ProbedPath
    endpoint: ProbedPath | None  # None when the node has no health endpoint yet
    local: bool = False


@dataclass(frozen=True)
class HealthReport:
    nodes: list[HealthNode]  # the local node first
    timestamp: datetime
    probe_interval_s: float = 60.0
    last_probed: datetime | None = None


@dataclass(frozen=True)
class Backend:
    ip: str
    port: int
    protocol: str = "TCP"
    state: str = "active"  # active | terminating | quarantined | maintenance
    preferred: bool = False  # what the agent's affinity logic picked (the renderer applies version quirks)
    node_name: str | None = None  # set only on backends local to this cluster
    zone: str | None = None


@dataclass(frozen=True)
class ServiceEntry:
    id: int
    frontend_ip: str
    frontend_port: int
    protocol: str  # TCP | UDP
    type: str  # ClusterIP | NodePort | LoadBalancer | ...
    name: str
    namespace: str
    backends: list[Backend] = field(default_factory=list)
    remote: bool = False  # "(Remote)" flag on 1.14+
    traffic_policy: str = "Cluster"
    scope: str = "external"
    ext_traffic_policy: str | None = None  # None: same as traffic_policy
    int_traffic_policy: str | None = None  # None: same as traffic_policy (hubble-peer has "Local")
    cluster: str | None = None  # the remote cluster of a "(Remote)" service, as flags.cluster says


@dataclass(frozen=True)
class PeerStatus:
    """One remote cluster as ``cilium status`` shows it under ClusterMesh."""

    name: str
    ready: bool
    num_nodes: int = 0
    num_identities: int = 0
    num_services: int = 0
    num_endpoints: int = 0
    num_failures: int = 0
    last_failure: datetime | None = None
    cluster_id: int = 0
    error: str | None = None  # why it is not ready, as the agent would say


@dataclass(frozen=True)
class CertInfo:
    """One certificate as ``troubleshoot clustermesh`` prints it (never its PEM)."""

    serial: str  # hex, as Go's ``big.Int.Text(16)``
    subject: str  # RFC 4514, as Go's ``pkix.Name.String()``
    issuer: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class MeshConfigCheck:
    """What ``troubleshoot clustermesh`` finds for one remote cluster configuration, stage by stage.

    The first stage with an error ends the checks, as the agent's etcd client does (the datapath's verdict).
    """

    name: str
    config_error: str | None = None  # the configuration or a file it names cannot be loaded
    endpoint: str | None = None  # None: no endpoints configured
    endpoint_error: str | None = None
    resolved_ip: str | None = None  # None: an IP endpoint, or the name did not resolve
    dns_error: str | None = None
    tcp_error: str | None = None
    tls_error: str | None = None  # the client refusing the server (unknown authority, expired, name)
    client_auth_error: str | None = None  # the server refusing the client ("remote error: tls: …")
    root_cas: tuple[CertInfo, ...] = ()
    client_certs: tuple[CertInfo, ...] = ()
    client_verifies: bool = True  # the client certificate is issued by one of the root CAs


@dataclass(frozen=True)
class AgentSnapshot:
    """Everything an agent's CLI can print, for one agent pod."""

    cilium_version: str  # "1.13.8", "1.18.10", ...
    cluster_name: str
    cluster_id: int
    node_name: str
    health: HealthReport
    services: list[ServiceEntry]
    mesh_enabled: bool
    peers: list[PeerStatus]
    global_services: int = 0
    kube_proxy_replacement: str = "True"
    mesh_checks: list[MeshConfigCheck] = field(default_factory=list)  # troubleshoot clustermesh
