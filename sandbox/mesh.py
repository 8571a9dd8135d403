"""What Cilium agents see across the simulated clusters: mesh connections, node health, service backends.

Everything is computed from the stores' objects only (cilium-config, the ``cilium-clustermesh`` Secret,
the agent DaemonSet's hostAliases, the clustermesh-apiserver Service/pods/certificates, nodes, pods,
services) plus the injected ``MeshFaults``. The sandbox is the pipeline's opponent: an agent connects to
a peer only when everything a real mesh needs is right, and the reason it gives otherwise is the error
text a real agent would log. Nothing here writes to a store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import gc
import hashlib
import ipaddress
import posixpath
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from sandbox import pki
from sandbox.cilium_model import (
    AgentSnapshot,
    Backend,
    HealthNode,
    HealthReport,
    PeerStatus,
    Probe,
    ProbedPath,
    ServiceEntry,
)
from sandbox.store import Obj, Store

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


def _version_tuple(version: str) -> tuple[int, int, int]:
    """Lenient ``"v1.18.10-rc1"`` → (1, 18, 10); unknown parts are 0."""
    nums: list[int] = []
    for part in version.strip().lstrip("v").split("-")[0].split(".")[:3]:
        digits = re.match(r"\d+", part)
        nums.append(int(digits.group()) if digits else 0)
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


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


@dataclass(frozen=True)
class _Node:
    name: str
    ip: str | None
    pod_cidr: Network | None
    health_ip: str | None = None  # the health endpoint's IP in pod_cidr (parsed once, printed by every agent)


@dataclass(frozen=True)
class _PeerConfig:
    """One peer of the agents' etcd configuration, with the file contents it refers to (None = missing)."""

    name: str
    endpoint: str | None
    cert_path: str
    key_path: str
    ca_path: str | None
    cert: bytes | None
    key: bytes | None
    ca: bytes | None


@dataclass
class _Facts:
    name: str
    rv: str
    cilium_name: str = "default"
    cluster_id: int | None = 0
    cluster_id_text: str = "0"
    max_connected: int = DEFAULT_MAX_CONNECTED
    version: str = "1.13.8"
    ver: tuple[int, int, int] = (1, 13, 8)
    kpr: str = "True"
    pod_cidrs: list[Network] = field(default_factory=list)
    nodes: list[_Node] = field(default_factory=list)
    node_by_name: dict[str, _Node] = field(default_factory=dict)
    agent_ready: dict[str, bool] = field(default_factory=dict)  # node → any ready agent pod there
    agent_pods: dict[str, tuple[str, bool]] = field(default_factory=dict)  # pod → (node, ready)
    svc_type: str = ""
    lb_ips: tuple[str, ...] = ()
    svc_port: int = 2379
    node_port: int | None = None
    apiserver_ready: bool = False
    server_ca: bytes = b""
    server_cert: bytes = b""
    remote_files: dict[str, bytes] = field(default_factory=dict)  # common-etcd-client* files
    peers: dict[str, _PeerConfig] = field(default_factory=dict)
    mesh_configured: bool = False
    host_aliases: dict[str, str] = field(default_factory=dict)
    services: list[Obj] = field(default_factory=list)  # by creationTimestamp, namespace, name
    services_by_key: dict[tuple[str, str], Obj] = field(default_factory=dict)
    pods_by_ns: dict[str, list[Obj]] = field(default_factory=dict)
    pods_by_key: dict[tuple[str, str], Obj] = field(default_factory=dict)
    pods_by_ip: dict[str, Obj] = field(default_factory=dict)

    @property
    def node_ips(self) -> set[str]:
        return {n.ip for n in self.nodes if n.ip}

    def serves(self, ip: str, port: int) -> bool:
        """Whether this cluster's clustermesh-apiserver answers on ``ip:port`` from outside the cluster."""
        if self.svc_type == "LoadBalancer" and ip in self.lb_ips and port == self.svc_port:
            return True
        return bool(
            self.svc_type in ("NodePort", "LoadBalancer")
            and self.node_port
            and port == self.node_port
            and ip in self.node_ips
        )


_FACTS_CACHE: dict[int, tuple[Store, str, str, _Facts]] = {}
_FACTS_CACHE_LIMIT = 256


def _facts(cluster: ClusterState) -> _Facts:
    store = cluster.store
    rv = store.resource_version
    hit = _FACTS_CACHE.get(id(store))
    if hit is not None and hit[0] is store and hit[1] == rv and hit[2] == cluster.name:
        return hit[3]
    facts = _build_facts(cluster.name, store)
    if len(_FACTS_CACHE) >= _FACTS_CACHE_LIMIT:
        _FACTS_CACHE.pop(next(iter(_FACTS_CACHE)))
    _FACTS_CACHE[id(store)] = (store, rv, cluster.name, facts)
    return facts


def _values(app: Obj | None) -> dict[str, Any]:
    if not app:
        return {}
    block = _get(app, "spec", "valuesBlock")
    if isinstance(block, str) and block.strip():
        parsed = _yaml(block)
        return parsed if isinstance(parsed, dict) else {}
    values = _get(app, "spec", "values")
    return values if isinstance(values, dict) else {}


