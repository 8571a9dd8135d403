"""What Cilium agents see across the simulated clusters: mesh connections, node health, service backends.

Everything is computed from the stores' objects only (cilium-config, the ``cilium-clustermesh`` Secret,
the agent DaemonSet's hostAliases, the clustermesh-apiserver Service/pods/certificates, nodes, pods,
services) plus the injected ``MeshFaults``. The sandbox is the pipeline's opponent: an agent connects to
a peer only when everything a real mesh needs is right, and the reason it gives otherwise is the error
text a real agent would log. Nothing here writes to a store.

The agents' view lives in ``sandbox/datapath/``, one module per concern: ``state`` (the stores and
faults it is computed from), ``facts`` (one cluster as its agents read it), ``links`` (connections and
node health), ``services`` (global services, remote-cluster status, the agent snapshot) and ``exec``
(commands in an agent pod). This module is their public face.
"""

from __future__ import annotations

from sandbox.datapath.exec import AGENT_BINARIES, SHELLS, exec_command
from sandbox.datapath.links import connection, health_report
from sandbox.datapath.services import agent_snapshot, peer_statuses, service_entries
from sandbox.datapath.state import (
    CLUSTERMESH_DIR,
    DEFAULT_MAX_CONNECTED,
    FAULT_KINDS,
    ICMP_TIMEOUT,
    NGINX_BODY,
    NS,
    UNREACHABLE,
    Clusters,
    ClusterState,
    Connection,
    MeshFaults,
    Network,
    health_endpoint_ip,
)

__all__ = [
    "AGENT_BINARIES",
    "CLUSTERMESH_DIR",
    "DEFAULT_MAX_CONNECTED",
    "FAULT_KINDS",
    "ICMP_TIMEOUT",
    "NGINX_BODY",
    "NS",
    "SHELLS",
    "UNREACHABLE",
    "ClusterState",
    "Clusters",
    "Connection",
    "MeshFaults",
    "Network",
    "agent_snapshot",
    "connection",
    "exec_command",
    "health_endpoint_ip",
    "health_report",
    "peer_statuses",
    "service_entries",
]
