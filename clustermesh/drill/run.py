"""The whole drill, in order: recover, workloads, baseline, then failover and restore per cluster; rollback always."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from clustermesh.drill.client import DrillClient
from clustermesh.drill.cluster_loss import ClusterLossRun
from clustermesh.drill.mcs import run_mcs
from clustermesh.drill.phases import Drill
from clustermesh.drill.results import DrillPhase, DrillResult, DrillStatus, Scenario
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts


def run_drill(
    clients: Mapping[str, DrillClient],
    facts: Mapping[str, ClusterFacts],
    spec: MeshSpec,
    *,
    clusters_to_fail: Sequence[str] | None = None,
    on_phase: Callable[[DrillPhase], None] | None = None,
    run_phase: Callable[[str, Callable[[], DrillPhase]], DrillPhase] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    scenario: Scenario = "scale-to-zero",
) -> DrillResult:
    """Recover leftovers, check the steady state, then fail over and restore one cluster at a time.

    A failed steady state gives "not run" with nothing disrupted. After a failed failover or restore the
    remaining clusters are skipped: the mesh is not fit to take more. The rollback runs in any case.
    Leftovers are recovered even with ``drill.enabled: false``: a disabled drill must not keep a
    cluster scaled down. Clusters are always failed one at a time (the spec refuses ``one_at_a_time: false``).
    ``run_phase(name, call)`` runs each phase (the flow makes each a Prefect task); ``on_phase`` sees
    each result as it comes. ``scenario`` ``cluster-loss`` takes each target's clustermesh-apiserver away
    instead of its backends (:mod:`clustermesh.drill.cluster_loss`).
    """
    drill = Drill(clients, facts, spec, clock=clock, sleep=sleep)
    targets = drill.targets(clusters_to_fail)
    run = _Run(drill, on_phase=on_phase, run_phase=run_phase, scenario=scenario)
    try:
        status, reason = run.method(targets, enabled=spec.drill.enabled)
    finally:
        rollback = run.record("rollback", drill.restore_all)
    if rollback.status == "failed":
        if status == "passed":
            status = "failed"
        reason = f"{reason}; rollback: {rollback.detail}"
    return run.result(status, reason)


class _Run:
    """One :func:`run_drill`: the phases so far, each run by ``run_phase`` and shown to ``on_phase``."""

    def __init__(
        self,
        drill: Drill,
        *,
        on_phase: Callable[[DrillPhase], None] | None,
        run_phase: Callable[[str, Callable[[], DrillPhase]], DrillPhase] | None,
        scenario: Scenario = "scale-to-zero",
    ) -> None:
        self.drill = drill
        self.scenario: Scenario = scenario
        self.losses: list[ClusterLossRun] = []
        self.on_phase = on_phase
        self.run_phase = run_phase
        self.phases: list[DrillPhase] = []
        self.recovered: list[str] = []
        self.left_alone: list[str] = []

    def record(self, name: str, call: Callable[[], DrillPhase]) -> DrillPhase:
        phase = call() if self.run_phase is None else self.run_phase(name, call)
        self._add(phase)
        return phase

    def _add(self, phase: DrillPhase) -> None:
        self.phases.append(phase)
        if self.on_phase is not None:
            self.on_phase(phase)

    def method(self, targets: Sequence[str], *, enabled: bool) -> tuple[DrillStatus, str]:
        """Everything before the rollback; "not run" as long as nothing has been disrupted."""
        drill = self.drill
        if self.record("recover", drill.recover).status == "failed":
            return "not run", f"leftovers of an earlier drill could not be undone: {self.phases[-1].detail}"
        self.recovered.extend(drill.recovered)
        self.left_alone.extend(drill.left_alone)
        if not enabled:
            return "not run", "the drill is disabled (drill.enabled: false)"
        if self.record("workloads", drill.ensure_workloads).status != "passed":
            return "not run", f"drill workloads not ready, nothing disrupted: {self.phases[-1].detail}"
        if self.record("baseline", drill.baseline).status != "passed":
            return "not run", f"steady state does not hold, nothing disrupted: {self.phases[-1].detail}"
        if self.scenario == "cluster-loss":
            return self._lose_each(targets)
        if self.scenario == "mcs":
            return run_mcs(self, targets)
        return self._fail_over_each(targets)

    def _lose_each(self, targets: Sequence[str]) -> tuple[DrillStatus, str]:
        """Loss then reconnection of each member's mesh control plane, one at a time; after a failure the
        others are skipped."""
        for index, cluster in enumerate(targets):
            loss = ClusterLossRun(self.drill, cluster)
            self.losses.append(loss)
            lost = self.record(f"cluster-loss {cluster}", loss.lose)
            back = self.record(f"reconnect {cluster}", loss.reconnect)
            bad = next((p for p in (lost, back) if p.status == "failed"), None)
            if bad is not None:
                for rest in targets[index + 1 :]:
                    detail = f"not disrupted: the {bad.name} of {cluster} failed"
                    self._add(DrillPhase(name="cluster-loss", cluster=rest, status="skipped", detail=detail))
                return "failed", f"{bad.name} of {cluster} failed: {bad.detail}"
        return "passed", f"{len(targets)} member(s) lost their mesh control plane and reconnected"

    def _fail_over_each(self, targets: Sequence[str]) -> tuple[DrillStatus, str]:
        """Failover then restore, one cluster at a time; after a failure the others are skipped, not disrupted."""
        drill = self.drill
        for index, cluster in enumerate(targets):
            failover = self.record(f"failover {cluster}", lambda c=cluster: drill.failover(c))  # type: ignore[misc]
            restore = self.record(f"restore {cluster}", lambda c=cluster: drill.restore(c))  # type: ignore[misc]
            bad = next((p for p in (failover, restore) if p.status == "failed"), None)
            if bad is not None:
                for rest in targets[index + 1 :]:
                    detail = f"not disrupted: the {bad.name} of {cluster} failed"
                    self._add(DrillPhase(name="failover", cluster=rest, status="skipped", detail=detail))
                return "failed", f"{bad.name} of {cluster} failed: {bad.detail}"
        return "passed", f"{len(targets)} cluster(s) failed over and restored"

    def result(self, status: DrillStatus, reason: str) -> DrillResult:
        """The drill's result from its phases: failover times per cluster and the probes of every failover."""
        failovers = [p for p in self.phases if p.name == "failover"]
        return DrillResult(
            status=status,
            reason=reason,
            phases=self.phases,
            recovered=self.recovered,
            left_alone=self.left_alone,
            failover_seconds={
                p.cluster: p.failover_seconds
                for p in failovers
                if p.cluster is not None and p.failover_seconds is not None
            },
            failed_probes=sum(p.failed_probes for p in failovers),
            probes=sum(p.probes for p in failovers),
            scenario=self.scenario,
            losses=[loss.figures() for loss in self.losses],
        )
