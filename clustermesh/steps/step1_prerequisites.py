"""The guide's step 1: clusters with Cilium, eBPF proxy mode and pod CIDRs that do not overlap.

Read-only. Everything that would make a later write wrong is refused here, before anything is written:
a missing or failing ``cilium`` ApplicationInstallation, kube-proxy replacement off, pod CIDRs that
differ from the spec or overlap another cluster's, a cluster already named or numbered differently.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from clustermesh.cilium.policies import SETTING_PATH, local_only_policies, local_only_warning
from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.errors import NotFoundError, PrerequisiteError
from clustermesh.kube import ClusterClient
from clustermesh.kube.policies import list_network_policies
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.membership import managed_peers
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step2_4_6_mesh_values import failing_values_are_ours
from clustermesh.values import configured_peers, read_values, value_at

KPR_ON = ("true", "strict")


def check_prerequisites(
    client: ClusterClient,
    cluster: ClusterSpec,
    spec: MeshSpec,
    *,
    load_secret: Callable[[str], str] | None = None,
) -> ClusterFacts:
    """Facts about one cluster, or a :class:`PrerequisiteError` that says what to fix.

    For a KKP reference the KKP Cluster object is checked first (:func:`check_kkp_cluster`):
    ``load_secret`` resolves a token kept in a Prefect Secret block.
    """
    if cluster.kkp is not None:
        check_kkp_prerequisites(cluster, load_secret=load_secret, request_timeout=spec.timeouts.api)
    kubernetes_version = client.version()
    ai = _cilium_installation(client, cluster.name)
    values, field = read_values(ai)
    detected = str(((ai.get("spec") or {}).get("applicationRef") or {}).get("version") or "")
    if not detected:
        raise PrerequisiteError(
            cluster.name,
            "ApplicationInstallation kube-system/cilium has no spec.applicationRef.version",
            fix="set cilium.version in the spec to the Cilium version this cluster runs",
        )
    version = spec.cilium.version or detected
    profile = profile_for(version)
    spec.cilium.resolve(profile)  # settings this line cannot honour fail here, before any write
    kpr = _kube_proxy_replacement(cluster.name, values)
    nodes = client.list_nodes()
    pod_cidrs = _checked_pod_cidrs(cluster, values, nodes)
    current_name, current_id = _current_identity(cluster, values)
    return ClusterFacts(
        name=cluster.name,
        id=cluster.id,
        kubernetes_version=kubernetes_version,
        cilium_version=version,
        detected_cilium_version=detected,
        profile_line=profile.line,
        values_field=field,
        kube_proxy_replacement=kpr,
        pod_cidrs=pod_cidrs,
        nodes=len(nodes),
        current_cluster_name=current_name,
        current_cluster_id=current_id,
        mesh_enabled=bool(_mapping(values, "clustermesh").get("useAPIServer")),
        peers_configured=_configured_peers(values),
        managed_peers=managed_peers(ai, values),
        local_only_policies=_local_only_policies(client, profile, values),
    )


def policy_default_local_cluster(profile: CiliumProfile, values: dict[str, Any]) -> bool:
    """Whether a peer without a cluster selector matches local endpoints only: the line's default
    (``true`` from 1.19), unless the values set ``clustermesh.policyDefaultLocalCluster`` themselves."""
    if not profile.policy_default_local_cluster:
        return False  # before 1.19 the key does not exist: peers match every cluster
    found, setting = value_at(values, SETTING_PATH)
    if not found or setting is None:
        return True
    return str(setting).strip().lower() not in ("false", "0", "no", "off")


def _local_only_policies(client: ClusterClient, profile: CiliumProfile, values: dict[str, Any]) -> list[str]:
    """The policies whose meaning the setting changes (what ``inspect-policy-default-local-cluster`` lists)."""
    if not policy_default_local_cluster(profile, values):
        return []
    return [p.describe() for p in local_only_policies(list_network_policies(client))]


def policy_warnings(facts: Sequence[ClusterFacts]) -> list[str]:
    """Step 1's warning per cluster with policies that match only local endpoints (1.19+), with the fix."""
    out = []
    for found in facts:
        if found.local_only_policies:
            reason, fix = local_only_warning(found.name, found.cilium_version, found.local_only_policies)
            out.append(f"{reason}. Fix: {fix}")
    return out