def _build_facts(name: str, store: Store) -> _Facts:
    f = _Facts(name=name, rv=store.resource_version)

    cfg = _object(store, "v1/configmaps", NS, "cilium-config")
    data = (cfg or {}).get("data") or {}
    f.cilium_name = str(data.get("cluster-name") or "default")
    f.cluster_id_text = str(data.get("cluster-id") or "0").strip()
    try:
        f.cluster_id = int(f.cluster_id_text)
    except ValueError:
        f.cluster_id = None
    try:
        f.max_connected = int(str(data.get("max-connected-clusters") or DEFAULT_MAX_CONNECTED))
    except ValueError:
        f.max_connected = DEFAULT_MAX_CONNECTED
    kpr = str(data.get("kube-proxy-replacement") or "").strip()
    if kpr:
        f.kpr = kpr[:1].upper() + kpr[1:].lower()

    app = _object(store, "apps.kubermatic.k8c.io/v1/applicationinstallations", NS, "cilium")
    daemonset = _object(store, "apps/v1/daemonsets", NS, "cilium")
    version = str(_get(app, "spec", "applicationRef", "version", default="") or "")
    if not version and daemonset:
        for container in _get(daemonset, "spec", "template", "spec", "containers", default=[]) or []:
            image = str(container.get("image") or "")
            tag = image.split("@")[0].rsplit(":", 1)[-1] if ":" in image.split("@")[0] else ""
            if container.get("name") == "cilium-agent" and tag:
                version = tag.lstrip("v")
    if version:
        f.version = version.lstrip("v")
        f.ver = _version_tuple(f.version)

    values = _values(app)
    cidr_list = _get(values, "ipam", "operator", "clusterPoolIPv4PodCIDRList")
    if cidr_list is None:
        cidr_list = _get(values, "ipam", "operator", "clusterPoolIPv4PodCIDR")
    if isinstance(cidr_list, str):
        cidr_list = [cidr_list]
    pool = [n for n in (_network(c) for c in (cidr_list or [])) if n is not None]
    try:
        mask = int(_get(values, "ipam", "operator", "clusterPoolIPv4MaskSize", default=24))
    except (TypeError, ValueError):
        mask = 24

    raw_nodes = sorted(_objects(store, "v1/nodes"), key=lambda o: str(_get(o, "metadata", "name", default="")))
    node_cidrs: list[Network] = []
    pool_subnets = _pool_subnets(pool, mask, len(raw_nodes))
    for i, node in enumerate(raw_nodes):
        node_name = str(_get(node, "metadata", "name", default=""))
        ip = None
        for addr in _get(node, "status", "addresses", default=[]) or []:
            if isinstance(addr, dict) and addr.get("type") == "InternalIP" and addr.get("address"):
                ip = str(addr["address"])
                break
        cidr_text = _get(node, "spec", "podCIDR") or next(iter(_get(node, "spec", "podCIDRs", default=[]) or []), None)
        cidr = _network(cidr_text) if cidr_text else None
        if cidr is not None:
            node_cidrs.append(cidr)
        elif i < len(pool_subnets):
            cidr = pool_subnets[i]
        f.nodes.append(_Node(node_name, ip, cidr, _health_ip(cidr) if cidr is not None else None))
    f.node_by_name = {n.name: n for n in f.nodes}
    f.pod_cidrs = pool or node_cidrs

    for pod in _objects(store, "v1/pods"):
        ns = str(_get(pod, "metadata", "namespace", default=""))
        pod_name = str(_get(pod, "metadata", "name", default=""))
        f.pods_by_ns.setdefault(ns, []).append(pod)
        f.pods_by_key[(ns, pod_name)] = pod
        ip = _get(pod, "status", "podIP")
        if ip and not _get(pod, "spec", "hostNetwork"):
            f.pods_by_ip.setdefault(str(ip), pod)
        labels = _get(pod, "metadata", "labels", default={}) or {}
        if ns != NS:
            continue
        if labels.get("k8s-app") == "cilium":
            node_name = str(_get(pod, "spec", "nodeName", default="") or "")
            ready = _ready(pod)
            f.agent_pods[pod_name] = (node_name, ready)
            f.agent_ready[node_name] = f.agent_ready.get(node_name, False) or ready
        elif labels.get("k8s-app") == "clustermesh-apiserver" and _ready(pod):
            f.apiserver_ready = True

    svc = _object(store, "v1/services", NS, "clustermesh-apiserver")
    if svc:
        f.svc_type = str(_get(svc, "spec", "type", default="ClusterIP"))
        ports = _get(svc, "spec", "ports", default=[]) or []
        port = next((p for p in ports if p.get("port") == 2379), ports[0] if ports else {})
        f.svc_port = int(port.get("port") or 2379)
        f.node_port = int(port["nodePort"]) if port.get("nodePort") else None
        ingress = _get(svc, "status", "loadBalancer", "ingress", default=[]) or []
        f.lb_ips = tuple(str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip"))

    server = _secret_files(_object(store, "v1/secrets", NS, "clustermesh-apiserver-server-cert"))
    f.server_ca = server.get("ca.crt", b"")
    f.server_cert = server.get("tls.crt", b"")
    remote = _secret_files(_object(store, "v1/secrets", NS, "clustermesh-apiserver-remote-cert"))
    f.remote_files = {
        "common-etcd-client.crt": remote.get("tls.crt", b""),
        "common-etcd-client.key": remote.get("tls.key", b""),
        "common-etcd-client-ca.crt": remote.get("ca.crt", b""),
    }

    aliases: dict[str, str] = {}
    apiserver_deploy = _object(store, "apps/v1/deployments", NS, "clustermesh-apiserver")
    for owner in (apiserver_deploy, daemonset):  # the agents' own aliases win
        for alias in _get(owner, "spec", "template", "spec", "hostAliases", default=[]) or []:
            for host in alias.get("hostnames") or []:
                if alias.get("ip"):
                    aliases[str(host)] = str(alias["ip"])
    f.host_aliases = aliases

    agent_secret = _object(store, "v1/secrets", NS, "cilium-clustermesh")
    kvstore_secret = _object(store, "v1/secrets", NS, "cilium-kvstoremesh")
    f.mesh_configured = agent_secret is not None
    f.peers = _peer_configs(_secret_files(agent_secret), f.remote_files)
    # with KVStoreMesh the agents talk to the local kvstoremesh, which holds the real remote configuration
    for peer_name, peer in _peer_configs(_secret_files(kvstore_secret), f.remote_files).items():
        mine = f.peers.get(peer_name)
        if mine is None or _points_local(mine.endpoint):
            f.peers[peer_name] = peer

    services = _objects(store, "v1/services")
    f.services = sorted(
        services,
        key=lambda s: (
            str(_get(s, "metadata", "creationTimestamp", default="") or ""),
            str(_get(s, "metadata", "namespace", default="")),
            str(_get(s, "metadata", "name", default="")),
        ),
    )
    f.services_by_key = {
        (str(_get(s, "metadata", "namespace", default="")), str(_get(s, "metadata", "name", default=""))): s
        for s in services
    }
    return f


def _pool_subnets(pool: list[Network], mask: int, count: int) -> list[Network]:
    """Per-node CIDRs cluster-pool IPAM would hand out, for nodes that carry no ``spec.podCIDR``."""
    out: list[Network] = []
    for net in pool:
        if len(out) >= count or mask < net.prefixlen:
            continue
        for sub in net.subnets(new_prefix=mask):
            out.append(sub)
            if len(out) >= count:
                break
    return out


def _points_local(endpoint: str | None) -> bool:
    host = urlsplit(endpoint or "").hostname or ""
    return host.startswith("clustermesh-apiserver.") or host in ("127.0.0.1", "localhost")


def _peer_configs(files: dict[str, bytes], common: dict[str, bytes]) -> dict[str, _PeerConfig]:
    """Parse each ``<peer>`` etcd config and load the files it names, as the agent's etcd client does."""
    peers: dict[str, _PeerConfig] = {}
    for key, raw in files.items():
        if "." in key:
            continue  # certificate files, not configurations
        cfg = _yaml(raw.decode(errors="replace"))
        cfg = cfg if isinstance(cfg, dict) else {}
        endpoints = cfg.get("endpoints") or []
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoint = str(endpoints[0]) if endpoints else None
        cert_path = str(cfg.get("cert-file") or f"{CLUSTERMESH_DIR}{key}.etcd-client.crt")
        key_path = str(cfg.get("key-file") or f"{CLUSTERMESH_DIR}{key}.etcd-client.key")
        ca_path = cfg.get("trusted-ca-file")
        ca_path = str(ca_path) if ca_path else (f"{CLUSTERMESH_DIR}{key}.etcd-client-ca.crt" if not cfg else None)

        def load(path: str | None) -> bytes | None:
            if path is None:
                return None
            base = posixpath.basename(path)
            if base.startswith("common-etcd-client"):
                return common.get(base)
            return files.get(base)

        peers[key] = _PeerConfig(
            name=key,
            endpoint=endpoint,
            cert_path=cert_path,
            key_path=key_path,
            ca_path=ca_path,
            cert=load(cert_path),
            key=load(key_path),
            ca=load(ca_path),
        )
    return peers


# ---- one evaluation across all clusters -----------------------------------------------------------------


@dataclass
class _SharedLinks:
    """Cluster-level links of one state of the world, shared by every question asked while it lasts.

    A link depends on the facts of every cluster (any of them may serve the peer's address), on the
    blocked ports, and on the time through certificate validity alone. So results are kept while the facts
    objects (one per store revision) and the blocked set stay the same, each with the certificates whose
    validity it relied on, and reused only while those are all still valid. A result that found a
    certificate invalid is not kept: its reason may name the current time. Every agent exec asks for the
    links of its cluster; this is what spares the certificate checks of each one.
    """

    facts: tuple[_Facts, ...]
    blocked: frozenset[tuple[frozenset[str], str]]
    links: dict[tuple[str, str], tuple[Connection, tuple[bytes, ...]]] = field(default_factory=dict)

    def holds_for(self, facts: tuple[_Facts, ...], blocked: frozenset[tuple[frozenset[str], str]]) -> bool:
        return (
            self.blocked == blocked
            and len(self.facts) == len(facts)
            and all(a is b for a, b in zip(self.facts, facts, strict=True))
        )


_SHARED_LINKS: _SharedLinks | None = None  # the latest state's (one sandbox asks about one state at a time)


class _Mesh:
    """All clusters' facts for one question, with connection results memoized for its duration."""

    def __init__(self, clusters: Clusters, faults: MeshFaults | None, now: datetime | None) -> None:
        items: Iterable[ClusterState] = clusters.values() if isinstance(clusters, Mapping) else clusters
        self.states = {c.name: c for c in items}
        self.faults = faults or MeshFaults()
        self.now = _now(now)
        self._facts: dict[str, _Facts] = {}
        self._links: dict[tuple[str, str], Connection] = {}
        self._shared: _SharedLinks | None = None
        # while a link is computed: the certificates found valid, and whether one was not
        self._relied_on: list[bytes] = []
        self._found_invalid = False

    def facts(self, name: str) -> _Facts:
        if name not in self._facts:
            try:
                state = self.states[name]
            except KeyError:
                raise KeyError(f"no sandbox cluster named {name!r} (have: {', '.join(sorted(self.states))})") from None
            self._facts[name] = _facts(state)
        return self._facts[name]

    def all(self) -> list[_Facts]:
        return [self.facts(n) for n in sorted(self.states)]

    def others(self, src: _Facts) -> list[_Facts]:
        return [f for f in self.all() if f.name != src.name]

    def blocked(self, a: str, b: str, what: str) -> bool:
        return self.faults.is_blocked(a, b, what)

    # -- connections ------------------------------------------------------------------------------------

    def link(self, src: _Facts, dst: _Facts) -> Connection:
        """Cluster-level connection of src's agents to dst (agent readiness is checked per node on top)."""
        key = (src.name, dst.name)
        found = self._links.get(key)
        if found is None:
            found = self._links[key] = self._shared_link(src, dst)
        return found

    def _shared_link(self, src: _Facts, dst: _Facts) -> Connection:
        """``_link``, or its result from an earlier question about the same state (see ``_SharedLinks``)."""
        global _SHARED_LINKS
        if self._shared is None:
            facts, blocked = tuple(self.all()), frozenset(self.faults.blocked)
            shared = _SHARED_LINKS
            if shared is None or not shared.holds_for(facts, blocked):
                shared = _SHARED_LINKS = _SharedLinks(facts, blocked)
            self._shared = shared
        key = (src.name, dst.name)
        hit = self._shared.links.get(key)
        if hit is not None and all(_validity_error(pem, self.now) is None for pem in hit[1]):
            return hit[0]
        self._relied_on, self._found_invalid = [], False
        conn = self._link(src, dst)
        if not self._found_invalid:
            self._shared.links[key] = (conn, tuple(self._relied_on))
        return conn

    def validity_error(self, pem: bytes) -> str | None:
        """``_validity_error`` now, noted for ``_shared_link``: the only way time enters a link."""
        err = _validity_error(pem, self.now)
        if err is None:
            self._relied_on.append(pem)
        else:
            self._found_invalid = True
        return err

    def connected(self, src: _Facts, dst: _Facts, node: str | None) -> Connection:
        ready = self.agents_ready(src, node)
        if not ready.ok:
            return ready
        return self.link(src, dst)

    def agents_ready(self, f: _Facts, node: str | None) -> Connection:
        if node is not None:
            if not f.agent_ready.get(node, False):
                return Connection(False, f"cilium agent on node {node} is not ready (restarting)")
            return Connection(True)
        if not f.agent_pods:
            return Connection(False, "no cilium agent pods are running")
        waiting = sorted(p for p, (_n, ready) in f.agent_pods.items() if not ready)
        if waiting:
            return Connection(False, f"cilium agent pods not ready (restarting): {', '.join(waiting)}")
        return Connection(True)

    def _identity_error(self, f: _Facts, who: str) -> str | None:
        top = f.max_connected
        if f.cluster_id is None:
            return f"{who} cluster ID {f.cluster_id_text!r} is not a number"
        if f.cluster_id == 0 or f.cilium_name == "default":
            return (
                f'{who} cluster has no mesh identity (cluster-name "{f.cilium_name}", '
                f"cluster-id {f.cluster_id}): "
                f'a mesh needs a unique name other than "default" and an ID in 1..{top}'
            )
        if not 1 <= f.cluster_id <= top:
            return f"{who} cluster ID {f.cluster_id} is out of range 1..{top}"
        return None

    def _link(self, src: _Facts, dst: _Facts) -> Connection:
        for f, who in ((src, "local"), (dst, "remote")):
            err = self._identity_error(f, who)
            if err:
                return Connection(False, err)
        if src.cilium_name == dst.cilium_name:
            return Connection(False, f"remote cluster has the same name {dst.cilium_name} as the local cluster")
        peer = src.peers.get(dst.cilium_name)
        if peer is None:
            return Connection(False, f"no clustermesh configuration for cluster {dst.cilium_name}")
        server, conn = self.dial(src, peer)
        if not conn.ok:
            return conn
        if server is not dst:
            return Connection(False, "remote cluster configuration required but not found")
        if src.cluster_id == dst.cluster_id:
            return Connection(False, f"remote cluster has the same cluster ID {dst.cluster_id}")
        if src.max_connected != dst.max_connected:
            return Connection(
                False,
                f"mismatch in the maximum number of connected clusters: local={src.max_connected}, "
                f"remote={dst.max_connected}",
            )
        for a in src.pod_cidrs:
            for b in dst.pod_cidrs:
                if a.version == b.version and a.overlaps(b):
                    return Connection(
                        False,
                        f"overlapping pod CIDRs: {a} ({src.cilium_name}) and {b} ({dst.cilium_name}); "
                        "routes to the remote cluster's pods collide with local ones",
                    )
        return Connection(True)

    def dial(self, src: _Facts, peer: _PeerConfig) -> tuple[_Facts | None, Connection]:
        """What src's etcd client gets when it connects with ``peer``'s configuration."""
        # 1. the etcd client loads its files before it dials
        for path, content, what in (
            (peer.cert_path, peer.cert, "certificate"),
            (peer.key_path, peer.key, "key"),
        ):
            if content is None:
                return None, Connection(False, f"open {path}: no such file or directory")
            if b"-----BEGIN" not in content:
                return None, Connection(False, f"tls: failed to find any PEM data in {what} input")
        assert peer.cert is not None and peer.key is not None
        client_certs = _pem_certs(peer.cert)
        if not client_certs:
            return None, Connection(False, "tls: failed to find any PEM data in certificate input")
        client_pem = client_certs[0]
        if not _matches_key(client_pem, peer.key):
            return None, Connection(False, "tls: private key does not match public key")
        if peer.ca_path is not None and peer.ca is None:
            return None, Connection(False, f"open {peer.ca_path}: no such file or directory")

        # 2. name resolution and the TCP connection
        if not peer.endpoint:
            return None, Connection(False, "etcd configuration has no endpoints")
        url = urlsplit(peer.endpoint if "://" in peer.endpoint else f"https://{peer.endpoint}")
        host = url.hostname or ""
        try:
            port = url.port or 2379
        except ValueError:
            return None, Connection(False, f"invalid endpoint {peer.endpoint!r}")
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            resolved = src.host_aliases.get(host)
            if resolved is None:
                return None, Connection(False, f"dial tcp: lookup {host}: no such host")
            ip = resolved
        server = next((f for f in self.all() if f.name != src.name and f.serves(ip, port)), None)
        if server is None or self.blocked(src.name, server.name, "tcp/2379") or not server.apiserver_ready:
            return None, Connection(False, UNREACHABLE)

        # 3. the client verifies the server
        ca_bundle = peer.ca or b""
        server_pem = (_pem_certs(server.server_cert) or (b"",))[0]
        if not server_pem:
            return server, Connection(False, "remote error: tls: internal error")
        if not _issued_by_any(server_pem, ca_bundle):
            return server, Connection(
                False, "tls: failed to verify certificate: x509: certificate signed by unknown authority"
            )
        err = self.validity_error(server_pem) or _host_error(server_pem, host)
        if err:
            return server, Connection(False, f"tls: failed to verify certificate: {err}")
        if not _allows(server_pem, ExtendedKeyUsageOID.SERVER_AUTH):
            return server, Connection(
                False,
                "tls: failed to verify certificate: x509: certificate specifies an incompatible key usage",
            )

        # 4. the server verifies the client
        if not _issued_by_any(client_pem, server.server_ca):
            return server, Connection(False, "remote error: tls: bad certificate")
        if self.validity_error(client_pem):
            return server, Connection(False, "remote error: tls: expired certificate")
        if not _allows(client_pem, ExtendedKeyUsageOID.CLIENT_AUTH):
            return server, Connection(False, "remote error: tls: bad certificate")
        return server, Connection(True)

    def connected_peers(self, src: _Facts, node: str | None) -> list[_Facts]:
        return [d for d in self.others(src) if self.connected(src, d, node).ok]

    def datapath_ok(self, src: _Facts, dst: _Facts, dst_node: str | None) -> bool:
        """Pod traffic src → dst node: VXLAN passes and the remote agent knows how to route replies to src."""
        if not self.tunnel_ok(src, dst):
            return False
        return dst_node is None or dst.agent_ready.get(dst_node, False)

    def tunnel_ok(self, src: _Facts, dst: _Facts) -> bool:
        """The cluster-level part of ``datapath_ok`` (the same for every node of dst)."""
        return not self.blocked(src.name, dst.name, "udp/8472") and self.link(dst, src).ok


# ---- public: connections ------------------------------------------------------------------------------


def connection(
    clusters: Clusters,
    faults: MeshFaults | None,
    src: str,
    dst: str,
    *,
    node: str | None = None,
    now: datetime | None = None,
) -> Connection:
    """Whether the agents of sandbox cluster ``src`` (or the one on ``node``) are connected to ``dst``."""
    mesh = _Mesh(clusters, faults, now)
    return mesh.connected(mesh.facts(src), mesh.facts(dst), node)


# ---- public: cilium-health --------------------------------------------------------------------------


def _ok(rtt: int) -> Probe:
    return Probe(rtt_ns=rtt)


def _http_timeout(ip: str) -> str:
    return f'Get "http://{ip}:4240/hello": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'


def _http_refused(ip: str) -> str:
    return f'Get "http://{ip}:4240/hello": dial tcp {ip}:4240: connect: connection refused'


def _local_node(src: _Facts, me: str, n: _Node) -> HealthNode:
    host_icmp, host_http, ep_icmp, ep_http = _rtts_ns(False, _seed(src.name, me, n.name))
    host = ProbedPath(n.ip or "", _ok(host_icmp), _ok(host_http))
    endpoint = None
    if n.health_ip is not None:
        endpoint = ProbedPath(n.health_ip, _ok(ep_icmp), _ok(ep_http))
    return HealthNode(src.cilium_name, n.name, host, endpoint, local=n.name == me)


def _remote_nodes(mesh: _Mesh, src: _Facts, me: str, dst: _Facts) -> list[HealthNode]:
    """The nodes of connected peer ``dst`` as the agent on ``me`` probes them.

    Every agent lists every node of the mesh, so what holds for all of dst (faults, the datapath back
    from dst) is decided once here, and the per-node work is the probes' round-trip times and objects.
    """
    icmp_blocked = mesh.blocked(src.name, dst.name, "icmp")
    http_blocked = mesh.blocked(src.name, dst.name, "tcp/4240")
    tunnel = mesh.tunnel_ok(src, dst)
    icmp_timeout = Probe(error=ICMP_TIMEOUT)
    prefix = _seed(src.name, me, dst.name)
    out = []
    for n in dst.nodes:
        seed = prefix.copy()
        seed.update(f"{n.name}\x00".encode())  # = _seed(src.name, me, dst.name, n.name)
        host_icmp, host_http, ep_icmp, ep_http = _rtts_ns(True, seed)
        ip = n.ip or ""
        icmp = icmp_timeout if icmp_blocked else _ok(host_icmp)
        agent_ready = dst.agent_ready.get(n.name, False)
        if http_blocked:
            http = Probe(error=_http_timeout(ip))
        elif not agent_ready:
            http = Probe(error=_http_refused(ip))
        else:
            http = _ok(host_http)
        endpoint = None
        if n.health_ip is not None:
            ep_ip = n.health_ip
            if tunnel and agent_ready:  # mesh.datapath_ok(src, dst, n.name)
                endpoint = ProbedPath(ep_ip, _ok(ep_icmp), _ok(ep_http))
            else:
                endpoint = ProbedPath(ep_ip, icmp_timeout, Probe(error=_http_timeout(ep_ip)))
        out.append(HealthNode(dst.cilium_name, n.name, ProbedPath(ip, icmp, http), endpoint))
    return out


def _health(mesh: _Mesh, src: _Facts, node: str) -> HealthReport:
    local = sorted(src.nodes, key=lambda n: (n.name != node, n.name))
    nodes = [_local_node(src, node, n) for n in local]
    for dst in mesh.connected_peers(src, node):
        nodes.extend(_remote_nodes(mesh, src, node, dst))
    return HealthReport(nodes=nodes, timestamp=mesh.now, last_probed=mesh.now)


def health_report(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, now: datetime
) -> HealthReport:
    """``cilium-health status`` of the agent on ``node``: local nodes first, then every connected peer's."""
    mesh = _Mesh(clusters, faults, now)
    return _health(mesh, mesh.facts(cluster), node)


# ---- public: services -----------------------------------------------------------------------------------


def _annotation(svc: Obj, ver: tuple[int, int, int], new: str, old: str) -> str | None:
    """An annotation as this Cilium version reads it: 1.13 knows only the ``io.cilium/*`` names."""
    ann = _get(svc, "metadata", "annotations", default={}) or {}
    if ver >= (1, 14, 0) and new in ann:
        return str(ann[new])
    return str(ann[old]) if old in ann else None


def _is_global(svc: Obj, ver: tuple[int, int, int]) -> bool:
    return _is_true(_annotation(svc, ver, "service.cilium.io/global", "io.cilium/global-service"))


def _is_shared(svc: Obj, ver: tuple[int, int, int]) -> bool:
    value = _annotation(svc, ver, "service.cilium.io/shared", "io.cilium/shared-service")
    return value is None or value.strip().lower() != "false"


def _affinity(svc: Obj, ver: tuple[int, int, int]) -> str | None:
    value = _annotation(svc, ver, "service.cilium.io/affinity", "io.cilium/service-affinity")
    return value.strip().lower() if value is not None else None


def _selects(selector: dict[str, Any], pod: Obj) -> bool:
    labels = _get(pod, "metadata", "labels", default={}) or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _target_port(port: Obj, pod: Obj) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    text = str(target)
    if text.isdigit():
        return int(text)
    for container in _get(pod, "spec", "containers", default=[]) or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == text and cport.get("containerPort"):
                return int(cport["containerPort"])
    return None


@dataclass(frozen=True)
class _Backend:
    """A backend with where it lives, which the datapath needs and ``Backend`` does not carry."""

    backend: Backend
    cluster: _Facts
    node: str | None
    local: bool


def _pod_backends(f: _Facts, svc: Obj, port: Obj, local: bool) -> list[_Backend]:
    selector = _get(svc, "spec", "selector", default={}) or {}
    if not selector:
        return []  # no selector: endpoints are managed by hand, which the sandbox does not model
    ns = str(_get(svc, "metadata", "namespace", default=""))
    proto = str(port.get("protocol") or "TCP")
    out = []
    for pod in f.pods_by_ns.get(ns, []):
        ip = _get(pod, "status", "podIP")
        if not ip or not _selects(selector, pod) or _get(pod, "status", "phase") in ("Succeeded", "Failed"):
            continue
        if _get(pod, "metadata", "deletionTimestamp"):
            state = "terminating"
        elif _ready(pod):
            state = "active"
        else:
            continue
        target = _target_port(port, pod)
        if target is None:
            continue
        node = _get(pod, "spec", "nodeName")
        backend = Backend(str(ip), target, proto, state, node_name=str(node) if local and node else None)
        out.append(_Backend(backend, f, str(node) if node else None, local))
    return out


def _matching_port(svc: Obj, port: Obj) -> Obj | None:
    """The remote service's port that merges with the local one: by name, or by number when unnamed."""
    for candidate in _get(svc, "spec", "ports", default=[]) or []:
        if port.get("name") and candidate.get("name") == port.get("name"):
            return dict(candidate)
        if not port.get("name") and candidate.get("port") == port.get("port"):
            return dict(candidate)
    return None


def _with_affinity(backends: list[_Backend], affinity: str | None, ver: tuple[int, int, int]) -> list[_Backend]:
    """Mark preferred backends as the agent's affinity logic does, and apply the 1.18 ``none`` bug."""
    if affinity == "none" and ver[:2] == (1, 18) and ver >= (1, 18, 10):
        return [b for b in backends if b.local]  # cilium#46623: remote backends dropped
    if affinity not in ("local", "remote"):
        return backends
    want_local = affinity == "local"
    if not any(b.local == want_local and b.backend.state == "active" for b in backends):
        return backends  # nothing to prefer: the other side serves, none preferred
    out = []
    for b in backends:
        if b.local == want_local and b.backend.state == "active":
            b = _Backend(dataclasses.replace(b.backend, preferred=True), b.cluster, b.node, b.local)
        out.append(b)
    return out


@dataclass(frozen=True)
class _Frontend:
    entry: ServiceEntry
    backends: list[_Backend]
    service: Obj
    port: Obj


_FrontendKey = tuple[str, str, str, str, int, str, str]  # uid, ns, name, ip (or "<node>"), port, proto, type


@dataclass
class _IdAllocator:
    """Service IDs of one cluster, handed out once per frontend and never reused, like the agent's."""

    store: Store
    ids: dict[_FrontendKey, int] = field(default_factory=dict)
    next_id: int = 1

    def assign(self, keys: list[_FrontendKey]) -> dict[_FrontendKey, int]:
        live = set(keys)
        for gone in [k for k in self.ids if k not in live]:
            del self.ids[gone]
        for key in keys:
            if key not in self.ids:
                self.ids[key] = self.next_id
                self.next_id += 1
        return self.ids


_ID_ALLOCATORS: dict[int, _IdAllocator] = {}


def _allocator(store: Store) -> _IdAllocator:
    found = _ID_ALLOCATORS.get(id(store))
    if found is None or found.store is not store:
        if len(_ID_ALLOCATORS) >= _FACTS_CACHE_LIMIT:
            _ID_ALLOCATORS.pop(next(iter(_ID_ALLOCATORS)))
        found = _ID_ALLOCATORS[id(store)] = _IdAllocator(store)
    return found


@dataclass
class _PlannedPort:
    """One port of a service with the frontends it gets (ID, address, port, type), before any backend."""

    service: Obj
    port: Obj
    frontends: list[tuple[int, str, int, str]]


def _plan_frontends(mesh: _Mesh, src: _Facts, node: str) -> list[_PlannedPort]:
    """Every frontend the agent on ``node`` programs, with its ID: cheap, no backends looked up yet.

    IDs are allocated the first time the sandbox sees a frontend (services first seen together in
    creation order), so they stay put when services appear or an address is added later. Every agent
    exec plans (whatever it prints), so IDs are handed out at the same moments however lazily the
    backends are looked up.
    """
    me = src.node_by_name.get(node)
    pending: list[tuple[_FrontendKey, str, int, str, int]] = []  # key, ip, port, type, index in ports
    ports: list[tuple[Obj, Obj]] = []
    for svc in src.services:
        spec = svc.get("spec") or {}
        cluster_ip = str(spec.get("clusterIP") or "")
        if not cluster_ip or cluster_ip == "None":
            continue
        uid = str(_get(svc, "metadata", "uid", default=""))
        ns = str(_get(svc, "metadata", "namespace", default=""))
        name = str(_get(svc, "metadata", "name", default=""))
        svc_type = str(spec.get("type") or "ClusterIP")
        lb_ips = [
            str(i["ip"])
            for i in _get(svc, "status", "loadBalancer", "ingress", default=[]) or []
            if isinstance(i, dict) and i.get("ip")
        ]
        for port in spec.get("ports") or []:
            proto = str(port.get("protocol") or "TCP")
            svc_port = int(port.get("port") or 0)
            addrs: list[tuple[str, str, int, str]] = [(cluster_ip, cluster_ip, svc_port, "ClusterIP")]
            addrs += [(str(ip), str(ip), svc_port, "ExternalIPs") for ip in spec.get("externalIPs") or []]
            node_port = port.get("nodePort")
            if svc_type in ("NodePort", "LoadBalancer") and node_port:
                if me is not None and me.ip:
                    addrs.append((me.ip, "<node>", int(node_port), "NodePort"))  # same ID on every node
                addrs.append(("0.0.0.0", "0.0.0.0", int(node_port), "NodePort"))
            if svc_type == "LoadBalancer":
                addrs += [(ip, ip, svc_port, "LoadBalancer") for ip in lb_ips]
            for ip, key_ip, fport, kind in addrs:
                pending.append(((uid, ns, name, key_ip, fport, proto, kind), ip, fport, kind, len(ports)))
            ports.append((svc, port))
    ids = _allocator(mesh.states[src.name].store).assign([p[0] for p in pending])
    planned = [_PlannedPort(svc, port, []) for svc, port in ports]
    for key, ip, fport, kind, index in pending:
        planned[index].frontends.append((ids[key], ip, fport, kind))
    return planned


def _frontends(mesh: _Mesh, src: _Facts, node: str, plan: list[_PlannedPort] | None = None) -> list[_Frontend]:
    """The planned frontends (``_plan_frontends``, planned now unless given) with their backends, by ID."""
    if plan is None:
        plan = _plan_frontends(mesh, src, node)
    peers = mesh.connected_peers(src, node) if plan else []
    out: list[_Frontend] = []
    for planned in plan:
        svc, port = planned.service, planned.port
        spec = svc.get("spec") or {}
        ns = str(_get(svc, "metadata", "namespace", default=""))
        name = str(_get(svc, "metadata", "name", default=""))
        is_global = _is_global(svc, src.ver)
        affinity = _affinity(svc, src.ver) if is_global else None
        policy = str(spec.get("externalTrafficPolicy") or "Cluster")
        backends = _pod_backends(src, svc, port, local=True)
        if is_global:
            for dst in peers:
                remote = dst.services_by_key.get((ns, name))
                if remote is None or not _is_global(remote, dst.ver) or not _is_shared(remote, dst.ver):
                    continue
                remote_port = _matching_port(remote, port)
                if remote_port is not None:
                    backends.extend(_pod_backends(dst, remote, remote_port, local=False))
        backends = _with_affinity(backends, affinity, src.ver)
        proto = str(port.get("protocol") or "TCP")
        for frontend_id, ip, fport, kind in planned.frontends:
            entry = ServiceEntry(
                id=frontend_id,
                frontend_ip=ip,
                frontend_port=fport,
                protocol=proto,
                type=kind,
                name=name,
                namespace=ns,
                backends=[b.backend for b in backends],
                traffic_policy=policy,
            )
            out.append(_Frontend(entry, backends, svc, port))
    return sorted(out, key=lambda fe: fe.entry.id)


def service_entries(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, *, now: datetime | None = None
) -> list[ServiceEntry]:
    """``cilium service list`` of the agent on ``node``: the truth, before any version's display quirks."""
    mesh = _Mesh(clusters, faults, now)
    return [fe.entry for fe in _frontends(mesh, mesh.facts(cluster), node)]


# ---- public: cilium status and the snapshot ------------------------------------------------------------


def _global_count(f: _Facts) -> int:
    return sum(1 for s in f.services if _is_global(s, f.ver))


def _peer_status(mesh: _Mesh, src: _Facts, node: str, peer: _PeerConfig) -> PeerStatus:
    dst = next((d for d in mesh.others(src) if d.cilium_name == peer.name), None)
    if dst is not None:
        conn = mesh.connected(src, dst, node)
    else:
        server, conn = mesh.dial(src, peer)
        if conn.ok:
            conn = Connection(False, "remote cluster configuration required but not found")
    if dst is None or not conn.ok:
        return PeerStatus(name=peer.name, ready=False, num_failures=1, last_failure=mesh.now, error=conn.reason)
    pods = [p for ps in dst.pods_by_ns.values() for p in ps if _get(p, "status", "podIP")]
    workload = [p for p in pods if not _get(p, "spec", "hostNetwork")]
    identities = {
        (
            str(_get(p, "metadata", "namespace", default="")),
            tuple(sorted((_get(p, "metadata", "labels") or {}).items())),
        )
        for p in workload
    }
    shared = sum(1 for s in dst.services if _is_global(s, dst.ver) and _is_shared(s, dst.ver))
    return PeerStatus(
        name=peer.name,
        ready=True,
        num_nodes=len(dst.nodes),
        num_identities=len(identities),
        num_services=shared,
        num_endpoints=len(workload) + sum(1 for n in dst.nodes if n.pod_cidr is not None),
        cluster_id=dst.cluster_id or 0,
    )


def peer_statuses(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, now: datetime | None = None
) -> list[PeerStatus]:
    """The ClusterMesh part of ``cilium status``: one entry per configured peer; none while restarting."""
    mesh = _Mesh(clusters, faults, now)
    return _peers(mesh, mesh.facts(cluster), node)


def _peers(mesh: _Mesh, src: _Facts, node: str) -> list[PeerStatus]:
    if not src.agent_ready.get(node, False):
        return []
    return [_peer_status(mesh, src, node, src.peers[name]) for name in sorted(src.peers)]


class _LazySnapshot(AgentSnapshot):
    """The ``AgentSnapshot`` of one agent, with each costly part computed when the CLI first reads it.

    One exec prints one thing: ``cilium-health status`` the health report (every node of the mesh),
    ``cilium service list`` the services, ``cilium status -o json`` the peers. The service IDs are
    still allocated here, for every exec, as when every part was computed up front.
    """

    def __init__(self, mesh: _Mesh, src: _Facts, node: str, ready: bool | None = None) -> None:
        # not the dataclass __init__: the fields below are set, the rest are the properties
        if ready is False and src.agent_ready.get(node, False):
            # the exec'd pod itself is restarting even though another agent pod on the node is ready
            src = dataclasses.replace(src, agent_ready={**src.agent_ready, node: False})
        for name, value in (
            ("_mesh", mesh),
            ("_src", src),
            ("_plan", _plan_frontends(mesh, src, node)),
            ("cilium_version", src.version),
            ("cluster_name", src.cilium_name),
            ("cluster_id", src.cluster_id or 0),
            ("node_name", node),
            ("mesh_enabled", src.mesh_configured or bool(src.peers)),
            ("kube_proxy_replacement", src.kpr),
        ):
            object.__setattr__(self, name, value)

    @functools.cached_property
    def health(self) -> HealthReport:  # type: ignore[override]
        return _health(self._mesh, self._src, self.node_name)

    @functools.cached_property
    def services(self) -> list[ServiceEntry]:  # type: ignore[override]
        return [fe.entry for fe in _frontends(self._mesh, self._src, self.node_name, self._plan)]

    @functools.cached_property
    def peers(self) -> list[PeerStatus]:  # type: ignore[override]
        return _peers(self._mesh, self._src, self.node_name)

    @functools.cached_property
    def global_services(self) -> int:  # type: ignore[override]
        return _global_count(self._src)

    def resolved(self) -> AgentSnapshot:
        """A plain ``AgentSnapshot`` with every part computed."""
        return AgentSnapshot(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AgentSnapshot)})


