"""Step 8 of the guide for N clusters: ask every Cilium agent what it reaches, and fold that into a matrix.

The guide says "check `cilium-health status` in each cluster"; with N clusters and many nodes a person
cannot read N×nodes outputs, so the pipeline reduces them to one cell per (source, destination) cluster:
how many of the destination's nodes every agent of the source reaches. A node counts only when *every*
source agent reaches it, because one blocked node pair already breaks pod traffic for some pods.
A destination node no source agent lists at all is "missing": the source is not connected to that
cluster (apiserver unreachable, wrong address or certificates), which is a different fix from a
firewall, so the two are kept apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium_output import HealthNode, HealthStatus, parse_health
from clustermesh.errors import ClusterMeshError, MeshUnhealthyError
from clustermesh.kube import ExecOutput

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_LABEL",
    "AGENT_NAMESPACE",
    "AgentHealth",
    "ClusterHealth",
    "HealthCell",
    "HealthMatrix",
    "MESH_HEALTH_CHECK",
    "expected_nodes",
    "health_matrix",
    "probe_cluster",
    "probe_mesh",
    "wait_for_mesh_health",
]

AGENT_NAMESPACE = "kube-system"
AGENT_LABEL = "k8s-app=cilium"
AGENT_CONTAINER = "cilium-agent"
HEALTH_JSON = ("cilium-health", "status", "-o", "json")
HEALTH_TEXT = ("cilium-health", "status")
MAX_FAILURES_PER_CELL = 5
DEFAULT_WORKERS = 8

MESH_HEALTH_CHECK = (
    "the firewall between the worker nodes of every pair of clusters (UDP 8472 VXLAN, TCP 4240 health "
    "checks, ICMP echo), TCP 2379 from every node to each peer's clustermesh-apiserver (LoadBalancer "
    "address or nodePort), that each peer's remote certificate and CA are the ones configured, and "
    "`cilium-dbg troubleshoot clustermesh` (`cilium` on 1.13–1.14) in an agent of the failing cluster"
)


class HealthClient(Protocol):
    """What the health probe needs of a cluster client; ``ClusterClient`` has it, test fakes too."""

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def list_pods(
        self, namespace: str, label_selector: str, field_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput: ...


# ------------------------------------------------------------------------------------------- probing


class AgentHealth(BaseModel):
    """One agent's answer, or why there is none: an agent we could not ask cannot vouch for its node."""

    model_config = ConfigDict(frozen=True)

    pod: str
    node: str
    status: HealthStatus | None
    error: str | None


class ClusterHealth(BaseModel):
    """Every agent of one cluster; ``error`` when the agents could not even be listed."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    agents: list[AgentHealth]
    error: str | None = None

    @property
    def agent_errors(self) -> list[str]:
        """Problems that make the cluster's view incomplete, in words for a report."""
        out = [f"{self.cluster}: {self.error}"] if self.error else []
        if not self.agents and not self.error:
            out.append(f"{self.cluster}: no cilium agent pods ({AGENT_LABEL} in {AGENT_NAMESPACE})")
        out.extend(f"{self.cluster} agent {a.pod} on {a.node or '?'}: {a.error}" for a in self.agents if a.error)
        return out


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ask_agent(client: HealthClient, pod: str, node: str, *, timeout: float) -> AgentHealth:
    """JSON first (one layout across versions); the text form when JSON is refused or unreadable."""
    problems: list[str] = []
    for argv in (HEALTH_JSON, HEALTH_TEXT):
        shown = " ".join(argv)
        try:
            out = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, list(argv), timeout=timeout)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` failed: {_short(str(exc))}")
            continue
        if not out.ok:
            problems.append(f"`{shown}` exited {out.exit_code}: {_short(out.stderr or out.stdout) or 'no output'}")
            continue
        try:
            return AgentHealth(pod=pod, node=node, status=parse_health(out.stdout), error=None)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` output unreadable: {_short(str(exc))}")
    return AgentHealth(pod=pod, node=node, status=None, error="; ".join(problems))


