"""``nightly_mesh_verification``: is the mesh still what the setup built, and does failover still work?

Read-only apart from the drill: prerequisites (reachability, versions) → drift → certificates → mesh
health → the failover drill (optional) → one Slack message, posted at the start and updated in place
with PASS / WARN / FAIL, details in its thread.

How a run ends (what the Prefect UI, the Automation and the CLI see):

- PASS / WARN: ``Completed("verification PASS")``, the :class:`VerificationResult` as the result.
- FAIL, summary delivered to Slack: a Failed-type state named ``ReportedFailure`` whose result is a
  :class:`VerificationFailed` carrying the VerificationResult. The crash-safe Automation listens for
  ``prefect.flow-run.Failed`` / ``.Crashed`` only, so the one Slack message stays one; the failure hook
  does not post either.
- FAIL, summary not delivered (Slack misconfigured or down): the same, named ``Failed``: the
  Automation's webhook is then the only message.
- An error before the verdict: Failed (the hook alerts; the Automation too, crash-safe), Crashed alike.

The findings are logged one by one (failures at ERROR, warnings at WARNING), so the Logs tab's last
error is a finding; Prefect's own "Engine execution exited" traceback for a reported end is reduced to
one INFO line (:func:`tasks.notify.quiet_reported_ends`). Read the verdict of a finished run with
:func:`verification_result`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict, Field

from clustermesh.checks import CertificateStatus, Finding, Verdict, mesh_not_set_up, nearest_expiry_days, overall
from clustermesh.drill import DrillResult, drill_gate
from clustermesh.errors import ReportedFailure
from clustermesh.notify import PostResult, Summary, render_markdown, render_plain
from clustermesh.notify.history import NightFigures, compare
from clustermesh.spec import MeshSpec
from clustermesh.steps.step8_health import HealthMatrix, HealthProgress
from flows.failover_drill import failover_drill
from flows.locking import mesh_lock
from flows.spec_source import SPEC_VARIABLE, alert_with_spec, resolve_spec
from tasks import evidence, history, verify_steps
from tasks.common import cluster_sessions
from tasks.notify import RunSlack, quiet_reported_ends, run_url

quiet_reported_ends()  # in the flow's process: a reported FAIL does not end with Prefect's traceback

# The name of a FAIL's final state once its summary reached Slack (type FAILED: red in the UI, on_failure
# hooks run); the failure Automation does not match it (deployments/blocks.py).
REPORTED_FAILURE = "ReportedFailure"


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
    # per cluster, the certificate that expires first (the thresholds are the spec's ``certificates``)
    certificate_expiry: list[CertificateStatus] = Field(default_factory=list)
    reported: bool = True  # the summary reached Slack; if not, a FAIL is left to the crash-safe Automation
    # tonight against earlier nights (read from Prefect's API): what changed, slower than usual, expiry countdown
    history: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.status}: mesh {self.mesh}"]
        for finding in self.findings:
            if finding.level != "ok":
                lines.append(f"  {finding.level}: {finding.subject}: {finding.reason} — {finding.fix}")
        if self.drill is not None:
            lines.append(f"  {self.drill.summary()}")
        if self.nearest_expiry_days is not None:
            lines.append(f"  nearest certificate expiry: {self.nearest_expiry_days} days")
        for status in self.certificate_expiry:
            lines.append(f"  certificate expiry: {status.describe()}")
        lines.extend(f"  {line}" for line in self.history)
        lines.append(f"  slack: {self.slack}")
        return "\n".join(lines)

    def headline(self) -> str:
        """One line: the verdict, the counts, the first failure (the state message of a FAIL)."""
        failures = [f for f in self.findings if f.level == "failure"]
        warnings = [f for f in self.findings if f.level == "warning"]
        text = f"verification {self.status} for mesh {self.mesh}"
        if failures or warnings:
            text += f": {len(failures)} failure(s), {len(warnings)} warning(s)"
        problems = failures or warnings
        if problems:
            text += f"; first: {problems[0].subject}: {problems[0].reason}"
        return text[:500]


class VerificationFailed(ReportedFailure):
    """The end of a FAIL night, with its :class:`VerificationResult` in ``.result``.

    A Failed state's result must be an exception Prefect can raise (a model there makes the engine
    end the run with a TypeError traceback); this one is reported already (summary in Slack, findings
    in the logs), so the failure hook does not alert again.
    """

    def __init__(self, result: VerificationResult) -> None:
        self.result = result
        super().__init__(result.headline())


def verification_result(state: State[Any]) -> VerificationResult | None:
    """The verdict of a finished nightly run from its final state (how the CLI reads it).

    PASS / WARN: the state's result; FAIL: the :class:`VerificationFailed` exception's ``.result``;
    ``None`` when the run ended before a verdict (its state message and the exception say why).
    """
    data = state.result(raise_on_failure=False)
    if isinstance(data, VerificationResult):
        return data
    if isinstance(data, VerificationFailed):
        return data.result
    return None


def drill_findings(result: DrillResult) -> list[Finding]:
    # the subject says "failover drill": the reason starts after it ("not run: …", not "failover drill not run: …")
    reason = result.summary().removeprefix("failover drill").strip()
    if result.status == "passed":
        return [Finding(level="ok", subject="failover drill", reason=reason)]
    level: Literal["warning", "failure"] = "failure" if result.status == "failed" else "warning"
    return [Finding(level=level, subject="failover drill", reason=reason[:300], fix=_drill_fix(result))]


def _drill_fix(result: DrillResult) -> str:
    if result.status == "not run":
        return "fix the findings above; the drill runs only on a healthy mesh"
    return "read the drill artifact: which phase failed and the backends the agents listed"


@flow(
    name="nightly-mesh-verification",
    on_failure=[alert_with_spec],
    on_crashed=[alert_with_spec],
    validate_parameters=True,
)
def nightly_mesh_verification(
    spec: MeshSpec | None = None, run_drill: bool = True, spec_variable: str | None = SPEC_VARIABLE
) -> State[Any]:
    """Verify the mesh (read-only), rehearse failover, and report PASS / WARN / FAIL to Slack.

    Never runs beside a setup of the same mesh (both hold ``mesh-<name>``). Emits
    ``clustermesh.mesh.verified`` every run, and ``clustermesh.mesh.degraded`` / ``.healthy`` when the
    verdict changed since the last run (kept in the Prefect Variable ``clustermesh-last-verdict-<mesh>``).
    Ends as the module docstring says; :func:`verification_result` reads the verdict from that state.

    Args:
        spec: The mesh to verify. Empty: the spec in the Prefect Variable ``spec_variable``, read when the
            run starts (the deployment's way: ``clustermesh blocks register`` writes it).
        run_drill: Rehearse failover after the checks (only on a healthy mesh).
        spec_variable: The Prefect Variable holding the spec when ``spec`` is empty.
    """
    mesh = resolve_spec(spec, spec_variable)
    with mesh_lock(mesh), cluster_sessions(mesh):
        state = _verify(mesh, run_drill)
    result = state.data.result if isinstance(state.data, VerificationFailed) else state.data
    if isinstance(result, VerificationResult):
        emit_verdict_events(mesh, result)
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
    expiry_per_cluster: list[CertificateStatus] = Field(default_factory=list)


def _verify(spec: MeshSpec, run_drill: bool) -> State[Any]:
    link = run_url(spec, flow_run.get_id())
    slack = RunSlack.for_run(spec)  # a setting that cannot work is one warning here; Slack is then off
    title = f"Cluster Mesh {spec.name}: nightly verification"
    parent: PostResult | None = None
    if slack.configured:
        parent = slack.post_summary(
            Summary(title=title, status="RUNNING", mesh=spec.name, run_url=link), "start message"
        )
    seen = _observe(spec, run_drill, _running_status(slack, parent, title, spec.name, link))
    status = overall(seen.findings)
    summary = _summary(spec, title, status, seen, link)
    delivered = _deliver(slack, parent, summary)
    evidence.on_failure(
        spec, status, seen.findings, seen.health, seen.drill, slack, parent if parent and parent.ok else delivered
    )
    thread = (parent if parent is not None and parent.ok else delivered) if delivered and delivered.ok else None
    compared = _compare_with_earlier_nights(spec, status, seen, slack, thread)
    create_markdown_artifact(key=f"{spec.name}-nightly-summary", markdown=render_markdown(summary), description=status)
    result = VerificationResult(
        mesh=spec.name,
        status=status,
        findings=seen.findings,
        health=seen.health,
        drill=seen.drill,
        nearest_expiry_days=seen.expiry,
        certificate_expiry=seen.expiry_per_cluster,
        slack=slack.status(delivered),
        reported=bool(delivered and delivered.ok),
        history=compared,
    )
    _log_findings(result)
    if status == "FAIL":
        name = REPORTED_FAILURE if result.reported else "Failed"
        return Failed(name=name, message=result.headline(), data=VerificationFailed(result))
    return Completed(message=f"verification {status}", data=result)


def _compare_with_earlier_nights(
    spec: MeshSpec, status: Verdict, seen: _Observed, slack: RunSlack, thread: PostResult | None
) -> list[str]:
    """Tonight against the earlier nights Prefect's API holds: lines and picture into the summary's thread,
    a Markdown artifact, and tonight's figures recorded for the next nights. Returns the lines."""
    tonight = NightFigures.of_night(
        verdict=status,
        clusters=seen.health.clusters if seen.health else [c.name for c in spec.clusters],
        findings=seen.findings,
        health=seen.health,
        drill=seen.drill,
        cert_expiry_days=seen.expiry,
        run_id=str(flow_run.get_id() or ""),
        when=datetime.now(UTC),
    )
    comparison = compare(tonight, history.earlier_nights(spec))
    lines = comparison.lines()
    picture = history.picture_for(spec, comparison)
    if thread is not None and thread.ts and slack.supports_threads:
        slack.post_lines(thread, lines, "history")
        if picture.png is not None:
            name = f"{spec.name}-nightly-{datetime.now(UTC):%Y%m%d-%H%M}.png"
            title = f"Cluster Mesh {spec.name}: {status}"
            slack.upload_picture(thread, picture.png, filename=name, title=title, alt_text=picture.alt_text)
    history.record_history(spec, comparison, picture.markdown)
    history.record_figures(spec, tonight)
    return lines


def _log_findings(result: VerificationResult) -> None:
    """The verdict at INFO, then each failure at ERROR and each warning at WARNING, with its fix.

    The Logs tab then shows the reasons; ``ok`` checks are counted, not listed (the thread and the
    artifact list them).
    """
    logger = get_run_logger()
    counts = {level: sum(1 for f in result.findings if f.level == level) for level in ("failure", "warning", "ok")}
    logger.info(
        "Verdict %s for mesh %s: %d failure(s), %d warning(s), %d ok; Slack: %s",
        result.status,
        result.mesh,
        counts["failure"],
        counts["warning"],
        counts["ok"],
        result.slack,
    )
    for level, log in (("failure", logger.error), ("warning", logger.warning)):
        for f in result.findings:
            if f.level == level:
                log("%s %s: %s%s", level.upper(), f.subject, f.reason, f" — fix: {f.fix}" if f.fix else "")


RUNNING_UPDATE_EVERY = 15.0  # seconds between edits of the RUNNING message while health is awaited


def _running_status(
    slack: RunSlack, parent: PostResult | None, title: str, mesh: str, link: str | None
) -> Callable[[HealthProgress], None] | None:
    """While the health check waits, the RUNNING message says what is still missing (at most every 15 s)."""
    if parent is None or not parent.ok or not parent.ts:
        return None
    last = [float("-inf")]

    def update(report: HealthProgress) -> None:
        now = time.monotonic()
        if report.verdict is not None or now - last[0] < RUNNING_UPDATE_EVERY:
            return  # the summary replaces the message once the verdict is in
        last[0] = now
        waiting = Finding(level="warning", subject="mesh health", reason=f"still waiting: {report.waiting_for()}")
        running = Summary(title=title, status="RUNNING", mesh=mesh, run_url=link, findings=[waiting])
        slack.update_summary(parent, running)

    return update


def _observe(spec: MeshSpec, run_drill: bool, on_progress: Callable[[HealthProgress], None] | None = None) -> _Observed:
    """Prerequisites → drift → certificates → health, then the drill if the mesh passed its gate."""
    facts, findings = verify_steps.check_reachability_and_versions(spec)
    seen = _Observed(findings=findings)
    not_set_up = mesh_not_set_up(facts)
    if not_set_up is not None:  # before any setup: one finding, no drift, health wait or drill
        seen.findings.append(not_set_up)
        return seen
    if facts:
        seen.findings += verify_steps.check_drift(spec, facts)
        report = verify_steps.check_certificates(spec, facts)
        seen.findings += report.findings
        seen.expiry = nearest_expiry_days(report)
        seen.expiry_per_cluster = report.nearest_per_cluster()
        seen.health, health = verify_steps.check_mesh_health(spec, seen.findings, on_progress)
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
        cert_expiry_per_cluster=[(c.cluster, c.days_left, f"{c.secret} {c.key}") for c in seen.expiry_per_cluster],
        run_url=link,
        findings=seen.findings,
    )


def _deliver(slack: RunSlack, parent: PostResult | None, summary: Summary) -> PostResult | None:
    """Update the start message in place (or post one), every check in its thread; print when not delivered.

    Returns how the summary itself went (None: Slack not configured).
    """
    posted: PostResult | None = None
    if slack.configured:
        if parent is not None and parent.ok and parent.ts:
            posted = slack.update_summary(parent, summary)
            if posted.ok and slack.supports_threads:
                slack.post_findings(parent, summary)
        else:
            posted = slack.post_summary(summary)  # the start message failed: Slack may be back (or says why once)
    if posted is None or not posted.ok:
        print(render_plain(summary), flush=True)
    return posted
