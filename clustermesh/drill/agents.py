"""What the Cilium agents list for the drill Service: read from every agent, backends placed by pod CIDR.

Which cluster a backend lives in is judged by the pod CIDRs of the clusters, never by the
``(preferred)`` marker alone: from Cilium 1.18 every listed backend shows it (cilium#43681), and
``nodeName`` is missing on some local backends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium import Service, parse_service_list
from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.drill.client import DrillClient
from clustermesh.drill.text import cut
from clustermesh.errors import ClusterMeshError, KubeApiError
from clustermesh.steps.models import ClusterFacts

AGENT_NAMESPACE = "kube-system"
AGENT_LABEL = "k8s-app=cilium"
AGENT_CONTAINER = "cilium-agent"
AGENT_WORKERS = 8

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BackendView(BaseModel):
    """One backend as one agent lists it, placed in a cluster by pod CIDR."""

    model_config = ConfigDict(frozen=True)

    address: str
    ip: str
    cluster: str | None
    """The cluster whose pod CIDR holds the IP; None when no cluster's does (a stale or foreign IP)."""
    local: bool
    """In the listing agent's own cluster."""
    preferred: bool
    """As the agent reports it; on 1.18+ true for every listed backend, so only a hint there."""
    state: str
    agent: str
    """The agent pod that listed it."""

    def describe(self) -> str:
        where = "local" if self.local else (self.cluster or "unknown cluster")
        return f"{self.address} ({where}, {self.state}{', preferred' if self.preferred else ''})"


class AgentView(BaseModel):
    """What one agent lists for the drill Service's frontend, or why it could not be read."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    agent: str
    node: str | None
    frontend: str
    listed: bool
    backends: list[BackendView]
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.agent}"

    def active(self) -> set[str]:
        return {b.ip for b in self.backends if b.state == "active"}


def _owner(ip: str, networks: Mapping[str, Sequence[Network]]) -> str | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for cluster, nets in networks.items():
        if any(address.version == n.version and address in n for n in nets):
            return cluster
    return None


def classify_backends(
    service: Service, *, cluster: str, agent: str, pod_cidrs: Mapping[str, Sequence[str]]
) -> list[BackendView]:
    """Place every backend of ``service`` in the cluster whose pod CIDR holds its IP.

    Pod CIDRs, not ``(preferred)``: 1.18+ marks every listed backend preferred (cilium#43681).
    """
    networks = {name: [ipaddress.ip_network(c, strict=False) for c in cidrs] for name, cidrs in pod_cidrs.items()}
    views = []
    for backend in service.backends:
        owner = _owner(backend.ip, networks)
        views.append(
            BackendView(
                address=backend.address,
                ip=backend.ip,
                cluster=owner,
                local=owner == cluster,
                preferred=backend.preferred,
                state=backend.state,
                agent=agent,
            )
        )
    return views


def frontend_address(ip: str, port: int) -> str:
    """``ip:port`` as the agents list a frontend, with brackets around an IPv6 address."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def find_frontend(services: Iterable[Service], frontend: str) -> Service | None:
    """The TCP entry for ``frontend`` ("ip:port"); before 1.17 entries carry no protocol at all."""
    for service in services:
        if service.frontend == frontend and service.protocol in (None, "TCP"):
            return service
    return None


def _read_agent(
    client: DrillClient,
    cluster: str,
    pod: str,
    node: str | None,
    profile: CiliumProfile,
    frontend: str,
    pod_cidrs: Mapping[str, Sequence[str]],
    timeout: float,
) -> AgentView:
    """Text first (the guide's command); JSON only when the text cannot be had or read."""
    problems: list[str] = []
    base = [profile.agent_cli, "service", "list"]
    for argv in ([*base, "--clustermesh-affinity"], [*base, "-o", "json"]):
        shown = " ".join(argv)
        try:
            out = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, argv, timeout=timeout)
        except KubeApiError as exc:
            problems.append(f"`{shown}`: {cut(exc.problem)}")
            continue
        if not out.ok:
            problems.append(f"`{shown}` exited {out.exit_code}: {cut(out.stderr or out.stdout)}")
            continue
        try:
            services = parse_service_list(out.stdout)
        except ClusterMeshError as exc:
            problems.append(cut(str(exc)))
            continue
        service = find_frontend(services, frontend)
        backends = (
            [] if service is None else classify_backends(service, cluster=cluster, agent=pod, pod_cidrs=pod_cidrs)
        )
        return AgentView(
            cluster=cluster, agent=pod, node=node, frontend=frontend, listed=service is not None, backends=backends
        )
    return AgentView(
        cluster=cluster,
        agent=pod,
        node=node,
        frontend=frontend,
        listed=False,
        backends=[],
        error="; ".join(problems),
    )


def read_backends(
    client: DrillClient,
    cluster: str,
    facts: Mapping[str, ClusterFacts],
    frontend: str,
    *,
    timeout: float,
) -> list[AgentView]:
    """Ask every Cilium agent of ``cluster`` which backends it has for ``frontend`` ("clusterIP:port").

    Every agent, not one: each node programs its own datapath, so one lagging agent means some pods
    still send traffic to backends that are gone. An agent that cannot be read comes back with ``error``.
    """
    profile = profile_for(facts[cluster].cilium_version)
    pod_cidrs = {name: list(f.pod_cidrs) for name, f in facts.items()}
    agents = [
        (str(p["metadata"]["name"]), (p.get("spec") or {}).get("nodeName"))
        for p in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL)
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    agents.sort()
    if not agents:
        return []
    with ThreadPoolExecutor(max_workers=min(AGENT_WORKERS, len(agents))) as pool:
        return list(
            pool.map(
                lambda a: _read_agent(client, cluster, a[0], a[1], profile, frontend, pod_cidrs, timeout),
                agents,
            )
        )
