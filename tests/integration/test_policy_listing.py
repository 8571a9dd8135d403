"""Step 1 and the nightly list the policies whose meaning ``policyDefaultLocalCluster`` changes (1.19+).

Real sandboxes over HTTPS: the policies are created with the official ``kubernetes`` client (and read back
with kubectl), then step 1 (:func:`check_prerequisites`) and the nightly's first check
(:func:`check_reachability_and_versions` plus :func:`policy_findings`, as ``tasks.verify_steps`` runs
them) judge what the cluster holds. On 1.18 the setting does not exist, and on 1.19 with
``clustermesh.policyDefaultLocalCluster: false`` in the values the old meaning holds: nothing is listed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from clustermesh.checks import policy_findings
from clustermesh.checks.reachability import check_reachability_and_versions
from clustermesh.kube.credentials import open_cluster
from clustermesh.kube.policies import list_network_policies
from clustermesh.spec import MeshSpec, load_spec
from clustermesh.steps.step1_prerequisites import check_prerequisites
from tests.conftest import kube_client

CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")


def cnp(name: str, peer: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"fromEndpoints": [peer]}]},
    }


def create_policies(kubeconfig: Path) -> None:
    """Three that change meaning (a CNP, a CCNP, a NetworkPolicy) and three that do not."""
    api = kube_client(kubeconfig)
    try:
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        networking = k8s.NetworkingV1Api(api)
        for ns in ("team-a", "team-b"):
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        custom.create_namespaced_custom_object(
            "cilium.io", "v2", "team-a", "ciliumnetworkpolicies", cnp("allow-frontend", {"matchLabels": {"app": "fe"}})
        )
        scoped = cnp("allow-frontend-of-cluster-2", {"matchLabels": {"app": "fe", CLUSTER_LABEL: "cluster-2"}})
        custom.create_namespaced_custom_object("cilium.io", "v2", "team-a", "ciliumnetworkpolicies", scoped)
        host = cnp("allow-host", {"matchLabels": {"reserved:host": ""}}, namespace="team-b")
        custom.create_namespaced_custom_object("cilium.io", "v2", "team-b", "ciliumnetworkpolicies", host)
        ccnp = {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "allow-dns"},
            "spec": {"endpointSelector": {}, "egress": [{"toEndpoints": [{"matchLabels": {"k8s-app": "kube-dns"}}]}]},
        }
        custom.create_cluster_custom_object("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", ccnp)
        for name, peer in (
            ("from-monitoring", {"namespaceSelector": {}}),
            ("from-lan", {"ipBlock": {"cidr": "10.0.0.0/8"}}),
        ):
            netpol = {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "team-b"},
                "spec": {"podSelector": {}, "ingress": [{"from": [peer]}]},
            }
            networking.create_namespaced_network_policy("team-b", netpol)
    finally:
        api.close()


AFFECTED = [
    "CiliumClusterwideNetworkPolicy allow-dns",
    "CiliumNetworkPolicy team-a/allow-frontend",
    "NetworkPolicy team-b/from-monitoring",
]


def listed(spec: MeshSpec, cluster: str) -> list[str]:
    """What step 1 finds in ``cluster``: the policy references, without the peer paths."""
    with open_cluster(spec.cluster(cluster), request_timeout=10) as client:
        found = check_prerequisites(client, spec.cluster(cluster), spec)
    return [text.split(" (", 1)[0] for text in found.local_only_policies]


def test_step1_and_the_nightly_list_the_policies_that_change_meaning_on_1_19(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    spec = load_spec(sb.directory / "mesh.yaml")
    create_policies(sb.directory / "cluster-1.kubeconfig")

    assert listed(spec, "cluster-1") == AFFECTED
    assert listed(spec, "cluster-2") == []

    clients = {c.name: open_cluster(c, request_timeout=10) for c in spec.clusters}
    try:
        facts, _ = check_reachability_and_versions(clients, spec)
    finally:
        for c in clients.values():
            c.close()
    [finding] = policy_findings(facts)
    assert (finding.level, finding.subject) == ("warning", "cluster-1")
    assert "3 network policies" in finding.reason
    for ref in AFFECTED:
        assert ref.split(" ", 1)[1] in finding.reason
    assert "allow-frontend-of-cluster-2" not in finding.reason and "allow-host" not in finding.reason
    assert "from-lan" not in finding.reason
    assert "policyDefaultLocalCluster: false" in finding.fix


def test_nothing_is_listed_on_1_18(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.18")
    spec = load_spec(sb.directory / "mesh.yaml")
    create_policies(sb.directory / "cluster-1.kubeconfig")
    assert listed(spec, "cluster-1") == []


def test_nothing_is_listed_when_the_values_keep_the_old_meaning(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    spec = load_spec(sb.directory / "mesh.yaml")
    kubeconfig = sb.directory / "cluster-1.kubeconfig"
    create_policies(kubeconfig)
    api = kube_client(kubeconfig)
    try:
        custom = k8s.CustomObjectsApi(api)
        ai = custom.get_namespaced_custom_object(*AI)
        field = "valuesBlock" if (ai["spec"].get("valuesBlock") or "").strip() else "values"
        values = yaml.safe_load(ai["spec"][field]) if field == "valuesBlock" else ai["spec"][field]
        values.setdefault("clustermesh", {})["policyDefaultLocalCluster"] = False
        ai["spec"][field] = yaml.safe_dump(values) if field == "valuesBlock" else values
        custom.replace_namespaced_custom_object(*AI[:4], AI[4], ai)
    finally:
        api.close()
    assert listed(spec, "cluster-1") == []


def test_policies_are_served_like_cilium_serves_them(sandbox_factory: Callable[..., Any], tmp_path: Path) -> None:
    """kubectl finds the kinds by their short names; the pipeline's listing sees what kubectl created."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    kubeconfig = sb.directory / "cluster-1.kubeconfig"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}

    def kubectl(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    kubectl("apply", "-f", "-", stdin=json.dumps(cnp("allow-frontend", {"matchLabels": {"app": "fe"}})))
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "all"}}
    ccnp["spec"] = {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}
    kubectl("apply", "-f", "-", stdin=json.dumps(ccnp))
    assert kubectl("get", "cnp", "-A", "-o", "name").split() == ["ciliumnetworkpolicy.cilium.io/allow-frontend"]
    assert kubectl("get", "ccnp", "-o", "name").split() == ["ciliumclusterwidenetworkpolicy.cilium.io/all"]
    assert "allow-frontend" in kubectl("get", "cnp", "-n", "team-a")

    spec = load_spec(sb.directory / "mesh.yaml")
    with open_cluster(spec.first, request_timeout=10) as client:
        kinds = sorted((p["kind"], p["metadata"]["name"]) for p in list_network_policies(client))
    assert kinds == [("CiliumClusterwideNetworkPolicy", "all"), ("CiliumNetworkPolicy", "allow-frontend")]


def test_a_kind_the_cluster_does_not_serve_has_no_policies(sandbox_factory: Callable[..., Any]) -> None:
    """A cluster without Cilium's CRDs answers 404 for their list: no policies, not an error."""
    from clustermesh.kube.policies import _listed

    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    spec = load_spec(sb.directory / "mesh.yaml")
    with open_cluster(spec.first, request_timeout=10) as client:
        custom = k8s.CustomObjectsApi(client._api)
        method = custom.list_cluster_custom_object
        assert _listed(client, "nopolicies", "X", "cilium.io/v9", method, "cilium.io", "v9", "nopolicies") == []
