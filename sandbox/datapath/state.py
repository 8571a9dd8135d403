"""What the agents' view is computed from: the clusters' stores, the injected faults, and small helpers over
objects and certificates."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sandbox import pki
from sandbox.store import Obj, Store
from sandbox.versions import parse_lenient as _version_tuple  # noqa: F401 - facts.py reads it from here

NS = "kube-system"
FAULT_KINDS = frozenset({"udp/8472", "tcp/4240", "icmp", "tcp/2379"})
CLUSTERMESH_DIR = "/var/lib/cilium/clustermesh/"
DEFAULT_MAX_CONNECTED = 255
UNREACHABLE = "context deadline exceeded"
ICMP_TIMEOUT = "Connection timed out"
NGINX_BODY = (
    "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
    "<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is successfully "
    "installed and\nworking. Further configuration is required.</p>\n</body>\n</html>\n"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---- public types ------------------------------------------------------------------------------------


@dataclass
class MeshFaults:
    """Traffic blocked between two sandbox clusters, in both directions (a firewall between their nodes)."""

    blocked: set[tuple[frozenset[str], str]] = field(default_factory=set)

    @staticmethod
    def _key(a: str, b: str, what: str) -> tuple[frozenset[str], str]:
        if what not in FAULT_KINDS:
            raise ValueError(f"unknown fault {what!r}: use one of {', '.join(sorted(FAULT_KINDS))}")
        return frozenset((a, b)), what

    def block(self, a: str, b: str, what: str) -> None:
        self.blocked.add(self._key(a, b, what))

    def unblock(self, a: str, b: str, what: str) -> None:
        self.blocked.discard(self._key(a, b, what))

    def clear(self) -> None:
        self.blocked.clear()

    def is_blocked(self, a: str, b: str, what: str) -> bool:
        return self._key(a, b, what) in self.blocked


@dataclass
class ClusterState:
    """One simulated cluster: ``name`` is the sandbox's name (fault addressing), not Cilium's cluster name."""

    name: str
    store: Store


@dataclass(frozen=True)
class Connection:
    """Whether the agents of one cluster are connected to a peer; ``reason`` is what the agent would log."""

    ok: bool
    reason: str = ""


Clusters = Mapping[str, ClusterState] | Sequence[ClusterState]


# ---- small helpers -------------------------------------------------------------------------------------


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    cur = obj
    for part in path:
        if not isinstance(cur, dict) or cur.get(part) is None:
            return default
        cur = cur[part]
    return cur


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _seed(*parts: str) -> hashlib.blake2b:
    """The blake2b state of ``parts``, each followed by NUL: ``_rtts_ns`` goes on from there.

    A health report has four probes per node of the mesh: hashing the common prefix once, and each
    node's name once, is what makes 3,200 of them cheap.
    """
    return hashlib.blake2b("".join(f"{part}\x00" for part in parts).encode(), digest_size=8)


_PROBES = (b"host-icmp", b"host-http", b"ep-icmp", b"ep-http")


def _rtts_ns(remote: bool, seed: hashlib.blake2b) -> list[int]:
    """Round-trip times of the probes of one node, in ``_PROBES`` order: stable, pseudo-random, in range.

    Each is drawn from the blake2b hash of the seed's parts and the probe's name (Python's ``hash`` is
    salted per process).
    """
    base, spread = (1_000_000, 4_000_000) if remote else (200_000, 700_000)
    out = []
    for probe in _PROBES:
        state = seed.copy()
        state.update(probe)
        out.append(int(base + int.from_bytes(state.digest(), "big") / 2**64 * spread))
    return out


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def _ready(obj: Obj) -> bool:
    """A pod counts as ready when its Ready condition is True, it is not terminal and not being deleted."""
    if _get(obj, "metadata", "deletionTimestamp"):
        return False
    if _get(obj, "status", "phase") in ("Succeeded", "Failed"):
        return False
    return _condition(obj, "Ready")


def _condition(obj: Obj, kind: str) -> bool:
    for cond in _get(obj, "status", "conditions", default=[]) or []:
        if isinstance(cond, dict) and cond.get("type") == kind:
            return str(cond.get("status")) == "True"
    return False


def _decode(value: Any) -> bytes:
    """Secret ``.data`` value → bytes; undecodable base64 stays as its raw text (and fails later as PEM)."""
    if value is None:
        return b""
    text = str(value)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode()


def _secret_files(secret: Obj | None) -> dict[str, bytes]:
    if not secret:
        return {}
    out = {str(k): _decode(v) for k, v in (secret.get("data") or {}).items()}
    for k, v in (secret.get("stringData") or {}).items():
        out[str(k)] = str(v).encode()
    return out


def _objects(store: Store, key: str, namespace: str | None = None) -> list[Obj]:
    """The stored objects without copying them (read-only!): deep copies dominate the cost otherwise."""
    table = getattr(store, "_objects", {}).get(key)
    if table is None:
        return []
    return [obj for (ns, _name), obj in sorted(table.items()) if namespace is None or ns == namespace]


def _object(store: Store, key: str, namespace: str, name: str) -> Obj | None:
    table = getattr(store, "_objects", {}).get(key)
    if table is None:
        return None
    found: Obj | None = table.get((namespace, name))
    return found


@functools.lru_cache(maxsize=256)
def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _network(text: Any) -> Network | None:
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        return None


def health_endpoint_ip(pod_cidr: str) -> str:
    """The health endpoint's IP in a node's pod CIDR: stable (``.240`` in a /24), like the guide's example."""
    return _health_ip(ipaddress.ip_network(pod_cidr, strict=False))


