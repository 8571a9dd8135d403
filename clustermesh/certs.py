"""Reading and judging the mesh's certificates: which CA signed what, which key fits, how long is left.

A broken mesh often shows only ``tls: bad certificate`` (cilium#36307); comparing issuers by
signature and SubjectKeyId finds the cause before an agent does. Data arrives as PEM or as the
base64 of PEM (a Secret's ``.data``); errors name where it came from, never what it contained.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from clustermesh.errors import CertificateError

__all__ = [
    "CertFinding",
    "CertInfo",
    "cert_info",
    "check_pair",
    "fingerprint",
    "issued_by",
    "key_matches",
    "load_cert",
    "load_private_key",
]

_PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----\s*(.*?)\s*-----END [A-Z0-9 ]+-----", re.DOTALL)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("ascii", errors="replace") if isinstance(data, str) else data


def _to_pem_or_der(data: str | bytes) -> bytes:
    """PEM stays PEM; the base64 of PEM or DER (a Secret's data) is decoded once; DER stays as it is.

    Raw DER is never stripped: its last byte may happen to be a whitespace byte.
    """
    raw = _as_bytes(data)
    if b"-----BEGIN" in raw:
        return raw.strip()
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        return raw


def load_cert(data: str | bytes, *, source: str = "certificate") -> x509.Certificate:
    """The first certificate in PEM, base64-of-PEM or DER data; ``source`` names it in errors."""
    raw = _to_pem_or_der(data)
    if not raw:
        raise CertificateError(source, "empty")
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(source, "not a readable X.509 certificate") from None


def load_private_key(data: str | bytes, *, source: str = "private key") -> PrivateKeyTypes:
    """An unencrypted private key from PEM, base64-of-PEM or DER; errors never echo the key."""
    raw = _to_pem_or_der(data)
    if not raw:
        raise CertificateError(source, "empty")
    try:
        if b"-----BEGIN" in raw:
            return serialization.load_pem_private_key(raw, password=None)
        return serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(source, "not a readable unencrypted private key") from None


def fingerprint(data: str | bytes) -> str:
    """Short ``sha256:`` tag for diffs and logs; safe for keys (a hash, never the bytes).

    Hashes the DER of the first PEM block (for a certificate this is its usual SHA-256 fingerprint),
    else the decoded base64, else the raw data. Never raises: a log line must not fail.
    """
    raw = _to_pem_or_der(data)
    match = _PEM_BLOCK.search(raw)
    if match is not None:
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:12] + "…"


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


@dataclass(frozen=True)
class CertInfo:
    """What a person checks on a certificate, in a form that fits in a log line or a report."""

    subject_cn: str | None
    issuer_cn: str | None
    serial: str
    not_before: datetime
    not_after: datetime
    days_left: int
    ski: str | None
    aki: str | None
    fingerprint_sha256: str
    sans: tuple[str, ...]
    is_ca: bool

    @property
    def expired(self) -> bool:
        return self.days_left < 0


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def cert_info(cert: x509.Certificate, *, now: datetime | None = None) -> CertInfo:
    """Summarise ``cert``; ``days_left`` is whole days until expiry, negative once expired."""
    now = now or datetime.now(UTC)
    not_after = cert.not_valid_after_utc
    days_left = math.floor((not_after - now).total_seconds() / 86400)
    ski_ext = _extension(cert, x509.SubjectKeyIdentifier)
    aki_ext = _extension(cert, x509.AuthorityKeyIdentifier)
    san_ext = _extension(cert, x509.SubjectAlternativeName)
    basic = _extension(cert, x509.BasicConstraints)
    sans: tuple[str, ...] = ()
    if san_ext is not None:
        ips = (str(ip) for ip in san_ext.get_values_for_type(x509.IPAddress))
        sans = (*san_ext.get_values_for_type(x509.DNSName), *ips)
    ski = ski_ext.digest.hex() if ski_ext is not None else None
    aki = aki_ext.key_identifier.hex() if aki_ext is not None and aki_ext.key_identifier is not None else None
    is_ca = basic is not None and basic.ca
    return CertInfo(
        subject_cn=_cn(cert.subject),
        issuer_cn=_cn(cert.issuer),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        days_left=days_left,
        ski=ski,
        aki=aki,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        sans=sans,
        is_ca=is_ca,
    )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert``, by signature: two CAs called "Cilium CA" are not the same CA."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki(public_key: object) -> bytes:
    assert hasattr(public_key, "public_bytes")
    encoded = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(encoded, bytes)
    return encoded


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key (a swapped tls.key breaks TLS)."""
    try:
        return _spki(cert.public_key()) == _spki(key.public_key())
    except (ValueError, TypeError, AssertionError, UnsupportedAlgorithm):
        return False


@dataclass(frozen=True)
class CertFinding:
    """One thing wrong (error) or about to go wrong (warning) with a certificate pair."""

    severity: Literal["error", "warning"]
    code: Literal["unreadable", "key-mismatch", "wrong-issuer", "expired", "expiring", "not-yet-valid", "not-a-ca"]
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.source}: {self.message}"


