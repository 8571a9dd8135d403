"""``clustermesh remove --config FILE --cluster X``: one cluster leaves the mesh (flows/mesh_remove.py).

The plan is read straight from the clusters (no Prefect): ``--plan`` prints it and stops; otherwise it is
printed and, on a terminal, the command asks before writing (``--yes`` skips the question; without a
terminal ``--yes`` is required). The spec still lists X; drop X from it once the removal is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail
from cli.lifecycle import plan_then_run, run_flow

if TYPE_CHECKING:
    from clustermesh.lifecycle.leave import LeavePlan
    from clustermesh.spec import MeshSpec

ClusterOption = Annotated[str, typer.Option("--cluster", help="The cluster that leaves the mesh (still in the spec).")]


def remove(
    config: Annotated[Path, typer.Option("--config", help="The mesh spec (YAML), still listing the cluster.")],
    cluster: ClusterOption,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would be removed where; write nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Write without asking (required without a terminal).")] = False,
    disable_in_removed: Annotated[
        bool,
        typer.Option("--disable-in-removed", help="Also remove the managed peers from the leaving cluster's values."),
    ] = False,
) -> None:
    """Remove a cluster from the mesh: its managed entry leaves every other member; then the rest is verified."""
    from cli import app as main  # cli.app registers this command: imported here, not at import time

    spec = main._load(config)
    rerun = f"a rerun continues safely: `clustermesh remove --config {config} --cluster {cluster} --yes` writes only "
    rerun += "where the entry is still there"
    plan_then_run(
        spec,
        read_plan=lambda: _read_plan(spec, cluster),
        plan_only=plan,
        yes=yes,
        question=f"Remove {cluster} from mesh {spec.name} as shown above?",
        command="remove",
        what="removal",
        rerun=rerun,
        run=lambda: _run_remove(spec, cluster, disable_in_removed),
    )


def _read_plan(spec: MeshSpec, cluster: str) -> LeavePlan:
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.lifecycle.leave import plan_leave

    def read(name: str) -> dict[str, Any]:
        with open_cluster(spec.cluster(name), request_timeout=spec.timeouts.api) as client:
            return client.get_application_installation()

    def services(name: str) -> list[dict[str, Any]]:
        with open_cluster(spec.cluster(name), request_timeout=spec.timeouts.api) as client:
            return client.list_services()

    try:
        return plan_leave(spec, cluster, read, services)
    except ClusterMeshError as exc:
        fail(str(exc))


def _run_remove(spec: MeshSpec, cluster: str, disable_in_removed: bool) -> int:
    from flows.mesh_remove import mesh_remove_cluster

    return run_flow("remove", lambda: mesh_remove_cluster(spec, cluster, disable_in_removed=disable_in_removed))
