"""``create_user_clusters``: the mesh's missing KKP user clusters, made ready for ``cluster_mesh_setup``.

Plan first (existing clusters checked, pod CIDRs chosen, a short pool refused: nothing is created
when anything is wrong), then create the missing clusters in parallel and wait until KKP reports
every one healthy. Running it again creates nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from clustermesh.kkp.clusters import ClusterPlan, CreateResult
from clustermesh.spec import MeshSpec
from tasks import kkp_steps
from tasks.notify import alert_on_failure
from tasks.results import owner_only_files


@flow(
    name="mesh-create-clusters",
    log_prints=False,
    validate_parameters=True,
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def create_user_clusters(spec: MeshSpec) -> CreateResult:
    """Create the spec's missing KKP user clusters with Cilium, ebpf and non-overlapping pod CIDRs.

    Args:
        spec: The mesh; clusters referenced through KKP (``kkp:``) are created when missing, with the
            settings of ``kkp:`` (datacenter, versions, pod CIDR pool). Tokens by reference only.
    """
    with owner_only_files():
        return _create(spec)


def _create(spec: MeshSpec) -> CreateResult:
    logger = get_run_logger()
    plan = kkp_steps.plan_user_clusters.with_options(task_run_name="1. Plan KKP user clusters")(spec)
    logger.info("%s", plan.describe())
    created: dict[str, ClusterPlan] = {}
    futures = {
        entry.name: kkp_steps.create_user_cluster.with_options(
            task_run_name=f"2. Create KKP user cluster {entry.name}"
        ).submit(spec, entry.name, entry.pod_cidr or "")
        for entry in plan.to_create
    }
    for name, future in futures.items():
        created[name] = future.result()
        logger.info("%s: KKP cluster %s created", name, created[name].cluster_id)
    waits = [
        kkp_steps.wait_user_cluster_healthy.with_options(task_run_name=f"3. Wait until {entry.name} is healthy").submit(
            spec, entry.name, entry.cluster_id or ""
        )
        for entry in (created.get(c.name, c) for c in plan.clusters)
        if entry.action != "not-kkp"
    ]
    for wait in waits:
        wait.result()
    clusters = [created.get(c.name, c) for c in plan.clusters]
    result = CreateResult(mesh=spec.name, clusters=clusters, created=sorted(created))
    create_table_artifact(
        key=f"{spec.name}-kkp-clusters".lower().replace("_", "-"),
        table=[
            {
                "cluster": c.name,
                "kkp id": c.cluster_id or "",
                "pod cidr": c.pod_cidr or "",
                "created": c.name in created,
            }
            for c in clusters
        ],
        description="The mesh's KKP user clusters after `create_user_clusters`",
    )
    return result


__all__ = ["create_user_clusters"]