def agent_snapshot(
    clusters: Clusters, faults: MeshFaults | None, cluster: str, node: str, now: datetime | None = None
) -> AgentSnapshot:
    """Everything the agent on ``node`` of sandbox cluster ``cluster`` can print right now."""
    mesh = _Mesh(clusters, faults, now)
    return _LazySnapshot(mesh, mesh.facts(cluster), node).resolved()


# ---- public: kubectl exec ----------------------------------------------------------------------------


AGENT_BINARIES = ("cilium", "cilium-dbg", "cilium-health")
SHELLS = ("sh", "bash", "ash", "dash")


@dataclass
class _ExecContext:
    mesh: _Mesh
    src: _Facts
    pod: Obj
    namespace: str
    agent: bool  # exec lands in the cilium-agent container


def _not_found(binary: str) -> tuple[int, bytes, bytes]:
    return (
        127,
        b"",
        (
            f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{binary}": '
            "executable file not found in $PATH: unknown\n"
        ).encode(),
    )


def exec_command(
    clusters: Clusters,
    faults: MeshFaults | None,
    cluster: str,
    namespace: str,
    pod: str,
    container: str | None,
    argv: list[str],
    now: datetime | None = None,
) -> tuple[int, bytes, bytes]:
    """``kubectl exec`` into a pod: agent CLIs in ``cilium-agent``, ``curl`` and ``sh -c`` anywhere."""
    with _collector_paused():
        return _exec(clusters, faults, cluster, namespace, pod, container, argv, now)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while one exec is answered.

    An answer builds tens of thousands of short-lived objects (in an 800-node mesh, the health report
    and its JSON). With the collector on, they outlive its young collections while the answer is being
    built and pile up in the oldest generation, whose full collections walk every object of every
    store: at 16 clusters x 50 nodes that cost more CPU than building the answer. Paused, they are
    freed by reference counting once the answer is done (an exec makes no reference cycles:
    tests/sandbox pins that), and nothing is promoted. What another thread allocates meanwhile is
    collected once the collector runs again.
    """
    if not gc.isenabled():  # paused already (e.g. by an exec on another sandbox's loop thread)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _exec(
    clusters: Clusters,
    faults: MeshFaults | None,
    cluster: str,
    namespace: str,
    pod: str,
    container: str | None,
    argv: list[str],
    now: datetime | None,
) -> tuple[int, bytes, bytes]:
    mesh = _Mesh(clusters, faults, now)
    src = mesh.facts(cluster)
    obj = src.pods_by_key.get((namespace, pod))
    if obj is None:
        return 1, b"", f'Error from server (NotFound): pods "{pod}" not found\n'.encode()
    containers = [str(c.get("name")) for c in _get(obj, "spec", "containers", default=[]) or []]
    if container and containers and container not in containers:
        return 1, b"", f'error: unable to upgrade connection: container not found ("{container}")\n'.encode()
    if not argv:
        return 1, b"", b"error: you must specify at least one command for the container\n"
    labels = _get(obj, "metadata", "labels", default={}) or {}
    agent = labels.get("k8s-app") == "cilium" and (container or "cilium-agent") == "cilium-agent"
    ctx = _ExecContext(mesh, src, obj, namespace, agent)
    return _run(ctx, list(argv), shell=False)


def _run(ctx: _ExecContext, argv: list[str], *, shell: bool) -> tuple[int, bytes, bytes]:
    binary = posixpath.basename(argv[0])
    if binary in SHELLS:
        if len(argv) >= 3 and argv[1] == "-c":
            return _run_line(ctx, argv[2])
        return 0, b"", b""  # an interactive shell without a TTY reads no input here and exits
    if binary == "exec" and len(argv) > 1:
        return _run(ctx, argv[1:], shell=shell)
    if binary == "curl":
        return _curl(ctx, argv[1:])
    if binary == "echo":
        return 0, (" ".join(argv[1:]) + "\n").encode(), b""
    if binary in ("true", "false"):
        return (0 if binary == "true" else 1), b"", b""
    if ctx.agent and binary in AGENT_BINARIES and not (binary == "cilium-dbg" and ctx.src.ver < (1, 15, 0)):
        from sandbox.cilium_cli import run_agent_command  # lazy: written concurrently, imported on use

        node = str(_get(ctx.pod, "spec", "nodeName", default="") or "")
        pod_ready = _ready(ctx.pod)
        snapshot = _LazySnapshot(ctx.mesh, ctx.src, node, ready=pod_ready)
        code, out, err = run_agent_command(snapshot, [binary, *argv[1:]])
        return code, out.encode(), err.encode()
    if shell:
        return 127, b"", f"sh: 1: {argv[0]}: not found\n".encode()
    return _not_found(argv[0])


def _run_line(ctx: _ExecContext, line: str) -> tuple[int, bytes, bytes]:
    """A tiny ``sh -c``: commands joined by ``;``, ``&&`` and ``||``; pipes and redirections are refused."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        return 2, b"", f"sh: 1: Syntax error: {exc}\n".encode()
    commands: list[tuple[str, list[str]]] = []  # (operator before it, argv)
    op: str = ";"
    cur: list[str] = []
    for tok in tokens:
        if tok in (";", "&&", "||"):
            commands.append((op, cur))
            op, cur = tok, []
        elif tok in ("|", "&", ">", ">>", "<") or set(tok) <= set(";&|"):
            return (
                2,
                b"",
                f"sh: pipes, redirections and background jobs are not simulated: {line!r}\n".encode(),
            )
        else:
            cur.append(tok)
    commands.append((op, cur))
    code, out, err = 0, b"", b""
    for op, argv in commands:
        if not argv:
            continue
        if (op == "&&" and code != 0) or (op == "||" and code == 0):
            continue
        code, o, e = _run(ctx, argv, shell=True)
        out += o
        err += e
    return code, out, err


