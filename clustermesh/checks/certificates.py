"""Certificates: each cluster's CA and clustermesh-apiserver leaf certificates, judged by cryptography.

Certificates are named by Secret and key and shown as short SHA-256 fingerprints; the report keeps
every certificate it read (no key material), so the nearest expiry (of the mesh, and per cluster) can be
shown. How close to expiry warns and fails is the spec's ``certificates`` (:class:`CertificateSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from pydantic import BaseModel, ConfigDict

from clustermesh.certs import cert_info, issued_by, key_matches, load_private_key
from clustermesh.checks.common import (
    LEAF_CERTS,
    VerifyClient,
    ca_keys,
    error_parts,
    find_ca_secret,
    fingerprint,
    key_problem,
    secret_data,
    try_cert,
)
from clustermesh.checks.findings import Finding, fail, ok, warn
from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.errors import CertificateError, ClusterMeshError
from clustermesh.spec.certificates import CertificateSettings
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step3_5_endpoints import NAMESPACE

__all__ = [
    "CertificateReport",
    "CertificateStatus",
    "certificate_report",
    "check_certificates",
    "cluster_now",
    "nearest_expiry_days",
]


class CertificateStatus(BaseModel):
    """One certificate's validity, for the report's "nearest expiry" figure; no key material."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    secret: str
    key: str
    not_after: datetime
    days_left: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.cluster} {self.secret} {self.key}: {self.days_left} days (until {self.not_after.date()})"


class CertificateReport(BaseModel):
    """The certificate check's findings and every certificate it read, so the nearest expiry is known."""

    model_config = ConfigDict(frozen=True)

    findings: list[Finding]
    certificates: list[CertificateStatus]

    @property
    def nearest(self) -> CertificateStatus | None:
        """The certificate that expires first (the figure a Slack summary shows)."""
        return min(self.certificates, key=lambda c: c.not_after, default=None)

    def nearest_per_cluster(self) -> list[CertificateStatus]:
        """Each cluster's certificate that expires first, clusters in the order they were read."""
        nearest: dict[str, CertificateStatus] = {}
        for status in self.certificates:
            seen = nearest.get(status.cluster)
            if seen is None or status.not_after < seen.not_after:
                nearest[status.cluster] = status
        return list(nearest.values())


def nearest_expiry_days(report: CertificateReport | Sequence[CertificateStatus]) -> int | None:
    """The smallest days-left over all certificates read; None when none could be read."""
    certificates = report.certificates if isinstance(report, CertificateReport) else report
    return min((c.days_left for c in certificates), default=None)


def check_certificates(
    clients: Mapping[str, VerifyClient],
    facts: Mapping[str, ClusterFacts],
    *,
    thresholds: CertificateSettings | None = None,
    now: datetime | None = None,
) -> list[Finding]:
    """The certificate findings alone; use :func:`certificate_report` to get the nearest expiry too."""
    return certificate_report(clients, facts, thresholds=thresholds, now=now).findings


def certificate_report(
    clients: Mapping[str, VerifyClient],
    facts: Mapping[str, ClusterFacts],
    *,
    thresholds: CertificateSettings | None = None,
    now: datetime | None = None,
) -> CertificateReport:
    """Per cluster: the CA and the clustermesh-apiserver leaf certificates, judged by cryptography.

    Judged at ``now``, else at each cluster's own clock (:func:`cluster_now`). Readable, valid then, far
    enough from expiry, issued by both the CA in their own ``ca.crt`` and the
    cluster's CA (by signature), and matching their key. One finding per problem; one ok per sound cert.
    Fewer than ``thresholds.fail_days`` whole days left fails, fewer than ``warn_days`` warns (default:
    the spec's defaults, 7 and 30).
    """
    limits = thresholds or CertificateSettings()
    findings: list[Finding] = []
    statuses: list[CertificateStatus] = []
    for name, found in facts.items():
        client = clients.get(name)
        if client is None:
            continue
        try:
            at = now or cluster_now(client)
            _certs_of(name, client, profile_for(found.cilium_version), limits, at, findings, statuses)
        except ClusterMeshError as exc:
            reason, fix = error_parts(exc)
            findings.append(fail(name, reason, fix))
    return CertificateReport(findings=findings, certificates=statuses)


def cluster_now(client: VerifyClient) -> datetime:
    """The cluster's clock (``ClusterClient.server_time``: its API's ``Date``); local UTC now for a client
    without one."""
    server_time = getattr(client, "server_time", None)
    if callable(server_time):
        found = server_time()
        if isinstance(found, datetime):
            return found
    return datetime.now(UTC)


_REISSUE = (
    "re-issue it and hand it to the peers: `clustermesh certs renew --config <mesh.yaml> --cluster <this cluster>` "
    "(certgen's Job, or a new KKP render with tls.auto.method helm)"
)
_ROTATE_CA = (
    "rotate the CA: delete {secret} so certgen issues a new CA and new leaf certificates, then run the "
    "setup again so every peer gets them"
)


def _in_days(days: int) -> str:
    return "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"


def _validity(
    subject: str, key: str, cert: x509.Certificate, limits: CertificateSettings, now: datetime, fix: str
) -> tuple[list[Finding], int]:
    info = cert_info(cert, now=now)
    until = info.not_after.date().isoformat()
    if info.not_before > now:
        return [fail(subject, f"{key} is not valid before {info.not_before.isoformat()}", fix)], info.days_left
    if info.not_after <= now:
        ago = math.floor((now - info.not_after).total_seconds() / 86400)
        when = "today" if ago == 0 else f"{ago} day{'s' if ago != 1 else ''} ago"
        return [fail(subject, f"{key} expired {when} ({until})", fix)], info.days_left
    days = info.days_left
    if days < limits.fail_days:
        return [fail(subject, f"{key} expires {_in_days(days)} ({until}; failing below {limits.fail_days})", fix)], days
    if days < limits.warn_days:
        return [warn(subject, f"{key} expires {_in_days(days)} ({until}; warning below {limits.warn_days})", fix)], days
    return [], info.days_left


