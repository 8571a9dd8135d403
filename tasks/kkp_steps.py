"""Creating the mesh's KKP user clusters as Prefect tasks: each a few lines around one domain call.

No caching: every run reads KKP afresh (a cluster may have been created or deleted since), and the
create step is idempotent by itself (it re-reads before it writes). Only transient failures retry
(KKP unreachable, busy or failing: ``tasks.common.retry_transient``).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh.kkp import clusters
from clustermesh.kkp.api import KkpCluster
from clustermesh.spec import MeshSpec
from tasks import common
from tasks.common import load_secret_block

COMMON: dict[str, Any] = {**common.COMMON, "cache_policy": NO_CACHE}


@task(name="Plan KKP user clusters", **COMMON)
def plan_user_clusters(spec: MeshSpec) -> clusters.CreatePlan:
    return clusters.plan_user_clusters(spec, load_secret=load_secret_block)


@task(name="Create KKP user cluster", **COMMON)
def create_user_cluster(spec: MeshSpec, cluster: str, pod_cidr: str) -> clusters.ClusterPlan:
    """Create one cluster, unless a run before this one (or a retry) already has: then reuse it."""
    entry = spec.cluster(cluster)
    assert spec.kkp is not None
    with clusters.kkp_clients(load_secret=load_secret_block, timeout=spec.timeouts.api) as kkp:
        existing = clusters.existing_cluster(kkp, entry)
        made: KkpCluster = existing or clusters.create_cluster(kkp.client(entry), entry, spec.kkp, pod_cidr)
    return clusters.ClusterPlan(name=cluster, action="create", cluster_id=made.id, pod_cidr=pod_cidr)


@task(name="Wait until the KKP cluster is healthy", **COMMON)
def wait_user_cluster_healthy(spec: MeshSpec, cluster: str, cluster_id: str) -> dict[str, str]:
    entry = spec.cluster(cluster)
    timeout = spec.kkp.health_timeout if spec.kkp is not None else spec.timeouts.install
    with clusters.kkp_clients(load_secret=load_secret_block, timeout=spec.timeouts.api) as kkp:
        return clusters.wait_until_healthy(
            kkp.client(entry), cluster, cluster_id, timeout=timeout, poll_interval=spec.timeouts.poll_interval
        )
