"""What a drill reports: one :class:`DrillPhase` per step, and the :class:`DrillResult` over all of them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from clustermesh.drill.agents import BackendView

PhaseName = Literal[
    "recover", "workloads", "baseline", "failover", "restore", "rollback", "cluster-loss", "reconnect", "mcs-export"
]
PhaseStatus = Literal["passed", "failed", "skipped"]
DrillStatus = Literal["passed", "failed", "not run"]
Scenario = Literal["scale-to-zero", "cluster-loss", "mcs"]
SCENARIOS: tuple[Scenario, ...] = ("scale-to-zero", "cluster-loss", "mcs")
"""``scale-to-zero``: the guide's failover, backends scaled to 0 one cluster at a time (the default);
``cluster-loss``: one member's clustermesh-apiserver scaled to 0, the others watched; ``mcs``: the failover through
an exported service (MCS-API ServiceExport/ServiceImport, ``clusterset.local``; :mod:`clustermesh.drill.mcs`)."""


class DrillPhase(BaseModel):
    """One step of the drill, as reported in the artifact and to Slack."""

    model_config = ConfigDict(frozen=True)

    name: PhaseName
    cluster: str | None
    """The cluster disrupted or restored; None for phases over every cluster."""
    status: PhaseStatus
    detail: str
    backends: dict[str, list[BackendView]] = {}
    """Backends the agents of each cluster listed when the phase ended (one entry per agent and backend)."""
    probes: int = 0
    failed_probes: int = 0
    seconds: float = 0.0
    failover_seconds: float | None = None
    """Failover only: from the scale call until every agent listed only remote backends."""

    def table_row(self) -> dict[str, str]:
        return {
            "phase": self.name,
            "cluster": self.cluster or "all",
            "status": self.status,
            "detail": self.detail,
            "failover s": "" if self.failover_seconds is None else f"{self.failover_seconds:.2f}",
            "failed probes": f"{self.failed_probes}/{self.probes}" if self.probes else "",
        }


class MemberDuringLoss(BaseModel):
    """What one other member did with the lost cluster's backends of the drill service."""

    model_config = ConfigDict(frozen=True)

    member: str
    cache_ttl_seconds: float
    """The member's ``clustermesh-cache-ttl`` (0: keep forever, also on lines before 1.19)."""
    cache_ttl_supported: bool = True
    """The member's line has ``clustermesh.cacheTTL`` (1.19+, the profile's ``cache_ttl_supported``)."""
    backends: int
    """The lost cluster's backends the member listed before the loss."""
    kept: bool
    """Every agent still listed all of them at the last look during the loss."""
    withdrawn_after_s: float | None = None
    """From the loss seen until no agent listed any of them; None when never withdrawn."""
    watched_s: float = 0.0
    probes: int = 0
    failed_probes: int = 0


class ClusterLoss(BaseModel):
    """The cluster-loss drill of one member: figures for the summary, the artifact and the CLI."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    apiserver_replicas: int
    lost_after_s: float | None = None
    """From the scale to 0 until every other member's agents reported the cluster not connected."""
    members: list[MemberDuringLoss] = []
    reconnected_after_s: float | None = None
    """From the scale back until every member reported every peer connected and listed every backend."""

    def expectation(self) -> str:
        """What a user should expect from a real outage of this member's mesh control plane, in words and figures."""
        parts = []
        for m in self.members:
            traffic = f"{m.failed_probes}/{m.probes} requests from {m.member} failed"
            if m.cache_ttl_seconds <= 0:
                kept = "kept" if m.kept else "NOT kept"
                ttl = "cacheTTL 0s" if m.cache_ttl_supported else "no cacheTTL before Cilium 1.19"
                parts.append(
                    f"{m.member} {kept} {self.cluster}'s {m.backends} backend(s) for {m.watched_s:.1f}s "
                    f"({ttl}: kept until it returns; {traffic})"
                )
            elif m.withdrawn_after_s is not None:
                parts.append(
                    f"{m.member} withdrew {self.cluster}'s {m.backends} backend(s) {m.withdrawn_after_s:.1f}s after "
                    f"losing it (cacheTTL {m.cache_ttl_seconds:g}s; {traffic})"
                )
            else:
                parts.append(
                    f"{m.member} did not withdraw {self.cluster}'s backends within {m.watched_s:.1f}s "
                    f"(cacheTTL {m.cache_ttl_seconds:g}s; {traffic})"
                )
        text = f"if {self.cluster}'s clustermesh-apiserver is lost: " + "; ".join(parts)
        if self.lost_after_s is not None:
            text += f"; the others noticed after {self.lost_after_s:.1f}s"
        if self.reconnected_after_s is not None:
            after = f"{self.reconnected_after_s:.1f}s"
            text += f"; once it is back, every member reconnected and saw every backend after {after}"
        return text


