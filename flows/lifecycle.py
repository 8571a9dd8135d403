"""What every lifecycle flow (remove, renew, rotate the CA, prepare an upgrade) does around its own writes.

The shape is the same for each: a plan artifact, an optional approval pause, the writes, the nightly's
read-only checks on the members (no drill), a Slack summary. The flows keep what differs (the plan, the
writes, the words); the common parts live here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.runtime import flow_run

from clustermesh.checks import Finding, Verdict, overall
from clustermesh.errors import ClusterMeshError, StopRequested
from clustermesh.notify import Summary
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import StepChange
from flows.mesh_setup import APPROVAL_TIMEOUT_SECONDS, SetupApproval
from tasks import verify_steps
from tasks.notify import RunSlack, run_url


def artifact_key(text: str) -> str:
    """A Prefect artifact key from free text: lower-case letters, digits and dashes, at most 100."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:100]


def approved(headline: str, *, action: str, waiting_for: str) -> bool:
    """Pause the run until a person answers the approval form; ``headline`` is the form's first line
    (markdown, naming the plan artifact), ``action`` what the log says was not approved ("Removal")."""
    logger = get_run_logger()
    logger.info("Plan ready: %s; waiting for approval", waiting_for)
    text = f"{headline}\n\nSubmit with Approve on to write; off cancels the run, nothing written."
    answer = pause_flow_run(
        wait_for_input=SetupApproval.with_initial_data(description=text),
        timeout=APPROVAL_TIMEOUT_SECONDS,
        poll_interval=2,
    )
    if not answer.approve:
        why = f" ({answer.comment})" if answer.comment else ""
        logger.warning("%s not approved%s: nothing written", action, why)
    return bool(answer.approve)


def gather(futures: Sequence[Any], *, written: str) -> list[StepChange]:
    """Every member's outcome of parallel writes; a failure is raised once all have ended, with a note naming
    where this run wrote (``written``: "Removed before the failure from") — the others' writes stand and a
    rerun continues."""
    changes, failures = [], []
    for future in futures:
        try:
            changes.append(future.result())
        except ClusterMeshError as exc:
            failures.append(exc)
    if failures:
        where = [c.cluster for c in changes if c.written] or ["nowhere"]
        failures[0].add_note(f"{written}: {', '.join(where)}; a rerun continues safely.")
        raise failures[0]
    return changes


def verify_members(spec: MeshSpec, *, without: str | None = None) -> tuple[Verdict | None, list[Finding]]:
    """The nightly's read-only checks (reachability and versions, drift, mesh health; no drill) on the spec's
    members, ``without`` one (a cluster that just left); None when fewer than two members remain."""
    members = [c for c in spec.clusters if c.name != without]
    if len(members) < 2:
        return None, []
    checked = spec if without is None else spec.model_copy(update={"clusters": members})
    facts, findings = verify_steps.check_reachability_and_versions(checked)
    if facts:
        findings += verify_steps.check_drift(checked, facts)
        _, health = verify_steps.check_mesh_health(checked, findings)
        findings += health
    return overall(findings), findings


def post_summary(spec: MeshSpec, *, title: str, status: Verdict, clusters: int, findings: list[Finding]) -> None:
    """The run's Slack summary (nothing when Slack is not configured)."""
    slack = RunSlack.for_run(spec)
    if not slack.configured:
        return
    summary = Summary(
        title=title,
        status=status,
        mesh=spec.name,
        clusters=clusters,
        run_url=run_url(spec, flow_run.get_id()),
        findings=findings,
    )
    slack.post_summary(summary)


class WriteBudget:
    """A test and drill aid: after ``limit`` writes the run stops as if killed (a rerun must converge).
    ``parameter`` names the flow parameter in the message."""

    def __init__(self, limit: int | None, parameter: str = "max_writes") -> None:
        self.limit, self.parameter, self.count = limit, parameter, 0

    def spent(self, what: str) -> None:
        self.count += 1
        if self.limit is not None and self.count >= self.limit:
            raise StopRequested(f"the writes after {what}", f"{self.parameter} {self.limit} reached")

    def __call__(self, what: str) -> None:
        """``spent``, with a log line per write (for flows whose tasks report each write as it happens)."""
        get_run_logger().info("Write %d: %s", self.count + 1, what)
        self.spent(what)


__all__ = ["WriteBudget", "approved", "artifact_key", "gather", "post_summary", "verify_members"]
