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
    "CiliumProfile": "clustermesh.profiles",
    "profile_for": "clustermesh.profiles",
    "ClusterClient": "clustermesh.kube",
    "open_cluster": "clustermesh.credentials",
    "ClusterFacts": "clustermesh.models",
    "MeshEndpoint": "clustermesh.models",
    "StepChange": "clustermesh.models",
    "check_prerequisites": "clustermesh.prerequisites",
    "configure_mesh": "clustermesh.mesh_config",
    "collect_mesh_endpoint": "clustermesh.endpoints",
    "HealthMatrix": "clustermesh.health",
    "wait_for_mesh_health": "clustermesh.health",
    "FirewallReport": "clustermesh.reachability",
    "parse_health": "clustermesh.cilium_output",
    "parse_service_list": "clustermesh.cilium_output",
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
