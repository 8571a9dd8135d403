"""clustermesh: Cilium Cluster Mesh between KKP user clusters — the domain, with no Prefect in it.

The public names are re-exported here and loaded on first use, so ``import clustermesh`` (and the
CLI's start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MeshSpec": "clustermesh.spec",
    "ClusterSpec": "clustermesh.spec",
    "load_spec": "clustermesh.spec",
    "CiliumProfile": "clustermesh.cilium.profiles",
    "profile_for": "clustermesh.cilium.profiles",
    "ClusterClient": "clustermesh.kube.client",
    "open_cluster": "clustermesh.kube.credentials",
    "ClusterFacts": "clustermesh.steps.models",
    "MeshEndpoint": "clustermesh.steps.models",
    "StepChange": "clustermesh.steps.models",
    "check_prerequisites": "clustermesh.steps.step1_prerequisites",
    "configure_mesh": "clustermesh.steps.step2_4_6_mesh_values",
    "collect_mesh_endpoint": "clustermesh.steps.step3_5_endpoints",
    "HealthMatrix": "clustermesh.steps.step8_health",
    "wait_for_mesh_health": "clustermesh.steps.step8_health",
    "FirewallReport": "clustermesh.steps.step7_reachability",
    "parse_health": "clustermesh.cilium",
    "parse_service_list": "clustermesh.cilium",
    "run_drill": "clustermesh.drill",
    "DrillResult": "clustermesh.drill",
    "ClusterMeshError": "clustermesh.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clustermesh' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
