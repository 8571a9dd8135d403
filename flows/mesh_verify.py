"""``nightly_mesh_verification``: is the mesh still what the setup built, and does failover still work?

Read-only apart from the drill: prerequisites (reachability, versions) → drift → certificates → mesh
health → the failover drill (optional) → one Slack message, posted at the start and updated in place
with PASS / WARN / FAIL, details in its thread. A run whose verdict is FAIL ends Failed (so Prefect
automations see it) after the summary has been delivered; the failure hook then does not post twice.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict

from clustermesh.checks import Finding, Verdict, nearest_expiry_days, overall
from clustermesh.drill import DrillResult, drill_gate
from clustermesh.notify import PostResult, Summary, render_plain
from clustermesh.spec import MeshSpec
from clustermesh.steps.step8_health import HealthMatrix
from flows.failover_drill import failover_drill
from flows.locking import mesh_lock
from tasks import verify_steps
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, log_post, notifier, run_url


class VerificationResult(BaseModel):
    """The night's verdict and everything behind it; nothing secret (fingerprints at most)."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    status: Verdict
    findings: list[Finding]
    health: HealthMatrix | None
    drill: DrillResult | None
    nearest_expiry_days: int | None
    slack: str
    reported: bool = True  # the summary went out (or was printed): hooks need not alert again

    def describe(self) -> str:
        lines = [f"{self.status}: mesh {self.mesh}"]
        for finding in self.findings:
            if finding.level != "ok":
                lines.append(f"  {finding.level}: {finding.subject}: {finding.reason} — {finding.fix}")
        if self.drill is not None:
            lines.append(f"  {self.drill.summary()}")
        if self.nearest_expiry_days is not None:
            lines.append(f"  nearest certificate expiry: {self.nearest_expiry_days} days")
        lines.append(f"  slack: {self.slack}")
        return "\n".join(lines)


def drill_findings(result: DrillResult) -> list[Finding]:
    if result.status == "passed":
        return [Finding(level="ok", subject="failover drill", reason=result.summary())]
    level: Literal["warning", "failure"] = "failure" if result.status == "failed" else "warning"
    return [Finding(level=level, subject="failover drill", reason=result.summary()[:300], fix=_drill_fix(result))]


def _drill_fix(result: DrillResult) -> str:
    if result.status == "not run":
        return "fix the findings above; the drill runs only on a healthy mesh"
    return "read the drill artifact: which phase failed and the backends the agents listed"


@flow(
    name="nightly-mesh-verification",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
    validate_parameters=True,
)
def nightly_mesh_verification(spec: MeshSpec, run_drill: bool = True) -> State[VerificationResult]:
    """Verify the mesh (read-only), rehearse failover, and report PASS / WARN / FAIL to Slack.

    Never runs beside a setup of the same mesh (both hold ``mesh-<name>``). Emits
    ``clustermesh.mesh.verified`` every run, and ``clustermesh.mesh.degraded`` / ``.healthy`` when the
    verdict changed since the last run (kept in the Prefect Variable ``clustermesh-last-verdict-<mesh>``).
    """
    with mesh_lock(spec), cluster_sessions(spec):
        state = _verify(spec, run_drill)
    result = state.data
    if isinstance(result, VerificationResult):
        emit_verdict_events(spec, result)
    return state


# ------------------------------------------------------------------------------------ events

VERDICT_VARIABLE_PREFIX = "clustermesh-last-verdict-"


def mesh_resource(spec: MeshSpec) -> dict[str, str]:
    return {"prefect.resource.id": f"clustermesh.mesh.{spec.name}", "prefect.resource.name": spec.name}


def emit_verdict_events(spec: MeshSpec, result: VerificationResult) -> list[str]:
    """Emit this run's events; returns their names.

    On a verdict change: PASS → ``healthy``, WARN / FAIL → ``degraded`` (so WARN → FAIL is reported
    again, with ``previous_verdict`` in the payload). The first verdict seen for a mesh counts as a change.
    """
    logger = get_run_logger()
    variable = f"{VERDICT_VARIABLE_PREFIX}{spec.name}"
    previous = Variable.get(variable, default=None)
    payload = {
        "mesh": spec.name,
        "verdict": result.status,
        "previous_verdict": previous,
        "run_url": run_url(spec, flow_run.get_id()),
    }
    emitted = ["clustermesh.mesh.verified"]
    if previous != result.status:
        emitted.append("clustermesh.mesh.healthy" if result.status == "PASS" else "clustermesh.mesh.degraded")
        Variable.set(variable, result.status, overwrite=True)
    for name in emitted:
        emit_event(event=name, resource=mesh_resource(spec), payload=payload)
    logger.info("Events: %s (verdict %s, before %s)", ", ".join(emitted), result.status, previous or "none")
    return emitted


