"""The simulated world behind each sandbox cluster: KKP's application controller, Cilium's chart,
certgen, a LoadBalancer provider, the Deployment/DaemonSet/Endpoints controllers and the agents.

Everything happens on the sandbox's asyncio loop. Store listeners only *kick* a per-cluster reconcile
(``call_soon``, coalesced); delayed work goes through ``_Clock``: real ``call_later`` scaled by
``time_scale``, or, when ``time_scale`` is 0, a virtual clock that fires timers in due order only once
all reactive work has settled (so a 600 s Helm timeout still comes after a 30 s certgen).

Addressing (cluster index ``i``, node ``k`` counted from 0):

- nodes: ``10.<i>.0.<k+2>`` in ``10.<i>.0.0/24``; pod CIDR ``172.<24+i>.0.0/16`` unless given, node
  ``k`` owns the ``/24`` slice number ``k`` (``spec.podCIDR``); health/cilium_host IPs are annotated
  on the Node (``network.cilium.io/ipv4-health-ip``, ``network.cilium.io/ipv4-cilium-host``);
- services: ClusterIPs from ``10.240.16.0/20`` (``kubernetes`` .1, ``kube-dns`` .10), nodePorts
  30000–32767 (``clustermesh-apiserver`` 32379);
- LoadBalancer pool ``203.0.113.<10*i>`` … ``203.0.113.<10*i+9>`` for clusters 1–24, then
  ``198.18.<i>.10`` … ``198.18.<i>.19`` (both documentation/benchmark ranges).
- Pod CIDRs ``172.<24+i>.0.0/16`` for clusters 1–7 (the guide's 172.25 and 172.26), then
  ``10.<100+i>.0.0/16``, so that every default stays in a private range and none overlap.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import heapq
import ipaddress
import json
import logging
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography import x509

from sandbox import chart, pki
from sandbox.chart import ChartError, Rendered
from sandbox.store import Obj, Store, now_rfc3339

log = logging.getLogger(__name__)

CILIUM_PATCH = {
    "1.13": "1.13.8",
    "1.14": "1.14.16",
    "1.15": "1.15.16",
    "1.16": "1.16.9",
    "1.17": "1.17.12",
    "1.18": "1.18.10",
    "1.19": "1.19.4",
}

NS = "kube-system"
AI_KEY = "apps.kubermatic.k8c.io/v1/applicationinstallations"
PODS, NODES, SECRETS, CMS, SVCS = "v1/pods", "v1/nodes", "v1/secrets", "v1/configmaps", "v1/services"
DEPLOYS, DSS = "apps/v1/deployments", "apps/v1/daemonsets"
EPS, SLICES = "v1/endpoints", "discovery.k8s.io/v1/endpointslices"
RELEASE = "kube-system-cilium"
SERVICE_CIDR = ipaddress.ip_network("10.240.16.0/20")
MESH_SECRET = "cilium-clustermesh"
KVSTOREMESH_SECRET = "cilium-kvstoremesh"
APISERVER = "clustermesh-apiserver"
LEAF_SECRETS = (
    "clustermesh-apiserver-server-cert",
    "clustermesh-apiserver-admin-cert",
    "clustermesh-apiserver-remote-cert",
    "clustermesh-apiserver-local-cert",
)
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
K8S_RAND = "bcdfghjklmnpqrstvwxz2456789"

# Delays in simulated seconds (multiplied by time_scale).
INSTALL_DELAY = 5.0
LB_DELAY = 10.0
CERTGEN_DELAY = 30.0
AGENT_RESTART = 20.0
POD_START = 2.0
RETRY_DELAY = 10.0
MAX_FAILURES = 5


def default_pod_cidr(index: int) -> str:
    """The guide's 172.25/16, 172.26/16, … while that stays in 172.16/12; then 10.<100+i>/16."""
    return f"172.{24 + index}.0.0/16" if index <= 7 else f"10.{100 + index}.0.0/16"


def lb_pool(index: int) -> list[str]:
    """Ten LoadBalancer addresses per cluster, always valid IPs (documentation and benchmark ranges)."""
    if index <= 24:
        return [f"203.0.113.{10 * index + k}" for k in range(10)]
    return [f"198.18.{index}.{10 + k}" for k in range(10)]


def concrete_version(version: str) -> str:
    """A line (``"1.16"``) becomes the patch KKP ships; a full version is kept as it is."""
    v = version.strip().lstrip("v")
    return CILIUM_PATCH.get(v, v)


def _kkp(version: str) -> tuple[int, int]:
    parts = version.strip().lstrip("v").split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text or "")
    except ValueError:
        return b""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _rand(rng: random.Random, n: int, alphabet: str = K8S_RAND) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _hash_name(obj: Any, n: int = 10) -> str:
    """A stable, name-safe hash (like a pod-template-hash)."""
    h = int(_digest(obj), 16)
    out = []
    for _ in range(n):
        h, r = divmod(h, len(K8S_RAND))
        out.append(K8S_RAND[r])
    return "".join(out)


