"""The nightly verification's checks as Prefect tasks; read-only, retried on transient API errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clustermesh import checks
from clustermesh.checks import Finding
from clustermesh.checks.next_line import next_line_findings
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps import step8_health as health
from clustermesh.steps.models import ClusterFacts
from tasks.common import COMMON, cluster_clients

READ_ONLY = {**COMMON, "cache_policy": NO_CACHE}
# Each task is named like its run (no "-a83" suffix) and numbered in the nightly's order; the drill flow,
# started on its own, runs "1. Check reachability and versions" first too.


@contextmanager
def retry_transient_errors() -> Iterator[None]:
    """Transient API errors fail the attempt while retries are left; the last attempt records them."""
    from prefect.runtime import task_run

    with checks.transient_errors_raise(task_run.run_count <= COMMON["retries"]):
        yield


def all_clients(spec: MeshSpec) -> AbstractContextManager[dict[str, ClusterClient]]:
    """Every cluster's client: the run's own (borrowed, left open) inside a flow run that opened sessions."""
    return cluster_clients(spec)


@task(name="1. Check reachability and versions", task_run_name="1. Check reachability and versions", **READ_ONLY)
def check_reachability_and_versions(spec: MeshSpec) -> tuple[dict[str, ClusterFacts], list[Finding]]:
    """Step 1 read-only, with its warning about policies that match only local endpoints (1.19+)."""
    with all_clients(spec) as clients, retry_transient_errors():
        facts, findings = checks.check_reachability_and_versions(clients, spec)
    return facts, findings + checks.policy_findings(facts)


@task(name="2. Check drift", task_run_name="2. Check drift", **READ_ONLY)
def check_drift(spec: MeshSpec, facts: dict[str, ClusterFacts]) -> list[Finding]:
    """Drift from what the setup writes, and values the next Cilium line's chart would refuse or ignore."""
    with all_clients(spec) as clients, retry_transient_errors():
        return checks.check_drift(clients, facts, spec) + next_line_findings(clients, facts, spec)


@task(name="3. Check certificates", task_run_name="3. Check certificates", **READ_ONLY)
def check_certificates(spec: MeshSpec, facts: dict[str, ClusterFacts]) -> checks.CertificateReport:
    """Every certificate the mesh depends on, judged by the spec's expiry thresholds (``certificates``)."""
    with all_clients(spec) as clients, retry_transient_errors():
        return checks.certificate_report(clients, facts, thresholds=spec.certificates)


@task(name="4. Check mesh health", task_run_name="4. Check mesh health", **READ_ONLY)
def check_mesh_health(
    spec: MeshSpec,
    found: list[Finding] | None = None,
    on_progress: Callable[[health.HealthProgress], None] | None = None,
) -> tuple[health.HealthMatrix, list[Finding]]:
    """Step 8's check, as findings, after the failures ``found`` before it (those explain, no port is blamed).

    Each progress line of the wait goes to the run's log; ``on_progress`` (a Slack status, say) gets them too.
    """
    logger = get_run_logger()

    def progress(report: health.HealthProgress) -> None:
        logger.info(report.line())
        if on_progress is not None:
            on_progress(report)

    with all_clients(spec) as clients:
        return checks.check_mesh_health(clients, spec.timeouts, found=found or [], progress=progress)
