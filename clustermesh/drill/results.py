"""What a drill reports: one :class:`DrillPhase` per step, and the :class:`DrillResult` over all of them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from clustermesh.drill.agents import BackendView

PhaseName = Literal["recover", "workloads", "baseline", "failover", "restore", "rollback"]
PhaseStatus = Literal["passed", "failed", "skipped"]
DrillStatus = Literal["passed", "failed", "not run"]


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

    @classmethod
    def not_run(cls, reason: str) -> DrillResult:
        """A drill that did not start: no phase, nothing disrupted, ``reason`` says why."""
        return cls(status="not run", reason=reason, phases=[], recovered=[], failover_seconds={}, failed_probes=0)

    def table_rows(self) -> list[dict[str, str]]:
        """Rows for a Prefect table artifact: phase, cluster, status, detail, failover s, failed probes."""
        return [p.table_row() for p in self.phases]

    def summary(self) -> str:
        if self.status == "not run":
            text = f"failover drill not run: {self.reason}"
        elif self.status == "failed":
            text = f"failover drill failed: {self.reason}"
        else:
            times = ", ".join(f"{c} in {s:.2f}s" for c, s in self.failover_seconds.items())
            text = f"failover drill passed: failed over {times}; {self.failed_probes}/{self.probes} probes failed"
        if self.recovered:
            text += f" (first restored {len(self.recovered)} deployment(s) left by an earlier drill)"
        if self.left_alone:
            text += (
                f" (left {len(self.left_alone)} deployment(s) at the count someone set after an earlier drill; "
                "its record dropped)"
            )
        return text