def _duration(text: Any, default: float) -> float:
    """Go durations as KKP writes them (``10m0s``, ``5m``, ``1h0m0s``) → seconds."""
    if text in (None, ""):
        return default
    if isinstance(text, int | float):
        return float(text)
    total, found = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text)):
        found = True
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total if found else default


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` wins; maps merge recursively; lists are replaced."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    cur = obj
    for p in path:
        if not isinstance(cur, dict) or cur.get(p) is None:
            return default
        cur = cur[p]
    return cur


# ---- scheduling ------------------------------------------------------------------------------------


class _Timer:
    """A cancellable delayed call."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False
        self.fired = False
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    def fire(self) -> None:
        if self.cancelled or self.fired:
            return
        self.fired = True
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - a broken controller step must not kill the loop
            log.exception("sandbox timer failed")

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)


class _Clock:
    """Real scaled delays, or with ``scale == 0`` a virtual clock that advances only when idle."""

    def __init__(self, scale: float, busy: Callable[[], bool]) -> None:
        self.scale = scale
        self.busy = busy
        self.loop: asyncio.AbstractEventLoop | None = None
        self.now = 0.0
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = 0
        self._tick_scheduled = False
        self._early: list[tuple[float, _Timer]] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        early, self._early = self._early, []
        for delay, t in early:
            self._schedule(delay, t)
        self._arm()

    def after(self, delay: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer(fn)
        if self.loop is None and self.scale > 0:
            self._early.append((delay, t))
        else:
            self._schedule(delay, t)
        return t

    def _schedule(self, delay: float, t: _Timer) -> None:
        if self.scale > 0:
            assert self.loop is not None
            t.handle = self.loop.call_later(max(0.0, delay) * self.scale, t.fire)
        else:
            self._seq += 1
            heapq.heappush(self._heap, (self.now + max(0.0, delay), self._seq, t))
            self._arm()

    def _arm(self) -> None:
        if self.scale > 0 or self.loop is None or self._tick_scheduled or not self._heap:
            return
        self._tick_scheduled = True
        self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_scheduled = False
        while self._heap and not self._heap[0][2].pending:
            heapq.heappop(self._heap)
        if not self._heap or self.loop is None:
            return
        if self.busy():
            self._tick_scheduled = True
            self.loop.call_soon(self._tick)
            return
        due, _, t = heapq.heappop(self._heap)
        self.now = max(self.now, due)
        t.fire()
        self._arm()

    def stop(self) -> None:
        for _, _, t in self._heap:
            t.cancel()
        self._heap.clear()
        self.loop = None


# ---- the clusters ----------------------------------------------------------------------------------


@dataclass
class _Install:
    """A Helm upgrade KKP is running: applied, now waiting for readiness (and hooks) or the timeout."""

    generation: int
    rendered: Rendered
    atomic: bool
    wait: bool
    timeout: _Timer | None = None
    hook_started: bool = False
    hook_done: bool = False


@dataclass
class SimCluster:
    """One simulated KKP user cluster: its store plus what the controllers remember about it."""

    name: str
    index: int
    store: Store
    pod_cidr: str
    node_cidr: str
    cilium_version: str
    lb_pool: list[str]
    kkp_id: str
    api_host: str
    api_port: int = 6443
    nodes: list[str] = field(default_factory=list)
    lb_never: bool = False
    certgen_delay: float = CERTGEN_DELAY
    # controller state
    current: Rendered | None = None  # what is applied right now
    deployed: Rendered | None = None  # the last release that succeeded (atomic rollbacks return here)
    release_version: int = 1
    handled_generation: int = 0
    failures: int = 0
    retries_exceeded: bool = False
    install_timer: _Timer | None = None
    job: _Install | None = None
    certgen_timer: _Timer | None = None
    agents_timer: _Timer | None = None
    agent_fingerprint: str | None = None
    timers: dict[Any, _Timer] = field(default_factory=dict)
    started_pods: set[tuple[str, str]] = field(default_factory=set)
    pod_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    managed_endpoints: set[tuple[str, str]] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)
    scheduled: bool = False
    seq: int = 0

    @property
    def line(self) -> str:
        return ".".join(self.cilium_version.split(".")[:2])


class World:
    """All simulated clusters and their controllers; the fault methods are what tests and the runner call."""

    def __init__(
        self,
        *,
        cilium_version: str = "1.13.8",
        kkp_version: str = "2.22",
        time_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.cilium_version = concrete_version(cilium_version)
        self.kkp_version = kkp_version
        self.kkp = _kkp(kkp_version)
        self.time_scale = time_scale
        self.seed = seed
        self.clusters: list[SimCluster] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clock = _Clock(time_scale, busy=lambda: any(c.scheduled for c in self.clusters))

    # ---- lifecycle -----------------------------------------------------------------------------

    def add_cluster(
        self,
        store: Store,
        *,
        index: int,
        nodes: int = 2,
        pod_cidr: str | None = None,
        cilium_version: str | None = None,
    ) -> SimCluster:
        """Bootstrap ``cluster-<index>`` into ``store`` as KKP leaves a fresh user cluster with Cilium."""
        rng = random.Random(f"{self.seed}:{index}")
        kkp_id = _rand(rng, 10, ALNUM)
        c = SimCluster(
            name=f"cluster-{index}",
            index=index,
            store=store,
            pod_cidr=pod_cidr or default_pod_cidr(index),
            node_cidr=f"10.{index}.0.0/24",
            cilium_version=concrete_version(cilium_version or self.cilium_version),
            lb_pool=lb_pool(index),
            kkp_id=kkp_id,
            api_host=f"{kkp_id}.europe-west3-c.kkp.example.com",
            rng=rng,
        )
        self.clusters.append(c)
        self._bootstrap(c, nodes)
        store.add_listener(lambda _ev, _rt, _obj, c=c: self._kick(c))
        if self.loop is not None:
            self._kick(c)
        return c

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach to the running loop; from now on controllers react to changes."""
        self.loop = loop or asyncio.get_running_loop()
        self.clock.attach(self.loop)
        for c in self.clusters:
            self._kick(c)

    def stop(self) -> None:
        """Cancel every pending timer; the stores stay as they are."""
        for c in self.clusters:
            for t in (c.install_timer, c.certgen_timer, c.agents_timer, *c.timers.values()):
                if t is not None:
                    t.cancel()
            if c.job and c.job.timeout:
                c.job.timeout.cancel()
        self.clock.stop()
        self.loop = None

    def cluster(self, ref: SimCluster | str | int) -> SimCluster:
        """A cluster by object, name (``cluster-2``) or index."""
        for c in self.clusters:
            if c is ref or c.name == ref or c.index == ref:
                return c
        raise KeyError(f"no simulated cluster {ref!r}")

    # ---- faults --------------------------------------------------------------------------------

    def set_lb_never(self, cluster: SimCluster | str | int, on: bool) -> None:
        """LoadBalancer services of this cluster never get an address (while on)."""
        c = self.cluster(cluster)
        c.lb_never = on
        if on:
            for key in [k for k in c.timers if k[0] == "lb"]:
                c.timers.pop(key).cancel()
        self._kick(c)

    def set_certgen_delay(self, cluster: SimCluster | str | int, seconds: float) -> None:
        """How long certgen takes from now on (simulated seconds)."""
        self.cluster(cluster).certgen_delay = float(seconds)

    def expire_certificates(self, cluster: SimCluster | str | int) -> None:
        """Re-issue the existing mesh leaf certs by the current CA with a validity that has already ended."""
        c = self.cluster(cluster)
        ca = self._ca_from_secret(c)
        if ca is None:
            return
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        for name in LEAF_SECRETS:
            cur = c.store.try_get(SECRETS, NS, name)
            if cur is None:
                continue
            old = _leaf_spec(c, name, self._lb_ip(c))
            kp = pki.issue(
                ca,
                old["cn"],
                dns_names=old["dns"],
                ip_addresses=old["ips"],
                server=old["server"],
                client=True,
                days=1,
                not_before=start,
            )
            self._put_tls_secret(c, name, ca, kp)

    def rotate_ca(self, cluster: SimCluster | str | int) -> None:
        """A new ``cilium-ca`` now; certgen re-issues the leaf certs by it after its delay."""
        c = self.cluster(cluster)
        ca = pki.make_ca("Cilium CA")
        self._put_secret(c, "cilium-ca", {"ca.crt": _b64(ca.cert_pem), "ca.key": _b64(ca.key_pem)}, "Opaque")
        if c.current is not None and c.current.mesh_enabled:
            self._schedule_certgen(c)

    def set_pod_cidr(self, cluster: SimCluster | str | int, cidr: str) -> None:
        """Change the cluster's pod CIDR (e.g. to make two overlap): nodes, KKP's values, workload IPs."""
        c = self.cluster(cluster)
        c.pod_cidr = str(ipaddress.ip_network(cidr, strict=False))
        for k, node in enumerate(c.nodes):
            slice_, health, host = self._node_slice(c, k)
            try:
                c.store.mutate(NODES, None, node, lambda n, s=slice_, h=health, o=host: _set_node_cidr(n, s, h, o))
            except Exception:  # noqa: BLE001 - the node may have been deleted by a test
                continue
        self._enforce_kkp_keys(c)
        for pod in c.store.list(PODS):
            if _owner_kind(pod) == "Deployment" and not _get(pod, "spec", "hostNetwork"):
                self._delete(c, PODS, pod)  # re-created with addresses from the new slices
        self._kick(c)

    # ---- bootstrap -----------------------------------------------------------------------------

    def _bootstrap(self, c: SimCluster, n_nodes: int) -> None:
        s = c.store
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            s.create(
                "v1/namespaces",
                {
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
            s.create("v1/serviceaccounts", {"metadata": {"name": "default", "namespace": ns}})
        md = f"{c.kkp_id}-worker-{_rand(c.rng, 6)}"
        ms_hash = "".join(c.rng.choice("0123456789abcdef") for _ in range(10))
        for k in range(n_nodes):
            name = f"{md}-{ms_hash}-{_rand(c.rng, 5)}"
            c.nodes.append(name)
            s.create(NODES, self._node(c, k, name))
        s.create(
            SVCS,
            {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.240.16.1",
                    "clusterIPs": ["10.240.16.1"],
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                    "sessionAffinity": "None",
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            },
        )
        s.create(
            EPS,
            {
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [
                    {
                        "addresses": [{"ip": f"198.51.100.{c.index}"}],
                        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                    }
                ],
            },
        )
        s.create(
            SVCS,
            {
                "metadata": {
                    "name": "kube-dns",
                    "namespace": NS,
                    "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.240.16.10",
                    "clusterIPs": ["10.240.16.10"],
                    "selector": {"k8s-app": "kube-dns"},
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                        {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                    ],
                    "sessionAffinity": "None",
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            },
        )
        s.create(
            DEPLOYS,
            _deployment(
                "coredns",
                NS,
                {"k8s-app": "kube-dns"},
                [
                    {
                        "name": "coredns",
                        "image": "registry.k8s.io/coredns/coredns:v1.11.1",
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                        ],
                    }
                ],
                replicas=2,
            ),
        )
        s.create(
            DEPLOYS,
            _deployment(
                "cilium-operator",
                NS,
                {"io.cilium/app": "operator", "name": "cilium-operator"},
                [
                    {
                        "name": "cilium-operator",
                        "image": f"quay.io/cilium/operator-generic:v{c.cilium_version}",
                    }
                ],
                replicas=1,
                host_network=True,
            ),
        )
        s.create(DSS, self._agent_daemonset(c))
        values = self._initial_values(c)
        rendered = chart.render(c.cilium_version, values)
        c.current = c.deployed = rendered
        s.create(
            CMS,
            {"metadata": {"name": "cilium-config", "namespace": NS}, "data": self._cilium_config(rendered)},
        )
        s.create(AI_KEY, self._initial_ai(c, values))
        c.handled_generation = 1
        for node in s.list(NODES):
            self._create_agent_pod(c, node, ready=True)
        self._reconcile_workloads(c, immediate=True)
        self._reconcile_services(c)
        self._reconcile_endpoints(c)
        self._update_daemonset_status(c)
        c.agent_fingerprint = self._agent_fingerprint(c)

    def _node_slice(self, c: SimCluster, k: int) -> tuple[str, str, str]:
        net = ipaddress.ip_network(c.pod_cidr, strict=False)
        prefix = max(24, net.prefixlen)
        subnets = net.subnets(new_prefix=prefix) if prefix > net.prefixlen else iter([net])
        slice_ = net
        for i, sub in enumerate(subnets):
            slice_ = sub
            if i == k:
                break
        hosts = list(slice_.hosts())
        r = random.Random(f"{self.seed}:{c.index}:{k}:{slice_}")
        health = str(hosts[r.randrange(2, len(hosts))]) if len(hosts) > 3 else str(hosts[-1])
        host = str(hosts[0])
        return str(slice_), health, host

    def _node(self, c: SimCluster, k: int, name: str) -> Obj:
        slice_, health, host = self._node_slice(c, k)
        ip = f"10.{c.index}.0.{k + 2}"
        node: Obj = {
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    "x-kubernetes.io/distribution": "ubuntu",
                },
                "annotations": {
                    "cluster.k8s.io/machine": f"kube-system/{name}",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"providerID": f"kubevirt://{name}"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now_rfc3339(),
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
                "capacity": {"cpu": "2", "memory": "4025836Ki", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "3923436Ki", "pods": "110"},
                "nodeInfo": {
                    # the official client (37.x) requires these three, as a kubelet always reports them
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, f"machine.{name}").hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"system.{name}")),
                    "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"boot.{name}")),
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "osImage": "Ubuntu 22.04.4 LTS",
                    "kernelVersion": "5.15.0-107-generic",
                    "kubeletVersion": "v1.29.4",
                    "kubeProxyVersion": "v1.29.4",
                    "containerRuntimeVersion": "containerd://1.7.16",
                },
            },
        }
        _set_node_cidr(node, slice_, health, host)
        return node

    def _initial_values(self, c: SimCluster) -> dict[str, Any]:
        defaults = {
            "envoy": {"enabled": False},
            "hubble": {
                "relay": {"enabled": True},
                "ui": {"enabled": True},
                "tls": {"auto": {"method": "cronJob"}},
            },
            "operator": {"replicas": 1, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        }
        return deep_merge(defaults, self._enforced(c))

    def _enforced(self, c: SimCluster) -> dict[str, Any]:
        """The keys KKP owns and overwrites on every reconcile (reference/kkp.md §2)."""
        return {
            "cni": {"exclusive": False},
            "kubeProxyReplacement": "strict" if self.kkp <= (2, 25) else "true",
            "k8sServiceHost": c.api_host,
            "k8sServicePort": c.api_port,
            "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": [c.pod_cidr], "clusterPoolIPv4MaskSize": 24}},
        }

    def _initial_ai(self, c: SimCluster, values: dict[str, Any]) -> Obj:
        spec: dict[str, Any] = {
            "applicationRef": {"name": "cilium", "version": c.cilium_version},
            "namespace": {"name": NS, "create": False},
            "deployOptions": {"helm": {"wait": True, "timeout": "10m0s", "atomic": self.kkp >= (2, 27)}},
            "reconciliationInterval": "1h0m0s",
        }
        if self.kkp >= (2, 25):
            spec["values"] = {}
            spec["valuesBlock"] = yaml.safe_dump(values, sort_keys=True)
        else:
            spec["values"] = values
        now = now_rfc3339()
        return {
            "metadata": {
                "name": "cilium",
                "namespace": NS,
                "labels": {"apps.kubermatic.k8c.io/managed-by": "kkp", "apps.kubermatic.k8c.io/type": "cni"},
                "finalizers": ["kubermatic.k8c.io/cleanup-application-installation"],
            },
            "spec": spec,
            "status": {
                "method": "helm",
                "applicationVersion": {
                    "version": c.cilium_version,
                    "template": {
                        "source": {
                            "helm": {
                                "chartName": "cilium",
                                "chartVersion": c.cilium_version,
                                "url": "oci://quay.io/kubermatic/helm-charts",
                            }
                        }
                    },
                },
                "conditions": {
                    "ManifestsRetrieved": _condition("True", "DownloadSourceSuccessful", "", 1, now),
                    "Ready": _condition("True", "InstallationSuccessful", "", 1, now),
                },
                "helmRelease": _release(1, "deployed", "Install complete", now, now),
            },
        }

    def _agent_daemonset(self, c: SimCluster) -> Obj:
        labels = {
            "k8s-app": "cilium",
            "app.kubernetes.io/name": "cilium-agent",
            "app.kubernetes.io/part-of": "cilium",
        }
        return {
            "metadata": {"name": "cilium", "namespace": NS, "labels": dict(labels)},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "cilium"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}},
                "template": {
                    "metadata": {"labels": dict(labels), "annotations": {}},
                    "spec": {
                        "hostNetwork": True,
                        "serviceAccountName": "cilium",
                        "priorityClassName": "system-node-critical",
                        "containers": [
                            {
                                "name": "cilium-agent",
                                "image": f"quay.io/cilium/cilium:v{c.cilium_version}",
                                "command": ["cilium-agent"],
                                "args": ["--config-dir=/tmp/cilium/config-map"],
                                "ports": [
                                    {
                                        "name": "health",
                                        "containerPort": 4240,
                                        "hostPort": 4240,
                                        "protocol": "TCP",
                                    }
                                ],
                                "volumeMounts": [
                                    {
                                        "name": "clustermesh-secrets",
                                        "mountPath": "/var/lib/cilium/clustermesh",
                                    }
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "clustermesh-secrets",
                                "projected": {
                                    "sources": [
                                        {"secret": {"name": MESH_SECRET, "optional": True}},
                                        {
                                            "secret": {
                                                "name": "clustermesh-apiserver-remote-cert",
                                                "optional": True,
                                            }
                                        },
                                    ]
                                },
                            }
                        ],
                    },
                },
            },
            "status": {},
        }

    # ---- reconcile plumbing --------------------------------------------------------------------

    def _kick(self, c: SimCluster) -> None:
        if self.loop is None or c.scheduled:
            return
        c.scheduled = True
        self.loop.call_soon(self._run, c)

    def _run(self, c: SimCluster) -> None:
        c.scheduled = False
        try:
            self._reconcile(c)
        except Exception:  # noqa: BLE001 - keep the loop alive; the next change retries
            log.exception("reconcile of %s failed", c.name)

    def _after(self, c: SimCluster, key: Any, delay: float, fn: Callable[[], None], *, replace: bool = False) -> None:
        """One timer per key: kept when already pending (or replaced), dropped once fired."""
        old = c.timers.get(key)
        if old is not None and old.pending:
            if not replace:
                return
            old.cancel()

        def fire() -> None:
            if c.timers.get(key) is timer:
                del c.timers[key]
            fn()
            self._kick(c)

        timer = self.clock.after(delay, fire)
        c.timers[key] = timer

    def _reconcile(self, c: SimCluster) -> None:
        self._reconcile_services(c)
        self._reconcile_kkp(c)
        self._reconcile_mesh_secret(c)
        self._reconcile_agents(c)
        self._reconcile_workloads(c)
        self._reconcile_endpoints(c)
        self._check_install(c)

    def _delete(self, c: SimCluster, key: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if c.store.try_get(key, meta.get("namespace"), meta["name"]) is not None:
            c.store.delete(key, meta.get("namespace"), meta["name"])

    # ---- KKP's application controller ----------------------------------------------------------

    def _reconcile_kkp(self, c: SimCluster) -> None:
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None or c.job is not None or (c.install_timer and c.install_timer.pending):
            return
        gen = int(ai["metadata"].get("generation", 1))
        if gen == c.handled_generation:
            return
        c.handled_generation = gen
        c.failures = 0
        c.retries_exceeded = False
        self._set_status(c, ("Unknown", "InstallationInProgress", ""), helm_status="pending-upgrade")
        c.install_timer = self.clock.after(INSTALL_DELAY, lambda: self._install(c))

    def _read_values(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The values KKP hands to Helm; ``ValueError`` with KKP's wording when they cannot be used."""
        block = spec.get("valuesBlock") or ""
        values = spec.get("values") or {}
        if isinstance(block, str) and block.strip() and values:
            raise ValueError("Only values or valuesBlock can be set, but not both simultaneously")
        if isinstance(block, str) and block.strip():
            try:
                parsed = yaml.safe_load(block)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f"line {mark.line + 1}: " if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc)
                raise ValueError(f"failed to unmarshal valuesBlock: yaml: {line}{problem}") from None
            if parsed is None:
                return {}
            if not isinstance(parsed, dict):
                raise ValueError(
                    "failed to unmarshal valuesBlock: error unmarshaling JSON: json: cannot unmarshal "
                    f"{type(parsed).__name__} into Go value of type map[string]interface {{}}"
                )
            return parsed
        if not isinstance(values, dict):
            raise ValueError("spec.values must be an object")
        return copy.deepcopy(values)

    def _install(self, c: SimCluster) -> None:
        """KKP runs ``helm upgrade``: read values, re-assert its keys, render, apply, then wait."""
        c.install_timer = None
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        spec = ai.get("spec", {})
        c.handled_generation = int(ai["metadata"].get("generation", 1))
        try:
            values = self._read_values(spec)
        except ValueError as exc:
            self._fail(c, str(exc))
            return
        merged = deep_merge(values, self._enforced(c))
        version = concrete_version(str(_get(spec, "applicationRef", "version", default=c.cilium_version)))
        try:
            rendered = chart.render(version, merged)
        except (ChartError, ValueError) as exc:
            msg = exc.message if isinstance(exc, ChartError) else str(exc)
            self._fail(c, msg)
            return
        self._write_normalised(c, merged)  # KKP's own write: sorted keys, enforced values
        ai = c.store.get(AI_KEY, NS, "cilium")
        c.handled_generation = int(ai["metadata"]["generation"])
        helm = _get(ai, "spec", "deployOptions", "helm", default={}) or {}
        atomic = bool(helm.get("atomic", False))
        wait = bool(helm.get("wait", True)) or atomic
        timeout = _duration(helm.get("timeout"), 300.0 if wait else 0.0)
        c.cilium_version = rendered.version
        self._apply(c, rendered)
        job = _Install(generation=c.handled_generation, rendered=rendered, atomic=atomic, wait=wait)
        c.job = job
        if wait:
            job.timeout = self.clock.after(timeout, lambda: self._install_timed_out(c, job))
        self._kick(c)

    def _write_normalised(self, c: SimCluster, merged: dict[str, Any]) -> None:
        def fn(ai: Obj) -> None:
            spec = ai.setdefault("spec", {})
            if self.kkp >= (2, 25):
                spec["values"] = {}
                spec["valuesBlock"] = yaml.safe_dump(merged, sort_keys=True)
            else:
                spec["values"] = merged

        c.store.mutate(AI_KEY, NS, "cilium", fn)

    def _enforce_kkp_keys(self, c: SimCluster) -> None:
        """KKP's periodic enforcement, run when the cluster's network changes (set_pod_cidr)."""
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        try:
            values = self._read_values(ai.get("spec", {}))
        except ValueError:
            return
        self._write_normalised(c, deep_merge(values, self._enforced(c)))

    def _check_install(self, c: SimCluster) -> None:
        """Helm ``--wait``: every resource ready (and the LB address); then post-upgrade hooks; then done."""
        job = c.job
        if job is None:
            return
        if job.wait and not self._release_ready(c, job.rendered):
            return
        r = job.rendered
        needs_hook = r.certgen_is_hook and r.mesh_enabled and r.tls_auto_enabled
        if needs_hook and not job.hook_done:
            if not job.hook_started:
                job.hook_started = True

                def hook_done() -> None:
                    job.hook_done = True

                self._schedule_certgen(c, then=hook_done)
            return
        self._succeed(c, job)

    def _release_ready(self, c: SimCluster, r: Rendered) -> bool:
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        if len(agents) < len(c.store.list(NODES)) or not all(_pod_ready(p) for p in agents):
            return False
        if r.mesh_enabled:
            d = c.store.try_get(DEPLOYS, NS, APISERVER)
            if d is None or int(_get(d, "status", "readyReplicas", default=0)) < max(1, r.apiserver_replicas):
                return False
            if r.service_type == "LoadBalancer" and self._lb_ip(c) is None:
                return False
        return True

    def _succeed(self, c: SimCluster, job: _Install) -> None:
        if job.timeout is not None:
            job.timeout.cancel()
        c.job = None
        c.deployed = job.rendered
        c.release_version += 1
        c.failures = 0
        self._set_status(
            c,
            ("True", "InstallationSuccessful", ""),
            helm_status="deployed",
            description="Upgrade complete",
            observed=job.generation,
        )

    def _install_timed_out(self, c: SimCluster, job: _Install) -> None:
        if c.job is not job:
            return
        c.job = None
        c.release_version += 1  # the failed revision
        if job.atomic:
            msg = (
                f"release {RELEASE} failed, and has been rolled back due to atomic being set: context deadline exceeded"
            )
            if c.deployed is not None:
                c.release_version += 1  # the rollback revision
                c.cilium_version = c.deployed.version
                self._apply(c, c.deployed, certgen=not c.deployed.certgen_is_hook)
        else:
            msg = f"failed to upgrade release {RELEASE}: context deadline exceeded"
        self._fail(c, msg, job=job)

    def _fail(self, c: SimCluster, message: str, *, job: _Install | None = None) -> None:
        """Ready=False; atomic installs count failures and retry until more than five."""
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        atomic = bool(_get(ai, "spec", "deployOptions", "helm", "atomic", default=False))
        if job is not None:  # the release was applied and then failed (and maybe rolled back)
            helm_status = "deployed" if job.atomic else "failed"
            description = f"Rollback to {c.release_version - 2}" if job.atomic else f"Upgrade failed: {message}"
        else:  # Helm never got to apply anything: the previous release stays
            helm_status = "deployed" if c.deployed is not None else "failed"
            description = ""
        if atomic:
            c.failures += 1
        if atomic and c.failures > MAX_FAILURES:
            c.retries_exceeded = True
            self._set_status(
                c,
                (
                    "False",
                    "InstallationFailedRetriesExceeded",
                    f"Max number of retries was exceeded. Last error: {message}",
                ),
                helm_status=helm_status,
                description=description,
                observed=c.handled_generation,
            )
            return
        self._set_status(
            c,
            ("False", "InstallationFailed", message),
            helm_status=helm_status,
            description=description,
            observed=c.handled_generation,
        )
        if atomic:
            c.install_timer = self.clock.after(RETRY_DELAY * c.failures, lambda: self._retry(c))

    def _retry(self, c: SimCluster) -> None:
        c.install_timer = None
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None or int(ai["metadata"].get("generation", 1)) != c.handled_generation:
            self._kick(c)  # the spec changed meanwhile: a fresh install with failures reset
            return
        self._set_status(
            c,
            ("Unknown", "InstallationInProgress", ""),
            helm_status="pending-upgrade",
            observed=c.handled_generation,
        )
        self._install(c)

    def _set_status(
        self,
        c: SimCluster,
        ready: tuple[str, str, str],
        *,
        helm_status: str | None = None,
        description: str = "",
        observed: int | None = None,
    ) -> None:
        now = now_rfc3339()

        def fn(ai: Obj) -> None:
            st = ai.setdefault("status", {})
            conds = st.setdefault("conditions", {})
            gen = int(ai["metadata"].get("generation", 1)) if observed is None else observed
            old = conds.get("Ready") or {}
            status, reason, message = ready
            cond = _condition(status, reason, message, gen, now)
            if old.get("status") == status:
                cond["lastTransitionTime"] = old.get("lastTransitionTime", now)
            conds["Ready"] = cond
            conds["ManifestsRetrieved"] = _condition("True", "DownloadSourceSuccessful", "", gen, now)
            if c.failures:
                st["failures"] = c.failures
            else:
                st.pop("failures", None)
            if helm_status is not None:
                old_rel = st.get("helmRelease") or {}
                first = _get(old_rel, "info", "firstDeployed", default=now)
                st["helmRelease"] = _release(
                    c.release_version,
                    helm_status,
                    description or old_rel.get("info", {}).get("description", ""),
                    first,
                    now,
                )
            st.setdefault("method", "helm")
            st["applicationVersion"] = {
                "version": c.cilium_version,
                "template": {
                    "source": {
                        "helm": {
                            "chartName": "cilium",
                            "chartVersion": c.cilium_version,
                            "url": "oci://quay.io/kubermatic/helm-charts",
                        }
                    }
                },
            }

        c.store.mutate(AI_KEY, NS, "cilium", fn)

    # ---- applying a rendered chart -------------------------------------------------------------

    def _apply(self, c: SimCluster, r: Rendered, *, certgen: bool = True) -> None:
        """Write what the chart renders; certgen follows later (or after the wait, as a hook)."""
        c.current = r
        s = c.store
        self._put_configmap(c, "cilium-config", self._cilium_config(r))
        aliases = [{"ip": ip, "hostnames": [f"{e.name}.mesh.cilium.io"]} for e in r.clusters for ip in e.ips]

        def ds(obj: Obj) -> None:
            tspec = obj["spec"]["template"]["spec"]
            if aliases:
                tspec["hostAliases"] = aliases
            else:
                tspec.pop("hostAliases", None)
            tspec["containers"][0]["image"] = f"quay.io/cilium/cilium:v{r.version}"

        s.mutate(DSS, NS, "cilium", ds)
        if r.mesh_enabled:
            self._apply_apiserver(c, r, aliases if (r.kvstoremesh and r.line >= "1.15") else [])
            if certgen and r.tls_auto_enabled and r.tls_method in ("helm", "cronJob") and not r.certgen_is_hook:
                self._schedule_certgen(c)
        else:
            for key, name in ((DEPLOYS, APISERVER), (SVCS, APISERVER)):
                cur = s.try_get(key, NS, name)
                if cur is not None:
                    self._delete(c, key, cur)

    def _cilium_config(self, r: Rendered) -> dict[str, str]:
        data = {
            "cluster-name": r.cluster_name,
            "cluster-id": str(r.cluster_id),
            "max-connected-clusters": str(r.max_connected_clusters),
            "kube-proxy-replacement": r.kube_proxy_replacement,
            "ipam": "cluster-pool",
            "cluster-pool-ipv4-cidr": " ".join(r.pod_cidrs),
            "cluster-pool-ipv4-mask-size": str(r.pod_mask_size),
            "identity-allocation-mode": "crd",
            "enable-ipv4": "true",
            "enable-ipv6": "false",
            "enable-health-checking": "true",
            "enable-endpoint-health-checking": "true",
            "enable-hubble": "true",
        }
        if r.line == "1.13":
            data["tunnel"] = "vxlan"
        else:
            data["routing-mode"] = "tunnel"
            data["tunnel-protocol"] = "vxlan"
        if r.config_enabled:
            data["clustermesh-config"] = "/var/lib/cilium/clustermesh/"
        return data

    def _apply_apiserver(self, c: SimCluster, r: Rendered, aliases: list[Obj]) -> None:
        image = f"quay.io/cilium/clustermesh-apiserver:v{r.version}"
        containers: list[Obj] = [
            {
                "name": "etcd",
                "image": image,
                "ports": [{"name": "etcd", "containerPort": 2379, "protocol": "TCP"}],
            },
            {"name": "apiserver", "image": image},
        ]
        if r.kvstoremesh:
            containers.append({"name": "kvstoremesh", "image": image})
        dep = _deployment(
            APISERVER,
            NS,
            {"k8s-app": APISERVER, "app.kubernetes.io/part-of": "cilium"},
            containers,
            r.apiserver_replicas,
        )
        tspec = dep["spec"]["template"]["spec"]
        tspec["volumes"] = [
            {"name": "etcd-server-secrets", "secret": {"secretName": "clustermesh-apiserver-server-cert"}},
            {"name": "etcd-admin-client", "secret": {"secretName": "clustermesh-apiserver-admin-cert"}},
        ]
        if aliases:
            tspec["hostAliases"] = aliases
        cur = c.store.try_get(DEPLOYS, NS, APISERVER)
        if cur is None:
            c.store.create(DEPLOYS, dep)
        else:

            def fn(obj: Obj) -> None:
                obj["spec"]["replicas"] = dep["spec"]["replicas"]
                obj["spec"]["template"]["spec"] = tspec

            c.store.mutate(DEPLOYS, NS, APISERVER, fn)
        port: Obj = {"name": "apiserver-port", "port": 2379, "protocol": "TCP", "targetPort": 2379}
        if r.service_type in ("NodePort", "LoadBalancer"):
            port["nodePort"] = r.node_port
        svc = c.store.try_get(SVCS, NS, APISERVER)
        if svc is None:
            c.store.create(
                SVCS,
                {
                    "metadata": {
                        "name": APISERVER,
                        "namespace": NS,
                        "labels": {"k8s-app": APISERVER, "app.kubernetes.io/part-of": "cilium"},
                        "annotations": dict(r.service_annotations),
                    },
                    "spec": {
                        "type": r.service_type,
                        "selector": {"k8s-app": APISERVER},
                        "ports": [port],
                        "sessionAffinity": "None",
                        "ipFamilies": ["IPv4"],
                        "ipFamilyPolicy": "SingleStack",
                    },
                    "status": {"loadBalancer": {}},
                },
            )
        else:

            def fn_svc(obj: Obj) -> None:
                obj["spec"]["type"] = r.service_type
                obj["spec"]["ports"] = [port]
                obj["metadata"]["annotations"] = dict(r.service_annotations)
                if r.service_type != "LoadBalancer":
                    obj["status"] = {"loadBalancer": {}}

            c.store.mutate(SVCS, NS, APISERVER, fn_svc)

    def _put_configmap(self, c: SimCluster, name: str, data: dict[str, str]) -> None:
        if c.store.try_get(CMS, NS, name) is None:
            c.store.create(CMS, {"metadata": {"name": name, "namespace": NS}, "data": data})
        else:
            c.store.mutate(CMS, NS, name, lambda o: o.__setitem__("data", data))

    def _put_secret(self, c: SimCluster, name: str, data: dict[str, str], type_: str) -> None:
        if c.store.try_get(SECRETS, NS, name) is None:
            c.store.create(
                SECRETS,
                {
                    "metadata": {
                        "name": name,
                        "namespace": NS,
                        "labels": {"app.kubernetes.io/part-of": "cilium"},
                    },
                    "type": type_,
                    "data": data,
                },
            )
        else:

            def fn(o: Obj) -> None:
                o["data"] = data
                o["type"] = type_

            c.store.mutate(SECRETS, NS, name, fn)

    # ---- certgen -------------------------------------------------------------------------------

    def _schedule_certgen(self, c: SimCluster, then: Callable[[], None] | None = None) -> None:
        if c.certgen_timer is not None and c.certgen_timer.pending and then is None:
            return
        if c.certgen_timer is not None:
            c.certgen_timer.cancel()

        def run() -> None:
            c.certgen_timer = None
            self._certgen(c)
            if then is not None:
                then()
            self._kick(c)

        c.certgen_timer = self.clock.after(c.certgen_delay, run)

    def _ca_from_secret(self, c: SimCluster) -> pki.KeyPair | None:
        sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        if sec is None:
            return None
        data = sec.get("data") or {}
        kp = pki.KeyPair(_unb64(data.get("ca.crt", "")), _unb64(data.get("ca.key", "")))
        return kp if pki.matches_key(kp.cert_pem, kp.key_pem) else None

    def _certgen(self, c: SimCluster) -> None:
        """What certgen (or the chart's ``helm`` method) does: keep or make the CA, (re-)issue leaf certs."""
        r = c.current
        if r is None or not r.mesh_enabled:
            return
        ca: pki.KeyPair | None = None
        if r.ca_cert:
            given = pki.KeyPair(_unb64(r.ca_cert), _unb64(r.ca_key))
            if pki.matches_key(given.cert_pem, given.key_pem):
                ca = given
        if ca is None:
            ca = self._ca_from_secret(c) or pki.make_ca("Cilium CA")
        ca_data = {"ca.crt": _b64(ca.cert_pem), "ca.key": _b64(ca.key_pem)}
        self._put_secret(c, "cilium-ca", ca_data, "Opaque")
        if r.ca_source == "clustermesh.apiserver.tls.ca":
            self._put_secret(c, "clustermesh-apiserver-ca-cert", ca_data, "Opaque")
        lb_ip = self._lb_ip(c)
        for name in LEAF_SECRETS:
            if name.endswith("local-cert") and not (r.kvstoremesh and r.line >= "1.16"):
                continue
            spec = _leaf_spec(c, name, lb_ip)
            cur = c.store.try_get(SECRETS, NS, name)
            if cur is not None and _leaf_ok(cur, ca, spec["ips"]):
                continue
            kp = pki.issue(ca, spec["cn"], dns_names=spec["dns"], ip_addresses=spec["ips"], server=spec["server"])
            self._put_tls_secret(c, name, ca, kp)

    def _put_tls_secret(self, c: SimCluster, name: str, ca: pki.KeyPair, kp: pki.KeyPair) -> None:
        self._put_secret(
            c,
            name,
            {"ca.crt": _b64(ca.cert_pem), "tls.crt": _b64(kp.cert_pem), "tls.key": _b64(kp.key_pem)},
            "kubernetes.io/tls",
        )

    # ---- the mesh secret and the agents --------------------------------------------------------

    def _reconcile_mesh_secret(self, c: SimCluster) -> None:
        r = c.current
        if r is None:
            return
        if not r.config_enabled:
            for name in (MESH_SECRET, KVSTOREMESH_SECRET):
                cur = c.store.try_get(SECRETS, NS, name)
                if cur is not None:
                    self._delete(c, SECRETS, cur)
            return
        ca_sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        local_ca = str(_get(ca_sec, "data", "ca.crt", default=""))
        remote = _get(c.store.try_get(SECRETS, NS, "clustermesh-apiserver-remote-cert"), "data", default={}) or {}
        data: dict[str, str] = {}
        for e in r.clusters:
            host = e.address or f"{e.name}.mesh.cilium.io"
            text = (
                f"endpoints:\n- https://{host}:{e.port}\n"
                f"trusted-ca-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client-ca.crt\n"
                f"key-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.key\n"
                f"cert-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.crt\n"
            )
            if r.line == "1.13":
                cert, key, ca = (e.cert, e.key, local_ca) if e.has_tls else ("", "", "")
            elif e.has_tls:
                cert, key, ca = e.cert, e.key, e.ca_cert or local_ca
            else:
                cert, key, ca = (
                    str(remote.get("tls.crt", "")),
                    str(remote.get("tls.key", "")),
                    e.ca_cert or local_ca,
                )
            data[e.name] = _b64(text)
            data[f"{e.name}.etcd-client.crt"] = cert
            data[f"{e.name}.etcd-client.key"] = key
            data[f"{e.name}.etcd-client-ca.crt"] = ca
        self._put_secret(c, MESH_SECRET, data, "Opaque")
        if r.kvstoremesh:
            self._put_secret(c, KVSTOREMESH_SECRET, data, "Opaque")
        else:
            cur = c.store.try_get(SECRETS, NS, KVSTOREMESH_SECRET)
            if cur is not None:
                self._delete(c, SECRETS, cur)

    def _agent_fingerprint(self, c: SimCluster) -> str:
        mesh = c.store.try_get(SECRETS, NS, MESH_SECRET)
        ds = c.store.try_get(DSS, NS, "cilium")
        cm = c.store.try_get(CMS, NS, "cilium-config")
        return _digest(
            [
                mesh.get("data") if mesh else None,
                _get(ds, "spec", "template", default={}),
                _get(cm, "data", default={}),
            ]
        )

    def _create_agent_pod(self, c: SimCluster, node: Obj, *, ready: bool) -> None:
        ds = c.store.get(DSS, NS, "cilium")
        tmpl = ds["spec"]["template"]
        name = f"cilium-{_rand(c.rng, 5)}"
        while c.store.try_get(PODS, NS, name) is not None:
            name = f"cilium-{_rand(c.rng, 5)}"
        ip = _node_ip(node)
        labels = dict(tmpl["metadata"].get("labels") or {})
        labels["controller-revision-hash"] = _hash_name(tmpl)
        labels["pod-template-generation"] = str(ds["metadata"].get("generation", 1))
        spec = copy.deepcopy(tmpl["spec"])
        spec["nodeName"] = node["metadata"]["name"]
        pod: Obj = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": labels,
                "annotations": dict(tmpl["metadata"].get("annotations") or {}),
                "ownerReferences": [_owner("DaemonSet", ds)],
            },
            "spec": spec,
            "status": _pod_status(spec, ip, ip, ready=ready, restarts=0),
        }
        c.store.create(PODS, pod)
        c.pod_seq[(NS, name)] = c.seq = c.seq + 1

    def _reconcile_agents(self, c: SimCluster) -> None:
        ds = c.store.try_get(DSS, NS, "cilium")
        if ds is None:
            return
        nodes = {n["metadata"]["name"]: n for n in c.store.list(NODES)}
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        seen: set[str] = set()
        for p in agents:
            node = p["spec"].get("nodeName")
            if node not in nodes or node in seen:
                self._delete(c, PODS, p)
            else:
                seen.add(node)
        missing = [n for name, n in nodes.items() if name not in seen]
        for node in missing:
            self._create_agent_pod(c, node, ready=False)
        fp = self._agent_fingerprint(c)
        if fp != c.agent_fingerprint:
            c.agent_fingerprint = fp
            self._restart_agents(c, ds)
        elif missing:
            self._schedule_agents_ready(c)
        self._update_daemonset_status(c)

    def _restart_agents(self, c: SimCluster, ds: Obj) -> None:
        """Agents pick up the new mesh configuration by restarting: not ready for ~20 s."""
        tmpl = ds["spec"]["template"]
        now = now_rfc3339()
        for p in c.store.list(PODS, NS):
            if _owner_kind(p) != "DaemonSet":
                continue

            def fn(pod: Obj) -> None:
                spec = copy.deepcopy(tmpl["spec"])
                spec["nodeName"] = pod["spec"].get("nodeName")
                pod["spec"] = spec
                pod["metadata"]["labels"]["controller-revision-hash"] = _hash_name(tmpl)
                st = pod.setdefault("status", {})
                _set_ready(st, False, now)
                for cs in st.get("containerStatuses", []):
                    cs["lastState"] = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
                    cs["restartCount"] = int(cs.get("restartCount", 0)) + 1
                    cs["ready"] = False
                    cs["state"] = {"running": {"startedAt": now}}
                    cs["image"] = tmpl["spec"]["containers"][0]["image"]

            c.store.mutate(PODS, NS, p["metadata"]["name"], fn)
        self._schedule_agents_ready(c)

    def _schedule_agents_ready(self, c: SimCluster) -> None:
        def ready() -> None:
            now = now_rfc3339()
            for p in c.store.list(PODS, NS):
                if _owner_kind(p) == "DaemonSet" and not _pod_ready(p):
                    c.store.mutate(PODS, NS, p["metadata"]["name"], lambda pod: _mark_running(pod, now))

        self._after(c, ("agents-ready",), AGENT_RESTART, ready, replace=True)

    def _update_daemonset_status(self, c: SimCluster) -> None:
        ds = c.store.try_get(DSS, NS, "cilium")
        if ds is None:
            return
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        want = len(c.store.list(NODES))
        ready = sum(1 for p in agents if _pod_ready(p))
        hash_ = _hash_name(ds["spec"]["template"])
        updated = sum(1 for p in agents if p["metadata"]["labels"].get("controller-revision-hash") == hash_)
        status = {
            "currentNumberScheduled": len(agents),
            "desiredNumberScheduled": want,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if want - ready:
            status["numberUnavailable"] = want - ready
        c.store.mutate(DSS, NS, "cilium", lambda o: o.__setitem__("status", status))

    # ---- Deployments → pods ---------------------------------------------------------------------

    def _gate(self, c: SimCluster, deploy: Obj) -> str | None:
        """Why a pod of this Deployment cannot start yet (None: it can)."""
        if deploy["metadata"]["name"] == APISERVER and deploy["metadata"].get("namespace") == NS:
            for name in ("clustermesh-apiserver-admin-cert", "clustermesh-apiserver-server-cert"):
                if c.store.try_get(SECRETS, NS, name) is None:
                    volume = "etcd-admin-client" if "admin" in name else "etcd-server-secrets"
                    return f'MountVolume.SetUp failed for volume "{volume}" : secret "{name}" not found'
        return None

    def _reconcile_workloads(self, c: SimCluster, *, immediate: bool = False) -> None:
        deploys = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in c.store.list(DEPLOYS)}
        by_owner: dict[tuple[str, str], list[Obj]] = {}
        for p in c.store.list(PODS):
            if _owner_kind(p) != "Deployment":
                continue
            key = (p["metadata"]["namespace"], p["metadata"]["ownerReferences"][0]["name"])
            if key not in deploys:
                self._delete(c, PODS, p)  # garbage collection
                continue
            by_owner.setdefault(key, []).append(p)
        nodes = c.store.list(NODES)
        for key, d in deploys.items():
            self._reconcile_deployment(c, d, by_owner.get(key, []), nodes, immediate)

    def _reconcile_deployment(self, c: SimCluster, d: Obj, pods: list[Obj], nodes: list[Obj], immediate: bool) -> None:
        ns = d["metadata"]["namespace"]
        replicas = int(_get(d, "spec", "replicas", default=1))
        tmpl = _get(d, "spec", "template", default={}) or {}
        hash_ = _hash_name(tmpl)
        live = []
        for p in pods:
            if p["metadata"].get("labels", {}).get("pod-template-hash") != hash_:
                self._delete(c, PODS, p)  # a new template replaces the old pods
            else:
                live.append(p)
        live.sort(key=lambda p: c.pod_seq.get((ns, p["metadata"]["name"]), 0))
        while len(live) > replicas:
            victim = live.pop()  # newest first
            self._delete(c, PODS, victim)
        gate = self._gate(c, d)
        host_network = bool(_get(tmpl, "spec", "hostNetwork", default=False))
        for _ in range(len(live), replicas):
            if not nodes:
                break
            load = {n["metadata"]["name"]: 0 for n in nodes}
            for p in live:
                if p["spec"].get("nodeName") in load:
                    load[p["spec"]["nodeName"]] += 1
            node = min(nodes, key=lambda n: load[n["metadata"]["name"]])  # spread round-robin
            live.append(self._create_pod(c, d, hash_, node, ready=immediate and gate is None))
        now = now_rfc3339()
        for p in live:
            pname = p["metadata"]["name"]
            if _pod_ready(p) or (ns, pname) not in c.started_pods:
                continue
            node = next((n for n in nodes if n["metadata"]["name"] == p["spec"].get("nodeName")), None)
            if node is None:
                continue
            if gate is not None:
                c.store.mutate(PODS, ns, pname, lambda pod, g=gate: _set_waiting(pod, g))
                continue
            ip = _node_ip(node) if host_network else (p["status"].get("podIP") or self._alloc_ip(c, node))
            c.store.mutate(PODS, ns, pname, lambda pod, ip=ip, node=node: _start_pod(pod, ip, _node_ip(node), now))
        self._update_deployment_status(c, d, hash_)

    def _create_pod(self, c: SimCluster, d: Obj, hash_: str, node: Obj, *, ready: bool) -> Obj:
        ns, dname = d["metadata"]["namespace"], d["metadata"]["name"]
        tmpl = _get(d, "spec", "template", default={}) or {}
        name = f"{dname}-{hash_}-{_rand(c.rng, 5)}"
        while c.store.try_get(PODS, ns, name) is not None:
            name = f"{dname}-{hash_}-{_rand(c.rng, 5)}"
        labels = dict(_get(tmpl, "metadata", "labels", default={}) or {})
        labels["pod-template-hash"] = hash_
        spec = copy.deepcopy(tmpl.get("spec") or {})
        spec["nodeName"] = node["metadata"]["name"]
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("restartPolicy", "Always")
        host_ip = _node_ip(node)
        if ready:
            ip = host_ip if spec.get("hostNetwork") else self._alloc_ip(c, node)
            status = _pod_status(spec, ip, host_ip, ready=True, restarts=0)
        else:
            status = {
                "phase": "Pending",
                "hostIP": host_ip,
                "qosClass": "BestEffort",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
            }
        pod: Obj = {
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": dict(_get(tmpl, "metadata", "annotations", default={}) or {}),
                "ownerReferences": [_owner("Deployment", d)],
            },
            "spec": spec,
            "status": status,
        }
        c.seq += 1
        c.pod_seq[(ns, name)] = c.seq
        created = c.store.create(PODS, pod, ns)
        if not ready:
            key = (ns, name)
            self._after(c, ("pod-start", ns, name), POD_START, lambda: c.started_pods.add(key))
        return created

    def _alloc_ip(self, c: SimCluster, node: Obj) -> str:
        cidr = _get(node, "spec", "podCIDR")
        if not cidr:
            return _node_ip(node)
        net = ipaddress.ip_network(cidr, strict=False)
        ann = node["metadata"].get("annotations") or {}
        used = {ann.get("network.cilium.io/ipv4-health-ip"), ann.get("network.cilium.io/ipv4-cilium-host")}
        used |= {p["status"].get("podIP") for p in c.store.list(PODS) if p.get("status")}
        hosts = list(net.hosts())
        for _ in range(64):
            cand = str(hosts[c.rng.randrange(1, len(hosts))])
            if cand not in used:
                return cand
        for h in hosts[1:]:
            if str(h) not in used:
                return str(h)
        return str(hosts[-1])

    def _update_deployment_status(self, c: SimCluster, d: Obj, hash_: str) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        pods = [
            p
            for p in c.store.list(PODS, ns)
            if _owner_kind(p) == "Deployment" and p["metadata"]["ownerReferences"][0]["name"] == name
        ]
        replicas = int(_get(d, "spec", "replicas", default=1))
        ready = sum(1 for p in pods if _pod_ready(p))
        updated = sum(1 for p in pods if p["metadata"]["labels"].get("pod-template-hash") == hash_)
        available = ready >= replicas

        def fn(obj: Obj) -> None:
            old = obj.get("status") or {}
            old_conds = {cd["type"]: cd for cd in old.get("conditions", [])}
            now = now_rfc3339()

            def cond(type_: str, ok: bool, reason: str, message: str) -> Obj:
                prev = old_conds.get(type_)
                status = "True" if ok else "False"
                if prev and prev.get("status") == status and prev.get("reason") == reason:
                    return prev
                return {
                    "type": type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }

            st: Obj = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": len(pods),
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    cond(
                        "Available",
                        available,
                        "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                        "Deployment has minimum availability."
                        if available
                        else "Deployment does not have minimum availability.",
                    ),
                    cond(
                        "Progressing",
                        True,
                        "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                        f'ReplicaSet "{name}-{hash_}" has successfully progressed.'
                        if available
                        else f'ReplicaSet "{name}-{hash_}" is progressing.',
                    ),
                ],
            }
            if len(pods) - ready > 0:
                st["unavailableReplicas"] = len(pods) - ready
            obj["status"] = st

        c.store.mutate(DEPLOYS, ns, name, fn)

    # ---- Services: IPs, node ports, LoadBalancer ---------------------------------------------

    def _reconcile_services(self, c: SimCluster) -> None:
        svcs = c.store.list(SVCS)
        used_ips = {s["spec"].get("clusterIP") for s in svcs}
        used_ports = {p.get("nodePort") for s in svcs for p in s["spec"].get("ports", [])}
        lb_used = {ing.get("ip") for s in svcs for ing in _get(s, "status", "loadBalancer", "ingress", default=[])}
        for s in svcs:
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            spec = s["spec"]
            type_ = spec.get("type") or "ClusterIP"
            patch: dict[str, Any] = {}
            if type_ != "ExternalName" and not spec.get("clusterIP"):
                ip = _alloc_cluster_ip(f"{ns}/{name}", used_ips)
                used_ips.add(ip)
                patch["clusterIP"] = ip
            ports = copy.deepcopy(spec.get("ports") or [])
            if type_ in ("NodePort", "LoadBalancer"):
                for p in ports:
                    if not p.get("nodePort"):
                        p["nodePort"] = _alloc_node_port(f"{ns}/{name}/{p.get('port')}", used_ports)
                        used_ports.add(p["nodePort"])
            for p in ports:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            if ports != (spec.get("ports") or []):
                patch["ports"] = ports
            if patch:

                def fn(obj: Obj, patch: dict[str, Any] = patch) -> None:
                    obj["spec"].update(patch)
                    if "clusterIP" in patch:
                        obj["spec"]["clusterIPs"] = [patch["clusterIP"]]
                    obj["spec"].setdefault("type", "ClusterIP")
                    obj.setdefault("status", {"loadBalancer": {}})

                c.store.mutate(SVCS, ns, name, fn)
            ingress = _get(s, "status", "loadBalancer", "ingress", default=[])
            has_free = any(ip not in lb_used for ip in c.lb_pool)
            if type_ == "LoadBalancer" and not ingress and not c.lb_never and has_free:
                self._after(c, ("lb", ns, name), LB_DELAY, lambda ns=ns, name=name: self._assign_lb(c, ns, name))
            elif type_ != "LoadBalancer" and ingress:
                c.store.mutate(SVCS, ns, name, lambda o: o.__setitem__("status", {"loadBalancer": {}}))

    def _assign_lb(self, c: SimCluster, ns: str, name: str) -> None:
        if c.lb_never:
            return
        svc = c.store.try_get(SVCS, ns, name)
        if svc is None or svc["spec"].get("type") != "LoadBalancer":
            return
        if _get(svc, "status", "loadBalancer", "ingress"):
            return
        used = {
            ing.get("ip")
            for s in c.store.list(SVCS)
            for ing in _get(s, "status", "loadBalancer", "ingress", default=[])
        }
        free = [ip for ip in c.lb_pool if ip not in used]
        if not free:
            return
        ip = free[0]
        c.store.mutate(
            SVCS,
            ns,
            name,
            lambda o: o.__setitem__("status", {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}),
        )

    def _lb_ip(self, c: SimCluster) -> str | None:
        svc = c.store.try_get(SVCS, NS, APISERVER)
        ingress = _get(svc, "status", "loadBalancer", "ingress", default=[]) if svc else []
        return ingress[0].get("ip") if ingress else None

    # ---- Endpoints and EndpointSlices -----------------------------------------------------------

    def _reconcile_endpoints(self, c: SimCluster) -> None:
        svcs = c.store.list(SVCS)
        pods = c.store.list(PODS)
        wanted: set[tuple[str, str]] = set()
        for s in svcs:
            sel = s["spec"].get("selector")
            if not sel:
                continue
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            wanted.add((ns, name))
            matching = [
                p
                for p in pods
                if p["metadata"]["namespace"] == ns
                and all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
                and p.get("status", {}).get("podIP")
            ]
            self._write_endpoints(c, s, matching)
        for ns, name in sorted(c.managed_endpoints - wanted):
            for key in (EPS, SLICES):
                for obj in c.store.list(key, ns):
                    owner = obj["metadata"].get("labels", {}).get("kubernetes.io/service-name")
                    if (key == EPS and obj["metadata"]["name"] == name) or (key == SLICES and owner == name):
                        self._delete(c, key, obj)
            c.managed_endpoints.discard((ns, name))

    def _write_endpoints(self, c: SimCluster, svc: Obj, pods: list[Obj]) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        c.managed_endpoints.add((ns, name))
        subsets: dict[str, Obj] = {}
        slice_endpoints: list[Obj] = []
        slice_ports: list[Obj] = []
        for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
            ports = [
                {
                    "name": sp.get("name", ""),
                    "port": _resolve_port(sp, p),
                    "protocol": sp.get("protocol", "TCP"),
                }
                for sp in svc["spec"].get("ports", [])
            ]
            ports = [{k: v for k, v in pt.items() if v != "" or k != "name"} for pt in ports]
            ready = _pod_ready(p)
            addr = {
                "ip": p["status"]["podIP"],
                "nodeName": p["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": p["metadata"]["name"],
                    "uid": p["metadata"]["uid"],
                },
            }
            sub = subsets.setdefault(json.dumps(ports, sort_keys=True), {"ports": ports})
            sub.setdefault("addresses" if ready else "notReadyAddresses", []).append(addr)
            slice_ports = ports
            slice_endpoints.append(
                {
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "nodeName": p["spec"].get("nodeName"),
                    "targetRef": addr["targetRef"],
                }
            )
        labels = dict(svc["metadata"].get("labels") or {})
        ep: Obj = {
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "subsets": list(subsets.values()),
        }
        cur = c.store.try_get(EPS, ns, name)
        if cur is None:
            c.store.create(EPS, ep)
        else:

            def fn(o: Obj) -> None:
                o["subsets"] = ep["subsets"]
                o["metadata"]["labels"] = labels

            c.store.mutate(EPS, ns, name, fn)
        slice_name = f"{name}-{_hash_name([ns, name], 5)}"
        slice_labels = dict(labels)
        slice_labels["kubernetes.io/service-name"] = name
        slice_labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
        body = {
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports or [],
        }
        if c.store.try_get(SLICES, ns, slice_name) is None:
            c.store.create(SLICES, {"metadata": {"name": slice_name, "namespace": ns, "labels": slice_labels}, **body})
        else:

            def fn2(o: Obj) -> None:
                o.update(body)
                o["metadata"]["labels"] = slice_labels

            c.store.mutate(SLICES, ns, slice_name, fn2)


# ---- object helpers ----------------------------------------------------------------------------


def _condition(status: str, reason: str, message: str, gen: int, now: str) -> Obj:
    return {
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
        "observedGeneration": gen,
    }


def _release(version: int, status: str, description: str, first: str, last: str) -> Obj:
    return {
        "name": RELEASE,
        "version": version,
        "info": {"status": status, "description": description, "firstDeployed": first, "lastDeployed": last},
    }


def _deployment(
    name: str,
    ns: str,
    labels: dict[str, str],
    containers: list[Obj],
    replicas: int,
    host_network: bool = False,
) -> Obj:
    spec: Obj = {"containers": containers}
    if host_network:
        spec["hostNetwork"] = True
    return {
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": dict(labels)}, "spec": spec},
        },
        "status": {},
    }


def _owner(kind: str, obj: Obj) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"].get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owner_kind(pod: Obj) -> str | None:
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    return refs[0].get("kind") if refs else None


def _node_ip(node: Obj) -> str:
    for a in _get(node, "status", "addresses", default=[]):
        if a.get("type") == "InternalIP":
            return str(a["address"])
    return ""


def _set_node_cidr(node: Obj, slice_: str, health: str, host: str) -> None:
    node.setdefault("spec", {})["podCIDR"] = slice_
    node["spec"]["podCIDRs"] = [slice_]
    ann = node.setdefault("metadata", {}).setdefault("annotations", {})
    ann["network.cilium.io/ipv4-pod-cidr"] = slice_
    ann["network.cilium.io/ipv4-health-ip"] = health
    ann["network.cilium.io/ipv4-cilium-host"] = host


def _pod_ready(pod: Obj) -> bool:
    for cond in _get(pod, "status", "conditions", default=[]):
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _pod_status(spec: Obj, ip: str, host_ip: str, *, ready: bool, restarts: int) -> Obj:
    now = now_rfc3339()
    st: Obj = {"phase": "Running", "qosClass": "BestEffort"}
    st["hostIP"] = host_ip
    st["hostIPs"] = [{"ip": host_ip}]
    st["podIP"] = ip
    st["podIPs"] = [{"ip": ip}]
    st["startTime"] = now
    st["containerStatuses"] = [
        {
            "name": ct["name"],
            "image": ct.get("image", ""),
            "imageID": f"{ct.get('image', '')}@sha256:{_digest(ct.get('image', ''))}",
            "containerID": f"containerd://{hashlib.sha256((ct['name'] + ip + now).encode()).hexdigest()}",
            "ready": ready,
            "started": True,
            "restartCount": restarts,
            "state": {"running": {"startedAt": now}},
        }
        for ct in spec.get("containers", [])
    ]
    st["conditions"] = []
    _set_ready(st, ready, now)
    return st


def _set_ready(st: Obj, ready: bool, now: str) -> None:
    value = "True" if ready else "False"
    conds = {c["type"]: c for c in st.get("conditions", [])}
    out = []
    for type_ in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"):
        want = value if type_ in ("Ready", "ContainersReady") else "True"
        prev = conds.get(type_)
        if prev and prev.get("status") == want:
            out.append(prev)
        else:
            cond = {"type": type_, "status": want, "lastTransitionTime": now}
            if want == "False":
                cond["reason"] = "ContainersNotReady"
            out.append(cond)
    st["conditions"] = out


def _mark_running(pod: Obj, now: str) -> None:
    st = pod.setdefault("status", {})
    _set_ready(st, True, now)
    for cs in st.get("containerStatuses", []):
        cs["ready"] = True
        cs["started"] = True


def _start_pod(pod: Obj, ip: str, host_ip: str, now: str) -> None:
    old = pod.get("status") or {}
    restarts = 0
    pod["status"] = _pod_status(pod["spec"], ip, host_ip, ready=True, restarts=restarts)
    pod["status"]["startTime"] = old.get("startTime", now)


def _set_waiting(pod: Obj, message: str) -> None:
    st = pod.setdefault("status", {})
    st["phase"] = "Pending"
    st["containerStatuses"] = [
        {
            "name": ct["name"],
            "image": ct.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating", "message": message}},
        }
        for ct in pod["spec"].get("containers", [])
    ]
    conds = [c for c in st.get("conditions", []) if c.get("type") == "PodScheduled"]
    conds.append({"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": message})
    st["conditions"] = conds


def _resolve_port(svc_port: Obj, pod: Obj) -> int:
    """``targetPort`` as number, or by name against the pod's container ports; default: ``port``."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for ct in pod["spec"].get("containers", []):
        for cp in ct.get("ports", []):
            if cp.get("name") == target and cp.get("protocol", "TCP") == svc_port.get("protocol", "TCP"):
                return int(cp["containerPort"])
    return int(svc_port.get("port", 0))


def _alloc_cluster_ip(key: str, used: set[Any]) -> str:
    size = SERVICE_CIDR.num_addresses
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % (size - 2) + 1
    for i in range(size - 2):
        off = (start + i - 1) % (size - 2) + 1
        if off in (1, 10):
            continue
        ip = str(SERVICE_CIDR.network_address + off)
        if ip not in used:
            return ip
    raise RuntimeError("service CIDR exhausted")


def _alloc_node_port(key: str, used: set[Any]) -> int:
    span = 32767 - 30000 + 1
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % span
    for i in range(span):
        port = 30000 + (start + i) % span
        if port != 32379 and port not in used:
            return port
    raise RuntimeError("node ports exhausted")


def _leaf_spec(c: SimCluster, name: str, lb_ip: str | None) -> dict[str, Any]:
    """Common name, SANs and usage of each certgen leaf certificate."""
    cluster_name = c.current.cluster_name if c.current else "default"
    if name.endswith("server-cert"):
        ips = ("127.0.0.1", lb_ip) if lb_ip else ("127.0.0.1",)
        dns = ("clustermesh-apiserver.cilium.io", "*.mesh.cilium.io", "clustermesh-apiserver.kube-system.svc")
        return {"cn": "clustermesh-apiserver.cilium.io", "dns": dns, "ips": ips, "server": True}
    if name.endswith("admin-cert"):
        cn = "root" if c.line == "1.13" else f"admin-{cluster_name}"
        return {"cn": cn, "dns": ("localhost",), "ips": (), "server": False}
    if name.endswith("remote-cert"):
        return {"cn": "remote", "dns": (), "ips": (), "server": False}
    return {"cn": f"local-{cluster_name}", "dns": (), "ips": (), "server": False}


def _issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """``pki.issued_by`` that also survives its bad-signature path (it names ``x509.InvalidSignature``)."""
    try:
        return pki.issued_by(cert_pem, ca_pem)
    except AttributeError:
        return False


def _leaf_ok(secret: Obj, ca: pki.KeyPair, need_ips: tuple[str, ...]) -> bool:
    """Certgen keeps a leaf that is valid, issued by the CA in use and covers the wanted addresses."""
    data = secret.get("data") or {}
    cert = _unb64(data.get("tls.crt", ""))
    if not (_issued_by(cert, ca.cert_pem) and pki.valid_now(cert)):
        return False
    if _unb64(data.get("ca.crt", "")) != ca.cert_pem:
        return False
    if need_ips:
        try:
            san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
            have = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
        except Exception:  # noqa: BLE001
            return False
        if not set(need_ips) <= have:
            return False
    return True
