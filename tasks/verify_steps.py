"""The nightly verification's checks as Prefect tasks; read-only, retried on transient API errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh import checks
from clustermesh.checks import Finding
from clustermesh.errors import MeshUnhealthyError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps import step7_reachability as reachability
from clustermesh.steps import step8_health as health
from clustermesh.steps.models import ClusterFacts
from tasks.setup_steps import COMMON, connect

READ_ONLY = {**COMMON, "cache_policy": NO_CACHE}


@contextmanager
def retry_transient_errors() -> Iterator[None]:
    """Transient API errors fail the attempt while retries are left; the last attempt records them."""
    from prefect.runtime import task_run

    with checks.transient_errors_raise(task_run.run_count <= COMMON["retries"]):
        yield


@contextmanager
def all_clients(spec: MeshSpec) -> Iterator[dict[str, ClusterClient]]:
    clients: dict[str, ClusterClient] = {}
    try:
        for cluster in spec.clusters:
            clients[cluster.name] = connect(spec, cluster.name)
        yield clients
    finally:
        for client in clients.values():
            client.close()


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
    return matrix, health_findings(matrix)


def health_findings(matrix: health.HealthMatrix) -> list[Finding]:
    if matrix.healthy:
        return [Finding(level="ok", subject="mesh health", reason=matrix.summary())]
    findings = [
        Finding(
            level="failure",
            subject=f"{b.src_cluster} → {b.dst_cluster}",
            reason=f"{b.what} blocked or broken: {b.evidence[0] if b.evidence else ''}"[:300],
            fix=f"open {b.what} from the nodes of {b.src_cluster} to {b.dst_cluster} (step 7's rules)"
            if b.what != reachability.APISERVER_PATH
            else f"check TCP to {b.dst_cluster}'s clustermesh-apiserver and the mesh values (run the setup again)",
        )
        for b in reachability.blocked_paths(matrix)
    ]
    if not findings:
        findings.append(
            Finding(level="failure", subject="mesh health", reason=matrix.summary(), fix=health.MESH_HEALTH_CHECK)
        )
    return findings
