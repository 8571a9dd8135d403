"""Step 1 for real: the mesh's KKP user clusters, created where missing, with settings fixed for good.

Pod and service CIDRs and the proxy mode cannot be changed after creation (reference/kkp.md §3), so
everything is decided before the first POST: which clusters exist (by ID, else by name), whether
those have what Cluster Mesh needs (Cilium, ``proxyMode: ebpf``, pod CIDRs that overlap no other
cluster of the mesh), and which pod CIDR each new cluster gets (its ``pod_cidrs``, else the first
free entry of ``kkp.pod_cidr_pool``). A wrong existing cluster is reported, never modified; a pool
too small fails before anything is created. Creating again creates nothing.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium.profiles import parse_cilium_version
from clustermesh.errors import SpecError, SpecProblem, WaitTimeoutError
from clustermesh.kkp.api import (
    REQUIRED_HEALTH,
    KkpApiError,
    KkpClient,
    KkpCluster,
    KkpImmutableSettingsError,
    KkpPoolExhaustedError,
    SecretLoader,
    client_for,
    find_cluster,
    health_problems,
    lookup_by_name,
)
from clustermesh.spec import ClusterSpec, KkpSettings, MeshSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
INITIAL_CNI_VALUES = "kubermatic.io/initial-cni-values-request"
MIN_CILIUM = (1, 13)

__all__ = [
    "ClusterPlan",
    "CreatePlan",
    "CreateResult",
    "KkpClients",
    "cluster_problems",
    "create_cluster",
    "create_request",
    "plan_clusters",
    "plan_user_clusters",
    "wait_until_healthy",
]


class ClusterPlan(BaseModel):
    """What happens to one mesh cluster: reused as it is, or created with this pod CIDR."""

    model_config = ConfigDict(frozen=True)

    name: str
    action: Literal["create", "reuse", "not-kkp"]
    cluster_id: str | None = None
    pod_cidr: str | None = None

    def describe(self) -> str:
        if self.action == "create":
            return f"{self.name}: create with pod CIDR {self.pod_cidr}"
        if self.action == "reuse":
            return f"{self.name}: exists ({self.cluster_id}, pods {self.pod_cidr}), reused"
        return f"{self.name}: referenced by kubeconfig, not managed through KKP"


class CreatePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    mesh: str
    clusters: list[ClusterPlan]

    @property
    def to_create(self) -> list[ClusterPlan]:
        return [c for c in self.clusters if c.action == "create"]

    def describe(self) -> str:
        head = f"mesh {self.mesh}: {len(self.to_create)} of {len(self.clusters)} clusters to create"
        return "\n".join([head, *(f"  {c.describe()}" for c in self.clusters)])


class CreateResult(BaseModel):
    """What ``create_user_clusters`` did: every mesh cluster with its KKP ID, and which ones are new."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    clusters: list[ClusterPlan]
    created: list[str]

    def describe(self) -> str:
        lines = [
            f"mesh {self.mesh}: created {len(self.created)} cluster(s)"
            + (f" ({', '.join(self.created)})" if self.created else ": every cluster already existed")
        ]
        for c in self.clusters:
            state = "created" if c.name in self.created else ("exists" if c.action != "not-kkp" else "kubeconfig")
            extra = f" {c.cluster_id}" if c.cluster_id else ""
            lines.append(f"  {c.name}:{extra} {state}, pods {c.pod_cidr or '-'}")
        return "\n".join(lines)


