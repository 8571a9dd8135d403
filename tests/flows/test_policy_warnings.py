"""The real flows on a 1.19 sandbox mesh warn about policies that ``policyDefaultLocalCluster`` limits.

A CiliumNetworkPolicy without a cluster selector is created with the official client after the mesh is
set up; the nightly (``nightly_mesh_verification``, no drill) then warns naming it, and a setup rerun
lists it among step 1's warnings: its cached step 1 answer is not reused once a policy changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from tests.flows.conftest import Kube, mesh_spec, task_runs_of


def create_unscoped_policy(kube: Kube) -> None:
    core = k8s.CoreV1Api(kube.api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "allow-frontend", "namespace": "team-a"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}]}],
        },
    }
    kube.custom.create_namespaced_custom_object("cilium.io", "v2", "team-a", "ciliumnetworkpolicies", policy)


def test_nightly_and_setup_rerun_name_a_policy_that_now_matches_local_endpoints_only(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], result_key: bytes
) -> None:
    sb = meshed(clusters=2, cilium_version="1.19")  # with a result key: step 1's answers are cached
    spec = mesh_spec(sb)
    cluster_mesh_setup(spec)  # step 1 cached against the finished mesh (the first run's writes changed it)
    create_unscoped_policy(kubes(sb)["cluster-1"])

    state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), state
    assert result.status == "WARN", result.describe()
    warnings = [f for f in result.findings if f.level == "warning"]
    assert [f.subject for f in warnings] == ["cluster-1"], warnings
    assert "CiliumNetworkPolicy team-a/allow-frontend" in warnings[0].reason
    assert "policyDefaultLocalCluster: false" in warnings[0].fix

    rerun_state = cluster_mesh_setup(spec, return_state=True)
    rerun = rerun_state.result()
    step1 = task_runs_of(rerun_state.state_details.flow_run_id)["1. Check prerequisites of cluster-1"]
    assert step1.state.name != "Cached", "a policy changed: step 1's cached answer no longer holds"
    assert not any(c.written for c in rerun.changes), "a rerun writes nothing"
    [policy_warning] = [w for w in rerun.warnings if "policyDefaultLocalCluster" in w]
    assert "cluster-1" in policy_warning and "team-a/allow-frontend" in policy_warning
