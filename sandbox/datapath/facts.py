"""One cluster's facts as its agents would read them: cilium-config, the mesh Secret, the apiserver's
Service, pods and certificates, nodes."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandbox.datapath.state import (
    CLUSTERMESH_DIR,
    DEFAULT_MAX_CONNECTED,
    NS,
    ClusterState,
    Network,
    _get,
    _health_ip,
    _is_true,
    _network,
    _object,
    _objects,
    _ready,
    _secret_files,
    _version_tuple,
    _yaml,
)
from sandbox.store import Obj, Store
from sandbox.versions import DEFAULT_GLOBAL_NAMESPACE_KEY, NAMESPACE_GLOBAL_ANNOTATION


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
    # 1.20 global namespaces: cilium-config ``clustermesh-default-global-namespace`` (absent = true) and each
    # namespace's ``clustermesh.cilium.io/global`` annotation, where set
    default_global_namespace: bool = True
    namespace_global: dict[str, bool] = field(default_factory=dict)

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
    f.default_global_namespace = _is_true(data.get(DEFAULT_GLOBAL_NAMESPACE_KEY, "true"))
    for namespace in _objects(store, "v1/namespaces"):
        marker = (_get(namespace, "metadata", "annotations", default={}) or {}).get(NAMESPACE_GLOBAL_ANNOTATION)
        if marker is not None:
            f.namespace_global[str(_get(namespace, "metadata", "name", default=""))] = _is_true(marker)

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
    apiserver_deploy = _object(store, "apps/v1/deployments", NS, "clustermesh-apiserver")
    bundle = _trust_bundle(store, apiserver_deploy)
    f.server_ca = server.get("ca.crt", b"") if bundle is None else bundle
    f.server_cert = server.get("tls.crt", b"")
    remote = _secret_files(_object(store, "v1/secrets", NS, "clustermesh-apiserver-remote-cert"))
    f.remote_files = {
        "common-etcd-client.crt": remote.get("tls.crt", b""),
        "common-etcd-client.key": remote.get("tls.key", b""),
        # the chart projects the same bundle into the agents' common-/local-etcd-client-ca.crt (their DaemonSet);
        # the sandbox's agents take it from the apiserver's volume, so they do not roll when it changes
        "common-etcd-client-ca.crt": remote.get("ca.crt", b"") if bundle is None else bundle,
    }

    aliases: dict[str, str] = {}
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


def _trust_bundle(store: Store, deploy: Obj | None) -> bytes | None:
    """The CA bundle the clustermesh-apiserver's etcd trusts clients by, when ``tls.caBundle`` puts one in its
    ``etcd-server-secrets`` volume (a ConfigMap or Secret source with path ca.crt); None: the leaf's ca.crt.
    A missing object or key gives b"" (etcd then trusts nothing)."""
    return _bundle_file(store, deploy, "etcd-server-secrets", "ca.crt")


def _bundle_file(store: Store, owner: Obj | None, volume_name: str, path: str) -> bytes | None:
    """The content of ``path`` in ``owner``'s projected volume when a ConfigMap/Secret other than the
    apiserver's leaf Secrets provides it (``tls.caBundle``); None when none does."""
    volumes = _get(owner, "spec", "template", "spec", "volumes", default=[]) or []
    volume = next((v for v in volumes if isinstance(v, dict) and v.get("name") == volume_name), None)
    for source in _get(volume, "projected", "sources", default=[]) or []:
        for kind, table in (("configMap", "v1/configmaps"), ("secret", "v1/secrets")):
            ref = (source.get(kind) if isinstance(source, dict) else None) or {}
            item = next((i for i in ref.get("items") or [] if i.get("path") == path), None)
            if item is None or str(ref.get("name", "")).startswith("clustermesh-apiserver-"):
                continue
            obj = _object(store, table, NS, str(ref.get("name")))
            if kind == "secret":
                return _secret_files(obj).get(str(item.get("key")), b"")
            return str(((obj or {}).get("data") or {}).get(str(item.get("key")), "")).encode()
    return None
