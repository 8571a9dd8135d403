"""``mesh_renew_certificates``: re-issue the clustermesh certificates that need it and hand the new remote
certificates to every peer holding a copy; then verify the mesh.

Plan first (an artifact: per cluster what is re-issued and how, per holder which copy is replaced, as
fingerprints old → new, never PEM), optional approval, the mesh lock, the re-issues (all of them first:
the CA stays, so the copies the peers hold stay valid until replaced), one values write per holder, then
the nightly's read-only checks (reachability and versions, drift, mesh health; no drill) and a Slack
summary. A rerun with nothing due writes nothing; a run stopped after any write converges on the next.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict

from clustermesh.checks import Finding, Verdict
from clustermesh.lifecycle.renew import RenewPlan
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import StepChange
from flows.lifecycle import WriteBudget, approved, artifact_key, post_summary, verify_members
from flows.locking import mesh_lock
from tasks import renew_steps
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, quiet_reported_ends
from tasks.results import owner_only_files

quiet_reported_ends()


class RenewResult(BaseModel):
    """What a renewal did and what the verification found; fingerprints only, nothing secret."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    reissued: list[str]  # per re-issued cluster: how, and its leaves' fingerprints old → new
    changes: list[StepChange]
    plan: list[str]
    status: Verdict
    findings: list[Finding]

    @property
    def wrote_anything(self) -> bool:
        return bool(self.reissued) or any(c.written for c in self.changes)

    def describe(self) -> str:
        lines = [f"mesh {self.mesh}: certificates renewed" if self.wrote_anything else f"mesh {self.mesh}: nothing due"]
        lines += [f"  re-issued: {line}" for line in self.reissued]
        lines += [f"  {c.step}: {c.describe()}" for c in self.changes]
        lines.append(f"verification: {self.status}")
        lines += [f"  {f.level}: {f.subject}: {f.reason}" for f in self.findings if f.level != "ok"]
        return "\n".join(lines)


@flow(
    name="mesh-renew-certificates",
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def mesh_renew_certificates(
    spec: MeshSpec, cluster: str | None = None, require_approval: bool = False, max_writes: int | None = None
) -> RenewResult:
    """Renew the clustermesh certificates of the clusters that need it, then hand them to the peers.

    Args:
        spec: The mesh.
        cluster: Re-issue this cluster's certificates whatever their expiry (and no other's); empty: every
            cluster nearer than certificates.warn_days to expiry.
        require_approval: Show the plan as an artifact and pause for approval before the first write.
        max_writes: A test and drill aid: stop (as a killed run would) right after this many writes.
    """
    with mesh_lock(spec), owner_only_files(), cluster_sessions(spec):
        return _renew(spec, cluster or None, require_approval, max_writes)


def _renew(spec: MeshSpec, only: str | None, require_approval: bool, max_writes: int | None) -> RenewResult:
    logger = get_run_logger()
    plan, facts, problems = renew_steps.plan_renew(spec, only)
    artifact_id = create_markdown_artifact(
        key=artifact_key(f"{spec.name}-renew-plan"),
        markdown=plan.render_markdown(),
        description="What renewing the certificates re-issues and replaces (fingerprints only)",
    )
    logger.info(plan.render_text())
    refusal = plan.refusal()  # an unreadable member, or a method not re-issued here: stop before any write
    if refusal is not None:
        raise refusal
    if require_approval and plan.changing and not _approved(spec, plan, artifact_id):
        return Cancelled(message=f"not approved: nothing written to mesh {spec.name}")  # type: ignore[return-value]
    writes = WriteBudget(max_writes)
    reissued: list[str] = []
    by_name = {c.cluster: c for c in plan.clusters}
    for name in plan.due:  # every re-issue first: the CA stays, the peers' copies stay valid meanwhile
        task = renew_steps.reissue_cluster.with_options(task_run_name=f"Re-issue certificates of {name}")
        reissued.append(task(spec, name, by_name[name].method))
        writes.spent(f"re-issuing the certificates of {name}")
    changes: list[StepChange] = []
    for holder in plan.holders:  # one values write per holder: the due peers' and the stale copies
        replace = sorted({c.of for c in plan.copies if c.holder == holder})
        task_ = renew_steps.hand_out.with_options(task_run_name=f"Hand out certificates to {holder}")
        change = task_(spec, holder, facts, replace)
        changes.append(change)
        if change.written:
            writes.spent(f"handing out the certificates to {holder}")
    verdict, findings = verify_members(spec)
    status = verdict or "PASS"  # a spec has two clusters at least, so the members are always checked
    result = RenewResult(
        mesh=spec.name,
        reissued=reissued,
        changes=changes,
        plan=plan.lines(),
        status=status,
        findings=problems + findings,
    )
    logger.info(result.describe())
    _post_summary(spec, result)
    return result


def _approved(spec: MeshSpec, plan: RenewPlan, artifact_id: Any) -> bool:
    due = ", ".join(plan.due) or "nothing"
    headline = (
        f"**Renew certificates of mesh `{spec.name}`:** plan artifact {artifact_id} — re-issued: "
        f"{', '.join(plan.due) or 'none'}; copies replaced in: {', '.join(plan.holders) or 'none'}."
    )
    return approved(headline, action="Renewal", waiting_for=f"re-issue {due}")


def _post_summary(spec: MeshSpec, result: RenewResult) -> None:
    notes = [Finding(level="ok", subject="renewal", reason=line) for line in result.reissued]
    notes += [Finding(level="ok", subject=c.cluster, reason=c.describe()) for c in result.changes if c.written]
    title = _title(spec, result)
    post_summary(spec, title=title, status=result.status, clusters=len(spec.clusters), findings=notes + result.findings)


def _title(spec: MeshSpec, result: RenewResult) -> str:
    """The summary's first line: which clusters were re-issued and which members got new copies."""
    if not result.wrote_anything:
        return f"Cluster Mesh {spec.name}: certificates checked, none due"
    reissued = [line.split(":", 1)[0] for line in result.reissued]
    handed = [c.cluster for c in result.changes if c.written]
    parts = [f"re-issued in {', '.join(reissued)}"] if reissued else []
    parts += [f"copies replaced in {', '.join(handed)}"] if handed else []
    return f"Cluster Mesh {spec.name}: certificates renewed ({'; '.join(parts)})"


__all__ = ["RenewResult", "mesh_renew_certificates"]
