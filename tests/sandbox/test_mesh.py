"""What simulated Cilium agents see across clusters: connections, node health, service backends, exec.

The clusters are built object by object in plain Stores (no controllers), with real certificates, so
every test states exactly which part of the mesh is right and which one is broken.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import ipaddress
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandbox import mesh
from sandbox.cilium_model import AgentSnapshot, HealthReport, ServiceEntry
from sandbox.mesh import (
    ClusterState,
    MeshFaults,
    agent_snapshot,
    connection,
    exec_command,
    health_report,
    peer_statuses,
    service_entries,
)
from sandbox.pki import KeyPair, issue, make_ca
from sandbox.resources import builtin_types
from sandbox.store import Obj, Store

NS = "kube-system"
NOW = dt.datetime.now(dt.UTC)
READY = [{"type": "Ready", "status": "True"}]
NOT_READY = [{"type": "Ready", "status": "False"}]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Lab:
    """One simulated cluster's objects plus the certificates behind them."""

    name: str
    store: Store
    cilium_name: str
    version: str
    lb_ip: str
    node_ips: list[str]
    pod_cidr: str
    ca: KeyPair
    server: KeyPair
    remote: KeyPair
    peers: dict[str, str] = field(default_factory=dict)  # secret data of cilium-clustermesh
    aliases: list[dict[str, Any]] = field(default_factory=list)
    _svc_ip: int = 10

    @property
    def state(self) -> ClusterState:
        return ClusterState(self.name, self.store)

    def nodes(self) -> list[str]:
        return [f"{self.name}-node-{i}" for i in range(len(self.node_ips))]

    # ---- edits -------------------------------------------------------------------------------------

    def mutate(self, key: str, name: str, fn: Callable[[Obj], None], namespace: str | None = NS) -> None:
        self.store.mutate(key, namespace, name, fn)

    def set_config(self, **data: str) -> None:
        self.mutate("v1/configmaps", "cilium-config", lambda o: o["data"].update(data))

    def write_mesh_config(self) -> None:
        def fn(o: Obj) -> None:
            o["data"] = dict(self.peers)

        self.mutate("v1/secrets", "cilium-clustermesh", fn)

        def aliases(o: Obj) -> None:
            o["spec"]["template"]["spec"]["hostAliases"] = list(self.aliases)

        self.mutate("apps/v1/daemonsets", "cilium", aliases)

    def set_agents_ready(self, ready: bool, only: str | None = None) -> None:
        for i, node in enumerate(self.nodes()):
            if only and node != only:
                continue

            def fn(o: Obj) -> None:
                o["status"]["conditions"] = READY if ready else NOT_READY

            self.mutate("v1/pods", f"cilium-{i}", fn)

    # ---- workloads ---------------------------------------------------------------------------------

    def deploy(self, name: str, replicas: int, namespace: str = "default", start: int = 10) -> list[str]:
        """Pods labelled ``app=<name>``, spread over the nodes, with IPs in each node's pod CIDR."""
        ips = []
        subnets = list(ipaddress.IPv4Network(self.pod_cidr).subnets(new_prefix=24))
        for i in range(replicas):
            node = i % len(self.node_ips)
            ip = str(subnets[node].network_address + start + i)
            self.store.create(
                "v1/pods",
                {
                    "metadata": {"name": f"{name}-{i}", "namespace": namespace, "labels": {"app": name}},
                    "spec": {
                        "nodeName": self.nodes()[node],
                        "containers": [{"name": "nginx", "ports": [{"name": "http", "containerPort": 80}]}],
                    },
                    "status": {"phase": "Running", "podIP": ip, "conditions": READY},
                },
            )
            ips.append(ip)
        return ips

    def scale_to_zero(self, name: str, namespace: str = "default") -> None:
        for pod in self.store.list("v1/pods", namespace):
            if pod["metadata"].get("labels", {}).get("app") == name:
                self.store.delete("v1/pods", namespace, pod["metadata"]["name"])

    def service(
        self,
        name: str,
        annotations: dict[str, str] | None = None,
        namespace: str = "default",
        svc_type: str = "ClusterIP",
        target_port: int | str = 80,
    ) -> str:
        self._svc_ip += 1
        ip = f"10.240.{len(self.name)}.{self._svc_ip}"
        port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": target_port, "protocol": "TCP"}
        if svc_type != "ClusterIP":
            port["nodePort"] = 30000 + self._svc_ip
        self.store.create(
            "v1/services",
            {
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
                "spec": {"type": svc_type, "clusterIP": ip, "selector": {"app": name}, "ports": [port]},
            },
        )
        return ip