@functools.lru_cache(maxsize=65536)
def _health_ip(net: Network) -> str:
    offset = net.num_addresses - 16 if net.num_addresses >= 32 else min(1, net.num_addresses - 1)
    return str(net.network_address + offset)


# ---- certificates (cached by content: parsing is the expensive part) ----------------------------------

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


@functools.lru_cache(maxsize=4096)
def _pem_certs(bundle: bytes) -> tuple[bytes, ...]:
    """The single-certificate PEM blocks of a bundle, each parseable."""
    out = []
    for block in _PEM_BLOCK.findall(bundle):
        if _cert(block) is not None:
            out.append(block)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _cert(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except Exception:  # noqa: BLE001 - any malformed input is "no certificate"
        return None


@functools.lru_cache(maxsize=8192)
def _issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Like ``pki.issued_by``, on cached parses (and robust to any verification error)."""
    cert, ca = _cert(cert_pem), _cert(ca_pem)
    if cert is None or ca is None:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _matches_key(cert_pem: bytes, key_pem: bytes) -> bool:
    return pki.matches_key(cert_pem, key_pem)


def _issued_by_any(cert_pem: bytes, bundle: bytes) -> bool:
    return any(_issued_by(cert_pem, ca) for ca in _pem_certs(bundle))


@functools.lru_cache(maxsize=4096)
def _usages(pem: bytes) -> frozenset[str] | None:
    """Extended key usages (dotted OIDs), or None when the certificate has no such extension."""
    cert = _cert(pem)
    if cert is None:
        return None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    return frozenset(oid.dotted_string for oid in eku)


def _allows(pem: bytes, usage: x509.ObjectIdentifier) -> bool:
    found = _usages(pem)
    return found is None or usage.dotted_string in found or "2.5.29.37.0" in found


@functools.lru_cache(maxsize=4096)
def _sans(pem: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    cert = _cert(pem)
    if cert is None:
        return (), ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return dns, ips


def _host_error(pem: bytes, host: str) -> str | None:
    """Go's hostname verification, with its wording; None when ``host`` is covered by the SANs."""
    dns, ips = _sans(pem)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if str(ip) in ips:
            return None
        if not ips:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        return f"x509: certificate is valid for {', '.join(ips)}, not {host}"
    if not dns and not ips:
        return "x509: certificate relies on legacy Common Name field, use SANs instead"
    host_l = host.lower().rstrip(".")
    for name in dns:
        name_l = name.lower()
        if name_l == host_l:
            return None
        if name_l.startswith("*.") and "." in host_l and host_l.split(".", 1)[1] == name_l[2:]:
            return None
    return f"x509: certificate is valid for {', '.join(dns + ips)}, not {host}"


@functools.lru_cache(maxsize=4096)
def _validity(pem: bytes) -> tuple[datetime, datetime] | None:
    """``(not before, not after)`` of a certificate, None when it does not parse."""
    cert = _cert(pem)
    return None if cert is None else (cert.not_valid_before_utc, cert.not_valid_after_utc)


def _validity_error(pem: bytes, now: datetime) -> str | None:
    validity = _validity(pem)
    if validity is None:
        return "x509: malformed certificate"
    not_before, not_after = validity
    if not_before <= now <= not_after:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    current = now.astimezone(UTC).strftime(fmt)
    prefix = "x509: certificate has expired or is not yet valid: current time"
    if now > not_after:
        return f"{prefix} {current} is after {not_after.strftime(fmt)}"
    return f"{prefix} {current} is before {not_before.strftime(fmt)}"


# ---- what one cluster holds, parsed once per store change ---------------------------------------------