def probe_cluster(
    client: HealthClient, cluster: str, *, timeout: float, max_workers: int = DEFAULT_WORKERS
) -> ClusterHealth:
    """`cilium-health status` in every agent of one cluster; per-agent failures are recorded, not raised.

    Pods being deleted are skipped (a rollout's old agents); pods not Running are recorded as errors,
    since their node has no working agent yet. Listing the pods may raise ``KubeApiError``.
    """
    agents: list[tuple[str, str]] = []
    not_running: list[AgentHealth] = []
    for pod in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name") or "")
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        phase = str((pod.get("status") or {}).get("phase") or "Unknown")
        if phase == "Running":
            agents.append((name, node))
        else:
            not_running.append(
                AgentHealth(pod=name, node=node, status=None, error=f"agent pod is {phase}, not Running")
            )
    workers = max(1, min(max_workers, len(agents)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"health-{cluster}") as pool:
        answers = list(pool.map(lambda a: _ask_agent(client, a[0], a[1], timeout=timeout), agents))
    return ClusterHealth(cluster=cluster, agents=sorted(answers + not_running, key=lambda a: (a.node, a.pod)))


def expected_nodes(client: HealthClient) -> list[str]:
    """The node names a healthy mesh must show for this cluster, sorted."""
    return sorted(str((n.get("metadata") or {}).get("name") or "") for n in client.list_nodes())


# -------------------------------------------------------------------------------------------- matrix


class HealthCell(BaseModel):
    """What the agents of ``src`` see of the nodes of ``dst``."""

    model_config = ConfigDict(frozen=True)

    src: str
    dst: str
    reachable: int
    """Nodes of ``dst`` that every answering agent of ``src`` lists as reachable."""
    expected: int
    agents: int
    """Agents of ``src`` that answered; 0 means the cell proves nothing and counts as unreachable."""
    failures: list[str]
    """First few distinct failures, with agent and node, e.g. ``… → cluster-2/n: endpoint ICMP: …``."""
    failing_paths: list[str]
    """Every distinct failing probe, e.g. ``endpoint ICMP``, ``host HTTP``, ``host`` (table layouts)."""
    missing: list[str]
    """Nodes of ``dst`` some agent of ``src`` does not list at all: ``src`` is not connected to ``dst``."""

    @property
    def healthy(self) -> bool:
        return self.agents > 0 and self.reachable == self.expected and not self.missing

    def describe(self) -> str:
        text = f"{self.src} → {self.dst}: {self.reachable}/{self.expected} reachable"
        if self.agents == 0:
            return text + " (no agent answered)"
        extra = []
        if self.missing:
            extra.append(f"{len(self.missing)} missing")
        unreachable = self.expected - self.reachable - len(self.missing)
        if unreachable > 0:
            extra.append(f"{unreachable} failing")
        return text + (f" ({', '.join(extra)})" if extra else "")


class HealthMatrix(BaseModel):
    """Cluster × cluster reachability, the answer to the guide's step 8 for N clusters."""

    model_config = ConfigDict(frozen=True)

    clusters: list[str]
    cells: list[HealthCell]
    agent_errors: list[str]

    def cell(self, src: str, dst: str) -> HealthCell:
        for c in self.cells:
            if c.src == src and c.dst == dst:
                return c
        raise KeyError(f"no cell {src} → {dst}: clusters are {', '.join(self.clusters)}")

    @property
    def healthy(self) -> bool:
        return not self.agent_errors and all(c.healthy for c in self.cells)

    def summary(self) -> str:
        """One line for logs, Slack and timeout messages."""
        good = sum(c.healthy for c in self.cells)
        parts = [f"{good}/{len(self.cells)} cells healthy"]
        parts.extend(c.describe() for c in self.cells if not c.healthy)
        if self.agent_errors:
            shown = "; ".join(self.agent_errors[:3])
            more = f" (+{len(self.agent_errors) - 3} more)" if len(self.agent_errors) > 3 else ""
            parts.append(f"agent errors: {shown}{more}")
        return "; ".join(parts)

    def table_rows(self, *, ascii_only: bool = False) -> list[dict[str, str]]:
        """One row per source cluster, one column per destination: for a table artifact."""
        ok, bad = ("OK", "FAIL") if ascii_only else ("✓", "✗")
        rows = []
        for src in self.clusters:
            row = {"from \\ to": src}
            for dst in self.clusters:
                c = self.cell(src, dst)
                row[dst] = f"{c.reachable}/{c.expected} {ok if c.healthy else bad}"
            rows.append(row)
        return rows

    def render_text(self) -> str:
        """The matrix, then every failure, missing node and agent error: for the CLI."""
        rows = self.table_rows(ascii_only=True)
        header = ["from \\ to", *self.clusters]
        widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        lines.extend("  ".join(r[h].ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() for r in rows)
        lines.append("")
        lines.append("healthy" if self.healthy else "NOT healthy: " + self.summary())
        for c in self.cells:
            if c.missing:
                lines.append(f"  {c.src} → {c.dst}: not listed: {', '.join(c.missing)}")
            lines.extend(f"  {f}" for f in c.failures)
        lines.extend(f"  {e}" for e in self.agent_errors)
        return "\n".join(lines)


def _path_label(failure: str) -> str:
    """``host secondary 10.0.0.9 ICMP: …`` → ``host ICMP``; ``endpoint: 0/1 paths …`` → ``endpoint``."""
    label = failure.split(":", 1)[0].strip()
    words = label.split()
    if len(words) == 4 and words[1] == "secondary":
        return f"{words[0]} {words[3]}"
    return label


def _listed(status: HealthStatus, src: str, dst: str) -> dict[str, HealthNode]:
    """Nodes of ``dst`` by bare name; unprefixed names are the local cluster's (named ``default``)."""
    out: dict[str, HealthNode] = {}
    for n in status.nodes:
        if n.cluster == dst or (n.cluster is None and dst == src):
            out[n.node] = n
    return out


def _cell(src: str, dst: str, health: ClusterHealth | None, dst_nodes: Sequence[str]) -> HealthCell:
    answered = [a for a in (health.agents if health else []) if a.status is not None]
    reachable = 0
    missing: list[str] = []
    failures: list[str] = []
    seen_failures: set[str] = set()
    paths: set[str] = set()
    views = [(a, _listed(a.status, src, dst)) for a in answered if a.status is not None]
    for node in dst_nodes:
        ok = bool(views)
        for agent, listed in views:
            entry = listed.get(node)
            if entry is None:
                ok = False
                if node not in missing:
                    missing.append(node)
                continue
            if not entry.reachable:
                ok = False
                for failure in entry.failures:
                    paths.add(_path_label(failure))
                    text = f"{src} agent on {agent.node or agent.pod} → {dst}/{node}: {failure}"
                    if failure not in seen_failures and len(failures) < MAX_FAILURES_PER_CELL:
                        seen_failures.add(failure)
                        failures.append(text)
        reachable += ok
    return HealthCell(
        src=src,
        dst=dst,
        reachable=reachable,
        expected=len(dst_nodes),
        agents=len(answered),
        failures=failures,
        failing_paths=sorted(paths),
        missing=missing,
    )


def health_matrix(observed: Mapping[str, ClusterHealth], nodes: Mapping[str, list[str]]) -> HealthMatrix:
    """Fold every agent's answer into cluster × cluster cells; clusters keep the order of ``nodes``."""
    clusters = list(nodes)
    clusters.extend(c for c in observed if c not in nodes)
    cells = [_cell(s, d, observed.get(s), nodes.get(d, [])) for s in clusters for d in clusters]
    errors: list[str] = []
    for c in clusters:
        health = observed.get(c)
        errors.extend(health.agent_errors if health else [f"{c}: not probed"])
        if health and health.agents:  # a node without an agent (mid-rollout) cannot vouch for its pods
            uncovered = sorted(set(nodes.get(c, [])) - {a.node for a in health.agents})
            if uncovered:
                errors.append(f"{c}: no cilium agent on node(s) {', '.join(uncovered)}")
    return HealthMatrix(clusters=clusters, cells=cells, agent_errors=errors)


# ------------------------------------------------------------------------------------------- waiting


def probe_mesh(
    clients: Mapping[str, HealthClient], *, exec_timeout: float, max_workers: int = DEFAULT_WORKERS
) -> HealthMatrix:
    """One look at every cluster, in parallel; a cluster whose API fails is an error in the matrix."""

    def one(name: str) -> tuple[ClusterHealth, list[str]]:
        client = clients[name]
        try:
            node_names = expected_nodes(client)
            health = probe_cluster(client, name, timeout=exec_timeout, max_workers=max_workers)
        except ClusterMeshError as exc:
            return ClusterHealth(cluster=name, agents=[], error=_short(str(exc))), []
        return health, node_names

    workers = max(1, min(max_workers, len(clients)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health") as pool:
        results = dict(zip(clients, pool.map(one, clients), strict=True))
    return health_matrix(
        {name: health for name, (health, _) in results.items()},
        {name: node_names for name, (_, node_names) in results.items()},
    )


def wait_for_mesh_health(
    clients: Mapping[str, HealthClient],
    *,
    timeout: float,
    poll_interval: float,
    exec_timeout: float,
    max_workers: int = DEFAULT_WORKERS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[[], HealthMatrix] | None = None,
) -> HealthMatrix:
    """Probe until every cell is healthy; agents need minutes to settle after a change (guide, step 8).

    Raises ``MeshUnhealthyError`` with the last matrix when ``timeout`` runs out. ``probe`` replaces
    the real probing (tests); by default it is :func:`probe_mesh` over ``clients``.
    """
    look = probe or (lambda: probe_mesh(clients, exec_timeout=exec_timeout, max_workers=max_workers))
    deadline = clock() + timeout
    while True:
        matrix = look()
        if matrix.healthy:
            return matrix
        remaining = deadline - clock()
        if remaining <= 0:
            raise MeshUnhealthyError(
                f"every node of every cluster reachable from every agent of every cluster "
                f"({', '.join(matrix.clusters)})",
                matrix.summary(),
                timeout=timeout,
                check=MESH_HEALTH_CHECK,
                matrix=matrix,
            )
        sleep(min(poll_interval, remaining))
