"""The network policies of a cluster, every namespace: Cilium's two kinds and Kubernetes' own.

What ``cilium clustermesh inspect-policy-default-local-cluster -A`` reads. A kind the cluster does not
serve (its CRD is absent: 404) has no policies. Uses the client's request plumbing (``_call``: errors
translated, reads retried) from inside the kube room; :class:`~clustermesh.kube.client.ClusterClient` is
at its size limit, so the reads live here.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from clustermesh.errors import NotFoundError
from clustermesh.kube.client import ClusterClient
from clustermesh.kube.objects import items

__all__ = ["CILIUM_POLICY_KINDS", "list_network_policies"]

CILIUM_GROUP = "cilium.io"
CILIUM_VERSION = "v2"
CILIUM_POLICY_KINDS = (
    ("ciliumnetworkpolicies", "CiliumNetworkPolicy"),
    ("ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy"),
)


def list_network_policies(client: ClusterClient) -> list[dict[str, Any]]:
    """Every CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy, each with kind and apiVersion."""
    found: list[dict[str, Any]] = []
    for plural, kind in CILIUM_POLICY_KINDS:
        found += _listed(
            client,
            plural,
            kind,
            f"{CILIUM_GROUP}/{CILIUM_VERSION}",
            client._custom.list_cluster_custom_object,  # noqa: SLF001 - the kube room's own plumbing
            CILIUM_GROUP,
            CILIUM_VERSION,
            plural,
        )
    networking = k8s.NetworkingV1Api(client._api)  # noqa: SLF001
    found += _listed(
        client,
        "networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
        networking.list_network_policy_for_all_namespaces,
    )
    return found


def _listed(
    client: ClusterClient, plural: str, kind: str, api_version: str, method: Any, *args: Any
) -> list[dict[str, Any]]:
    try:
        answer = client._call("list", f"{plural} (all namespaces)", method, *args)  # noqa: SLF001
    except NotFoundError:
        return []  # the kind is not served here (Cilium's CRDs absent): no policies of it
    return items(answer, kind, api_version)
