"""The nightly verification's checks as Prefect tasks; read-only, retried on transient API errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh import checks
from clustermesh.checks import Finding
from clustermesh.errors import MeshUnhealthyError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps import step8_health as health
from clustermesh.steps.models import ClusterFacts
from tasks.common import COMMON, cluster_clients

READ_ONLY = {**COMMON, "cache_policy": NO_CACHE}


@contextmanager
def retry_transient_errors() -> Iterator[None]:
    """Transient API errors fail the attempt while retries are left; the last attempt records them."""
    from prefect.runtime import task_run

    with checks.transient_errors_raise(task_run.run_count <= COMMON["retries"]):
        yield


def all_clients(spec: MeshSpec) -> AbstractContextManager[dict[str, ClusterClient]]:
    """Every cluster's client: the run's own (borrowed, left open) inside a flow run that opened sessions."""
    return cluster_clients(spec)


@task(name="Check reachability and versions", **READ_ONLY)
def check_reachability_and_versions(spec: MeshSpec) -> tuple[dict[str, ClusterFacts], list[Finding]]:
    with all_clients(spec) as clients, retry_transient_errors():
        return checks.check_reachability_and_versions(clients, spec)


@task(name="Check drift", **READ_ONLY)
def check_drift(spec: MeshSpec, facts: dict[str, ClusterFacts]) -> list[Finding]:
    with all_clients(spec) as clients, retry_transient_errors():
        return checks.check_drift(clients, facts, spec)


@task(name="Check certificates", **READ_ONLY)
def check_certificates(spec: MeshSpec, facts: dict[str, ClusterFacts]) -> checks.CertificateReport:
    with all_clients(spec) as clients, retry_transient_errors():
        return checks.certificate_report(clients, facts)


@task(name="Check mesh health", **READ_ONLY)
def check_mesh_health(spec: MeshSpec) -> tuple[health.HealthMatrix, list[Finding]]:
    """Step 8's check, as findings: one ok, or one failure per blocked path (with the port to open)."""
    with all_clients(spec) as clients:
        try:
            matrix = health.wait_for_mesh_health(
                clients,
                timeout=spec.timeouts.health,
                poll_interval=spec.timeouts.poll_interval,
                exec_timeout=spec.timeouts.api,
            )
        except MeshUnhealthyError as exc:
            matrix = exc.matrix
    return matrix, checks.health_findings(matrix)
