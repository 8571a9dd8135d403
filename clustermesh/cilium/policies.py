"""Which network policies change meaning under ``clustermesh.policyDefaultLocalCluster: true`` (Cilium 1.19+).

From 1.19 the chart's default is ``true``: a peer selector without a cluster selector matches endpoints
of the local cluster only, where it used to match every cluster of the mesh. This module is the rule,
pure (objects in, names and reasons out); :mod:`clustermesh.kube.policies` lists the objects and step 1
(:mod:`clustermesh.steps.step1_prerequisites`) decides whether the setting is in effect.

The rule is the one ``cilium clustermesh inspect-policy-default-local-cluster`` applies (cilium-cli,
``PolicyDefaultLocalClusterInspect``): it parses each policy once for "any cluster" and once for a named
cluster and reports the policies whose parsed rules differ. Parsing for a named cluster
(``pkg/k8s/apis/cilium.io/utils``: ``addClusterFilterByDefault``, ``getEndpointSelector``;
``pkg/k8s/network_policy.go``: ``parseNetworkPolicyPeer``) adds ``io.cilium.k8s.policy.cluster=<name>``
to exactly these selectors, so a policy changes meaning when one of them lacks a cluster selector:

- CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy, in ``spec`` and every ``specs[]`` rule:
  ``ingress[]``/``ingressDeny[]`` → ``fromEndpoints[]`` and ``fromNodes[]``; ``egress[]``/``egressDeny[]`` →
  ``toEndpoints[]`` and ``toNodes[]``. A selector has a cluster selector when a ``matchLabels`` key or a
  ``matchExpressions[].key`` is ``io.cilium.k8s.policy.cluster`` with no source or the source ``k8s:`` or
  ``any:`` (any operator, even ``Exists``). An endpoint selector with a ``reserved:`` key (``reserved:host``,
  also written ``$host``) is left alone by Cilium; node selectors have no such exception. An empty selector
  (``{}``) changes meaning: it selected every cluster's endpoints.
- Kubernetes NetworkPolicy: ``ingress[].from[]`` and ``egress[].to[]`` peers other than ``ipBlock``; the
  peer's ``podSelector`` (absent counts as empty) has a cluster selector when ``matchLabels`` holds
  ``io.cilium.k8s.policy.cluster`` with a non-empty value or a ``matchExpressions[].key`` is that key
  (no source prefixes: Kubernetes keys).
- Not affected: the policy's own ``endpointSelector``/``nodeSelector`` and ``podSelector`` (they select
  local endpoints anyway), ``fromEntities``/``toEntities``, CIDRs, ``toServices``, ``toFQDNs``, ``ipBlock``,
  and an empty ``ingress``/``from`` list (no peers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLUSTER_LABEL",
    "LISTED",
    "SETTING_PATH",
    "LocalOnlyPolicy",
    "local_only_policies",
    "local_only_warning",
    "peers_without_cluster",
]

CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
SETTING_PATH = ("clustermesh", "policyDefaultLocalCluster")
LISTED = 5
"""How many policies a warning names; the rest are counted."""

_CLUSTER_KEYS = {CLUSTER_LABEL, f"k8s:{CLUSTER_LABEL}", f"any:{CLUSTER_LABEL}"}
_CILIUM_SECTIONS = (
    ("ingress", ("fromEndpoints", "fromNodes")),
    ("ingressDeny", ("fromEndpoints", "fromNodes")),
    ("egress", ("toEndpoints", "toNodes")),
    ("egressDeny", ("toEndpoints", "toNodes")),
)


@dataclass(frozen=True)
class LocalOnlyPolicy:
    """A policy with peers that match only local endpoints once the setting is on, and where they are."""

    kind: str
    namespace: str
    name: str
    peers: tuple[str, ...]
    """Paths of the peer selectors without a cluster selector (``ingress[0].fromEndpoints[1]``)."""

    @property
    def ref(self) -> str:
        """``CiliumNetworkPolicy team-a/allow-db``; a clusterwide policy has no namespace."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"

    def describe(self) -> str:
        """The reference and the first peers that lose remote clusters."""
        shown = ", ".join(self.peers[:2]) + (f" and {len(self.peers) - 2} more" if len(self.peers) > 2 else "")
        return f"{self.ref} ({shown} without a cluster selector)"


