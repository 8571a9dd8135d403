"""The nightly's checks of a running mesh: drift, certificates, reachability, as findings."""

from clustermesh.checks.findings import Finding, Verdict, overall
from clustermesh.checks.verify import (
    CertificateReport,
    CertificateStatus,
    certificate_report,
    check_drift,
    check_reachability_and_versions,
    nearest_expiry_days,
    transient_errors_raise,
)

__all__ = [
    "CertificateReport",
    "CertificateStatus",
    "Finding",
    "Verdict",
    "certificate_report",
    "check_drift",
    "check_reachability_and_versions",
    "nearest_expiry_days",
    "overall",
    "transient_errors_raise",
]