# ---- curl ---------------------------------------------------------------------------------------------

_CURL_VALUE_LONG = {
    "--max-time",
    "--connect-timeout",
    "--output",
    "--write-out",
    "--header",
    "--request",
    "--data",
    "--data-raw",
    "--retry",
    "--retry-delay",
    "--retry-max-time",
    "--user-agent",
    "--resolve",
    "--cacert",
    "--cert",
    "--key",
    "--user",
    "--url",
}
_CURL_FLAG_LONG = {
    "--silent",
    "--show-error",
    "--fail",
    "--insecure",
    "--location",
    "--verbose",
    "--include",
    "--head",
    "--no-progress-meter",
    "--http1.1",
    "--compressed",
    "--fail-with-body",
    "--ipv4",
}
_CURL_VALUE_SHORT = set("owmHXdAuEe")
_CURL_FLAG_SHORT = set("sSfkLviI4")


@dataclass
class _CurlArgs:
    url: str = ""
    silent: bool = False
    show_error: bool = False
    fail: bool = False
    head: bool = False
    output: str | None = None
    write_out: str | None = None
    max_time: float | None = None
    connect_timeout: float | None = None


def _curl_unknown(option: str) -> bytes:
    return f"curl: option {option}: is unknown\ncurl: try 'curl --help' for more information\n".encode()


