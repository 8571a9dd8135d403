"""One process that serves the deployments: the laptop way (no work pool, no worker).

    uv run prefect server start                        # another terminal; or point PREFECT_API_URL elsewhere
    uv run clustermesh blocks register --config mesh.yaml
    uv run python -m deployments.serve

Same deployments as ``prefect.yaml`` (names, tags, nightly at 02:00 in CLUSTERMESH_TIMEZONE, default
Europe/Berlin; one nightly at a time, an overlapping one is cancelled). The nightly and the drill take
their spec from the Prefect Variable ``clustermesh-spec`` (written by ``clustermesh blocks register``)
or, when CLUSTERMESH_SPEC names a YAML file, from that file. Ctrl-C pauses the schedules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Europe/Berlin"
TAG = "clustermesh"


def default_spec() -> dict[str, Any] | None:
    """The spec for scheduled runs: CLUSTERMESH_SPEC (a YAML file), else the ``clustermesh-spec`` variable."""
    path = os.environ.get("CLUSTERMESH_SPEC")
    if path:
        from clustermesh.spec import load_spec

        return load_spec(Path(path)).model_dump(mode="json", exclude_defaults=True)
    from prefect.variables import Variable

    from deployments.blocks import SPEC_VARIABLE

    value = Variable.get(SPEC_VARIABLE, default=None)
    return value if isinstance(value, dict) else None


def build_deployments(timezone: str | None = None, spec: dict[str, Any] | None = None) -> list[Any]:
    """The RunnerDeployments (``spec`` None: the nightly and the drill need it in each run)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.create_clusters import create_user_clusters
    from flows.failover_drill import failover_drill
    from flows.mesh_setup import cluster_mesh_setup
    from flows.mesh_verify import nightly_mesh_verification

    tz = timezone or os.environ.get("CLUSTERMESH_TIMEZONE") or DEFAULT_TIMEZONE
    with_spec: dict[str, Any] = {"spec": spec} if spec is not None else {}
    setup = cluster_mesh_setup.to_deployment(name="mesh-setup", tags=[TAG, "mesh-setup"])
    nightly = nightly_mesh_verification.to_deployment(
        name="mesh-nightly-verification",
        tags=[TAG, "mesh-nightly"],
        schedules=[Cron(NIGHTLY_CRON, timezone=tz)],
        parameters={**with_spec, "run_drill": True},
        # what Flow.serve calls global_limit: one nightly at a time, an overlapping one is cancelled
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        paused=spec is None,  # no spec yet: a scheduled run could only fail
    )
    drill = failover_drill.to_deployment(name="mesh-failover-drill", tags=[TAG, "mesh-drill"], parameters=with_spec)
    create = create_user_clusters.to_deployment(name="mesh-create-clusters", tags=[TAG, "mesh-create-clusters"])
    return [setup, nightly, drill, create]


def main() -> None:
    from prefect import serve

    spec = default_spec()
    if spec is None:
        print(
            "no spec for the nightly yet: the schedule is paused. Run `clustermesh blocks register --config "
            "mesh.yaml` (or set CLUSTERMESH_SPEC=mesh.yaml) and restart.",
            flush=True,
        )
    serve(*build_deployments(spec=spec))


if __name__ == "__main__":
    main()