def _cilium_installation(client: ClusterClient, name: str) -> dict[str, Any]:
    """The ``cilium`` ApplicationInstallation, refused when missing or failing (unless KKP gave up on our values)."""
    try:
        ai = client.get_application_installation()
    except NotFoundError:
        raise PrerequisiteError(
            name,
            "no ApplicationInstallation kube-system/cilium: Cilium is not installed as KKP's system application",
            fix="create the KKP user cluster with CNI cilium (1.13 or newer); older Cilium was an Addon",
        ) from None
    _refuse_failing_install(name, ai)
    return ai


def _kube_proxy_replacement(name: str, values: dict[str, Any]) -> str:
    kpr = str(values.get("kubeProxyReplacement", "")).lower()
    if kpr not in KPR_ON:
        raise PrerequisiteError(
            name,
            f"kube-proxy replacement is off (kubeProxyReplacement: {values.get('kubeProxyReplacement')!r}): "
            "the cluster was not created with proxy mode ebpf",
            fix="create the cluster with spec.clusterNetwork.proxyMode: ebpf (immutable after creation)",
        )
    return kpr


def _checked_pod_cidrs(cluster: ClusterSpec, values: dict[str, Any], nodes: list[dict[str, Any]]) -> list[str]:
    pod_cidrs = _pod_cidrs(values, nodes)
    if not pod_cidrs:
        raise PrerequisiteError(
            cluster.name,
            "no pod CIDR found (ipam.operator.clusterPoolIPv4PodCIDRList in the values, spec.podCIDR on nodes)",
            fix="check the cluster's spec.clusterNetwork.pods.cidrBlocks in KKP",
        )
    for expected in cluster.pod_cidrs:
        if not any(ipaddress.ip_network(c, strict=False) == expected for c in pod_cidrs):
            raise PrerequisiteError(
                cluster.name,
                f"pod CIDRs are {', '.join(pod_cidrs)}, the spec expects {expected}",
                fix="correct clusters[].pod_cidrs in the spec, or point the entry at the right cluster",
            )
    return pod_cidrs


def _current_identity(cluster: ClusterSpec, values: dict[str, Any]) -> tuple[str | None, int | None]:
    """(cluster.name, cluster.id) already in the values; refused when they differ from the spec's."""
    cluster_values = _mapping(values, "cluster")
    current_name = cluster_values.get("name")
    current_id = cluster_values.get("id")
    if current_name not in (None, "", "default", cluster.name):
        raise PrerequisiteError(
            cluster.name,
            f"Cilium already calls this cluster {current_name!r} (cluster.name), the spec says {cluster.name!r}",
            fix="use the existing name in the spec; renaming a meshed cluster means restarting every workload",
        )
    if current_id not in (None, 0, cluster.id):
        raise PrerequisiteError(
            cluster.name,
            f"Cilium already uses cluster.id {current_id} here, the spec says {cluster.id}",
            fix=f"use id {current_id} for {cluster.name} in the spec (changing it live restarts workloads)",
        )
    return (
        current_name if isinstance(current_name, str) else None,
        current_id if isinstance(current_id, int) else None,
    )


def _mapping(values: dict[str, Any], key: str) -> dict[str, Any]:
    node = values.get(key)
    return node if isinstance(node, dict) else {}


def _configured_peers(values: dict[str, Any]) -> list[str]:
    return configured_peers(values)  # list or (1.19+) map form; ``enabled: false`` entries are not peers