def check_pair(
    cert_data: str | bytes,
    key_data: str | bytes | None = None,
    *,
    ca_data: str | bytes | None = None,
    source: str = "certificate",
    now: datetime | None = None,
    warn_days: int = 30,
) -> list[CertFinding]:
    """Everything wrong with a cert (+ key, + expected CA), as findings; empty means healthy.

    Unreadable input is a finding rather than an exception so a nightly check reports every Secret.
    ``source`` is a label such as ``kube-system/clustermesh-apiserver-remote-cert``; the keys inside it
    (``tls.crt``, ``tls.key``, ``ca.crt``) are appended.
    """
    cert_source = f"{source} tls.crt"
    try:
        cert = load_cert(cert_data, source=cert_source)
    except CertificateError as exc:
        return [CertFinding("error", "unreadable", cert_source, exc.problem)]
    info = cert_info(cert, now=now)
    findings = _validity_findings(info, cert_source, now or datetime.now(UTC), warn_days)
    if key_data is not None:
        findings.extend(_key_findings(cert, info, key_data, f"{source} tls.key"))
    if ca_data is not None:
        findings.extend(_issuer_findings(cert, info, ca_data, f"{source} ca.crt", cert_source, now))
    return findings


def _validity_findings(info: CertInfo, source: str, now: datetime, warn_days: int) -> list[CertFinding]:
    findings = []
    if info.not_before > now:
        findings.append(CertFinding("error", "not-yet-valid", source, f"valid only from {info.not_before.isoformat()}"))
    if info.expired:
        message = f"expired {info.not_after.isoformat()} ({-info.days_left} days ago)"
        findings.append(CertFinding("error", "expired", source, message))
    elif info.days_left < warn_days:
        message = f"expires {info.not_after.isoformat()} ({info.days_left} days left)"
        findings.append(CertFinding("warning", "expiring", source, message))
    return findings


def _key_findings(cert: x509.Certificate, info: CertInfo, key_data: str | bytes, source: str) -> list[CertFinding]:
    try:
        key = load_private_key(key_data, source=source)
    except CertificateError as exc:
        return [CertFinding("error", "unreadable", source, exc.problem)]
    if key_matches(cert, key):
        return []
    message = f"does not belong to the certificate {info.fingerprint_sha256[:12]}"
    return [CertFinding("error", "key-mismatch", source, message)]


def _issuer_findings(
    cert: x509.Certificate,
    info: CertInfo,
    ca_data: str | bytes,
    ca_source: str,
    cert_source: str,
    now: datetime | None,
) -> list[CertFinding]:
    try:
        ca = load_cert(ca_data, source=ca_source)
    except CertificateError as exc:
        return [CertFinding("error", "unreadable", ca_source, exc.problem)]
    findings = []
    ca_info = cert_info(ca, now=now)
    if not ca_info.is_ca:
        findings.append(CertFinding("error", "not-a-ca", ca_source, "basicConstraints CA is not set"))
    if not issued_by(cert, ca):
        findings.append(
            CertFinding(
                "error",
                "wrong-issuer",
                cert_source,
                f"not signed by the CA {ca_info.subject_cn!r} (SKI {ca_info.ski}); "
                f"its AKI is {info.aki} — "
                "the peers use different CAs: re-copy the peer's certificates or share one CA",
            )
        )
    return findings
