"""``mesh_remove_cluster``: one cluster leaves the mesh; the others forget it and are verified.

The spec passed still lists the leaving cluster (that is how its kubeconfig is found); once the run
succeeded, drop it from the spec. Only entries the pipeline manages are removed (a hand-added one is
left and reported), the leaving cluster is never needed (a dead one is removed from the others all the
same), and a rerun writes nothing. Then the remaining members get the nightly's read-only checks
(reachability and versions, drift, mesh health; no drill) on the spec without the leaving cluster.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict

from clustermesh.checks import Finding, Verdict
from clustermesh.lifecycle.leave import LeavePlan, remaining_members
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import StepChange
from flows.lifecycle import approved, artifact_key, gather, post_summary, verify_members
from flows.locking import mesh_lock
from tasks import leave_steps
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, quiet_reported_ends
from tasks.results import owner_only_files

quiet_reported_ends()


class RemoveResult(BaseModel):
    """What a removal did and what the remaining members' verification found; nothing secret."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    removed: str
    changes: list[StepChange]
    hand_added: list[str]  # members whose entry for the removed cluster a person added: left as it is
    notes: list[str]
    status: Verdict | None  # the remaining members' verification; None when no mesh is left to verify
    findings: list[Finding]

    @property
    def wrote_anything(self) -> bool:
        return any(c.written for c in self.changes)

    def describe(self) -> str:
        lines = [f"mesh {self.mesh}: {self.removed} removed from {len(self.changes)} member(s)"]
        if not self.wrote_anything:
            lines.append(f"nothing written: no member held a managed entry for {self.removed}")
        lines.extend(f"  {c.step}: {c.describe()}" for c in self.changes)
        lines.extend(
            f"  {name}: its entry for {self.removed} was added by hand, left as it is" for name in self.hand_added
        )
        lines.extend(f"note: {note}" for note in self.notes)
        if self.status is not None:
            lines.append(f"verification of the remaining members: {self.status}")
        lines.extend(f"  {f.level}: {f.subject}: {f.reason}" for f in self.findings if f.level != "ok")
        return "\n".join(lines)


@flow(
    name="mesh-remove-cluster",
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def mesh_remove_cluster(
    spec: MeshSpec, cluster: str, require_approval: bool = False, disable_in_removed: bool = False
) -> RemoveResult:
    """Remove ``cluster`` from the mesh: its managed entry leaves every other member's values.

    Args:
        spec: The mesh, still listing the cluster being removed (drop it from the spec afterwards).
        cluster: The cluster that leaves; it may be unreachable (dead).
        require_approval: Show the plan as an artifact and pause for approval before the first write.
        disable_in_removed: Also remove every managed peer entry from the leaving cluster's own values.
    """
    remaining_members(spec, cluster)  # an unknown name fails before the lock, nothing read
    with mesh_lock(spec), owner_only_files(), cluster_sessions(spec):
        return _remove(spec, cluster, require_approval, disable_in_removed)


def _remove(spec: MeshSpec, leaving: str, require_approval: bool, disable_in_removed: bool) -> RemoveResult:
    logger = get_run_logger()
    plan = leave_steps.plan_leave(spec, leaving)
    artifact_id = create_markdown_artifact(
        key=artifact_key(f"{spec.name}-remove-{leaving}-plan"),
        markdown=plan.render_markdown(),
        description=f"What removing {leaving} writes (key material as fingerprints)",
    )
    logger.info(plan.render_text())
    if require_approval and plan.changing and not _approved(spec, plan, artifact_id):
        return Cancelled(message=f"not approved: nothing written to mesh {spec.name}")  # type: ignore[return-value]
    futures = [
        leave_steps.remove_peer.with_options(task_run_name=f"Remove {leaving} from {name}").submit(spec, name, leaving)
        for name in remaining_members(spec, leaving)
    ]
    changes = gather(futures, written="Removed before the failure from")
    notes = list(plan.notes)
    notes.append(
        leave_steps.delete_drill_resources.with_options(task_run_name=f"Delete drill of {leaving}")(spec, leaving)
    )
    if disable_in_removed:
        outcome = leave_steps.disable_in_removed(spec, leaving)
        if isinstance(outcome, StepChange):
            changes.append(outcome)
        else:
            notes.append(outcome)
    for note in notes:
        logger.info("Note: %s", note)
    status, findings = verify_members(spec, without=leaving)
    result = RemoveResult(
        mesh=spec.name,
        removed=leaving,
        changes=changes,
        hand_added=plan.hand_added,
        notes=notes,
        status=status,
        findings=findings,
    )
    logger.info(result.describe())
    _post_summary(spec, result)
    return result


def _approved(spec: MeshSpec, plan: LeavePlan, artifact_id: Any) -> bool:
    changing = ", ".join(plan.changing)
    headline = (
        f"**Remove `{plan.leaving}` from mesh `{spec.name}`:** plan artifact {artifact_id} — the entry leaves "
        f"{changing}."
    )
    return approved(headline, action="Removal", waiting_for=f"{plan.leaving} removed from {changing}")


def _post_summary(spec: MeshSpec, result: RemoveResult) -> None:
    notes = [Finding(level="ok", subject=c.cluster, reason=c.describe()) for c in result.changes]
    notes += [
        Finding(level="warning", subject=name, reason=f"hand-added entry for {result.removed} left as it is")
        for name in result.hand_added
    ]
    post_summary(
        spec,
        title=f"Cluster Mesh {spec.name}: {result.removed} removed",
        status=result.status or "PASS",
        clusters=len(spec.clusters) - 1,
        findings=notes + result.findings,
    )


__all__ = ["RemoveResult", "mesh_remove_cluster"]
