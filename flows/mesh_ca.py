"""``mesh_rotate_ca``: replace a cluster's CA (or every member's, one at a time) with trust overlap.

The phases are in ``clustermesh.lifecycle.ca_rotation``: every peer first trusts the old and the new CA, then the
cluster's certificates are re-issued by the new one and handed out, then the old CA is dropped. Each phase is
read back from the cluster (``cilium-ca`` and ``clustermesh-ca-next``), so a rerun after a crash or a stop goes
on from there, and a rerun of a finished rotation writes nothing. The cluster trusts both CAs through the chart's
``tls.caBundle`` (1.14+) while its certificates change. Supported: per-peer CA mode with the ``cronJob`` or
``helm`` method; ``certmanager``, a shared CA, Cilium 1.13 and a ``tls.caBundle`` a person already uses are
refused before any write, with the reason and the fix. Then the mesh gets the nightly's read-only checks.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict

from clustermesh.checks import Finding, Verdict
from clustermesh.errors import ClusterStateError
from clustermesh.lifecycle.ca_plan import RotationPlan, rotation_targets
from clustermesh.spec import MeshSpec
from flows.lifecycle import WriteBudget, approved, artifact_key, post_summary, verify_members
from flows.locking import mesh_lock
from tasks import ca_steps
from tasks.ca_steps import ClusterRotation
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, quiet_reported_ends
from tasks.results import owner_only_files

quiet_reported_ends()


class CaRotationResult(BaseModel):
    """What the rotation did per cluster and what the verification found; fingerprints only."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    clusters: list[ClusterRotation]
    status: Verdict
    findings: list[Finding]

    @property
    def wrote_anything(self) -> bool:
        return any(c.writes for c in self.clusters)

    def describe(self) -> str:
        lines = [f"mesh {self.mesh}: CA rotation of {', '.join(c.cluster for c in self.clusters) or 'no cluster'}"]
        if not self.wrote_anything:
            lines.append("nothing written")
        lines.extend(f"  {c.describe()}" for c in self.clusters)
        lines.append(f"verification of the mesh: {self.status}")
        lines.extend(f"  {f.level}: {f.subject}: {f.reason}" for f in self.findings if f.level != "ok")
        return "\n".join(lines)


@flow(
    name="mesh-rotate-ca",
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def mesh_rotate_ca(
    spec: MeshSpec, cluster: str | None = None, require_approval: bool = False, stop_after_writes: int | None = None
) -> CaRotationResult:
    """Rotate the CA of ``cluster`` (every member when None, one at a time) with trust overlap.

    Args:
        spec: The mesh.
        cluster: The cluster whose CA is replaced; empty: every member's, one after the other.
        require_approval: Show the plan as an artifact and pause for approval before the first write.
        stop_after_writes: Drill/test aid: stop the run right after this many writes (as a crash would), to
            prove that a rerun converges. Leave empty.
    """
    rotation_targets(spec, cluster)  # an unknown name fails before the lock, nothing read
    with mesh_lock(spec), owner_only_files(), cluster_sessions(spec):
        return _rotate(spec, cluster, require_approval, WriteBudget(stop_after_writes, "stop_after_writes"))


def _rotate(spec: MeshSpec, cluster: str | None, require_approval: bool, count: WriteBudget) -> CaRotationResult:
    logger = get_run_logger()
    plan = ca_steps.plan_rotation(spec, cluster)
    artifact_id = create_markdown_artifact(
        key=artifact_key(f"{spec.name}-rotate-ca-{cluster or 'all'}-plan"),
        markdown=plan.render_markdown(),
        description="The CA rotation: phases and peers, certificates as fingerprints",
    )
    logger.info(plan.render_text())
    _refuse(plan)
    if require_approval and plan.changing and not _approved(spec, plan, artifact_id):
        return Cancelled(message=f"not approved: nothing written to mesh {spec.name}")  # type: ignore[return-value]
    done = []
    for name in [c.cluster for c in plan.clusters]:
        rotate = ca_steps.rotate_cluster.with_options(task_run_name=f"Rotate the CA of {name}")
        done.append(rotate(spec, name, count))
        logger.info(done[-1].describe())
    verdict, findings = verify_members(spec)
    status = verdict or "PASS"  # a spec has two clusters at least, so the members are always checked
    result = CaRotationResult(mesh=spec.name, clusters=done, status=status, findings=findings)
    logger.info(result.describe())
    _post_summary(spec, result)
    return result


def _refuse(plan: RotationPlan) -> None:
    """A refused or unreadable target stops the run before any write."""
    for refused in plan.refused:
        raise ClusterStateError(
            refused.cluster,
            f"its CA cannot be rotated here: {refused.refusal}; nothing was written",
            fix="see the reason above; the other clusters can be rotated with --cluster",
        )
    targets = {c.cluster for c in plan.clusters}
    for name, why in plan.unreadable.items():
        raise ClusterStateError(
            name,
            f"its installation could not be read ({why}); nothing was written",
            fix="every member must be reachable: its peers' entries change"
            + (" and its own CA is rotated" if name in targets else ""),
        )


def _approved(spec: MeshSpec, plan: RotationPlan, artifact_id: Any) -> bool:
    changing = ", ".join(plan.changing)
    names = "`, `".join(plan.changing)
    headline = f"**Rotate the CA of `{names}` in mesh `{spec.name}`:** plan artifact {artifact_id}."
    return approved(headline, action="CA rotation", waiting_for=f"CA rotation of {changing}")


def _post_summary(spec: MeshSpec, result: CaRotationResult) -> None:
    notes = [
        Finding(level="ok", subject=c.cluster, reason=c.describe().splitlines()[0].split(": ", 1)[-1])
        for c in result.clusters
    ]
    post_summary(
        spec,
        title=f"Cluster Mesh {spec.name}: CA rotated",
        status=result.status,
        clusters=len(spec.clusters),
        findings=notes + result.findings,
    )


__all__ = ["CaRotationResult", "mesh_rotate_ca"]
