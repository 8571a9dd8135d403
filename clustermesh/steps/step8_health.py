"""Step 8 of the guide for N clusters: ask every Cilium agent what it reaches, until the mesh is whole.

The guide says "check `cilium-health status` in each cluster"; with N clusters and many nodes a person
cannot read N×nodes outputs, so the pipeline reduces them to one cell per (source, destination) cluster
(:mod:`clustermesh.steps.health_matrix`, from :mod:`clustermesh.steps.health_probe`) and waits until
every cell is healthy, reporting progress and stopping early only when the answer cannot change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from clustermesh.errors import ClusterMeshError, MeshUnhealthyError
from clustermesh.steps.health_matrix import HealthCell, HealthMatrix, health_matrix
from clustermesh.steps.health_probe import (
    AGENT_CONTAINER,
    AGENT_LABEL,
    AGENT_NAMESPACE,
    DEFAULT_WORKERS,
    MAX_FAILURES_PER_CELL,
    MESH_HEALTH_CHECK,
    AgentHealth,
    ClusterHealth,
    HealthClient,
    NodesSeen,
    expected_nodes,
    nodes_seen,
    probe_cluster,
    short_text,
)

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_LABEL",
    "AGENT_NAMESPACE",
    "AgentHealth",
    "ClusterHealth",
    "DEFAULT_WORKERS",
    "MAX_FAILURES_PER_CELL",
    "HealthCell",
    "HealthClient",
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
            return ClusterHealth(cluster=name, agents=[], error=short_text(str(exc))), []
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
