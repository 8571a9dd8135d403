"""Which network policies change meaning under ``clustermesh.policyDefaultLocalCluster`` (Cilium 1.19+).

The rule is cilium-cli's ``inspect-policy-default-local-cluster`` (see :mod:`clustermesh.cilium.policies`):
peer selectors (``from/toEndpoints``, ``from/toNodes``; Kubernetes ``from``/``to`` peers) without a
cluster selector change meaning; the policy's own selector, entities, CIDRs and services do not.
"""

from __future__ import annotations

from typing import Any

import pytest

from clustermesh.checks import Finding, policy_findings
from clustermesh.cilium.policies import (
    CLUSTER_LABEL,
    LISTED,
    local_only_policies,
    local_only_warning,
    peers_without_cluster,
)
from clustermesh.cilium.profiles import profile_for
from clustermesh.drill import drill_manifests
from clustermesh.drill.manifests import NAMESPACE_GLOBAL_ANNOTATION
from clustermesh.spec import DrillSettings
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step1_prerequisites import policy_default_local_cluster, policy_warnings


def cnp(spec: dict[str, Any] | None = None, *, specs: list[dict[str, Any]] | None = None, name: str = "p") -> dict:
    policy: dict[str, Any] = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "team-a"},
    }
    if spec is not None:
        policy["spec"] = spec
    if specs is not None:
        policy["specs"] = specs
    return policy


def ingress_from(*selectors: dict[str, Any], field: str = "fromEndpoints") -> dict[str, Any]:
    return {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{field: list(selectors)}]}


def netpol(*peers: dict[str, Any], section: str = "ingress") -> dict[str, Any]:
    field = "from" if section == "ingress" else "to"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "team-a"},
        "spec": {"podSelector": {}, section: [{field: list(peers)}]},
    }


# ---- Cilium policies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [
        {"matchLabels": {"app": "frontend"}},
        {},
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "team-b"}},
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
        {"matchLabels": {f"cni:{CLUSTER_LABEL}": "c1"}},  # another source is not a cluster selector
        {"matchLabels": {"cluster": "c1"}},
    ],
    ids=["labels", "empty", "namespace-only", "expression", "other-source", "lookalike-key"],
)
def test_peer_without_cluster_selector_changes_meaning(selector: dict[str, Any]) -> None:
    assert peers_without_cluster(cnp(ingress_from(selector))) == ["ingress[0].fromEndpoints[0]"]


@pytest.mark.parametrize(
    "selector",
    [
        {"matchLabels": {"app": "frontend", CLUSTER_LABEL: "cluster-2"}},
        {"matchLabels": {f"k8s:{CLUSTER_LABEL}": "cluster-2"}},
        {"matchLabels": {f"any:{CLUSTER_LABEL}": "cluster-2"}},
        {"matchExpressions": [{"key": CLUSTER_LABEL, "operator": "Exists"}]},
        {"matchExpressions": [{"key": f"k8s:{CLUSTER_LABEL}", "operator": "In", "values": ["c1", "c2"]}]},
        {"matchLabels": {"reserved:host": ""}},
        {"matchLabels": {"$host": ""}},
    ],
    ids=["bare-key", "k8s-source", "any-source", "exists", "expression-in", "reserved", "reserved-short"],
)
def test_cluster_selector_or_reserved_label_keeps_meaning(selector: dict[str, Any]) -> None:
    assert peers_without_cluster(cnp(ingress_from(selector))) == []


def test_node_peers_have_no_reserved_exception() -> None:
    policy = cnp(
        {
            "nodeSelector": {},
            "ingress": [{"fromNodes": [{"matchLabels": {"reserved:host": ""}}]}],
            "egress": [{"toNodes": [{"matchLabels": {CLUSTER_LABEL: "c1"}}, {}]}],
        }
    )
    assert peers_without_cluster(policy) == ["ingress[0].fromNodes[0]", "egress[0].toNodes[1]"]