def peers_without_cluster(policy: Mapping[str, Any]) -> list[str]:
    """Paths of the peer selectors in ``policy`` that Cilium limits to the local cluster by default."""
    if policy.get("kind") == "NetworkPolicy":
        return _network_policy_peers(_mapping(policy.get("spec")))
    found: list[str] = []
    if isinstance(policy.get("spec"), Mapping):
        found += _cilium_rule_peers(policy["spec"], "")
    specs = policy.get("specs")
    for i, rule in enumerate(specs if isinstance(specs, list) else []):
        found += _cilium_rule_peers(_mapping(rule), f"specs[{i}].")
    return found


def local_only_policies(policies: Iterable[Mapping[str, Any]]) -> list[LocalOnlyPolicy]:
    """The policies that change meaning, sorted by kind, namespace and name."""
    out = []
    for policy in policies:
        peers = peers_without_cluster(policy)
        if peers:
            meta = _mapping(policy.get("metadata"))
            out.append(
                LocalOnlyPolicy(
                    kind=str(policy.get("kind", "")),
                    namespace=str(meta.get("namespace") or ""),
                    name=str(meta.get("name", "")),
                    peers=tuple(peers),
                )
            )
    return sorted(out, key=lambda p: (p.kind, p.namespace, p.name))


def local_only_warning(cluster: str, version: str, described: Sequence[str]) -> tuple[str, str]:
    """(reason, fix) of the warning about ``described`` policies (:meth:`LocalOnlyPolicy.describe` texts)."""
    listed = "; ".join(described[:LISTED])
    more = f"; and {len(described) - LISTED} more" if len(described) > LISTED else ""
    reason = (
        f"Cilium {version} in {cluster} has clustermesh.policyDefaultLocalCluster on (the 1.19+ default): "
        f"{len(described)} network "
        f"{'policy matches' if len(described) == 1 else 'policies match'} only local endpoints where "
        f"{'it' if len(described) == 1 else 'they'} matched every cluster before: {listed}{more}"
    )
    fix = (
        f"where remote peers are meant, add a cluster selector ({CLUSTER_LABEL}: <cluster>, or the key with "
        "operator Exists for any cluster) to those peers; or keep the old meaning with "
        "clustermesh.policyDefaultLocalCluster: false in the cluster's Cilium values"
    )
    return reason, fix


# ---- Cilium policies --------------------------------------------------------------------------------


def _cilium_rule_peers(rule: Mapping[str, Any], prefix: str) -> list[str]:
    found = []
    for section, fields in _CILIUM_SECTIONS:
        entries = rule.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            for field in fields:
                selectors = _mapping(entry).get(field)
                for j, selector in enumerate(selectors if isinstance(selectors, list) else []):
                    keys = _cilium_keys(_mapping(selector))
                    exempt = field.endswith("Endpoints") and any(k.startswith("reserved:") for k in keys)
                    if not exempt and not keys & _CLUSTER_KEYS:
                        found.append(f"{prefix}{section}[{i}].{field}[{j}]")
    return found


def _cilium_keys(selector: Mapping[str, Any]) -> set[str]:
    """The selector's keys as Cilium reads them: ``$host`` is ``reserved:host``, a bare key is ``any:<key>``."""
    keys = [str(k) for k in _mapping(selector.get("matchLabels"))]
    expressions = selector.get("matchExpressions")
    keys += [str(_mapping(e).get("key", "")) for e in (expressions if isinstance(expressions, list) else [])]
    out = set()
    for key in keys:
        if key.startswith("$"):
            out.add(f"reserved:{key[1:]}")
        elif ":" in key:
            out.add(key)
        else:
            out.add(f"any:{key}")
    return out


# ---- Kubernetes NetworkPolicy -----------------------------------------------------------------------


def _network_policy_peers(spec: Mapping[str, Any]) -> list[str]:
    found = []
    for section, field in (("ingress", "from"), ("egress", "to")):
        entries = spec.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            peers = _mapping(entry).get(field)
            for j, peer in enumerate(peers if isinstance(peers, list) else []):
                peer = _mapping(peer)
                if peer.get("ipBlock") is None and not _pod_selector_names_cluster(_mapping(peer.get("podSelector"))):
                    found.append(f"{section}[{i}].{field}[{j}]")
    return found


def _pod_selector_names_cluster(selector: Mapping[str, Any]) -> bool:
    if _mapping(selector.get("matchLabels")).get(CLUSTER_LABEL):
        return True
    expressions = selector.get("matchExpressions")
    return any(_mapping(e).get("key") == CLUSTER_LABEL for e in (expressions if isinstance(expressions, list) else []))


def _mapping(node: Any) -> Mapping[str, Any]:
    return node if isinstance(node, Mapping) else {}