class KkpClients:
    """One client per (API, project, token reference, CA) the spec uses; closed together."""

    def __init__(self, *, load_secret: SecretLoader | None = None, timeout: float = 30.0) -> None:
        self._load_secret = load_secret
        self._timeout = timeout
        self._clients: dict[tuple[Any, ...], KkpClient] = {}
        self._listings: dict[tuple[Any, ...], list[KkpCluster]] = {}
        self._stack = ExitStack()

    @staticmethod
    def _key(cluster: ClusterSpec) -> tuple[Any, ...]:
        ref = cluster.kkp
        assert ref is not None
        return (ref.api_url, ref.project, ref.token_block, ref.token_env, ref.ca_file)

    def client(self, cluster: ClusterSpec) -> KkpClient:
        key = self._key(cluster)
        if key not in self._clients:
            api = client_for(cluster, load_secret=self._load_secret, timeout=self._timeout)
            self._clients[key] = self._stack.enter_context(api)
        return self._clients[key]

    def listing(self, cluster: ClusterSpec) -> list[KkpCluster]:
        key = self._key(cluster)
        if key not in self._listings:
            self._listings[key] = self.client(cluster).list_clusters()
        return self._listings[key]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> KkpClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def kkp_clients(*, load_secret: SecretLoader | None = None, timeout: float = 30.0) -> Iterator[KkpClients]:
    with KkpClients(load_secret=load_secret, timeout=timeout) as clients:
        yield clients


def existing_cluster(clients: KkpClients, cluster: ClusterSpec) -> KkpCluster | None:
    """The KKP cluster of an entry, or None when it has to be created (no ID given, no such name)."""
    ref = cluster.kkp
    assert ref is not None
    api = clients.client(cluster)
    if ref.cluster_id is not None:
        return find_cluster(api, cluster)  # an ID that does not exist is an error, not a "create"
    return lookup_by_name(api, cluster.name, listing=clients.listing(cluster))


def plan_user_clusters(
    spec: MeshSpec, *, load_secret: SecretLoader | None = None, timeout: float | None = None
) -> CreatePlan:
    """Read KKP (existing clusters by ID or name) and plan: nothing is written."""
    with kkp_clients(load_secret=load_secret, timeout=timeout or spec.timeouts.api) as kkp:
        found = {c.name: existing_cluster(kkp, c) for c in spec.clusters if c.kkp is not None}
    return plan_clusters(spec, found)


def cluster_problems(found: KkpCluster, cluster: ClusterSpec) -> list[str]:
    """Settings of an existing cluster that rule it out for the mesh (each immutable after creation)."""
    problems: list[str] = []
    if found.cni_type != "cilium":
        problems.append(f"CNI is {found.cni_type or 'unset'!r}, Cluster Mesh needs cilium (spec.cniPlugin.type)")
    elif _cilium_too_old(found.cni_version):
        problems.append(
            f"Cilium {found.cni_version or '?'} is older than 1.13 (an Addon, not a system application); "
            "upgrade it in KKP one minor at a time"
        )
    if found.proxy_mode != "ebpf":
        problems.append(f"proxy mode is {found.proxy_mode!r}, Cluster Mesh needs ebpf (spec.clusterNetwork.proxyMode)")
    if found.konnectivity is False:
        problems.append("Konnectivity is off; proxy mode ebpf needs spec.clusterNetwork.konnectivityEnabled: true")
    v4 = [c for c in found.pod_cidrs if ":" not in c]
    if not v4:
        problems.append("no IPv4 pod CIDR (spec.clusterNetwork.pods.cidrBlocks)")
    for expected in cluster.pod_cidrs:
        if not any(_net(c) == expected for c in found.pod_cidrs):
            problems.append(f"pod CIDRs are {', '.join(found.pod_cidrs) or 'none'}, the spec expects {expected}")
    return problems


def _cilium_too_old(version: str) -> bool:
    try:
        parsed = parse_cilium_version(version)
    except Exception:  # noqa: BLE001 - any unreadable version is reported as too old/unknown
        return True
    return (parsed.major, parsed.minor) < MIN_CILIUM