def _parse_curl(args: list[str]) -> _CurlArgs | tuple[int, bytes, bytes]:
    parsed = _CurlArgs()

    def value(name: str, val: str) -> tuple[int, bytes, bytes] | None:
        if name in ("--max-time", "-m", "--connect-timeout"):
            try:
                seconds = float(val)
            except ValueError:
                return 2, b"", f"curl: option {name}: expected a proper numerical parameter\n".encode()
            if name == "--connect-timeout":
                parsed.connect_timeout = seconds
            else:
                parsed.max_time = seconds
        elif name in ("--output", "-o"):
            parsed.output = val
        elif name in ("--write-out", "-w"):
            parsed.write_out = val
        elif name == "--url":
            parsed.url = val
        return None

    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, val = arg.partition("=")
            if name in _CURL_VALUE_LONG:
                if not eq:
                    i += 1
                    if i >= len(args):
                        return 2, b"", f"curl: option {name}: requires parameter\n".encode()
                    val = args[i]
                err = value(name, val)
                if err:
                    return err
            elif name in _CURL_FLAG_LONG:
                parsed.silent |= name == "--silent"
                parsed.show_error |= name == "--show-error"
                parsed.fail |= name in ("--fail", "--fail-with-body")
                parsed.head |= name == "--head"
            else:
                return 2, b"", _curl_unknown(name)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in _CURL_VALUE_SHORT:
                    rest = arg[j + 1 :]
                    if not rest:
                        i += 1
                        if i >= len(args):
                            return 2, b"", f"curl: option -{ch}: requires parameter\n".encode()
                        rest = args[i]
                    err = value(f"-{ch}", rest)
                    if err:
                        return err
                    break
                if ch not in _CURL_FLAG_SHORT:
                    return 2, b"", _curl_unknown(f"-{ch}")
                parsed.silent |= ch == "s"
                parsed.show_error |= ch == "S"
                parsed.fail |= ch == "f"
                parsed.head |= ch == "I"
                j += 1
        elif not parsed.url:
            parsed.url = arg
        i += 1
    if not parsed.url:
        return 2, b"", b"curl: no URL specified\ncurl: try 'curl --help' for more information\n"
    return parsed


