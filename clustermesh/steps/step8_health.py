"""Step 8 of the guide for N clusters: ask every Cilium agent what it reaches, and fold that into a matrix.

The guide says "check `cilium-health status` in each cluster"; with N clusters and many nodes a person
cannot read N×nodes outputs, so the pipeline reduces them to one cell per (source, destination) cluster:
how many of the destination's nodes every agent of the source reaches. A node counts only when *every*
source agent reaches it, because one blocked node pair already breaks pod traffic for some pods.
A destination node no source agent lists at all is "missing": the source is not connected to that
cluster (apiserver unreachable, wrong address or certificates), which is a different fix from a
firewall, so the two are kept apart.

Every answer lists every node of the mesh (800 at 16 clusters of 50), so each is folded into what the
matrix needs (``NodesSeen``: per cluster, the nodes reachable and the failures of the others) as soon
as it is parsed; the probe never holds more than one parsed answer at a time.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium import HealthNode, HealthStatus, parse_health
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
    "NodesSeen",
    "expected_nodes",
    "health_matrix",
    "nodes_seen",
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


@dataclass(frozen=True, slots=True)
class NodesSeen:
    """What one agent lists of one cluster's nodes: all the matrix needs of its `cilium-health status`.

    Kept instead of the parsed answer, which names every node of the mesh with its addresses and
    probes: one per agent would grow with agents × nodes (640,000 node objects at 16 clusters of 50).
    """

    reachable: frozenset[str]
    """Bare names of the nodes listed with every probed path OK."""
    failing: tuple[tuple[str, tuple[str, ...]], ...]
    """``(node, failures)`` of every node listed with a failing path, sorted by node."""


_NOTHING_SEEN = NodesSeen(reachable=frozenset(), failing=())

_H = TypeVar("_H", bound=Hashable)


class _Shared:
    """One object per distinct value, for the agents of one cluster (they answer in parallel).

    The agents of a healthy cluster all see the same nodes, so their views are stored once instead of
    once per agent, and so are the failures that repeat from node to node in a broken one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, Hashable] = {}

    def __call__(self, value: _H, /) -> _H:
        with self._lock:
            return cast(_H, self._values.setdefault(value, value))


class _Share(Protocol):
    def __call__(self, value: _H, /) -> _H: ...


def _unshared(value: _H, /) -> _H:
    return value


def nodes_seen(status: HealthStatus, cluster: str, share: _Share = _unshared) -> dict[str, NodesSeen]:
    """Fold one agent's answer into what it sees of each cluster, by cluster name.

    ``cluster`` is the agent's own: Cilium prints the nodes of a cluster named ``default`` without a
    prefix, and only the agent's own cluster can be meant by a bare name. A name listed twice counts
    as its last listing. ``share`` may return an equal object already held (see ``_Shared``).
    """
    listed: dict[str, dict[str, HealthNode]] = {}
    for n in status.nodes:
        listed.setdefault(cluster if n.cluster is None else n.cluster, {})[n.node] = n
    return {
        name: share(
            NodesSeen(
                reachable=frozenset(node for node, n in nodes.items() if n.reachable),
                failing=tuple(sorted((node, share(tuple(n.failures))) for node, n in nodes.items() if not n.reachable)),
            )
        )
        for name, nodes in listed.items()
    }


class AgentHealth(BaseModel):
    """One agent's answer, or why there is none: an agent we could not ask cannot vouch for its node."""

    model_config = ConfigDict(frozen=True)

    pod: str
    node: str
    seen: dict[str, NodesSeen] | None
    """What the agent lists of each cluster's nodes (``nodes_seen``); None when it did not answer."""
    error: str | None

    @classmethod
    def from_status(cls, pod: str, node: str, status: HealthStatus, *, cluster: str) -> AgentHealth:
        """The answer ``status`` of an agent of ``cluster``, folded; the status itself is not kept."""
        return cls(pod=pod, node=node, seen=nodes_seen(status, cluster), error=None)


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


_READING = threading.Lock()
"""One answer parsed at a time in the process: parsing holds the GIL, so parallel parses gain nothing
and only multiply the decoded JSON alive at once (64 answers of 800 nodes at 16 clusters)."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the duration (and back on after, if it was on).

    An answer decodes into thousands of dicts that reference counting frees the moment the fold is
    done. Collections while they are alive only promote them to the oldest generation, and every
    full collection then walks the whole process (some 400,000 objects under Prefect): at 8 clusters
    of 50 nodes that was a third of the probe's CPU. Only held under ``_READING``, so never nested.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_answer(text: str, cluster: str, share: _Share) -> dict[str, NodesSeen]:
    """Parse one agent's answer and fold it at once: the full ``HealthStatus`` never outlives this call."""
    with _READING, _collector_paused():
        return nodes_seen(parse_health(text), cluster, share)


def _ask_agent(
    client: HealthClient, cluster: str, pod: str, node: str, *, timeout: float, share: _Share
) -> AgentHealth:
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
            seen = _read_answer(out.stdout, cluster, share)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` output unreadable: {_short(str(exc))}")
            continue
        return AgentHealth(pod=pod, node=node, seen=seen, error=None)
    return AgentHealth(pod=pod, node=node, seen=None, error="; ".join(problems))


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
            not_running.append(AgentHealth(pod=name, node=node, seen=None, error=f"agent pod is {phase}, not Running"))
    share = _Shared()
    workers = max(1, min(max_workers, len(agents)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"health-{cluster}") as pool:
        answers = list(
            pool.map(lambda a: _ask_agent(client, cluster, a[0], a[1], timeout=timeout, share=share), agents)
        )
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


def _cell(src: str, dst: str, health: ClusterHealth | None, dst_nodes: Sequence[str]) -> HealthCell:
    answered = [a for a in (health.agents if health else []) if a.seen is not None]
    reachable = 0
    missing: list[str] = []
    failures: list[str] = []
    seen_failures: set[str] = set()
    paths: set[str] = set()
    views: list[tuple[AgentHealth, frozenset[str], dict[str, tuple[str, ...]]]] = []
    for agent in answered:
        seen = (agent.seen or {}).get(dst, _NOTHING_SEEN)
        views.append((agent, seen.reachable, dict(seen.failing)))
    for node in dst_nodes:
        ok = bool(views)
        for agent, reached, failing in views:
            if node in reached:
                continue
            ok = False
            node_failures = failing.get(node)
            if node_failures is None:  # not listed at all
                if node not in missing:
                    missing.append(node)
                continue
            for failure in node_failures:
                paths.add(_path_label(failure))
                if failure not in seen_failures and len(failures) < MAX_FAILURES_PER_CELL:
                    seen_failures.add(failure)
                    failures.append(f"{src} agent on {agent.node or agent.pod} → {dst}/{node}: {failure}")
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
    first: HealthMatrix | None = None,
) -> HealthMatrix:
    """Probe until every cell is healthy; agents need minutes to settle after a change (guide, step 8).

    Raises ``MeshUnhealthyError`` with the last matrix when ``timeout`` runs out. ``probe`` replaces
    the real probing (tests); by default it is :func:`probe_mesh` over ``clients``. ``first`` is a
    matrix already measured (step 7's probe): it is the first look, so a mesh that was healthy there
    is not probed again, and one that was not is probed again after ``poll_interval``.
    """
    look = probe or (lambda: probe_mesh(clients, exec_timeout=exec_timeout, max_workers=max_workers))
    deadline = clock() + timeout
    matrix = first if first is not None else look()
    while True:
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
        matrix = look()