def build_cluster(
    name: str,
    index: int,
    *,
    cilium_name: str | None = None,
    cluster_id: int | None = None,
    version: str = "1.18.10",
    nodes: int = 2,
    shared_ca: KeyPair | None = None,
    pod_cidr: str | None = None,
    svc_type: str = "LoadBalancer",
) -> Lab:
    """A KKP user cluster with Cilium and a running clustermesh-apiserver, but no peers configured yet."""
    store = Store()
    store.register(builtin_types())
    cilium_name = cilium_name or name
    pod_cidr = pod_cidr or f"172.{24 + index}.0.0/16"
    node_ips = [f"10.0.{index}.{10 + i}" for i in range(nodes)]
    lb_ip = f"192.0.2.{index}"
    ca = shared_ca or make_ca(f"Cilium CA {name}")
    server = issue(
        ca,
        "clustermesh-apiserver.cilium.io",
        dns_names=("*.mesh.cilium.io", "clustermesh-apiserver.kube-system.svc"),
        ip_addresses=("127.0.0.1",),
    )
    remote = issue(ca, "remote", server=False)
    lab = Lab(name, store, cilium_name, version, lb_ip, node_ips, pod_cidr, ca, server, remote)

    store.create(
        "v1/configmaps",
        {
            "metadata": {"name": "cilium-config", "namespace": NS},
            "data": {
                "cluster-name": cilium_name,
                "cluster-id": str(cluster_id if cluster_id is not None else index),
                "max-connected-clusters": "255",
            },
        },
    )
    store.create(
        "apps.kubermatic.k8c.io/v1/applicationinstallations",
        {
            "metadata": {"name": "cilium", "namespace": NS},
            "spec": {
                "applicationRef": {"name": "cilium", "version": version},
                "values": {"ipam": {"operator": {"clusterPoolIPv4PodCIDRList": [pod_cidr]}}},
            },
        },
    )
    subnets = ipaddress.ip_network(pod_cidr).subnets(new_prefix=24)
    for i, (node, ip, cidr) in enumerate(zip(lab.nodes(), node_ips, subnets, strict=False)):
        store.create(
            "v1/nodes",
            {
                "metadata": {"name": node},
                "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}], "conditions": READY},
            },
        )
        store.create(
            "v1/pods",
            {
                "metadata": {"name": f"cilium-{i}", "namespace": NS, "labels": {"k8s-app": "cilium"}},
                "spec": {"nodeName": node, "hostNetwork": True, "containers": [{"name": "cilium-agent"}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": READY},
            },
        )
    store.create(
        "apps/v1/daemonsets",
        {
            "metadata": {"name": "cilium", "namespace": NS},
            "spec": {"template": {"spec": {"containers": [{"name": "cilium-agent"}], "hostAliases": []}}},
        },
    )
    store.create(
        "apps/v1/deployments",
        {"metadata": {"name": "clustermesh-apiserver", "namespace": NS}, "spec": {"replicas": 1}},
    )
    store.create(
        "v1/pods",
        {
            "metadata": {
                "name": "clustermesh-apiserver-0",
                "namespace": NS,
                "labels": {"k8s-app": "clustermesh-apiserver"},
            },
            "spec": {"nodeName": lab.nodes()[0], "containers": [{"name": "etcd"}, {"name": "apiserver"}]},
            "status": {"phase": "Running", "podIP": f"172.{24 + index}.0.5", "conditions": READY},
        },
    )
    store.create(
        "v1/services",
        {
            "metadata": {"name": "clustermesh-apiserver", "namespace": NS},
            "spec": {
                "type": svc_type,
                "clusterIP": f"10.240.0.{index}",
                "selector": {"k8s-app": "clustermesh-apiserver"},
                "ports": [{"port": 2379, "targetPort": 2379, "nodePort": 32379, "protocol": "TCP"}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}] if svc_type == "LoadBalancer" else []}},
        },
    )
    store.create(
        "v1/secrets",
        {
            "metadata": {"name": "cilium-ca", "namespace": NS},
            "data": {"ca.crt": b64(ca.cert_pem), "ca.key": b64(ca.key_pem)},
        },
    )
    for secret, pair in (
        ("clustermesh-apiserver-server-cert", server),
        ("clustermesh-apiserver-remote-cert", remote),
    ):
        store.create(
            "v1/secrets",
            {
                "metadata": {"name": secret, "namespace": NS},
                "data": {
                    "ca.crt": b64(ca.cert_pem),
                    "tls.crt": b64(pair.cert_pem),
                    "tls.key": b64(pair.key_pem),
                },
            },
        )
    store.create("v1/secrets", {"metadata": {"name": "cilium-clustermesh", "namespace": NS}, "data": {}})
    return lab


def add_peer(
    src: Lab,
    dst: Lab,
    *,
    ips: list[str] | None = None,
    address: str = "",
    port: int = 2379,
    cert: bytes | None = None,
    key: bytes | None = None,
    ca_cert: bytes | None = None,
    write: bool = True,
) -> None:
    """Render one ``clustermesh.config.clusters[]`` entry into src the way the chart does.

    ``ca_cert`` None means the 1.13 chart: the trusted CA file holds src's own CA (hence the shared CA).
    """
    name = dst.cilium_name
    ips = [dst.lb_ip] if ips is None and not address else (ips or [])
    endpoint = f"https://{name}.mesh.cilium.io:{port}" if ips else f"https://{address}:{port}"
    d = "/var/lib/cilium/clustermesh/"
    text = (
        f"endpoints:\n- {endpoint}\ntrusted-ca-file: {d}{name}.etcd-client-ca.crt\n"
        f"key-file: {d}{name}.etcd-client.key\ncert-file: {d}{name}.etcd-client.crt\n"
    )
    src.peers[name] = b64(text.encode())
    src.peers[f"{name}.etcd-client.crt"] = b64(dst.remote.cert_pem if cert is None else cert)
    src.peers[f"{name}.etcd-client.key"] = b64(dst.remote.key_pem if key is None else key)
    src.peers[f"{name}.etcd-client-ca.crt"] = b64(src.ca.cert_pem if ca_cert is None else ca_cert)
    src.aliases = [a for a in src.aliases if f"{name}.mesh.cilium.io" not in a["hostnames"]]
    if ips:
        src.aliases.append({"ip": ips[0], "hostnames": [f"{name}.mesh.cilium.io"]})
    if write:
        src.write_mesh_config()


def guide_pair(version: str = "1.13.8") -> tuple[Lab, Lab]:
    """Two clusters set up exactly as the KKP guide says: cluster-2 uses cluster-1's CA, both peered."""
    c1 = build_cluster("cluster-1", 1, version=version)
    c2 = build_cluster("cluster-2", 2, version=version, shared_ca=c1.ca)
    add_peer(c2, c1)
    add_peer(c1, c2)
    return c1, c2


