"""Step 8's check as findings: one ok for a healthy mesh, or one failure per blocked path, naming the port."""

from __future__ import annotations

from clustermesh.checks.findings import Finding
from clustermesh.steps import step7_reachability as reachability
from clustermesh.steps import step8_health as health

__all__ = ["health_findings"]


def health_findings(matrix: health.HealthMatrix) -> list[Finding]:
    """What a health matrix says, for the nightly summary: each blocked path with what to open."""
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
