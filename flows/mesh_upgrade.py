"""``mesh_upgrade_prepare``: before KKP upgrades Cilium, write values that work on both the current and the target line.

The plan (``clustermesh.lifecycle.upgrade_values``) lists, per cluster, what the target chart would refuse or
silently ignore and the values change that fixes it, proved with the real charts (both lines render it, the
current line runs exactly what it runs today). Findings with no such form are BLOCKING and are not written;
the fixable ones are (they change nothing before the upgrade). Then the mesh gets the nightly's read-only
checks (reachability and versions, drift, mesh health; no drill). A rerun writes nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict

from clustermesh.checks import Finding, Verdict
from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import PrerequisiteError
from clustermesh.lifecycle.upgrade_values import UpgradePlan
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import StepChange
from flows.lifecycle import approved, artifact_key, gather, post_summary, verify_members
from flows.locking import mesh_lock
from tasks import upgrade_steps
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, quiet_reported_ends
from tasks.results import owner_only_files

quiet_reported_ends()


class UpgradePrepareResult(BaseModel):
    """What the preparation wrote, what stays BLOCKING, and what the mesh's verification found; nothing secret."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    target: str
    changes: list[StepChange]
    blocking: list[str]  # "cluster: reason; instead: ..."
    status: Verdict
    findings: list[Finding]

    @property
    def wrote_anything(self) -> bool:
        return any(c.written for c in self.changes)

    def describe(self) -> str:
        lines = [f"mesh {self.mesh}: values prepared for Cilium {self.target}"]
        if not self.wrote_anything:
            lines.append("nothing written: every checked cluster's values already work on both lines")
        lines.extend(f"  {c.step}: {c.describe()}" for c in self.changes)
        lines.extend(f"  BLOCKING {b}" for b in self.blocking)
        lines.append(f"verification of the mesh: {self.status}")
        lines.extend(f"  {f.level}: {f.subject}: {f.reason}" for f in self.findings if f.level != "ok")
        return "\n".join(lines)


@flow(
    name="mesh-upgrade-prepare",
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def mesh_upgrade_prepare(
    spec: MeshSpec, to_version: str, cluster: str | None = None, require_approval: bool = False
) -> UpgradePrepareResult:
    """Write, per cluster, the values that work on both its current Cilium line and ``to_version``.

    Args:
        spec: The mesh.
        to_version: The Cilium version KKP will upgrade to, e.g. 1.20.0 (its chart must be in cilium.chart.source).
        cluster: Only this cluster of the spec; empty for every cluster.
        require_approval: Show the plan as an artifact and pause for approval before the first write.
    """
    target = to_version.strip().removeprefix("v")
    _check_input(spec, target, cluster)  # bad input fails before the lock, nothing read
    with mesh_lock(spec), owner_only_files(), cluster_sessions(spec):
        return _prepare(spec, target, cluster or None, require_approval)


def _check_input(spec: MeshSpec, target: str, cluster: str | None) -> None:
    profile_for(target)
    names = [c.name for c in spec.clusters]
    if cluster and cluster not in names:
        raise PrerequisiteError(
            cluster,
            f"cluster {cluster!r} is not in mesh {spec.name} (its clusters: {', '.join(names)}); nothing was written",
            fix="name one of the spec's clusters, or leave cluster empty for all of them",
        )
    if spec.cilium.chart.source is None:
        raise PrerequisiteError(
            spec.name,
            "cilium.chart.source is empty: no values can be proved against the charts; nothing was written",
            fix="set cilium.chart.source to a folder of cilium-<version>.tgz or a Helm repository URL",
        )


def _prepare(spec: MeshSpec, target: str, only: str | None, require_approval: bool) -> UpgradePrepareResult:
    logger = get_run_logger()
    plan = upgrade_steps.plan_upgrade(spec, target, only)
    artifact_id = create_markdown_artifact(
        key=artifact_key(f"{spec.name}-upgrade-{target}-plan"),
        markdown=plan.render_markdown(),
        description=f"Values that work on both lines for Cilium {target} (key material as fingerprints)",
    )
    logger.info(plan.render_text())
    if require_approval and plan.changing and not _approved(spec, plan, artifact_id):
        return Cancelled(message=f"not approved: nothing written to mesh {spec.name}")  # type: ignore[return-value]
    futures = [
        upgrade_steps.write_values.with_options(task_run_name=f"Values for Cilium {target} in {name}").submit(
            spec, name, target
        )
        for name in plan.changing
    ]
    changes = gather(futures, written="Written before the failure")
    blocking = [f"{p.cluster}: {b}" for p in plan.clusters for b in p.blocking]
    verdict, findings = verify_members(spec)
    status = verdict or "PASS"  # a spec has two clusters at least, so the members are always checked
    result = UpgradePrepareResult(
        mesh=spec.name,
        target=target,
        changes=changes,
        blocking=blocking,
        status="FAIL" if blocking else status,
        findings=findings,
    )
    logger.info(result.describe())
    _post_summary(spec, result)
    return result


def _approved(spec: MeshSpec, plan: UpgradePlan, artifact_id: Any) -> bool:
    changing = ", ".join(plan.changing)
    headline = (
        f"**Values for Cilium `{plan.target}` in mesh `{spec.name}`:** plan artifact {artifact_id} — written to "
        f"{changing}."
    )
    return approved(headline, action="Upgrade values", waiting_for=f"values for Cilium {plan.target} in {changing}")


def _post_summary(spec: MeshSpec, result: UpgradePrepareResult) -> None:
    notes = [Finding(level="ok", subject=c.cluster, reason=c.describe()) for c in result.changes]
    notes += [
        Finding(level="failure", subject=b.split(":", 1)[0], reason=f"BLOCKING for Cilium {result.target}: {b}")
        for b in result.blocking
    ]
    post_summary(
        spec,
        title=f"Cluster Mesh {spec.name}: values prepared for Cilium {result.target}",
        status=result.status,
        clusters=len(spec.clusters),
        findings=notes + result.findings,
    )


__all__ = ["UpgradePrepareResult", "mesh_upgrade_prepare"]