def own_ca_pair(version: str = "1.18.10") -> tuple[Lab, Lab]:
    """Two clusters with their own CAs, peered with ``tls.caCert`` (1.14+)."""
    c1 = build_cluster("cluster-1", 1, version=version)
    c2 = build_cluster("cluster-2", 2, version=version)
    add_peer(c1, c2, ca_cert=c2.ca.cert_pem)
    add_peer(c2, c1, ca_cert=c1.ca.cert_pem)
    return c1, c2


def world(*labs: Lab) -> dict[str, ClusterState]:
    return {lab.name: lab.state for lab in labs}


def probes_ok(report: HealthReport) -> bool:
    return all(
        n.host.icmp.ok and n.host.http.ok and n.endpoint is not None and n.endpoint.icmp.ok and n.endpoint.http.ok
        for n in report.nodes
    )


def health_of(labs: tuple[Lab, ...], faults: MeshFaults, lab: Lab) -> HealthReport:
    return health_report(world(*labs), faults, lab.name, lab.nodes()[0], NOW)


# ---- faults ----------------------------------------------------------------------------------------------


def test_faults_are_symmetric_and_can_be_lifted() -> None:
    faults = MeshFaults()
    faults.block("cluster-1", "cluster-2", "udp/8472")
    assert faults.is_blocked("cluster-2", "cluster-1", "udp/8472")
    assert not faults.is_blocked("cluster-1", "cluster-2", "icmp")
    faults.unblock("cluster-2", "cluster-1", "udp/8472")
    assert not faults.is_blocked("cluster-1", "cluster-2", "udp/8472")
    faults.block("cluster-1", "cluster-3", "icmp")
    faults.clear()
    assert not faults.is_blocked("cluster-1", "cluster-3", "icmp")


def test_an_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="udp/8472"):
        MeshFaults().block("a", "b", "udp/53")


# ---- the guide ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", [guide_pair, own_ca_pair], ids=["guide-1.13-shared-ca", "1.18-own-ca-caCert"])
def test_a_correct_configuration_connects_both_ways_and_every_node_is_healthy(
    pair: Callable[[], tuple[Lab, Lab]],
) -> None:
    c1, c2 = pair()
    clusters, faults = world(c1, c2), MeshFaults()
    assert connection(clusters, faults, "cluster-1", "cluster-2") == mesh.Connection(True)
    assert connection(clusters, faults, "cluster-2", "cluster-1").ok

    report = health_of((c1, c2), faults, c1)
    assert [(n.cluster, n.name, n.local) for n in report.nodes] == [
        ("cluster-1", "cluster-1-node-0", True),
        ("cluster-1", "cluster-1-node-1", False),
        ("cluster-2", "cluster-2-node-0", False),
        ("cluster-2", "cluster-2-node-1", False),
    ]
    assert probes_ok(report)
    remote = report.nodes[2]
    assert remote.host.ip == "10.0.2.10"
    assert remote.endpoint is not None and remote.endpoint.ip == "172.26.0.240"
    assert remote.host.icmp.rtt_ns is not None and remote.host.icmp.rtt_ns >= 1_000_000  # remote: ms
    assert report.nodes[0].host.icmp.rtt_ns is not None and report.nodes[0].host.icmp.rtt_ns < 1_000_000
    assert health_of((c1, c2), faults, c1) == report  # deterministic


def test_without_any_peer_configured_only_local_nodes_are_listed() -> None:
    c1 = build_cluster("cluster-1", 1)
    c2 = build_cluster("cluster-2", 2)
    report = health_of((c1, c2), MeshFaults(), c1)
    assert [n.cluster for n in report.nodes] == ["cluster-1", "cluster-1"]
    assert (
        "no clustermesh configuration for cluster cluster-2"
        in connection(world(c1, c2), None, "cluster-1", "cluster-2").reason
    )


# ---- each single defect breaks the connection with the agent's own words ---------------------------------


def _peer(c1: Lab, c2: Lab, **kw: Any) -> None:
    """Re-render c1's entry for c2 with one thing changed (1.14+: the entry carries c2's CA)."""
    add_peer(c1, c2, **{"ca_cert": c2.ca.cert_pem, **kw})


def _wrong_lb_ip(c1: Lab, c2: Lab) -> None:
    _peer(c1, c2, ips=["192.0.2.99"])


def _empty_remote_cert(c1: Lab, c2: Lab) -> None:
    _peer(c1, c2, cert=b"", key=b"")  # 1.13 with no tls in the entry


def _cert_from_another_ca(c1: Lab, c2: Lab) -> None:
    other = issue(make_ca("someone else"), "remote", server=False)
    _peer(c1, c2, cert=other.cert_pem, key=other.key_pem)


def _key_of_another_cert(c1: Lab, c2: Lab) -> None:
    _peer(c1, c2, key=c1.remote.key_pem)


def _ca_cert_not_verifying_peer(c1: Lab, c2: Lab) -> None:
    _peer(c1, c2, ca_cert=make_ca("unrelated").cert_pem)


def _expired_client_cert(c1: Lab, c2: Lab) -> None:
    old = issue(c2.ca, "remote", server=False, days=1, not_before=NOW - dt.timedelta(days=3))
    _peer(c1, c2, cert=old.cert_pem, key=old.key_pem)


def _expired_server_cert(c1: Lab, c2: Lab) -> None:
    old = issue(c2.ca, "server", dns_names=("*.mesh.cilium.io",), days=1, not_before=NOW - dt.timedelta(days=3))
    c2.mutate(
        "v1/secrets",
        "clustermesh-apiserver-server-cert",
        lambda o: o["data"].update({"tls.crt": b64(old.cert_pem)}),
    )


def _same_cluster_id(c1: Lab, c2: Lab) -> None:
    c2.set_config(**{"cluster-id": "1"})


def _same_name(c1: Lab, c2: Lab) -> None:
    c2.set_config(**{"cluster-name": "cluster-1"})


def _default_name(c1: Lab, c2: Lab) -> None:
    c2.set_config(**{"cluster-name": "default"})


