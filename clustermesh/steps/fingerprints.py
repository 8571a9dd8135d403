"""Fingerprints of the cluster objects a step reads: equal fingerprints mean a cached answer still holds.

Built from resourceVersions (which change on every write to an object, status included) and never
from content, so no secret material goes into a cache key.
"""

from __future__ import annotations

import hashlib
from typing import Any

from clustermesh.cilium.profiles import profile_for
from clustermesh.kube import ClusterClient
from clustermesh.kube.policies import list_network_policies
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, SERVICE


def _rv(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion", "absent"))


def _namespaced_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def prerequisite_state(client: ClusterClient) -> str:
    """The ApplicationInstallation, the node list and the network policies, as step 1 reads them."""
    ai = client.get_application_installation()
    nodes = sorted(f"{n['metadata']['name']}@{_rv(n)}" for n in client.list_nodes())
    policies = sorted(f"{p['kind']}/{_namespaced_name(p)}@{_rv(p)}" for p in list_network_policies(client))
    digest = hashlib.sha256("\n".join(policies).encode()).hexdigest()[:16]
    return f"ai={_rv(ai)};nodes={','.join(nodes)};policies={digest}"


def endpoint_state(client: ClusterClient, cilium_version: str) -> str:
    """The Service and Secrets steps 3 and 5 read (a rotated CA or re-issued cert changes this)."""
    parts = [f"svc={_rv(client.get_service(NAMESPACE, SERVICE))}"]
    for name in (REMOTE_CERT, *profile_for(cilium_version).ca_secret_names):
        parts.append(f"{name}={_rv(client.get_secret(NAMESPACE, name))}")
    return ";".join(parts)
