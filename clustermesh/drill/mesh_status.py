"""Which remote clusters each Cilium agent is connected to: the ClusterMesh part of ``cilium-dbg status -o json``.

The cluster-loss drill reads it to see a member's mesh control plane go (its peers report it not ready)
and come back (every agent of every member reports every peer ready again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clustermesh.drill.agents import AGENT_CONTAINER, AGENT_LABEL, AGENT_NAMESPACE
from clustermesh.drill.client import DrillClient
from clustermesh.drill.text import cut
from clustermesh.errors import KubeApiError

MESH_STATUS_CHECK = (
    "`kubectl -n kube-system exec <cilium pod> -c cilium-agent -- cilium-dbg status --all-clusters` "
    "(`cilium` on 1.13–1.14) and the clustermesh-apiserver Deployment and Service of the cluster named"
)


@dataclass(frozen=True)
class AgentPeers:
    """What one agent reports of its remote clusters: name → ready; ``error`` when it could not be read."""

    cluster: str
    agent: str
    ready: Mapping[str, bool]
    error: str | None = None


def parse_mesh_status(text: str) -> dict[str, bool]:
    """``cluster-mesh.clusters[]`` of ``status -o json`` as name → ready (ValueError when not that JSON)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("status output is not a JSON object")
    mesh = data.get("cluster-mesh") or {}
    clusters = mesh.get("clusters") or [] if isinstance(mesh, dict) else []
    return {str(c.get("name")): c.get("ready") is True for c in clusters if isinstance(c, dict) and c.get("name")}


def read_mesh_status(client: DrillClient, cluster: str, agent_cli: str, *, timeout: float) -> list[AgentPeers]:
    """Every agent of ``cluster``: which peers it reports ready."""
    argv = [agent_cli, "status", "-o", "json"]
    out: list[AgentPeers] = []
    pods = sorted(
        str(p["metadata"]["name"])
        for p in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL)
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )
    for pod in pods:
        try:
            result = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, argv, timeout=timeout)
        except KubeApiError as exc:
            out.append(AgentPeers(cluster, pod, {}, f"`{' '.join(argv)}`: {cut(exc.problem)}"))
            continue
        if not result.ok:
            error = f"`{' '.join(argv)}` exited {result.exit_code}: {cut(result.stderr or result.stdout)}"
            out.append(AgentPeers(cluster, pod, {}, error))
            continue
        try:
            out.append(AgentPeers(cluster, pod, parse_mesh_status(result.stdout)))
        except ValueError as exc:
            out.append(AgentPeers(cluster, pod, {}, f"`{' '.join(argv)}` gave no readable JSON: {cut(str(exc))}"))
    return out


def not_lost(views: Sequence[AgentPeers], lost: str) -> list[str]:
    """Agents that still report ``lost`` connected (or could not be read): empty once all of them lost it."""
    if not views:
        return ["no Cilium agent pods found"]
    problems = []
    for view in views:
        if view.error is not None:
            problems.append(f"{view.cluster}/{view.agent}: {view.error}")
        elif view.ready.get(lost, False):
            problems.append(f"{view.cluster}/{view.agent} still reports {lost} connected")
    return problems


def not_connected(views: Sequence[AgentPeers], peers: Sequence[str]) -> list[str]:
    """Agents that do not report every one of ``peers`` ready: empty once all of them do."""
    if not views:
        return ["no Cilium agent pods found"]
    problems = []
    for view in views:
        if view.error is not None:
            problems.append(f"{view.cluster}/{view.agent}: {view.error}")
            continue
        missing = [p for p in peers if not view.ready.get(p, False)]
        if missing:
            problems.append(f"{view.cluster}/{view.agent} reports {', '.join(missing)} not connected")
    return problems