def _write_out(fmt: str | None, code: int, ip: str, port: int, url: str, exit_code: int) -> bytes:
    if fmt is None:
        return b""
    variables = {
        "http_code": f"{code:03d}",
        "response_code": f"{code:03d}",
        "remote_ip": ip,
        "remote_port": str(port) if ip else "",
        "url_effective": url,
        "exitcode": str(exit_code),
        "time_total": "0.002310" if code else "0.000000",
    }
    text = re.sub(r"%\{([a-z_]+)\}", lambda m: variables.get(m.group(1), ""), fmt)
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").encode()


def _curl(ctx: _ExecContext, args: list[str]) -> tuple[int, bytes, bytes]:
    parsed = _parse_curl(args)
    if isinstance(parsed, tuple):
        return parsed
    url = urlsplit(parsed.url if "://" in parsed.url else f"http://{parsed.url}")
    host = url.hostname or ""
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return 3, b"", b"curl: (3) URL using bad/illegal format or missing URL\n"
    show_err = parsed.show_error or not parsed.silent

    def fail(code: int, message: str, ip: str = "") -> tuple[int, bytes, bytes]:
        out = _write_out(parsed.write_out, 0, ip, port, parsed.url, code)
        return code, out, (f"curl: ({code}) {message}\n".encode() if show_err else b"")

    ip = _resolve(ctx, host)
    if ip is None:
        return fail(6, f"Could not resolve host: {host}")
    verdict = _reach(ctx, ip, port)
    if verdict == "refused":
        return fail(7, f"Failed to connect to {host} port {port} after 0 ms: Couldn't connect to server", ip)
    if verdict == "timeout":
        limits = [t for t in (parsed.connect_timeout, parsed.max_time) if t is not None]
        ms = int(min(limits) * 1000) if limits else 300_000
        return fail(28, f"Connection timed out after {ms} milliseconds", ip)
    body = b"" if parsed.output is not None else _http_body(parsed.head)
    return 0, body + _write_out(parsed.write_out, 200, ip, port, parsed.url, 0), b""


