"""Whether a peer's copy of a cluster's remote certificate is still good enough to keep.

In per-peer CA mode each member B holds, in its ``clustermesh.config.clusters[A].tls``, a copy of A's
``clustermesh-apiserver-remote-cert`` (cert and key) and A's CA. The copy is *current* when it parses, its
key belongs to it, it is issued by a CA A's clustermesh-apiserver trusts (``ca.crt`` of A's server
certificate Secret, possibly a bundle) and it has more than ``warn_days`` left at A's clock. A current copy
needs no rewrite even when A re-issued its certificate meanwhile (the old one still works); anything else
is named as a reason.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Mapping
from typing import Any

from cryptography import x509
from pydantic import SecretStr

from clustermesh.certs import cert_info, issued_by, key_matches, load_cert, load_private_key
from clustermesh.errors import CertificateError
from clustermesh.values import PeerEntry, peer_entries

__all__ = ["copy_problem", "keep_current_copies", "trusted_cas"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def trusted_cas(ca_bundle: str | bytes | None) -> list[x509.Certificate]:
    """Every certificate of a ``ca.crt`` (base64 of PEM, or PEM; a bundle holds several)."""
    if not ca_bundle:
        return []
    try:
        first = load_cert(ca_bundle, source="ca.crt")
    except CertificateError:
        return []
    raw = ca_bundle.encode() if isinstance(ca_bundle, str) else ca_bundle
    if b"-----BEGIN" not in raw:
        import base64
        import binascii

        try:
            raw = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError):
            return [first]
    found = []
    for block in _PEM_CERT.findall(raw):
        try:
            found.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return found or [first]


def copy_problem(
    tls: Mapping[str, Any], trusted: list[x509.Certificate], *, now: dt.datetime, warn_days: int
) -> str | None:
    """None when the copy in ``tls`` (``cert``, ``key``: base64) is current; else why it is not."""
    cert_data, key_data = tls.get("cert"), tls.get("key")
    if not cert_data:
        return "the entry carries no tls.cert"
    try:
        cert = load_cert(str(cert_data), source="tls.cert")
    except CertificateError as exc:
        return f"tls.cert does not parse ({exc.problem})"
    if key_data:
        try:
            if not key_matches(cert, load_private_key(str(key_data), source="tls.key")):
                return "tls.key does not belong to tls.cert"
        except CertificateError as exc:
            return f"tls.key does not parse ({exc.problem})"
    if trusted and not any(issued_by(cert, ca) for ca in trusted):
        return "tls.cert was not issued by a CA the cluster trusts now"
    info = cert_info(cert, now=now)
    if info.not_after <= now:
        return f"tls.cert expired on {info.not_after.date()}"
    if info.days_left < warn_days:
        return f"tls.cert expires in {info.days_left} days (under warn_days {warn_days})"
    return None


def keep_current_copies(
    current_values: Mapping[str, Any],
    peers: list[PeerEntry],
    *,
    replace: Collection[str] = (),
    warn_days: int,
    now: dt.datetime,
) -> list[PeerEntry]:
    """``peers`` with each current copy the values already hold put back in place of the peer's newest
    certificate, so a write leaves it as it is (per-peer CA mode only: the copy is judged against the peer's
    ``caCert``). Peers named in ``replace`` always get their newest certificate."""
    held = {str(e.get("name")): e.get("tls") for e in peer_entries(current_values)}
    kept: list[PeerEntry] = []
    for peer in peers:
        tls = held.get(peer.name)
        if (
            peer.name in replace
            or peer.ca_cert is None
            or not isinstance(tls, Mapping)
            or not (tls.get("cert") and tls.get("key"))
            or tls.get("cert") == peer.cert
            or copy_problem(tls, trusted_cas(peer.ca_cert), now=now, warn_days=warn_days) is not None
        ):
            kept.append(peer)
            continue
        kept.append(peer.model_copy(update={"cert": str(tls["cert"]), "key": SecretStr(str(tls["key"]))}))
    return kept