def _net(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


Used = list[tuple[str, Network]]
"""Pod CIDRs already taken in the mesh, with the cluster that holds each."""


def _overlapping(net: Network, used: Used) -> tuple[str, Network] | None:
    return next(((name, other) for name, other in used if other.version == net.version and other.overlaps(net)), None)


def plan_clusters(spec: MeshSpec, found: dict[str, KkpCluster | None]) -> CreatePlan:
    """Decide everything before anything is written; raise on wrong existing clusters or a short pool.

    ``found`` maps each KKP-referenced cluster name to its existing KKP cluster (None = missing).
    """
    used: Used = []
    plans = _plan_existing(spec, found, used)
    missing = [c for c in spec.clusters if c.kkp is not None and found.get(c.name) is None]
    if missing and spec.kkp is None:
        raise SpecError(
            [
                SpecProblem(
                    "kkp",
                    f"{len(missing)} cluster(s) do not exist yet ({', '.join(c.name for c in missing)}) and the "
                    "spec has no kkp settings to create them with",
                    "nothing",
                    "add kkp: {datacenter: ..., kubernetes_version: ...} (and provider/preset) to the spec",
                )
            ]
        )
    # the clusters' own pod_cidrs first (they are fixed), then the pool for the rest
    for cluster in missing:
        if cluster.pod_cidrs:
            plans[cluster.name] = _plan_with_own_cidrs(spec, cluster, used)
    pool_needed = [c for c in missing if not c.pod_cidrs]
    if pool_needed:
        assert spec.kkp is not None
        plans.update(_plan_from_pool(spec.kkp, pool_needed, used))
    return CreatePlan(mesh=spec.name, clusters=[plans[c.name] for c in spec.clusters])


def _plan_existing(spec: MeshSpec, found: dict[str, KkpCluster | None], used: Used) -> dict[str, ClusterPlan]:
    """Clusters that exist (or are not KKP's): reused as they are, refused when they cannot join."""
    wrong: list[str] = []
    plans: dict[str, ClusterPlan] = {}
    for cluster in spec.clusters:
        if cluster.kkp is None:
            used.extend((cluster.name, c) for c in cluster.pod_cidrs)
            plans[cluster.name] = ClusterPlan(name=cluster.name, action="not-kkp")
            continue
        existing = found.get(cluster.name)
        if existing is None:
            continue
        problems = cluster_problems(existing, cluster)
        for text in existing.pod_cidrs:
            net = _net(text)
            clash = _overlapping(net, used)
            if clash is not None:
                problems.append(f"pod CIDR {text} overlaps {clash[1]} of {clash[0]}")
            used.append((cluster.name, net))
        if problems:
            wrong.append(f"{cluster.name} ({existing.id}): " + "; ".join(problems))
        v4 = next((c for c in existing.pod_cidrs if ":" not in c), None)
        plans[cluster.name] = ClusterPlan(name=cluster.name, action="reuse", cluster_id=existing.id, pod_cidr=v4)
    if wrong:
        project = next((c.kkp.project for c in spec.clusters if c.kkp is not None), "?")
        raise KkpImmutableSettingsError(
            project,
            None,
            "existing clusters cannot join the mesh as they are: " + " | ".join(wrong),
            fix="these settings cannot be changed after creation: create a new cluster (remove cluster_id / "
            "rename the entry so `clusters create` makes one), and delete the old one in KKP if unused",
        )
    return plans


def _plan_with_own_cidrs(spec: MeshSpec, cluster: ClusterSpec, used: Used) -> ClusterPlan:
    """A missing cluster whose pod CIDRs the spec fixes: one IPv4 (plus at most one IPv6), free in the mesh."""
    own_v4 = [c for c in cluster.pod_cidrs if c.version == 4]
    if len(own_v4) != 1 or len(cluster.pod_cidrs) > 2:
        raise SpecError(
            [
                SpecProblem(
                    f"clusters[{spec.clusters.index(cluster)}].pod_cidrs",
                    "KKP takes one IPv4 pod CIDR (plus at most one IPv6)",
                    ", ".join(str(c) for c in cluster.pod_cidrs),
                    "give exactly one IPv4 network, e.g. 172.27.0.0/16",
                )
            ]
        )
    for net in cluster.pod_cidrs:
        clash = _overlapping(net, used)
        if clash is not None:
            assert cluster.kkp is not None
            raise KkpImmutableSettingsError(
                cluster.kkp.project,
                cluster.name,
                f"pod CIDR {net} of the new cluster overlaps {clash[1]} of {clash[0]}",
                fix="give clusters[].pod_cidrs a range no other cluster of the mesh uses "
                "(pod CIDRs cannot be changed after creation)",
            )
        used.append((cluster.name, net))
    return ClusterPlan(name=cluster.name, action="create", pod_cidr=str(own_v4[0]))


def _plan_from_pool(settings: KkpSettings, pool_needed: list[ClusterSpec], used: Used) -> dict[str, ClusterPlan]:
    """Missing clusters without pod CIDRs of their own take the pool's free entries, in spec order."""
    free = [p for p in settings.pod_cidr_pool if not any(o.overlaps(p) for _, o in used if o.version == 4)]
    if len(free) < len(pool_needed):
        first = pool_needed[0].kkp
        assert first is not None
        raise KkpPoolExhaustedError(
            first.project,
            None,
            f"kkp.pod_cidr_pool has {len(free)} free entr{'y' if len(free) == 1 else 'ies'} "
            f"({', '.join(str(f) for f in free) or 'none'}) for {len(pool_needed)} new cluster(s) "
            f"({', '.join(c.name for c in pool_needed)}); the others overlap clusters of the mesh",
        )
    plans = {}
    for cluster, net in zip(pool_needed, free, strict=False):
        used.append((cluster.name, net))
        plans[cluster.name] = ClusterPlan(name=cluster.name, action="create", pod_cidr=str(net))
    return plans


def create_request(cluster: ClusterSpec, settings: KkpSettings, pod_cidr: str) -> dict[str, Any]:
    """The ``CreateClusterSpec`` body (reference/kkp.md §5): Cilium, ebpf with Konnectivity, the pod CIDR."""
    pods = [pod_cidr] + [str(c) for c in cluster.pod_cidrs if c.version == 6]
    body: dict[str, Any] = {
        "cluster": {
            "name": cluster.name,
            "annotations": {
                # Helm values for the cilium AI's first install: name and id without a later upgrade
                INITIAL_CNI_VALUES: json.dumps(
                    {"cluster": {"id": cluster.id, "name": cluster.name}}, separators=(",", ":")
                ),
            },
            "spec": {
                "version": settings.kubernetes_version,
                "cloud": {"dc": settings.datacenter, settings.provider: {}},
                "cniPlugin": {"type": "cilium", "version": settings.cilium_version},
                "clusterNetwork": {
                    "ipFamily": "IPv4+IPv6" if len(pods) > 1 else "IPv4",
                    "proxyMode": "ebpf",
                    "konnectivityEnabled": True,
                    "pods": {"cidrBlocks": pods},
                    "services": {"cidrBlocks": [str(settings.services_cidr)]},
                },
            },
        },
        "applications": [],
    }
    if settings.preset is not None:
        body["cluster"]["credential"] = settings.preset
    return body


def create_cluster(api: KkpClient, cluster: ClusterSpec, settings: KkpSettings, pod_cidr: str) -> KkpCluster:
    """POST one cluster; what KKP returns is checked like an existing one (it must hold what we asked)."""
    created = api.create_cluster(create_request(cluster, settings, pod_cidr))
    problems = cluster_problems(created, cluster)
    if pod_cidr not in created.pod_cidrs:
        problems.append(f"KKP gave pod CIDRs {', '.join(created.pod_cidrs)} instead of {pod_cidr}")
    if problems:
        raise KkpImmutableSettingsError(api.project, created.id or cluster.name, "; ".join(problems))
    return created


def wait_until_healthy(
    api: KkpClient,
    cluster_name: str,
    cluster_id: str,
    *,
    timeout: float,
    poll_interval: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, str]:
    """Poll ``…/health`` until every required component is up (the API Cluster has no phase, §5)."""
    deadline = clock() + timeout
    last = "no answer yet"
    while True:
        try:
            health = api.health(cluster_id)
            problems = health_problems(health)
            if not problems:
                return health
            last = ", ".join(problems)
        except KkpApiError as exc:
            if exc.status not in (None, 429) and (exc.status or 0) < 500:
                raise
            last = str(exc)
        if clock() >= deadline:
            raise WaitTimeoutError(
                cluster_name,
                f"KKP cluster {cluster_id} healthy (HealthStatusUp for {', '.join(REQUIRED_HEALTH)})",
                last,
                timeout=timeout,
                check="the cluster's page in the KKP dashboard (events, control plane pods in the seed)",
            )
        sleep(poll_interval)