def _overlapping_cidrs(c1: Lab, c2: Lab) -> None:
    def fn(o: Obj) -> None:
        o["spec"]["values"]["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] = ["172.25.128.0/17"]

    c2.mutate("apps.kubermatic.k8c.io/v1/applicationinstallations", "cilium", fn)


def _agents_not_ready(c1: Lab, c2: Lab) -> None:
    c1.set_agents_ready(False)


def _apiserver_not_ready(c1: Lab, c2: Lab) -> None:
    c2.mutate("v1/pods", "clustermesh-apiserver-0", lambda o: o["status"].update(conditions=NOT_READY))


def _lb_without_address(c1: Lab, c2: Lab) -> None:
    c2.mutate("v1/services", "clustermesh-apiserver", lambda o: o["status"].update(loadBalancer={}))


def _address_not_in_server_sans(c1: Lab, c2: Lab) -> None:
    _peer(c1, c2, address=c2.lb_ip)


def _no_host_alias(c1: Lab, c2: Lab) -> None:
    c1.aliases = []
    c1.write_mesh_config()


@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        (_wrong_lb_ip, "context deadline exceeded"),
        (_lb_without_address, "context deadline exceeded"),
        (_no_host_alias, "lookup cluster-2.mesh.cilium.io: no such host"),
        (_empty_remote_cert, "tls: failed to find any PEM data in certificate input"),
        (_cert_from_another_ca, "remote error: tls: bad certificate"),
        (_key_of_another_cert, "tls: private key does not match public key"),
        (_ca_cert_not_verifying_peer, "x509: certificate signed by unknown authority"),
        (_expired_client_cert, "remote error: tls: expired certificate"),
        (_expired_server_cert, "x509: certificate has expired or is not yet valid"),
        (_address_not_in_server_sans, "x509: certificate is valid for"),
        (_same_cluster_id, "remote cluster has the same cluster ID 1"),
        (_same_name, "same name cluster-1"),
        (_default_name, '"default"'),
        (_overlapping_cidrs, "overlapping pod CIDRs"),
        (_agents_not_ready, "not ready"),
        (_apiserver_not_ready, "context deadline exceeded"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_a_single_defect_breaks_the_connection_with_the_agents_reason(
    defect: Callable[[Lab, Lab], None], reason: str
) -> None:
    c1, c2 = own_ca_pair()
    defect(c1, c2)
    result = connection(world(c1, c2), MeshFaults(), "cluster-1", "cluster-2")
    assert not result.ok
    assert reason in result.reason
    report = health_of((c1, c2), MeshFaults(), c1)
    assert {n.cluster for n in report.nodes} == {"cluster-1"}  # no remote node is known


def test_blocking_the_mesh_api_port_makes_the_connection_time_out() -> None:
    c1, c2 = guide_pair()
    faults = MeshFaults()
    faults.block("cluster-2", "cluster-1", "tcp/2379")
    assert connection(world(c1, c2), faults, "cluster-1", "cluster-2") == mesh.Connection(
        False, "context deadline exceeded"
    )
    assert not connection(world(c1, c2), faults, "cluster-2", "cluster-1").ok


def test_on_1_13_without_the_shared_ca_the_peer_server_cert_is_not_trusted() -> None:
    """Guide step 4 left out: cluster-2 has its own CA, so its trusted CA file cannot verify cluster-1."""
    c1 = build_cluster("cluster-1", 1, version="1.13.8")
    c2 = build_cluster("cluster-2", 2, version="1.13.8")
    add_peer(c2, c1)
    result = connection(world(c1, c2), None, "cluster-2", "cluster-1")
    assert "certificate signed by unknown authority" in result.reason


def test_a_nodeport_apiserver_is_reached_on_a_node_ip_and_the_node_port() -> None:
    c1 = build_cluster("cluster-1", 1)
    c2 = build_cluster("cluster-2", 2, svc_type="NodePort")
    add_peer(c1, c2, ips=[c2.node_ips[1]], port=32379, ca_cert=c2.ca.cert_pem)
    assert connection(world(c1, c2), None, "cluster-1", "cluster-2").ok
    add_peer(c1, c2, ips=[c2.node_ips[1]], port=2379, ca_cert=c2.ca.cert_pem)
    assert connection(world(c1, c2), None, "cluster-1", "cluster-2").reason == "context deadline exceeded"


def test_a_restarting_agent_sees_no_remote_cluster_while_the_others_do() -> None:
    c1, c2 = own_ca_pair()
    restarting = c1.nodes()[0]
    c1.set_agents_ready(False, only=restarting)
    clusters = world(c1, c2)
    assert not connection(clusters, None, "cluster-1", "cluster-2", node=restarting).ok
    assert connection(clusters, None, "cluster-1", "cluster-2", node=c1.nodes()[1]).ok
    snap = agent_snapshot(clusters, None, "cluster-1", restarting, NOW)
    assert snap.peers == []
    assert {n.cluster for n in snap.health.nodes} == {"cluster-1"}
    other = agent_snapshot(clusters, None, "cluster-1", c1.nodes()[1], NOW)
    assert [p.name for p in other.peers if p.ready] == ["cluster-2"]


# ---- the datapath: health probes ---------------------------------------------------------------------------


def test_a_one_directional_config_shows_remote_nodes_whose_endpoints_do_not_answer() -> None:
    c1 = build_cluster("cluster-1", 1)
    c2 = build_cluster("cluster-2", 2)
    add_peer(c1, c2, ca_cert=c2.ca.cert_pem)  # cluster-2 knows nothing of cluster-1
    report = health_of((c1, c2), MeshFaults(), c1)
    remote = [n for n in report.nodes if n.cluster == "cluster-2"]
    assert len(remote) == 2
    assert all(n.host.icmp.ok and n.host.http.ok for n in remote)
    for n in remote:
        assert n.endpoint is not None
        assert n.endpoint.icmp.error == "Connection timed out"
        assert n.endpoint.http.error is not None and "context deadline exceeded" in n.endpoint.http.error
    assert {n.cluster for n in health_of((c1, c2), MeshFaults(), c2).nodes} == {"cluster-2"}


@pytest.mark.parametrize(
    ("blocked", "failing"),
    [
        ("udp/8472", {"endpoint.icmp", "endpoint.http"}),
        ("tcp/4240", {"host.http"}),
        ("icmp", {"host.icmp"}),
    ],
)
def test_a_blocked_port_fails_exactly_its_probes_on_remote_nodes(blocked: str, failing: set[str]) -> None:
    c1, c2 = guide_pair()
    faults = MeshFaults()
    faults.block("cluster-1", "cluster-2", blocked)
    for lab in (c1, c2):
        report = health_of((c1, c2), faults, lab)
        for n in report.nodes:
            assert n.endpoint is not None
            probes = {
                "host.icmp": n.host.icmp,
                "host.http": n.host.http,
                "endpoint.icmp": n.endpoint.icmp,
                "endpoint.http": n.endpoint.http,
            }
            bad = {k for k, p in probes.items() if not p.ok}
            assert bad == (failing if n.cluster != lab.cilium_name else set()), (lab.name, n.name)
    report = health_of((c1, c2), faults, c1)
    if blocked == "tcp/4240":
        assert report.nodes[2].host.http.error == (
            'Get "http://10.0.2.10:4240/hello": context deadline exceeded '
            "(Client.Timeout exceeded while awaiting headers)"
        )
    if blocked == "icmp":
        assert report.nodes[2].host.icmp.error == "Connection timed out"


def test_faults_between_other_clusters_do_not_touch_this_pair() -> None:
    c1, c2 = guide_pair()
    c3 = build_cluster("cluster-3", 3, version="1.13.8", shared_ca=c1.ca)
    faults = MeshFaults()
    faults.block("cluster-2", "cluster-3", "udp/8472")
    assert probes_ok(health_of((c1, c2, c3), faults, c1))


def test_three_clusters_in_a_full_mesh_see_every_node() -> None:
    labs = [build_cluster(f"cluster-{i}", i) for i in (1, 2, 3)]
    for src in labs:
        for dst in labs:
            if src is not dst:
                add_peer(src, dst, ca_cert=dst.ca.cert_pem, write=False)
        src.write_mesh_config()
    report = health_of(tuple(labs), MeshFaults(), labs[1])
    assert [n.cluster for n in report.nodes] == ["cluster-2"] * 2 + ["cluster-1"] * 2 + ["cluster-3"] * 2
    assert probes_ok(report)
    peers = peer_statuses(world(*labs), None, "cluster-2", labs[1].nodes()[0], NOW)
    assert [(p.name, p.ready, p.num_nodes, p.cluster_id) for p in peers] == [
        ("cluster-1", True, 2, 1),
        ("cluster-3", True, 2, 3),
    ]


def test_peer_status_carries_the_reason_and_counts_global_services() -> None:
    c1, c2 = own_ca_pair()
    c2.deploy("nginx", 2)
    c2.service("nginx", {"service.cilium.io/global": "true"})
    c2.service("private", {"service.cilium.io/global": "true", "service.cilium.io/shared": "false"})
    clusters = world(c1, c2)
    [peer] = peer_statuses(clusters, None, "cluster-1", c1.nodes()[0], NOW)
    assert (peer.ready, peer.num_services, peer.num_nodes, peer.error) == (True, 1, 2, None)
    _ca_cert_not_verifying_peer(c1, c2)
    [peer] = peer_statuses(clusters, None, "cluster-1", c1.nodes()[0], NOW)
    assert not peer.ready
    assert peer.error is not None and "unknown authority" in peer.error


# ---- services ---------------------------------------------------------------------------------------

GLOBAL_LOCAL = {"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}
GLOBAL_LOCAL_OLD = {"io.cilium/global-service": "true", "io.cilium/service-affinity": "local"}


def global_nginx(version: str = "1.18.10", annotations: dict[str, str] | None = None) -> tuple[Lab, Lab]:
    c1, c2 = own_ca_pair(version)
    for lab, start in ((c1, 10), (c2, 30)):
        lab.deploy("nginx", 2, start=start)
        lab.service("nginx", annotations or GLOBAL_LOCAL)
    return c1, c2


def nginx_entry(lab: Lab, labs: tuple[Lab, ...], faults: MeshFaults | None = None) -> ServiceEntry:
    entries = service_entries(world(*labs), faults, lab.name, lab.nodes()[0])
    return next(e for e in entries if e.name == "nginx" and e.type == "ClusterIP")


def test_global_service_lists_remote_backends_with_local_ones_preferred() -> None:
    c1, c2 = global_nginx()
    entry = nginx_entry(c1, (c1, c2))
    got = [(b.ip, b.preferred, b.node_name is not None) for b in entry.backends]
    assert got == [
        ("172.25.0.10", True, True),
        ("172.25.1.11", True, True),
        ("172.26.0.30", False, False),
        ("172.26.1.31", False, False),
    ]
    assert entry.frontend_port == 80 and entry.protocol == "TCP" and entry.backends[0].port == 80


def test_scaling_local_to_zero_leaves_only_remote_backends_none_preferred() -> None:
    c1, c2 = global_nginx()
    c1.scale_to_zero("nginx")
    entry = nginx_entry(c1, (c1, c2))
    assert [(b.ip, b.preferred) for b in entry.backends] == [("172.26.0.30", False), ("172.26.1.31", False)]


def test_remote_affinity_prefers_the_other_clusters_backends() -> None:
    c1, c2 = global_nginx(annotations={"service.cilium.io/global": "true", "service.cilium.io/affinity": "remote"})
    entry = nginx_entry(c1, (c1, c2))
    assert [b.preferred for b in entry.backends] == [False, False, True, True]


def test_cilium_1_13_ignores_the_new_annotation_names() -> None:
    c1, c2 = global_nginx("1.13.8", annotations=GLOBAL_LOCAL)
    assert [b.ip for b in nginx_entry(c1, (c1, c2)).backends] == ["172.25.0.10", "172.25.1.11"]
    assert agent_snapshot(world(c1, c2), None, "cluster-1", c1.nodes()[0], NOW).global_services == 0
    d1, d2 = global_nginx("1.13.8", annotations=GLOBAL_LOCAL_OLD)
    assert len(nginx_entry(d1, (d1, d2)).backends) == 4


def test_cilium_1_18_reads_the_old_annotation_names_too() -> None:
    c1, c2 = global_nginx("1.18.10", annotations=GLOBAL_LOCAL_OLD)
    assert [b.preferred for b in nginx_entry(c1, (c1, c2)).backends] == [True, True, False, False]


def test_affinity_none_on_1_18_drops_remote_backends() -> None:
    """cilium#46623: on 1.18.10+ an explicit ``none`` black-holes the remote side."""
    none = {"service.cilium.io/global": "true", "service.cilium.io/affinity": "none"}
    c1, c2 = global_nginx("1.18.10", annotations=none)
    assert len(nginx_entry(c1, (c1, c2)).backends) == 2
    d1, d2 = global_nginx("1.17.6", annotations=none)
    assert [b.preferred for b in nginx_entry(d1, (d1, d2)).backends] == [False] * 4


def test_a_service_not_shared_by_the_peer_contributes_no_backends() -> None:
    c1, c2 = own_ca_pair()
    c1.deploy("nginx", 1)
    c1.service("nginx", {"service.cilium.io/global": "true"})
    c2.deploy("nginx", 1, start=30)
    c2.service("nginx", {"service.cilium.io/global": "true", "service.cilium.io/shared": "false"})
    assert len(nginx_entry(c1, (c1, c2)).backends) == 1


def test_no_remote_backends_without_a_connection() -> None:
    c1, c2 = global_nginx()
    c2.set_config(**{"cluster-id": "1"})
    assert len(nginx_entry(c1, (c1, c2)).backends) == 2


def test_terminating_and_unready_pods() -> None:
    c1 = build_cluster("cluster-1", 1)
    c1.deploy("web", 3)
    c1.service("web")
    c1.mutate(
        "v1/pods",
        "web-0",
        lambda o: o["metadata"].update(deletionTimestamp="2024-01-01T00:00:00Z"),
        "default",
    )
    c1.mutate("v1/pods", "web-1", lambda o: o["status"].update(conditions=NOT_READY), "default")
    entry = next(e for e in service_entries(world(c1), None, "cluster-1", c1.nodes()[0]) if e.name == "web")
    assert [(b.ip, b.state) for b in entry.backends] == [
        ("172.25.0.10", "terminating"),
        ("172.25.0.12", "active"),
    ]


def test_service_ids_are_stable_as_services_appear_and_node_ports_get_frontends() -> None:
    c1 = build_cluster("cluster-1", 1)
    before = [(e.id, e.name, e.type) for e in service_entries(world(c1), None, "cluster-1", c1.nodes()[0])]
    assert [i for i, _n, _t in before] == list(range(1, len(before) + 1))
    c1.service("web", svc_type="NodePort", target_port="http")
    after = service_entries(world(c1), None, "cluster-1", c1.nodes()[0])
    assert [(e.id, e.name, e.type) for e in after[: len(before)]] == before
    web = [(e.frontend_ip, e.type) for e in after if e.name == "web"]
    assert web == [(web[0][0], "ClusterIP"), ("10.0.1.10", "NodePort"), ("0.0.0.0", "NodePort")]
    apiserver = [e.type for e in after if e.name == "clustermesh-apiserver"]
    assert apiserver == ["ClusterIP", "NodePort", "NodePort", "LoadBalancer"]


# ---- exec: curl, shells, agent CLIs ----------------------------------------------------------------------


def curl(labs: tuple[Lab, ...], faults: MeshFaults | None, lab: Lab, *args: str) -> tuple[int, bytes, bytes]:
    lab.store.try_get("v1/pods", "default", "client") or lab.store.create(
        "v1/pods",
        {
            "metadata": {"name": "client", "namespace": "default", "labels": {"app": "client"}},
            "spec": {"nodeName": lab.nodes()[0], "containers": [{"name": "curl"}]},
            "status": {"phase": "Running", "podIP": "172.25.0.250", "conditions": READY},
        },
    )
    return exec_command(world(*labs), faults, lab.name, "default", "client", "", ["curl", *args])


CURL = ("-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5")


def test_curl_reaches_a_service_by_its_dns_names_and_cluster_ip() -> None:
    c1, c2 = global_nginx()
    ip = next(
        e.frontend_ip for e in service_entries(world(c1, c2), None, "cluster-1", c1.nodes()[0]) if e.name == "nginx"
    )
    for target in ("nginx", "nginx.default", "nginx.default.svc.cluster.local", ip):
        assert curl((c1, c2), None, c1, *CURL, f"http://{target}/") == (0, b"200", b"")
    code, out, _ = curl((c1, c2), None, c1, "-s", "http://nginx")
    assert code == 0 and b"Welcome to nginx!" in out


def test_curl_fails_over_to_remote_backends_unless_vxlan_is_blocked() -> None:
    c1, c2 = global_nginx()
    c1.scale_to_zero("nginx")
    assert curl((c1, c2), None, c1, *CURL, "http://nginx")[0] == 0
    faults = MeshFaults()
    faults.block("cluster-1", "cluster-2", "udp/8472")
    assert curl((c1, c2), faults, c1, *CURL, "http://nginx") == (
        28,
        b"000",
        b"curl: (28) Connection timed out after 5000 milliseconds\n",
    )
    # with a local backend the blocked tunnel does not matter: local is preferred
    d1, d2 = global_nginx()
    assert curl((d1, d2), faults, d1, *CURL, "http://nginx")[0] == 0


def test_curl_to_a_service_without_backends_is_refused_and_unknown_names_do_not_resolve() -> None:
    c1 = build_cluster("cluster-1", 1)
    c1.service("empty")
    code, out, err = curl((c1,), None, c1, "-sS", "--connect-timeout", "2", "http://empty.default.svc:80/")
    assert code == 7 and b"Couldn't connect to server" in err and out == b""
    code, _out, err = curl((c1,), None, c1, "-sS", "http://nope.default")
    assert (code, err) == (6, b"curl: (6) Could not resolve host: nope.default\n")
    assert curl((c1,), None, c1, "-s", "http://nope")[2] == b""  # -s without -S hides the error


def test_curl_through_sh_c_and_with_chained_commands() -> None:
    c1, c2 = global_nginx()
    curl((c1, c2), None, c1, "-s", "http://nginx")  # creates the client pod
    argv = ["sh", "-c", "curl -s -o /dev/null -w '%{http_code}\\n' http://nginx && echo done"]
    code, out, _ = exec_command(world(c1, c2), None, "cluster-1", "default", "client", "curl", argv)
    assert (code, out) == (0, b"200\ndone\n")
    code, _out, err = exec_command(world(c1, c2), None, "cluster-1", "default", "client", "", ["sh", "-c", "wget x"])
    assert code == 127 and b"wget: not found" in err


def test_exec_of_an_unknown_binary_or_into_a_missing_pod() -> None:
    c1 = build_cluster("cluster-1", 1)
    code, out, err = exec_command(world(c1), None, "cluster-1", NS, "cilium-0", "cilium-agent", ["jq", "."])
    assert code == 127 and out == b""
    assert err.decode() == (
        'OCI runtime exec failed: exec failed: unable to start container process: exec: "jq": '
        "executable file not found in $PATH: unknown\n"
    )
    code, _out, err = exec_command(world(c1), None, "cluster-1", NS, "cilium-9", "", ["cilium", "status"])
    assert code == 1 and b'pods "cilium-9" not found' in err
    code, _out, err = exec_command(world(c1), None, "cluster-1", NS, "cilium-0", "nope", ["cilium", "status"])
    assert code == 1 and b"container not found" in err


def test_agent_commands_get_the_snapshot_of_the_pods_node(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[AgentSnapshot, list[str]]] = []

    def run_agent_command(snapshot: AgentSnapshot, argv: list[str]) -> tuple[int, str, str]:
        seen.append((snapshot, argv))
        return 0, "rendered\n", ""

    fake = types.ModuleType("sandbox.cilium_cli")
    fake.run_agent_command = run_agent_command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sandbox.cilium_cli", fake)
    c1, c2 = global_nginx("1.13.8", annotations=GLOBAL_LOCAL_OLD)
    argv = ["/usr/bin/cilium-health", "status", "--probe"]
    assert exec_command(world(c1, c2), None, "cluster-1", NS, "cilium-1", None, argv) == (
        0,
        b"rendered\n",
        b"",
    )
    snapshot, called = seen[0]
    assert called == ["cilium-health", "status", "--probe"]
    assert (snapshot.cluster_name, snapshot.cluster_id, snapshot.node_name) == (
        "cluster-1",
        1,
        "cluster-1-node-1",
    )
    assert snapshot.cilium_version == "1.13.8" and snapshot.mesh_enabled and snapshot.global_services == 1
    assert snapshot.health.nodes[0].name == "cluster-1-node-1" and len(snapshot.health.nodes) == 4
    assert [p.name for p in snapshot.peers] == ["cluster-2"]
    # cilium-dbg does not exist before 1.15
    code, _out, _err = exec_command(world(c1, c2), None, "cluster-1", NS, "cilium-1", None, ["cilium-dbg", "status"])
    assert code == 127 and len(seen) == 1
    # the agent CLI is only in the agent container
    code, _o, _e = exec_command(world(c1, c2), None, "cluster-1", "default", "nginx-0", None, ["cilium", "status"])
    assert code == 127


def test_facts_are_recomputed_after_a_store_change() -> None:
    c1, c2 = own_ca_pair()
    clusters = world(c1, c2)
    assert connection(clusters, None, "cluster-1", "cluster-2").ok
    _same_cluster_id(c1, c2)
    assert not connection(clusters, None, "cluster-1", "cluster-2").ok


def _entry_without_tls(src: Lab, dst: Lab) -> None:
    """1.14+ chart output for an entry without ``tls``: the agents use the local remote cert (common-*)."""
    d = "/var/lib/cilium/clustermesh/"
    name = dst.cilium_name
    text = (
        f"endpoints:\n- https://{name}.mesh.cilium.io:2379\ntrusted-ca-file: {d}common-etcd-client-ca.crt\n"
        f"key-file: {d}common-etcd-client.key\ncert-file: {d}common-etcd-client.crt\n"
    )
    src.peers = {name: b64(text.encode())}
    src.aliases = [{"ip": dst.lb_ip, "hostnames": [f"{name}.mesh.cilium.io"]}]
    src.write_mesh_config()


def test_an_entry_without_tls_works_only_with_a_shared_ca() -> None:
    shared = make_ca("shared")
    c1 = build_cluster("cluster-1", 1, shared_ca=shared)
    c2 = build_cluster("cluster-2", 2, shared_ca=shared)
    _entry_without_tls(c1, c2)
    assert connection(world(c1, c2), None, "cluster-1", "cluster-2").ok
    d1, d2 = own_ca_pair()
    _entry_without_tls(d1, d2)
    assert "unknown authority" in connection(world(d1, d2), None, "cluster-1", "cluster-2").reason


def test_a_missing_certificate_file_is_reported_by_its_path() -> None:
    c1, c2 = own_ca_pair()
    del c1.peers["cluster-2.etcd-client.key"]
    c1.write_mesh_config()
    reason = connection(world(c1, c2), None, "cluster-1", "cluster-2").reason
    assert reason == "open /var/lib/cilium/clustermesh/cluster-2.etcd-client.key: no such file or directory"


def test_with_kvstoremesh_the_remote_configuration_comes_from_its_own_secret() -> None:
    """1.16+: agents read the local kvstoremesh; the kvstoremesh container holds the real peer config."""
    c1, c2 = own_ca_pair("1.16.9")
    real = dict(c1.peers)
    local = "endpoints:\n- https://clustermesh-apiserver.kube-system.svc:2379\n"
    c1.peers = {"cluster-2": b64(local.encode())}
    aliases, c1.aliases = c1.aliases, []
    c1.write_mesh_config()
    assert not connection(world(c1, c2), None, "cluster-1", "cluster-2").ok
    c1.store.create("v1/secrets", {"metadata": {"name": "cilium-kvstoremesh", "namespace": NS}, "data": real})

    def fn(o: Obj) -> None:
        o["spec"]["template"] = {"spec": {"hostAliases": aliases}}

    c1.mutate("apps/v1/deployments", "clustermesh-apiserver", fn)
    assert connection(world(c1, c2), None, "cluster-1", "cluster-2").ok


def test_curl_reaches_a_node_port_on_any_node() -> None:
    c1 = build_cluster("cluster-1", 1)
    c1.deploy("web", 1)
    c1.service("web", svc_type="NodePort")
    node_port = next(
        e.frontend_port
        for e in service_entries(world(c1), None, "cluster-1", c1.nodes()[0])
        if e.type == "NodePort" and e.name == "web"
    )
    for ip in c1.node_ips:
        assert curl((c1,), None, c1, *CURL, f"http://{ip}:{node_port}")[:2] == (0, b"200")
    assert curl((c1,), None, c1, *CURL, f"http://10.0.1.99:{node_port}")[0] == 28


def test_curl_with_remote_affinity_uses_only_the_preferred_remote_backends() -> None:
    """Preferred backends win even when unusable: a blocked tunnel black-holes a remote-affinity service."""
    c1, c2 = global_nginx(annotations={"service.cilium.io/global": "true", "service.cilium.io/affinity": "remote"})
    assert curl((c1, c2), None, c1, *CURL, "http://nginx")[0] == 0
    faults = MeshFaults()
    faults.block("cluster-2", "cluster-1", "udp/8472")
    assert curl((c1, c2), faults, c1, *CURL, "http://nginx")[0] == 28


def test_a_link_found_at_one_time_is_checked_again_at_another() -> None:
    """Certificates expire: the same clusters asked a year later are no longer connected, then again now."""
    c1, c2 = own_ca_pair()
    clusters = world(c1, c2)
    later = NOW + dt.timedelta(days=3650)
    assert connection(clusters, None, "cluster-1", "cluster-2", now=NOW).ok
    reason = connection(clusters, None, "cluster-1", "cluster-2", now=later).reason
    assert "certificate has expired" in reason and later.strftime("%Y-%m-%dT%H:%M:%SZ") in reason
    assert connection(clusters, None, "cluster-1", "cluster-2", now=NOW).ok
    faults = MeshFaults()
    faults.block("cluster-1", "cluster-2", "tcp/2379")
    assert connection(clusters, faults, "cluster-1", "cluster-2", now=NOW).reason == "context deadline exceeded"


def test_service_ids_are_handed_out_by_every_agent_exec_whatever_it_prints() -> None:
    """A frontend seen by a health check keeps its ID to itself even if it is gone at the next listing."""
    c1 = build_cluster("cluster-1", 1)
    clusters = world(c1)
    last = max(e.id for e in service_entries(clusters, None, "cluster-1", c1.nodes()[0]))
    c1.service("web")
    argv = ["cilium-health", "status", "-o", "json"]
    assert exec_command(clusters, None, "cluster-1", NS, "cilium-0", "cilium-agent", argv, NOW)[0] == 0
    c1.store.delete("v1/services", "default", "web")
    c1.service("api")
    listed = service_entries(clusters, None, "cluster-1", c1.nodes()[0])
    assert [e.id for e in listed if e.name == "api"] == [last + 2]  # web had last + 1


AGENT_COMMANDS = (
    ["cilium-health", "status", "-o", "json"],
    ["cilium-health", "status", "--verbose"],
    ["cilium", "service", "list", "-o", "json"],
    ["cilium", "status", "--all-clusters"],
    ["cilium", "status", "-o", "json"],
    ["sh", "-c", "cilium version && cilium-health status --succinct"],
    ["cilium", "bogus"],
)


def test_agent_execs_make_no_reference_cycles_and_leave_the_collector_on() -> None:
    """Execs pause the garbage collector: what an answer builds must be freed by reference counting."""
    c1, c2 = global_nginx("1.16.9")
    clusters = world(c1, c2)
    for argv in AGENT_COMMANDS:  # caches filled, lazy imports done
        exec_command(clusters, None, "cluster-1", NS, "cilium-0", "cilium-agent", argv, NOW)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for argv in AGENT_COMMANDS:
            exec_command(clusters, None, "cluster-1", NS, "cilium-1", "cilium-agent", argv, NOW)
            assert gc.isenabled()
        gc.collect()
        cycles = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cycles == []
    with pytest.raises(KeyError, match="no sandbox cluster named"):
        exec_command(clusters, None, "cluster-9", NS, "cilium-0", "cilium-agent", ["cilium", "status"])
    assert gc.isenabled()