def check_mesh_prerequisites(facts: Sequence[ClusterFacts]) -> list[str]:
    """Cross-cluster rules: pod CIDRs must not overlap (refused); version skew (returned as warnings)."""
    for a, b in itertools.combinations(facts, 2):
        for ca, cb in itertools.product(a.pod_cidrs, b.pod_cidrs):
            if ipaddress.ip_network(ca, strict=False).overlaps(ipaddress.ip_network(cb, strict=False)):
                raise PrerequisiteError(
                    b.name,
                    f"pod CIDR {cb} overlaps {ca} of {a.name}: Cluster Mesh needs non-overlapping pod CIDRs",
                    fix="pod CIDRs are immutable in KKP: create one of the clusters anew with another "
                    "spec.clusterNetwork.pods.cidrBlocks (e.g. 172.27.0.0/16)",
                )
    warnings = []
    minors = sorted({int(f.profile_line.split(".")[1]) for f in facts})
    if minors and minors[-1] - minors[0] > 1:
        warnings.append(
            f"Cilium lines differ by more than one minor ({', '.join(f'1.{m}' for m in minors)}): "
            "Cluster Mesh is supported between adjacent minors only; upgrade the older clusters"
        )
    return warnings


def _refuse_failing_install(name: str, ai: dict[str, Any]) -> None:
    if failing_values_are_ours(ai):
        return  # KKP gave up on the values this pipeline wrote: the write steps ask it to try again
    conditions = (ai.get("status") or {}).get("conditions") or {}
    ready = conditions.get("Ready") if isinstance(conditions, dict) else None
    if isinstance(ready, dict) and ready.get("status") == "False":
        raise PrerequisiteError(
            name,
            f"ApplicationInstallation kube-system/cilium is failing ({ready.get('reason')}): "
            f"{str(ready.get('message', ''))[:300]}",
            fix="repair the Cilium installation first (KKP UI → Applications); nothing is written on top of it",
        )


def _pod_cidrs(values: dict[str, Any], nodes: list[dict[str, Any]]) -> list[str]:
    ipam = values.get("ipam") if isinstance(values.get("ipam"), dict) else {}
    assert isinstance(ipam, dict)
    operator = ipam.get("operator") if isinstance(ipam.get("operator"), dict) else {}
    assert isinstance(operator, dict)
    found = operator.get("clusterPoolIPv4PodCIDRList") or operator.get("clusterPoolIPv4PodCIDR") or []
    if isinstance(found, str):
        found = [found]
    cidrs = [str(c) for c in found]
    if cidrs:
        return cidrs
    node_cidrs = {str((n.get("spec") or {}).get("podCIDR")) for n in nodes if (n.get("spec") or {}).get("podCIDR")}
    return sorted(node_cidrs)


def check_kkp_prerequisites(
    cluster: ClusterSpec, *, load_secret: Callable[[str], str] | None = None, request_timeout: float = 30.0
) -> None:
    """Step 1 on the KKP side: read the cluster's KKP object and refuse what Cluster Mesh cannot use."""
    from clustermesh.kkp import api as kkp

    with kkp.client_for(cluster, load_secret=load_secret, timeout=request_timeout) as api:
        found = kkp.find_cluster(api, cluster)
    check_kkp_cluster(cluster, found)


def check_kkp_cluster(cluster: ClusterSpec, found: Any) -> None:
    """The KKP Cluster object (a ``clustermesh.kkp.api.KkpCluster``): Cilium ≥1.13, ebpf, the expected pod CIDRs.

    What the user cluster shows can lag or hide these (e.g. kube-proxy replacement is read from values
    KKP may rewrite); the KKP object is where they are decided, and they are immutable there.
    """
    from clustermesh.kkp.clusters import cluster_problems

    problems = cluster_problems(found, cluster)
    if problems:
        raise PrerequisiteError(
            cluster.name,
            f"KKP cluster {found.id}: " + "; ".join(problems),
            fix="these settings cannot be changed after creation: create a new cluster "
            "(`clustermesh clusters create` picks Cilium, ebpf and a free pod CIDR)",
        )