def test_every_peer_section_and_rule_is_read() -> None:
    peer = {"matchLabels": {"app": "x"}}
    rule = {
        "endpointSelector": {},
        "ingress": [{"fromEndpoints": [peer]}],
        "ingressDeny": [{"fromEndpoints": [peer]}],
        "egress": [{"toEndpoints": [{"matchLabels": {CLUSTER_LABEL: "c1"}}, peer]}],
        "egressDeny": [{"toEndpoints": [peer]}],
    }
    assert peers_without_cluster(cnp(rule, specs=[{"endpointSelector": {}, "egress": [{"toEndpoints": [peer]}]}])) == [
        "ingress[0].fromEndpoints[0]",
        "ingressDeny[0].fromEndpoints[0]",
        "egress[0].toEndpoints[1]",
        "egressDeny[0].toEndpoints[0]",
        "specs[0].egress[0].toEndpoints[0]",
    ]


def test_what_carries_no_peer_selector_keeps_meaning() -> None:
    policy = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},  # the policy's own selector: local anyway
            "ingress": [
                {"fromEntities": ["cluster", "world"]},
                {"fromCIDR": ["10.0.0.0/8"], "fromCIDRSet": [{"cidr": "192.168.0.0/16"}]},
                {"fromEndpoints": []},
                {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
            ],
            "egress": [
                {"toServices": [{"k8sService": {"serviceName": "db", "namespace": "x"}}]},
                {"toFQDNs": [{"matchName": "example.com"}]},
                {"toEntities": ["remote-node"]},
            ],
        }
    )
    assert peers_without_cluster(policy) == []


def test_clusterwide_policy_follows_the_same_rule() -> None:
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "allow-dns"},
        "spec": {"endpointSelector": {}, "egress": [{"toEndpoints": [{"matchLabels": {"k8s-app": "kube-dns"}}]}]},
    }
    [found] = local_only_policies([policy])
    assert found.ref == "CiliumClusterwideNetworkPolicy allow-dns"
    assert (
        found.describe()
        == "CiliumClusterwideNetworkPolicy allow-dns (egress[0].toEndpoints[0] without a cluster selector)"
    )


def test_malformed_policies_do_not_break_the_rule() -> None:
    assert peers_without_cluster({"kind": "CiliumNetworkPolicy"}) == []
    assert peers_without_cluster(cnp({"ingress": "nonsense"})) == []
    assert peers_without_cluster(cnp({"ingress": [{"fromEndpoints": [None]}]})) == ["ingress[0].fromEndpoints[0]"]


# ---- Kubernetes NetworkPolicy -----------------------------------------------------------------------


def test_network_policy_peers() -> None:
    assert peers_without_cluster(netpol({"podSelector": {"matchLabels": {"app": "a"}}})) == ["ingress[0].from[0]"]
    assert peers_without_cluster(netpol({"namespaceSelector": {}})) == ["ingress[0].from[0]"]
    assert peers_without_cluster(netpol({}, section="egress")) == ["egress[0].to[0]"]
    assert peers_without_cluster(netpol({"ipBlock": {"cidr": "10.0.0.0/8"}})) == []
    assert peers_without_cluster(netpol({"podSelector": {"matchLabels": {CLUSTER_LABEL: "c2"}}})) == []
    exists = {"podSelector": {"matchExpressions": [{"key": CLUSTER_LABEL, "operator": "Exists"}]}}
    assert peers_without_cluster(netpol(exists)) == []
    # Kubernetes keys carry no Cilium source: an empty value or a prefixed key is not a cluster selector.
    assert peers_without_cluster(netpol({"podSelector": {"matchLabels": {CLUSTER_LABEL: ""}}})) != []
    assert peers_without_cluster(netpol({"podSelector": {"matchLabels": {f"k8s:{CLUSTER_LABEL}": "c"}}})) != []


def test_network_policy_without_peers_allows_everything_and_keeps_meaning() -> None:
    policy = netpol()
    policy["spec"]["ingress"] = [{"ports": [{"port": 80}]}]
    assert peers_without_cluster(policy) == []


# ---- listing and wording ----------------------------------------------------------------------------


