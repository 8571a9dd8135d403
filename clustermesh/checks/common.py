"""What several checks share: the reads they need, text made safe to show, errors as findings, certificates.

Findings never carry key material: certificates are named by Secret and key and shown as short
SHA-256 fingerprints; messages copied from KKP are cut and scrubbed of anything base64-shaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from clustermesh.certs import key_matches, load_cert, load_private_key
from clustermesh.cilium.profiles import CiliumProfile
from clustermesh.errors import CertificateError, ClusterMeshError, KubeApiError, SpecError
from clustermesh.kube import is_transient
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT

__all__ = [
    "ADMIN_CERT",
    "LEAF_CERTS",
    "RERUN_SETUP",
    "SERVER_CERT",
    "VerifyClient",
    "ca_keys",
    "error_parts",
    "find_ca_secret",
    "fingerprint",
    "key_problem",
    "safe_text",
    "same_cert",
    "secret_data",
    "transient_errors_raise",
    "try_cert",
]

SERVER_CERT = "clustermesh-apiserver-server-cert"
ADMIN_CERT = "clustermesh-apiserver-admin-cert"
LEAF_CERTS: tuple[str, ...] = (SERVER_CERT, REMOTE_CERT, ADMIN_CERT)
"""The leaf certificates every meshed cluster has (reference/cilium.md §1.3)."""

RERUN_SETUP = "run the setup again (clustermesh setup); it writes only what differs"
_MAX_REASON = 300
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.DOTALL)


class VerifyClient(Protocol):
    """The reads the verification needs; ``ClusterClient`` has them, test fakes too."""

    def version(self) -> str: ...

    def get_application_installation(self, namespace: str = "kube-system", name: str = "cilium") -> dict[str, Any]: ...

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...


# ------------------------------------------------------------------------------------ safe text


def _redact_run(match: re.Match[str]) -> str:
    """A long run of base64 letters with mixed case and digits is data, not words or a path."""
    run = match.group(0)
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
    return "<redacted>" if mixed else run


def safe_text(text: str, limit: int = _MAX_REASON) -> str:
    """One line, short, with PEM blocks and long base64 runs struck out: text from others may hold keys."""
    text = _PEM.sub("<redacted>", text)
    text = _BASE64_RUN.sub(_redact_run, text)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --------------------------------------------------------------------------- errors as findings

_RAISE_TRANSIENT: ContextVar[bool] = ContextVar("clustermesh_verify_raise_transient", default=False)


@contextmanager
def transient_errors_raise(enabled: bool = True) -> Iterator[None]:
    """Inside, a transient API error (connection, 5xx, 429) propagates instead of becoming a finding.

    A caller with retries left uses it so that one dropped connection at night is retried, not
    reported as a failure; on its last attempt it records the error as a finding like any other.
    """
    token = _RAISE_TRANSIENT.set(enabled)
    try:
        yield
    finally:
        _RAISE_TRANSIENT.reset(token)


def error_parts(exc: ClusterMeshError) -> tuple[str, str]:
    """(reason, fix) of one of our errors: the first line of what went wrong, and its own fix.

    Every place that turns an error into a finding passes through here, so this is also where a
    transient error is sent back to a caller that will retry (see :func:`transient_errors_raise`).
    """
    if _RAISE_TRANSIENT.get() and is_transient(exc):
        raise exc
    if isinstance(exc, KubeApiError):
        http = f"HTTP {exc.status}{' ' + exc.reason if exc.reason else ''}: " if exc.status else ""
        return safe_text(f"{exc.verb} {exc.target} failed: {http}{exc.problem}"), exc.fix
    if isinstance(exc, SpecError) and exc.problems:
        first = exc.problems[0]
        return safe_text(f"{first.field}: {first.message}"), first.fix
    problem = getattr(exc, "problem", None)
    fix = getattr(exc, "fix", "")
    lines = str(problem if isinstance(problem, str) and problem else exc).splitlines()
    return safe_text(lines[0] if lines else type(exc).__name__), str(fix or "")


# --------------------------------------------------------------------------------- certificates


def fingerprint(cert: x509.Certificate) -> str:
    """The short form people compare by eye; the full digest is what comparisons use."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()[:12] + "…"


def same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def try_cert(data: object, source: str) -> tuple[x509.Certificate | None, str | None]:
    """(certificate, None) or (None, why not) — unreadable data is a finding, not an exception."""
    if not isinstance(data, str | bytes) or not data:
        return None, f"{source} is missing"
    try:
        return load_cert(data, source=source), None
    except CertificateError as exc:
        return None, f"{source}: {exc.problem}"


def key_problem(cert: x509.Certificate, data: object, source: str, cert_field: str) -> str | None:
    """Why the key in ``source`` cannot serve ``cert`` (missing, unreadable, another key's), or None."""
    if not isinstance(data, str | bytes) or not data:
        return f"{source} is missing"
    try:
        key = load_private_key(str(data), source=source)
    except CertificateError as exc:
        return f"{source}: {exc.problem}"
    if not key_matches(cert, key):
        return f"{source} does not belong to {cert_field} ({fingerprint(cert)})"
    return None


# -------------------------------------------------------------------------------------- Secrets


def secret_data(secret: Mapping[str, Any] | None) -> dict[str, Any]:
    data = (secret or {}).get("data")
    return data if isinstance(data, dict) else {}


def find_ca_secret(client: VerifyClient, profile: CiliumProfile) -> tuple[str, dict[str, Any]] | None:
    """The first of the profile's CA Secrets holding a certificate (cert-manager's keeps it in tls.crt)."""
    for name in profile.ca_secret_names:
        data = secret_data(client.get_secret(NAMESPACE, name))
        if data.get("ca.crt") or data.get("tls.crt"):
            return name, data
    return None


def ca_keys(data: Mapping[str, Any]) -> tuple[str, str]:
    return ("ca.crt", "ca.key") if data.get("ca.crt") else ("tls.crt", "tls.key")