def _status(cluster: str, secret: str, key: str, cert: x509.Certificate, now: datetime) -> CertificateStatus:
    info = cert_info(cert, now=now)
    return CertificateStatus(
        cluster=cluster,
        secret=secret,
        key=key,
        not_after=info.not_after,
        days_left=info.days_left,
        fingerprint=fingerprint(cert),
    )


def _certs_of(
    cluster: str,
    client: VerifyClient,
    profile: CiliumProfile,
    limits: CertificateSettings,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> None:
    ca_found = find_ca_secret(client, profile)
    ca: x509.Certificate | None = None
    ca_name = " or ".join(profile.ca_secret_names)
    if ca_found is None:
        findings.append(
            fail(
                cluster,
                f"no CA Secret ({ca_name}) in {NAMESPACE}",
                "certgen creates it when the mesh is enabled: check the certgen Job/CronJob, or run the setup",
            )
        )
    else:
        ca_name, data = ca_found
        ca = _judge_ca(cluster, ca_name, data, limits, now, findings, statuses)

    for secret_name in LEAF_CERTS:
        subject = f"{cluster} {secret_name}"
        secret = client.get_secret(NAMESPACE, secret_name)
        if secret is None:
            findings.append(
                fail(
                    subject,
                    f"Secret {NAMESPACE}/{secret_name} is missing",
                    "certgen has not created it: check the certgen Job/CronJob and the clustermesh-apiserver "
                    "pod's events, then run the setup again",
                )
            )
            continue
        _judge_leaf(cluster, secret_name, secret_data(secret), ca, ca_name, limits, now, findings, statuses)


def _judge_ca(
    cluster: str,
    secret: str,
    data: Mapping[str, Any],
    limits: CertificateSettings,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> x509.Certificate | None:
    subject = f"{cluster} {secret}"
    cert_key, key_key = ca_keys(data)
    fix = _ROTATE_CA.format(secret=secret)
    ca, problem = try_cert(data.get(cert_key), f"Secret {NAMESPACE}/{secret} {cert_key}")
    if ca is None:
        findings.append(fail(subject, problem or "unreadable", fix))
        return None
    problems, _days = _validity(subject, cert_key, ca, limits, now, fix)
    statuses.append(_status(cluster, secret, cert_key, ca, now))
    if not cert_info(ca, now=now).is_ca:
        problems.append(fail(subject, f"{cert_key} is not a CA (basicConstraints CA is not set)", fix))
    if data.get(key_key):
        try:
            key = load_private_key(str(data[key_key]), source=f"Secret {NAMESPACE}/{secret} {key_key}")
        except CertificateError as exc:
            problems.append(fail(subject, f"Secret {NAMESPACE}/{secret} {key_key}: {exc.problem}", fix))
        else:
            if not key_matches(ca, key):
                problems.append(fail(subject, f"{key_key} does not belong to {cert_key} ({fingerprint(ca)})", fix))
    findings.extend(problems)
    if not problems:
        info = cert_info(ca, now=now)
        findings.append(
            ok(subject, f"CA {fingerprint(ca)} valid until {info.not_after.date()} ({info.days_left} days left)")
        )
    return ca


def _judge_leaf(
    cluster: str,
    secret: str,
    data: Mapping[str, Any],
    cluster_ca: x509.Certificate | None,
    ca_name: str,
    limits: CertificateSettings,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> None:
    subject = f"{cluster} {secret}"
    source = f"Secret {NAMESPACE}/{secret}"
    cert, problem = try_cert(data.get("tls.crt"), f"{source} tls.crt")
    if cert is None:
        findings.append(fail(subject, problem or "unreadable", _REISSUE))
        return
    problems, _days = _validity(subject, "tls.crt", cert, limits, now, _REISSUE)
    statuses.append(_status(cluster, secret, "tls.crt", cert, now))

    own_ca, ca_problem = try_cert(data.get("ca.crt"), f"{source} ca.crt")
    if own_ca is None:
        problems.append(fail(subject, ca_problem or "ca.crt unreadable", _REISSUE))
    elif not issued_by(cert, own_ca):
        problems.append(
            fail(subject, f"tls.crt was not issued by the CA in its own ca.crt ({fingerprint(own_ca)})", _REISSUE)
        )
    if cluster_ca is not None and not issued_by(cert, cluster_ca):
        problems.append(
            fail(
                subject,
                f"tls.crt was not issued by the cluster's CA in {ca_name} ({fingerprint(cluster_ca)})",
                "the CA was replaced after this certificate was issued: " + _REISSUE,
            )
        )
    key_issue = key_problem(cert, data.get("tls.key"), f"{source} tls.key", "tls.crt")
    if key_issue is not None:
        problems.append(fail(subject, key_issue, _REISSUE))
    findings.extend(problems)
    if not problems:
        info = cert_info(cert, now=now)
        findings.append(
            ok(
                subject,
                f"tls.crt {fingerprint(cert)} valid until {info.not_after.date()} ({info.days_left} days left), "
                f"issued by {ca_name}, key matches",
            )
        )
