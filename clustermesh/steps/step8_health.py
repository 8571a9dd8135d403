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
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

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
    "HealthProgress",
    "MESH_HEALTH_CHECK",
    "NodesSeen",
    "SETTLE",
    "SettleRule",
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
    probed_at: datetime | None = None
    """When the agent ran the probes it answered with (``Probe time`` / JSON ``timestamp``), if it said:
    an answer is a cached probe round, so only a later time proves it probed again."""

    @classmethod
    def from_status(cls, pod: str, node: str, status: HealthStatus, *, cluster: str) -> AgentHealth:
        """The answer ``status`` of an agent of ``cluster``, folded; the status itself is not kept."""
        return cls(pod=pod, node=node, seen=nodes_seen(status, cluster), error=None, probed_at=status.timestamp)


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


def _read_answer(text: str, cluster: str, share: _Share) -> tuple[dict[str, NodesSeen], datetime | None]:
    """Parse one agent's answer and fold it at once: the full ``HealthStatus`` never outlives this call.

    Returns the fold and the answer's probe time.
    """
    with _READING, _collector_paused():
        status = parse_health(text)
        return nodes_seen(status, cluster, share), status.timestamp


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
            seen, probed_at = _read_answer(out.stdout, cluster, share)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` output unreadable: {_short(str(exc))}")
            continue
        return AgentHealth(pod=pod, node=node, seen=seen, error=None, probed_at=probed_at)
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
    probed: dict[str, datetime | None] = Field(default_factory=dict, exclude=True, repr=False)
    """``cluster/pod`` of every agent that answered → when it probed (None: its answer did not say).
    What the wait compares to know the agents probed again; left out of dumps."""

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
    probed = {
        f"{c}/{a.pod}": a.probed_at for c, health in observed.items() for a in health.agents if a.seen is not None
    }
    return HealthMatrix(clusters=clusters, cells=cells, agent_errors=errors, probed=probed)


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


@dataclass(frozen=True)
class SettleRule:
    """When waiting longer cannot change a failing answer, so the wait may end before its timeout.

    Agents need time after a change (a setup writes, then waits), and an agent's answer is its last
    probe round, cached for up to Cilium's probe interval; so a verdict needs evidence, all of:

    - the same failure on ``looks`` looks in a row, held for at least ``settle`` seconds;
    - every agent probed again meanwhile: its answer's probe time is later than at the first of those
      looks (an agent whose answer gives no time counts only once ``probe_interval`` seconds, Cilium's
      default round, have passed);
    - a failure that is whole and alone: every agent answered, every cluster reaches its own nodes, and
      every failing pair fails its probes to every node of the destination, none missing (a port shut
      between two clusters, not a mesh half-way through connecting).

    Anything else (a partial or changing failure, nodes missing, agents restarting) waits for health or
    the timeout, as before.
    """

    looks: int = 3
    settle: float = 30.0
    probe_interval: float = 60.0


SETTLE = SettleRule()
PROGRESS_EVERY = 5.0
"""Seconds between two progress reports while nothing changes (a change is reported at once)."""
_SHOWN_CELLS = 4

Cells = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class HealthProgress:
    """One report while waiting for health: what is still missing, and how close a verdict is."""

    elapsed: float
    timeout: float
    looks: int
    matrix: HealthMatrix
    steady_for: float | None
    """Seconds the failure has stayed the same, when it is one that may end the wait early."""
    rule: SettleRule | None
    known_broken: Cells = frozenset()
    verdict: str | None = None
    """Set on the last report of a wait that ends unhealthy: why it ends (early, or at the timeout)."""

    def waiting_for(self) -> str:
        """The unhealthy cells (known broken ones apart) and agent errors, in words."""
        m = self.matrix
        open_cells = [c for c in m.cells if not c.healthy and (c.src, c.dst) not in self.known_broken]
        parts = [f"{sum(c.healthy for c in m.cells)}/{len(m.cells)} cells healthy"]
        shown = [c.describe() + (f" [{', '.join(c.failing_paths)}]" if c.failing_paths else "") for c in open_cells]
        if shown:
            more = f" (+{len(shown) - _SHOWN_CELLS} more)" if len(shown) > _SHOWN_CELLS else ""
            parts.append("waiting for " + "; ".join(shown[:_SHOWN_CELLS]) + more)
        known = [f"{c.src} → {c.dst}" for c in m.cells if not c.healthy and (c.src, c.dst) in self.known_broken]
        if known:
            parts.append("not waited for (already explained): " + ", ".join(known))
        if m.agent_errors:
            parts.append(f"{len(m.agent_errors)} agent error(s), first: {m.agent_errors[0]}")
        return "; ".join(parts)

    def line(self) -> str:
        """One line for the run's log (or a status message)."""
        head = f"mesh health after {self.elapsed:.0f} s of {self.timeout:g} s (look {self.looks}): "
        text = head + self.waiting_for()
        if self.verdict is not None:
            return f"{text} — {self.verdict}"
        if self.rule is None:
            return text
        if self.steady_for is not None:
            return (
                f"{text} — unchanged for {self.steady_for:.0f} s: a verdict once it has held "
                f"{self.rule.settle:g} s and every agent has probed again"
            )
        return f"{text} — still changing or partial: waiting for health or the timeout"


def _healthy_but(matrix: HealthMatrix, known_broken: Cells) -> bool:
    """Healthy apart from cells already explained (with none explained: ``matrix.healthy``)."""
    return not matrix.agent_errors and all(_healthy_or_known(c, known_broken) for c in matrix.cells)


def _final_shape(matrix: HealthMatrix, known_broken: Cells) -> tuple[Hashable, ...] | None:
    """What must stay the same for an early verdict, or None when this failure may still be settling."""
    if matrix.agent_errors:
        return None
    failing = []
    for c in matrix.cells:
        if _healthy_or_known(c, known_broken):
            continue
        if c.src == c.dst or c.agents == 0 or c.missing or c.reachable or not c.failing_paths:
            return None
        failing.append((c.src, c.dst, c.expected, c.agents, tuple(c.failing_paths)))
    return tuple(failing), tuple(sorted(matrix.probed))


def _probed_again(before: Mapping[str, datetime | None], now: Mapping[str, datetime | None]) -> bool | None:
    """Whether every agent probed since ``before``: False if one has not, None if one does not say."""
    unknown = False
    for agent, at in now.items():
        was = before.get(agent)
        if at is None or was is None:
            unknown = True
        elif at <= was:
            return False
    return None if unknown else True


class _Steadiness:
    """Follows one failure across looks and says when the :class:`SettleRule` holds for it."""

    def __init__(self, rule: SettleRule, known_broken: Cells) -> None:
        self.rule = rule
        self.known_broken = known_broken
        self.shape: tuple[Hashable, ...] | None = None
        self.since = 0.0
        self.looks = 0
        self.probed_then: Mapping[str, datetime | None] = {}

    def see(self, matrix: HealthMatrix, now: float) -> tuple[float | None, str | None]:
        """(seconds this failure has held, or None if it cannot end the wait; the verdict once it may)."""
        shape = _final_shape(matrix, self.known_broken)
        if shape is None:
            self.shape = None
            return None, None
        if shape != self.shape:
            self.shape, self.since, self.looks, self.probed_then = shape, now, 0, matrix.probed
        self.looks += 1
        held = now - self.since
        again = _probed_again(self.probed_then, matrix.probed)
        needed = self.rule.settle if again else max(self.rule.settle, self.rule.probe_interval)
        if self.looks < self.rule.looks or again is False or held < needed:
            return held, None
        pairs = [f"{c.src} → {c.dst}" for c in matrix.cells if not _healthy_or_known(c, self.known_broken)]
        proof = "every agent probed again meanwhile" if again else f"over {needed:g} s, a Cilium probe round"
        return held, (
            f"stopped early: {', '.join(pairs)} failed the same way on {self.looks} looks over {held:.0f} s while "
            f"everything else is healthy ({proof}): waiting longer cannot change the answer"
        )


def _healthy_or_known(cell: HealthCell, known_broken: Cells) -> bool:
    return cell.healthy or (cell.src, cell.dst) in known_broken


class _Reporter:
    """Calls ``progress`` when what is missing changes, and every ``PROGRESS_EVERY`` seconds otherwise."""

    def __init__(self, progress: Callable[[HealthProgress], None] | None) -> None:
        self.progress = progress
        self.last_at: float | None = None
        self.last_text = ""

    def __call__(self, report: HealthProgress, *, final: bool = False) -> None:
        if self.progress is None:
            return
        text = report.waiting_for()
        due = self.last_at is None or report.elapsed - self.last_at >= PROGRESS_EVERY
        if final or due or text != self.last_text:
            self.last_at, self.last_text = report.elapsed, text
            self.progress(report)


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
    progress: Callable[[HealthProgress], None] | None = None,
    settle: SettleRule | None = SETTLE,
    known_broken: Cells = frozenset(),
) -> HealthMatrix:
    """Probe until every cell is healthy; agents need minutes to settle after a change (guide, step 8).

    Raises ``MeshUnhealthyError`` with the last matrix when ``timeout`` runs out, or earlier when
    ``settle`` (a :class:`SettleRule`; None waits out the timeout) shows waiting cannot change the
    answer. ``progress`` gets a :class:`HealthProgress` while waiting: when what is missing changes,
    every ``PROGRESS_EVERY`` seconds otherwise, and once more with the verdict when the wait fails.
    ``known_broken`` are cells already explained elsewhere (a configuration drift): they are not
    waited for, so the wait returns once every other cell is healthy, the matrix as it is.

    ``probe`` replaces the real probing (tests); by default it is :func:`probe_mesh` over ``clients``.
    ``first`` is a matrix already measured (step 7's probe): it is the first look, so a mesh that was
    healthy there is not probed again, and one that was not is probed again after ``poll_interval``.
    """
    look = probe or (lambda: probe_mesh(clients, exec_timeout=exec_timeout, max_workers=max_workers))
    start = clock()
    deadline = start + timeout
    steadiness = _Steadiness(settle, known_broken) if settle is not None else None
    report = _Reporter(progress)
    matrix = first if first is not None else look()
    looks = 1
    while True:
        if _healthy_but(matrix, known_broken):
            return matrix
        now = clock()
        held, verdict = steadiness.see(matrix, now) if steadiness is not None else (None, None)
        remaining = deadline - now
        early = verdict is not None
        if not early and remaining <= 0:
            verdict = f"timed out after {timeout:g} s"
        seen = HealthProgress(now - start, timeout, looks, matrix, held, settle, known_broken, verdict)
        if verdict is not None:
            report(seen, final=True)
            raise MeshUnhealthyError(
                f"every node of every cluster reachable from every agent of every cluster "
                f"({', '.join(matrix.clusters)})",
                f"{matrix.summary()}; {verdict}" if early else matrix.summary(),
                timeout=max(1, round(now - start)) if early else timeout,
                check=MESH_HEALTH_CHECK,
                matrix=matrix,
            )
        report(seen)
        sleep(min(poll_interval, remaining))
        matrix = look()
        looks += 1