def test_listing_is_sorted_and_names_namespace_and_name() -> None:
    peer = {"matchLabels": {"app": "x"}}
    policies = [
        cnp(ingress_from(peer), name="zeta"),
        cnp(ingress_from({"matchLabels": {CLUSTER_LABEL: "c1"}}), name="scoped"),
        cnp(ingress_from(peer, peer, peer), name="alpha"),
        netpol({}),
    ]
    found = local_only_policies(policies)
    assert [p.ref for p in found] == [
        "CiliumNetworkPolicy team-a/alpha",
        "CiliumNetworkPolicy team-a/zeta",
        "NetworkPolicy team-a/np",
    ]
    assert found[0].describe() == (
        "CiliumNetworkPolicy team-a/alpha (ingress[0].fromEndpoints[0], ingress[0].fromEndpoints[1] and 1 more "
        "without a cluster selector)"
    )


def test_warning_caps_the_list_and_names_both_fixes() -> None:
    described = [f"CiliumNetworkPolicy ns/p{i}" for i in range(LISTED + 3)]
    reason, fix = local_only_warning("cluster-1", "1.19.1", described)
    assert "cluster-1" in reason and "1.19.1" in reason and f"{LISTED + 3} network policies" in reason
    assert f"ns/p{LISTED - 1}" in reason and f"ns/p{LISTED}" not in reason
    assert reason.endswith("and 3 more")
    assert CLUSTER_LABEL in fix and "clustermesh.policyDefaultLocalCluster: false" in fix
    one, _ = local_only_warning("cluster-1", "1.19.1", described[:1])
    assert "1 network policy matches" in one and "more" not in one


# ---- when the setting is in effect ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "values", "in_effect"),
    [
        ("1.18.6", {}, False),
        ("1.18.6", {"clustermesh": {"policyDefaultLocalCluster": True}}, False),  # no such key before 1.19
        ("1.19.1", {}, True),
        ("1.19.1", {"clustermesh": {"useAPIServer": True}}, True),
        ("1.19.1", {"clustermesh": {"policyDefaultLocalCluster": False}}, False),
        ("1.19.1", {"clustermesh": {"policyDefaultLocalCluster": "false"}}, False),
        ("1.19.1", {"clustermesh": {"policyDefaultLocalCluster": True}}, True),
        ("1.19.1", {"clustermesh": {"policyDefaultLocalCluster": None}}, True),
        ("1.20.0", {}, True),
    ],
)
def test_setting_in_effect(version: str, values: dict[str, Any], in_effect: bool) -> None:
    assert policy_default_local_cluster(profile_for(version), values) is in_effect


def facts(name: str, version: str, policies: list[str]) -> ClusterFacts:
    return ClusterFacts(
        name=name,
        id=1,
        kubernetes_version="v1.31.4",
        cilium_version=version,
        detected_cilium_version=version,
        profile_line=".".join(version.split(".")[:2]),
        values_field="values",
        kube_proxy_replacement="true",
        pod_cidrs=["172.25.0.0/16"],
        nodes=1,
        current_cluster_name=None,
        current_cluster_id=None,
        mesh_enabled=False,
        peers_configured=[],
        local_only_policies=policies,
    )


def test_step1_warning_and_nightly_finding_per_cluster() -> None:
    seen = {
        "cluster-1": facts("cluster-1", "1.19.1", ["CiliumNetworkPolicy team-a/allow (ingress[0].fromEndpoints[0] …)"]),
        "cluster-2": facts("cluster-2", "1.19.1", []),
    }
    [warning] = policy_warnings(list(seen.values()))
    assert "cluster-1" in warning and "team-a/allow" in warning and "Fix:" in warning
    [finding] = policy_findings(seen)
    assert isinstance(finding, Finding)
    assert (finding.level, finding.subject) == ("warning", "cluster-1")
    assert "team-a/allow" in finding.reason and "policyDefaultLocalCluster: false" in finding.fix


# ---- the drill's namespace (1.20 global namespaces) -------------------------------------------------


@pytest.mark.parametrize(("version", "annotated"), [("1.18.6", False), ("1.19.1", False), ("1.20.0", True)])
def test_drill_namespace_is_global_where_the_line_has_global_namespaces(version: str, annotated: bool) -> None:
    [namespace, *_] = drill_manifests(DrillSettings(), profile_for(version))
    assert namespace["kind"] == "Namespace"
    annotations = namespace["metadata"].get("annotations", {})
    assert (annotations.get(NAMESPACE_GLOBAL_ANNOTATION) == "true") is annotated
    if not annotated:
        assert NAMESPACE_GLOBAL_ANNOTATION not in annotations
