"""Connections between clusters (each reason a real agent's error text) and node health."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from cryptography.x509.oid import ExtendedKeyUsageOID

from sandbox.cilium_model import (
    HealthNode,
    HealthReport,
    Probe,
    ProbedPath,
)
from sandbox.datapath.facts import _Facts, _facts, _Node, _PeerConfig
from sandbox.datapath.state import (
    ICMP_TIMEOUT,
    UNREACHABLE,
    Clusters,
    ClusterState,
    Connection,
    MeshFaults,
    _allows,
    _host_error,
    _issued_by_any,
    _matches_key,
    _now,
    _pem_certs,
    _rtts_ns,
    _seed,
    _validity_error,
)
from sandbox.virtual_calendar import calendar_now


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
        # no ``now`` given: the calendar of the World these stores belong to (sandbox.virtual_calendar)
        self.now = _now(now) if now is not None else calendar_now(c.store for c in self.states.values())
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
