"""``failover_drill``: the guide's failover demonstration as a repeatable drill that always rolls back.

Phases (each a Prefect task, so the UI shows them): recover leftovers of a crashed drill, ensure the
nginx backends and the global Service in every cluster, check the steady state (a failing baseline
means "not run", nothing disrupted), then per cluster: scale to zero and watch the agents fail over to
remote backends while the service keeps answering, scale back and watch local backends return. The
rollback runs whatever happens. The order lives in ``clustermesh.drill.run_drill``; this flow only
makes its phases visible and reports.

Scenario ``cluster-loss`` (``clustermesh.drill.cluster_loss``) takes one member's clustermesh-apiserver
away instead of its backends and reports, besides the table, a markdown artifact of what a user should
expect from a real outage of that member. Without a scenario the spec's ``drill.scenarios`` run in order.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from clustermesh.drill import DrillPhase, DrillResult, Scenario, drill_gate, run_drill
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from flows.locking import mesh_lock
from flows.spec_source import SPEC_VARIABLE, alert_with_spec, resolve_spec
from tasks import evidence
from tasks.common import cluster_sessions
from tasks.verify_steps import all_clients, check_reachability_and_versions


@task(cache_policy=NO_CACHE)
def drill_phase(run: Callable[[], DrillPhase]) -> DrillPhase:
    """One phase; disruptive phases are never retried by Prefect (the drill decides what to undo)."""
    return run()


def _as_task(name: str, run: Callable[[], DrillPhase]) -> DrillPhase:
    phase: DrillPhase = drill_phase.with_options(name=f"drill: {name}", task_run_name=f"drill: {name}")(run)
    return phase


def _started_on_its_own() -> bool:
    """True for a drill run by hand or from its deployment; False inside the nightly, which holds the lock."""
    ctx = FlowRunContext.get()
    return ctx is None or ctx.flow_run is None or ctx.flow_run.parent_task_run_id is None


@flow(name="failover-drill", on_failure=[alert_with_spec], on_crashed=[alert_with_spec])
def failover_drill(
    spec: MeshSpec | None = None,
    facts: dict[str, ClusterFacts] | None = None,
    spec_variable: str | None = SPEC_VARIABLE,
    scenario: Scenario | None = None,
    cluster: str | None = None,
) -> DrillResult:
    """Rehearse failover (or the loss of a member's mesh) one cluster at a time; the result says passed,
    failed or "not run" and why.

    Started on its own it holds the mesh's lock (``mesh-<name>``) like setup and nightly, so a drill
    never scales backends down in the middle of a setup; as the nightly's subflow it runs under the
    nightly's hold (taking the limit of 1 again would wait for itself).

    Args:
        spec: The mesh. Empty: the spec in the Prefect Variable ``spec_variable``, read when the run starts
            (the deployment's way: ``clustermesh blocks register`` writes it).
        facts: What the nightly already read of the clusters (empty: read them first).
        spec_variable: The Prefect Variable holding the spec when ``spec`` is empty.
        scenario: ``scale-to-zero`` (the guide's failover), ``cluster-loss`` (a member's clustermesh-apiserver
            scaled to 0, the others watched) or ``mcs`` (the failover through an MCS-API exported service). Empty:
            the spec's ``drill.scenarios`` in order (the nightly's way), and ``mcs`` where ``cilium.mcs_api`` is true.
        cluster: Only this cluster is disrupted (empty: every cluster, one at a time).
    """
    mesh = resolve_spec(spec, spec_variable)
    scenarios: list[Scenario] = [scenario] if scenario is not None else list(mesh.drill.scenarios)  # type: ignore[arg-type]
    if scenario is None and mesh.cilium.mcs_api and "mcs" not in scenarios:
        scenarios.append("mcs")  # a mesh with MCS-API on is also drilled through an exported service
    targets = None if cluster is None else [cluster]
    with mesh_lock(mesh) if _started_on_its_own() else nullcontext(), cluster_sessions(mesh):
        return _drill(mesh, facts, scenarios, targets)


def _drill(
    spec: MeshSpec, facts: dict[str, ClusterFacts] | None, scenarios: list[Scenario], targets: list[str] | None
) -> DrillResult:
    logger = get_run_logger()
    if facts is None:
        facts, findings = check_reachability_and_versions(spec)
        if (gate := drill_gate(spec, facts, prerequisites=findings)) is not None:
            return gate
    results: list[DrillResult] = []
    with all_clients(spec) as clients:
        for scenario in scenarios:
            result = run_drill(clients, facts, spec, run_phase=_as_task, scenario=scenario, clusters_to_fail=targets)
            _report(spec, result)
            for line in result.recovered:
                logger.warning("restored before the drill: %s", line)
            logger.info(result.summary())
            results.append(result)
            if result.status == "failed":
                break  # a mesh that failed one scenario is not disrupted by the next
    combined = DrillResult.combine(results)
    if combined.status == "failed" and _started_on_its_own():  # the nightly collects its own evidence
        evidence.on_failure(spec, "FAIL", [], drill=combined)
    return combined


def _report(spec: MeshSpec, result: DrillResult) -> None:
    """The table artifact of every drill; for a cluster-loss drill also the markdown of what a user should expect."""
    key = f"{spec.name}-" + {"scale-to-zero": "failover-drill", "cluster-loss": "cluster-loss-drill"}.get(
        result.scenario, "mcs-drill"
    )
    create_table_artifact(
        key=key,
        table=result.table_rows() or [{"phase": "-", "status": result.status, "detail": result.reason}],
        description=result.summary(),
    )
    if result.scenario == "cluster-loss":
        create_markdown_artifact(
            key=f"{spec.name}-cluster-loss", markdown=result.loss_markdown(), description=result.summary()
        )
