"""The nightly's checks of a running mesh: drift, certificates, reachability, health, as findings."""

from clustermesh.checks.certificates import (
    CertificateReport,
    CertificateStatus,
    certificate_report,
    nearest_expiry_days,
)
from clustermesh.checks.common import transient_errors_raise
from clustermesh.checks.drift import check_drift
from clustermesh.checks.findings import Finding, Verdict, overall
from clustermesh.checks.health import check_mesh_health, explained_cells, health_findings
from clustermesh.checks.policies import policy_findings
from clustermesh.checks.reachability import check_reachability_and_versions
from clustermesh.checks.setup_state import mesh_not_set_up

__all__ = [
    "CertificateReport",
    "CertificateStatus",
    "Finding",
    "Verdict",
    "certificate_report",
    "check_drift",
    "check_mesh_health",
    "check_reachability_and_versions",
    "explained_cells",
    "health_findings",
    "mesh_not_set_up",
    "nearest_expiry_days",
    "overall",
    "policy_findings",
    "transient_errors_raise",
]
