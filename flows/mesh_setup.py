"""``cluster_mesh_setup``: the KKP guide "Cilium Cluster Mesh Setup", step by step, for N clusters.

For two clusters this is exactly the guide; with more, the first cluster plays "Cluster 1" and every
cluster ends up with all the others as peers. Each step is a task named like the guide's heading.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict, Field

from clustermesh.errors import ClusterMeshError
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts, MeshEndpoint, StepChange
from clustermesh.steps.plan import plan_setup
from clustermesh.steps.step3_5_endpoints import uses_shared_ca
from clustermesh.steps.step7_reachability import FirewallReport, rules_table
from clustermesh.steps.step8_health import HealthMatrix
from clustermesh.values import CaMaterial, PeerEntry
from flows.locking import mesh_lock
from tasks import setup_steps
from tasks.common import cluster_sessions
from tasks.notify import alert_on_failure, quiet_reported_ends, ui_url
from tasks.results import RESULT_KEY_ENV, caching_enabled, owner_only_files

quiet_reported_ends()  # a rejected plan ends Cancelled with its reason, not with Prefect's CancelledRun traceback


class SetupResult(BaseModel):
    """What a setup run did and found; nothing secret (endpoints appear as fingerprints)."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    facts: list[ClusterFacts]
    warnings: list[str]
    changes: list[StepChange]
    endpoints: list[dict[str, object]]
    firewall: FirewallReport
    health: HealthMatrix

    @property
    def wrote_anything(self) -> bool:
        return any(c.written for c in self.changes)

    def describe(self) -> str:
        lines = [f"mesh {self.mesh}: {len(self.facts)} clusters, health: {self.health.summary()}"]
        if not self.wrote_anything:
            lines.append("nothing written: every cluster already had the desired mesh values")
        for change in self.changes:
            lines.append(f"  {change.step}: {change.describe()}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# ------------------------------------------------------------------------------ approval gate

APPROVAL_TIMEOUT_SECONDS = 3600  # an unanswered approval fails the run (Prefect's pause timeout)


class SetupApproval(RunInput):
    """Resume form of a setup run paused for approval (shown in the Prefect UI)."""

    approve: bool = Field(
        default=False,
        title="Approve",
        description="Write the values changes shown in the plan artifact. Leave off to cancel: nothing is written.",
    )
    comment: str | None = Field(default=None, title="Comment", description="Why (kept in the flow run's logs).")


def _approved(spec: MeshSpec) -> bool:
    """Show the plan (key material as fingerprints) and wait for a human's answer in the UI.

    A plan with nothing to write (the mesh has converged already) does not pause: there is nothing to
    approve. The resume dialog links the plan artifact. A rejection is logged at WARNING with the comment:
    the Logs tab's last word on the run is the reason.
    """
    logger = get_run_logger()
    plan = plan_setup(spec, lambda c: setup_steps.connect(spec, c.name))
    key = _artifact_key(f"{spec.name}-setup-plan")
    changing = [c.cluster for c in plan.clusters if c.changed or c.pending_peers]
    markdown = plan.render_markdown()
    if not changing:
        body = markdown.partition("\n")[2]  # the heading says "approve to write"
        markdown = f"# Plan for mesh `{spec.name}`: nothing to write (not paused for approval)\n{body}"
    artifact_id = create_markdown_artifact(
        key=key,
        markdown=markdown,
        description="What the setup would write; the run is paused until someone approves or rejects it"
        if changing
        else "Nothing to write: every cluster has the mesh values already; the run did not pause",
    )
    if not changing:
        logger.info("Plan: nothing to write, every cluster has the mesh values already (artifact %s); not pausing", key)
        return True
    logger.info("Plan ready (artifact %s): changes in %s; waiting for approval", key, ", ".join(changing))
    form = SetupApproval.with_initial_data(description=_resume_text(spec, key, artifact_id, changing))
    answer = pause_flow_run(wait_for_input=form, timeout=APPROVAL_TIMEOUT_SECONDS, poll_interval=2)
    comment = f" ({answer.comment})" if answer.comment else ""
    if answer.approve:
        logger.info("Approval answer: approved%s", comment)
    else:
        logger.warning("Plan not approved%s: nothing written to mesh %s; the run ends Cancelled", comment, spec.name)
    return bool(answer.approve)


def _resume_text(spec: MeshSpec, key: str, artifact_id: Any, changing: list[str]) -> str:
    """The resume dialog's text (Markdown, above the form): a link to the plan artifact and what Submit does."""
    from prefect.settings import PREFECT_UI_URL

    base = (ui_url(spec) or PREFECT_UI_URL.value() or "").rstrip("/")
    return (
        f"**Plan for mesh `{spec.name}`:** [{key}]({base}/artifacts/artifact/{artifact_id}) — the values changes "
        f"in {', '.join(changing)}, key material as fingerprints.\n\n"
        "Submit with the Approve switch on to write them; with it off the run is cancelled and nothing is written."
    )


def _endpoint_task(spec: MeshSpec) -> Any:
    """Endpoints carry key material: persisted only encrypted, never in clear (see tasks.results)."""
    if caching_enabled():
        return setup_steps.collect_mesh_endpoint
    return setup_steps.collect_mesh_endpoint.with_options(cache_policy=NO_CACHE, persist_result=False)


def _artifact_key(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:100]


@flow(
    name="cluster-mesh-setup",
    log_prints=False,
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def cluster_mesh_setup(spec: MeshSpec, require_approval: bool = False) -> SetupResult:
    """Set up Cilium Cluster Mesh between the spec's KKP clusters, following the KKP guide's steps.

    With ``require_approval`` the run shows the plan as an artifact and pauses before the first write;
    rejected, it ends **Cancelled** ("not approved: nothing written"), which no failure alert reports.

    Args:
        spec: The mesh: its clusters (kubeconfigs by reference only: file path, env var or Secret block
            name), Cilium settings, timeouts, drill and notifications.
        require_approval: Show the plan as an artifact and pause for approval before the first write.
    """
    with mesh_lock(spec), owner_only_files(), cluster_sessions(spec):
        return _setup(spec, require_approval)


def _setup(spec: MeshSpec, require_approval: bool) -> SetupResult:
    logger = get_run_logger()
    if not caching_enabled():
        logger.warning(
            "Results holding certificate keys are not cached: set %s to a Fernet key to enable it "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')",
            RESULT_KEY_ENV,
        )
    # 1. Prerequisites, per cluster in parallel, then across clusters
    futures = [
        setup_steps.check_prerequisites.with_options(task_run_name=f"1. Check prerequisites of {c.name}").submit(
            spec, c.name
        )
        for c in spec.clusters
    ]
    facts = [f.result() for f in futures]
    warnings = setup_steps.check_mesh_prerequisites(facts)
    for w in warnings:
        logger.warning(w)
    _check_chart(spec, facts)  # the real chart refuses nothing we will write, before anything is written
    if require_approval and not _approved(spec):
        # A returned State becomes the run's final state; callers that need a SetupResult never ask for approval.
        return Cancelled(message=f"not approved: nothing written to mesh {spec.name}")  # type: ignore[return-value]
    changes, mesh_endpoints = _Writes(spec, {f.name: f for f in facts}).run()
    _plan_artifact(spec, changes)
    firewall, matrix = _check_reachability_and_health(spec, mesh_endpoints)
    result = SetupResult(
        mesh=spec.name,
        facts=facts,
        warnings=warnings,
        changes=changes,
        endpoints=[e.public() for e in mesh_endpoints],
        firewall=firewall,
        health=matrix,
    )
    logger.info(result.describe())
    return result


def _check_chart(spec: MeshSpec, facts: list[ClusterFacts]) -> None:
    """Render every cluster's final values with its chart; a refusal fails the run here, nothing written."""
    logger = get_run_logger()
    report = setup_steps.check_chart(spec, facts)
    for note in report.skipped:
        logger.warning("Values not rendered with the Cilium chart, the setup goes on without that check: %s", note)
    for view in report.views:
        peers = "; ".join(f"{p.peer} at {p.endpoint}, CA {p.trusted_ca}, cert {p.client_cert}" for p in view.peers)
        logger.info("%s renders the values of %s: %s", view.chart, view.cluster, peers or "no peers")


class _Writes:
    """Steps 2 to 6, in the guide's order: each a task per cluster, named like the guide's heading."""

    def __init__(self, spec: MeshSpec, facts: dict[str, ClusterFacts]) -> None:
        self.spec = spec
        self.facts = facts
        self.shared = uses_shared_ca(spec, facts[spec.first.name])
        self.collect = _endpoint_task(spec)
        self.changes: list[StepChange] = []

    def configure(self, step: str, cluster: str, peers: list[PeerEntry], ca: CaMaterial | None) -> Any:
        name = f"{step} in {cluster}"
        task = setup_steps.configure_mesh.with_options(name=name, task_run_name=name)
        return task.submit(self.spec, self.facts[cluster], name, peers, ca)

    def retrieve(self, step: str, cluster: str, *, want_ca_key: bool, expected_ca: str | None) -> Any:
        name = f"{step} from {cluster}"
        task = self.collect.with_options(name=name, task_run_name=name)
        return task.submit(self.spec, self.facts[cluster], want_ca_key, expected_ca)

    def gather(self, futures: list[Any]) -> list[Any]:
        """The results of tasks running side by side; a failure is raised once all have ended, saying what was
        written in this run before it (an outage in one cluster must not hide the writes in the others)."""
        results, failures = [], []
        for future in futures:
            try:
                results.append(future.result())
            except ClusterMeshError as exc:
                failures.append(exc)
        self.changes.extend(r for r in results if isinstance(r, StepChange))
        if failures:
            note = _written_note(self.changes)
            get_run_logger().warning(note)
            failures[0].add_note(note)
            raise failures[0]
        return results

    def run(self) -> tuple[list[StepChange], list[MeshEndpoint]]:
        spec, first, others = self.spec, self.spec.first, self.spec.others
        # 2. Enable Cluster Mesh in the first cluster
        self.gather([self.configure("2. Enable Cluster Mesh", first.name, [], None)])
        # 3. Retrieve the first cluster's mesh data (its CA key only where a shared CA is used)
        step3 = self.retrieve("3. Retrieve Cluster Mesh data", first.name, want_ca_key=self.shared, expected_ca=None)
        (first_endpoint,) = self.gather([step3])
        shared_ca = first_endpoint.shared_ca() if self.shared else None
        # 4. Enable Cluster Mesh in every other cluster, pointing at the first
        peer = [first_endpoint.peer_entry()]
        self.gather([self.configure("4. Enable Cluster Mesh", c.name, peer, shared_ca) for c in others])
        # 5. Retrieve every other cluster's data; with a shared CA, wait until certgen re-issued with it
        expected_ca = first_endpoint.ca_cert if self.shared else None
        step5 = [
            self.retrieve("5. Retrieve Cluster Mesh data", c.name, want_ca_key=False, expected_ca=expected_ca)
            for c in others
        ]
        endpoints: list[MeshEndpoint] = [first_endpoint, *self.gather(step5)]
        by_cluster = {e.cluster: e for e in endpoints}
        # 6. Connect: every cluster gets all the others as peers
        step6 = [
            self.configure(
                "6. Update Cluster Mesh config",
                c.name,
                [by_cluster[o.name].peer_entry() for o in spec.clusters if o.name != c.name],
                shared_ca,
            )
            for c in spec.clusters
        ]
        self.gather(step6)
        return self.changes, endpoints


def _written_note(changes: list[StepChange]) -> str:
    """What this run wrote before a failure, per cluster, and that a rerun continues safely."""
    written = [f"{c.cluster} ({c.step.split(' in ')[0]})" for c in changes if c.written]
    if not written:
        return "Nothing was written in this run before the failure; a rerun starts from the same place."
    return (
        f"Written in this run before the failure: {', '.join(written)}. "
        "A rerun continues safely from there: it writes only what still differs."
    )


def _check_reachability_and_health(
    spec: MeshSpec, mesh_endpoints: list[MeshEndpoint]
) -> tuple[FirewallReport, HealthMatrix]:
    # 7. Node reachability: the rules the mesh needs, and what the probes show blocked
    firewall = setup_steps.check_node_reachability(spec, mesh_endpoints)
    create_table_artifact(
        key=_artifact_key(f"{spec.name}-firewall-rules"),
        table=rules_table(firewall.rules),
        description="Step 7: firewall rules the mesh needs (UDP 8472, TCP 4240, ICMP, TCP to clustermesh-apiserver)",
    )
    # 8. Mesh health: every node of every cluster reachable from every cluster (from step 7's probe on)
    matrix = setup_steps.check_mesh_health(spec, firewall.measured)
    create_table_artifact(
        key=_artifact_key(f"{spec.name}-health-matrix"),
        table=matrix.table_rows(),
        description="Step 8: cilium-health status, reachable nodes, cluster × cluster",
    )
    return firewall, matrix


def _plan_artifact(spec: MeshSpec, changes: list[StepChange]) -> None:
    parts = [f"# Values changes for mesh `{spec.name}`", ""]
    for change in changes:
        parts.append(f"## {change.step}: {'written' if change.written else 'no change'}")
        if change.diff:
            parts.extend(["```diff", *change.diff, "```"])
        parts.append("")
    create_markdown_artifact(
        key=_artifact_key(f"{spec.name}-values-changes"),
        markdown="\n".join(parts),
        description="Steps 2, 4, 6: the values diff per cluster (key material as fingerprints)",
    )


__all__ = ["SetupApproval", "SetupResult", "cluster_mesh_setup"]
