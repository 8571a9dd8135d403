"""Preparing the values for a Cilium upgrade as Prefect tasks: the plan, and the write per cluster.

Both carry values with key material: never cached nor persisted. The write reads and plans again (so a rerun
writes nothing where the values already work on both lines) and proves the values with the real charts
before writing them.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh.lifecycle import upgrade_values
from clustermesh.spec import MeshSpec
from clustermesh.steps import step1_prerequisites
from clustermesh.steps.models import StepChange
from tasks.common import COMMON, cluster_client, load_secret_block

UNPERSISTED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="Plan the upgrade values", **UNPERSISTED)
def plan_upgrade(spec: MeshSpec, target: str, cluster: str | None = None) -> upgrade_values.UpgradePlan:
    """Every cluster's (or ``cluster``'s) upgrade check and proved values for ``target``."""
    return upgrade_values.plan_mesh_upgrade(
        spec, lambda c: cluster_client(spec, c.name), target, only=cluster, load_secret=load_secret_block
    )


@task(name="Write the upgrade values", **COMMON, **UNPERSISTED)
def write_values(spec: MeshSpec, cluster: str, target: str) -> StepChange:
    """``cluster``'s values made valid on its current line and ``target``; KKP applies them on the current line."""
    with cluster_client(spec, cluster) as client:
        facts = step1_prerequisites.check_prerequisites(
            client, spec.cluster(cluster), spec, load_secret=load_secret_block
        )
        return upgrade_values.write_upgrade_values(client, spec, facts, target)
