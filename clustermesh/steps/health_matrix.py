"""The cluster × cluster health matrix: how many of the destination's nodes every agent of the source reaches.

A node counts only when *every* source agent reaches it, because one blocked node pair already breaks pod
traffic for some pods. A destination node no source agent lists at all is "missing": the source is not
connected to that cluster, which is a different fix from a firewall, so the two are kept apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from clustermesh.steps.health_probe import MAX_FAILURES_PER_CELL, NOTHING_SEEN, AgentHealth, ClusterHealth


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
        seen = (agent.seen or {}).get(dst, NOTHING_SEEN)
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