class _Observed(BaseModel):
    """What the read-only checks and the drill found, before it is summarised."""

    findings: list[Finding]
    health: HealthMatrix | None = None
    drill: DrillResult | None = None
    expiry: int | None = None


def _verify(spec: MeshSpec, run_drill: bool) -> State[VerificationResult]:
    logger = get_run_logger()
    link = run_url(spec, flow_run.get_id())
    slack = notifier(spec)
    title = f"Cluster Mesh {spec.name}: nightly verification"
    parent: PostResult | None = None
    if slack is not None:
        parent = slack.post_summary(Summary(title=title, status="RUNNING", mesh=spec.name, run_url=link))
        log_post(parent, "start message")
    seen = _observe(spec, run_drill)
    status = overall(seen.findings)
    summary = _summary(spec, title, status, seen, link)
    delivery = _deliver(slack, parent, summary)
    plain = render_plain(summary)
    create_markdown_artifact(key=f"{spec.name}-nightly-summary", markdown=f"```\n{plain}\n```", description=status)
    result = VerificationResult(
        mesh=spec.name,
        status=status,
        findings=seen.findings,
        health=seen.health,
        drill=seen.drill,
        nearest_expiry_days=seen.expiry,
        slack=delivery,
    )
    logger.info(result.describe())
    if status == "FAIL":
        return Failed(message=f"verification FAIL for mesh {spec.name}", data=result)
    return Completed(message=f"verification {status}", data=result)


def _observe(spec: MeshSpec, run_drill: bool) -> _Observed:
    """Prerequisites → drift → certificates → health, then the drill if the mesh passed its gate."""
    facts, findings = verify_steps.check_reachability_and_versions(spec)
    seen = _Observed(findings=findings)
    if facts:
        seen.findings += verify_steps.check_drift(spec, facts)
        report = verify_steps.check_certificates(spec, facts)
        seen.findings += report.findings
        seen.expiry = nearest_expiry_days(report)
        seen.health, health = verify_steps.check_mesh_health(spec)
        seen.findings += health
        create_table_artifact(
            key=f"{spec.name}-nightly-health-matrix", table=seen.health.table_rows(), description=seen.health.summary()
        )
    if run_drill and spec.drill.enabled:
        # the steady-state gate, first at flow level: a mesh already seen unhealthy is not disrupted,
        # and the drill's own baseline need not wait out its timeout to say so
        seen.drill = drill_gate(spec, facts, health=seen.health) or failover_drill(spec, facts)
        seen.findings += drill_findings(seen.drill)
    return seen


def _summary(spec: MeshSpec, title: str, status: Verdict, seen: _Observed, link: str | None) -> Summary:
    matrix, drill = seen.health, seen.drill
    return Summary(
        title=title,
        status=status,
        mesh=spec.name,
        clusters=len(spec.clusters),
        nodes_reachable=sum(cell.reachable for cell in matrix.cells) if matrix else None,
        nodes_total=sum(cell.expected for cell in matrix.cells) if matrix else None,
        drill=drill.status if drill else "skipped",
        failover_seconds=max(drill.failover_seconds.values()) if drill and drill.failover_seconds else None,
        cert_expiry_days=seen.expiry,
        run_url=link,
        findings=seen.findings,
    )


def _deliver(slack: object, parent: PostResult | None, summary: Summary) -> str:
    """Update the start message in place (or post one), details in its thread; print without Slack."""
    from clustermesh.notify import Notifier

    if not isinstance(slack, Notifier):
        print(render_plain(summary), flush=True)
        return "not configured: printed and saved as an artifact"
    if parent is not None and parent.ok and parent.ts:
        posted = slack.update_summary(parent.ts, summary, channel=parent.channel)
        log_post(posted, "summary update")
        details = [f"{f.level}: {f.subject}: {f.reason}" + (f" — {f.fix}" if f.fix else "") for f in summary.findings]
        if posted.ok and slack.supports_threads:
            log_post(slack.post_details(parent.ts, details, channel=parent.channel), "details")
    else:
        posted = slack.post_summary(summary)
        log_post(posted, "summary")
    return "delivered" if posted.ok else f"not delivered ({posted.error})"