def _http_body(head: bool) -> bytes:
    headers = (
        "HTTP/1.1 200 OK\r\nServer: nginx/1.16.1\r\nContent-Type: text/html\r\n"
        f"Content-Length: {len(NGINX_BODY)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return headers.encode() if head else NGINX_BODY.encode()


def _resolve(ctx: _ExecContext, host: str) -> str | None:
    """Cluster DNS as seen from the pod: service names (short, ``<ns>``, ``.svc``, ``.svc.cluster.local``)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    for suffix in (".svc.cluster.local", ".svc"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = name.split(".")
    if len(parts) == 1:
        key = (ctx.namespace, parts[0])
    elif len(parts) == 2:
        key = (parts[1], parts[0])
    else:
        return None
    svc = ctx.src.services_by_key.get(key)
    if svc is None:
        return None
    cluster_ip = str(_get(svc, "spec", "clusterIP", default="") or "")
    if cluster_ip and cluster_ip != "None":
        return cluster_ip
    # headless: DNS answers with the ready pods' addresses
    selector = _get(svc, "spec", "selector", default={}) or {}
    for pod in ctx.src.pods_by_ns.get(key[0], []):
        if selector and _selects(selector, pod) and _ready(pod) and _get(pod, "status", "podIP"):
            return str(pod["status"]["podIP"])
    return None


def _reach(ctx: _ExecContext, ip: str, port: int) -> str:
    """``ok``, ``refused`` (a frontend without backends) or ``timeout`` for a TCP connect from the pod."""
    mesh, src = ctx.mesh, ctx.src
    node = str(_get(ctx.pod, "spec", "nodeName", default="") or "")
    node_ips = src.node_ips
    for fe in _frontends(mesh, src, node):
        e = fe.entry
        any_node = e.type == "NodePort" and e.frontend_ip == "0.0.0.0" and ip in node_ips
        if (e.frontend_ip != ip and not any_node) or e.frontend_port != port or e.protocol != "TCP":
            continue
        active = [b for b in fe.backends if b.backend.state == "active"]
        if not active:
            return "refused"
        chosen = [b for b in active if b.backend.preferred] or active
        usable = [b for b in chosen if b.local or mesh.datapath_ok(src, b.cluster, b.node)]
        return "ok" if usable else "timeout"
    # not a service frontend: maybe a pod, here or in a connected cluster
    pod = src.pods_by_ip.get(ip)
    if pod is not None:
        return "ok" if _ready(pod) else "refused"
    for dst in mesh.connected_peers(src, node):
        pod = dst.pods_by_ip.get(ip)
        if pod is not None:
            dst_node = _get(pod, "spec", "nodeName")
            if not mesh.datapath_ok(src, dst, str(dst_node) if dst_node else None):
                return "timeout"
            return "ok" if _ready(pod) else "refused"
    return "timeout"
