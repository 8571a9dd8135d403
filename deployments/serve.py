"""One process that serves the deployments: the laptop way (no work pool, no worker).

    uv run prefect server start                        # another terminal; or point PREFECT_API_URL elsewhere
    uv run clustermesh blocks register --config mesh.yaml
    uv run python -m deployments.serve

Same deployments as ``prefect.yaml`` (names, tags, nightly at 02:00 in CLUSTERMESH_TIMEZONE, default
Europe/Berlin; one nightly at a time, an overlapping one is cancelled). The nightly and the drill carry no
spec: each run reads the Prefect Variable ``clustermesh-spec`` (written by ``clustermesh blocks register``;
CLUSTERMESH_SPEC_VARIABLE names another) when it starts, so a new registration needs no restart. Ctrl-C
pauses the schedules.
"""

from __future__ import annotations

import os
from typing import Any

from flows.spec_source import SPEC_VARIABLE

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Europe/Berlin"
TAG = "clustermesh"


def spec_variable() -> str:
    """The Variable the nightly and the drill read: CLUSTERMESH_SPEC_VARIABLE, else ``clustermesh-spec``."""
    return os.environ.get("CLUSTERMESH_SPEC_VARIABLE", "").strip() or SPEC_VARIABLE


def build_deployments(timezone: str | None = None, variable: str | None = None) -> list[Any]:
    """The RunnerDeployments; the nightly and the drill name the spec's Variable, read by each run."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.create_clusters import create_user_clusters
    from flows.failover_drill import failover_drill
    from flows.mesh_ca import mesh_rotate_ca
    from flows.mesh_remove import mesh_remove_cluster
    from flows.mesh_renew import mesh_renew_certificates
    from flows.mesh_setup import cluster_mesh_setup
    from flows.mesh_upgrade import mesh_upgrade_prepare
    from flows.mesh_verify import nightly_mesh_verification

    tz = timezone or os.environ.get("CLUSTERMESH_TIMEZONE") or DEFAULT_TIMEZONE
    with_spec: dict[str, Any] = {"spec_variable": variable or spec_variable()}
    setup = cluster_mesh_setup.to_deployment(name="mesh-setup", tags=[TAG, "mesh-setup"])
    nightly = nightly_mesh_verification.to_deployment(
        name="mesh-nightly-verification",
        tags=[TAG, "mesh-nightly"],
        schedules=[Cron(NIGHTLY_CRON, timezone=tz)],
        parameters={**with_spec, "run_drill": True},
        # what Flow.serve calls global_limit: one nightly at a time, an overlapping one is cancelled
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
    )
    drill = failover_drill.to_deployment(name="mesh-failover-drill", tags=[TAG, "mesh-drill"], parameters=with_spec)
    create = create_user_clusters.to_deployment(name="mesh-create-clusters", tags=[TAG, "mesh-create-clusters"])
    remove = mesh_remove_cluster.to_deployment(name="mesh-remove-cluster", tags=[TAG, "mesh-remove-cluster"])
    upgrade = mesh_upgrade_prepare.to_deployment(name="mesh-upgrade-prepare", tags=[TAG, "mesh-upgrade-prepare"])
    rotate_ca = mesh_rotate_ca.to_deployment(name="mesh-rotate-ca", tags=[TAG, "mesh-rotate-ca"])
    # form: cluster (optional), require_approval; max_writes is a test/drill aid, left empty
    renew = mesh_renew_certificates.to_deployment(name="mesh-renew-certificates", tags=[TAG, "mesh-renew-certificates"])
    return [setup, nightly, drill, create, remove, upgrade, rotate_ca, renew]


def main() -> None:
    from prefect import serve
    from prefect.variables import Variable

    variable = spec_variable()
    if Variable.get(variable, default=None) is None:
        print(
            f"note: the Prefect Variable {variable} does not exist yet: the nightly and the drill fail until "
            "`clustermesh blocks register --config mesh.yaml` writes it (no restart needed).",
            flush=True,
        )
    serve(*build_deployments(variable=variable))


if __name__ == "__main__":
    main()
