"""What ``cilium-dbg troubleshoot clustermesh`` finds, from the same verdict the datapath gives a link.

Each configured peer is dialled as the agent's etcd client does (``_Mesh.dial``); the error it gets is
placed at the stage the real command reports it (configuration, endpoint, DNS, TCP, TLS, client
authentication), and the certificates of the configuration are described (never printed).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

from sandbox.cilium_model import CertInfo, MeshConfigCheck
from sandbox.datapath.facts import _Facts, _PeerConfig
from sandbox.datapath.links import _Mesh
from sandbox.datapath.state import UNREACHABLE, _cert, _issued_by_any, _pem_certs

_CONFIG_ERRORS = ("open ", "tls: failed to find any PEM data", "tls: private key does not match")


def _cert_info(pem: bytes) -> CertInfo | None:
    cert = _cert(pem)
    if cert is None:
        return None
    return CertInfo(
        serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _infos(bundle: bytes | None) -> tuple[CertInfo, ...]:
    found = (_cert_info(pem) for pem in _pem_certs(bundle or b""))
    return tuple(info for info in found if info is not None)


def _resolve(src: _Facts, endpoint: str) -> tuple[str, int, str | None, str | None]:
    """(host, port, resolved IP or None, DNS error or None) as the agent's resolver would answer."""
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = url.hostname or ""
    port = url.port or 2379
    try:
        ipaddress.ip_address(host)
        return host, port, None, None
    except ValueError:
        pass
    resolved = src.host_aliases.get(host)
    if resolved is None:
        return host, port, None, f"lookup {host}: no such host"
    return host, port, resolved, None


def _staged(check: MeshConfigCheck, conn_ok: bool, reason: str, host: str, port: int) -> MeshConfigCheck:
    """The dial's error placed at the stage it belongs to, worded as the command prints it."""
    if check.dns_error:
        return dataclasses.replace(check, tcp_error=f"dial tcp: {check.dns_error}")
    if conn_ok:
        return check
    if reason == UNREACHABLE:
        return dataclasses.replace(check, tcp_error=f"dial tcp {check.resolved_ip or host}:{port}: i/o timeout")
    if reason.startswith("remote error: tls: ") and "internal error" not in reason:
        return dataclasses.replace(check, client_auth_error=reason)  # the server refused our certificate
    if reason.startswith(("tls: ", "remote error: tls: ")):
        return dataclasses.replace(check, tls_error=reason)
    return check  # connected; what is wrong lies beyond etcd (cluster ID, names): cilium status says it


def _check(mesh: _Mesh, src: _Facts, peer: _PeerConfig) -> MeshConfigCheck:
    roots, clients = _infos(peer.ca), _infos(peer.cert)[:1]
    leaf = (_pem_certs(peer.cert or b"") or (b"",))[0]
    verifies = bool(leaf and peer.ca and _issued_by_any(leaf, peer.ca))
    _server, conn = mesh.dial(src, peer)
    reason = conn.reason or ""
    if not conn.ok and reason.startswith(_CONFIG_ERRORS):
        return MeshConfigCheck(name=peer.name, config_error=reason)
    base = MeshConfigCheck(name=peer.name, root_cas=roots, client_certs=clients, client_verifies=verifies)
    if not peer.endpoint:
        return base
    try:
        host, port, ip, dns_error = _resolve(src, peer.endpoint)
    except ValueError:
        return dataclasses.replace(base, endpoint=peer.endpoint, endpoint_error=reason or "invalid endpoint")
    resolved = dataclasses.replace(base, endpoint=peer.endpoint, resolved_ip=ip, dns_error=dns_error)
    return _staged(resolved, conn.ok, reason, host, port)


def mesh_checks(mesh: _Mesh, src: _Facts) -> list[MeshConfigCheck]:
    """One check per configured peer, sorted by name (the command sorts the clusters it troubleshoots)."""
    return [_check(mesh, src, src.peers[name]) for name in sorted(src.peers)]