class DrillResult(BaseModel):
    """The whole drill: "not run" means the steady state did not hold and nothing was disrupted."""

    model_config = ConfigDict(frozen=True)

    status: DrillStatus
    reason: str
    phases: list[DrillPhase]
    recovered: list[str]
    failover_seconds: dict[str, float]
    failed_probes: int
    probes: int = 0
    left_alone: list[str] = []
    """Records of an earlier drill dropped without restoring: someone had set another count since."""
    scenario: Scenario = "scale-to-zero"
    losses: list[ClusterLoss] = []
    """cluster-loss only: one entry per member whose mesh control plane was taken away."""
    also: list[str] = []
    """The summaries of further scenarios run after this one (:meth:`combine`)."""

    @classmethod
    def combine(cls, results: list[DrillResult]) -> DrillResult:
        """Several scenarios run in a row as one result: the worst status, every phase, every summary."""
        if len(results) == 1:
            return results[0]
        if not results:
            return cls.not_run("no drill scenario asked for")
        statuses = [r.status for r in results]
        worst: DrillStatus = "failed" if "failed" in statuses else "not run" if "not run" in statuses else "passed"
        first = results[0]
        return first.model_copy(
            update={
                "status": worst,
                "reason": "; ".join(f"{r.scenario}: {r.reason}" for r in results),
                "phases": [p for r in results for p in r.phases],
                "recovered": [line for r in results for line in r.recovered],
                "left_alone": [line for r in results for line in r.left_alone],
                "losses": [loss for r in results for loss in r.losses],
                "also": [r.summary() for r in results[1:]],
            }
        )

    def loss_markdown(self) -> str:
        """The cluster-loss drill for a person: what to expect from a real outage, then the figures per member."""
        lines = [f"# Cluster-loss drill: {self.status}", "", self.reason, ""]
        for loss in self.losses:
            lines += [f"## Losing {loss.cluster}'s mesh control plane", "", loss.expectation() + ".", ""]
            lines += [
                "| member | cacheTTL | backends of " + loss.cluster + " | kept | withdrawn after | watched | "
                "failed requests |",
                "|---|---|---|---|---|---|---|",
            ]
            for m in loss.members:
                withdrawn = "—" if m.withdrawn_after_s is None else f"{m.withdrawn_after_s:.1f} s"
                lines.append(
                    f"| {m.member} | {m.cache_ttl_seconds:g} s | {m.backends} | {'yes' if m.kept else 'no'} | "
                    f"{withdrawn} | {m.watched_s:.1f} s | {m.failed_probes}/{m.probes} |"
                )
            lost = "—" if loss.lost_after_s is None else f"{loss.lost_after_s:.1f} s"
            back = "—" if loss.reconnected_after_s is None else f"{loss.reconnected_after_s:.1f} s"
            lines += [
                "",
                f"- clustermesh-apiserver replicas: {loss.apiserver_replicas} (scaled to 0, then back)",
                f"- the others reported {loss.cluster} not connected after: {lost}",
                f"- every member reconnected and listed every backend again after: {back}",
                "",
            ]
        return "\n".join(lines)

    @classmethod
    def not_run(cls, reason: str) -> DrillResult:
        """A drill that did not start: no phase, nothing disrupted, ``reason`` says why."""
        return cls(status="not run", reason=reason, phases=[], recovered=[], failover_seconds={}, failed_probes=0)

    def table_rows(self) -> list[dict[str, str]]:
        """Rows for a Prefect table artifact: phase, cluster, status, detail, failover s, failed probes."""
        return [p.table_row() for p in self.phases]

    @property
    def title(self) -> str:
        return {"scale-to-zero": "failover drill", "cluster-loss": "cluster-loss drill"}.get(
            self.scenario, "MCS-API drill"
        )

    def summary(self) -> str:
        if self.status == "not run":
            text = f"{self.title} not run: {self.reason}"
        elif self.status == "failed":
            text = f"{self.title} failed: {self.reason}"
        elif self.scenario == "cluster-loss":
            text = f"{self.title} passed: " + "; ".join(loss.expectation() for loss in self.losses)
        else:
            times = ", ".join(f"{c} in {s:.2f}s" for c, s in self.failover_seconds.items())
            text = f"{self.title} passed: failed over {times}; {self.failed_probes}/{self.probes} probes failed"
        if self.recovered:
            text += f" (first restored {len(self.recovered)} deployment(s) left by an earlier drill)"
        if self.left_alone:
            text += (
                f" (left {len(self.left_alone)} deployment(s) at the count someone set after an earlier drill; "
                "its record dropped)"
            )
        for more in self.also:
            text += f" | {more}"
        return text
