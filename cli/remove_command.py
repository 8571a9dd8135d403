"""``clustermesh remove --config FILE --cluster X``: one cluster leaves the mesh (flows/mesh_remove.py).

The plan is read straight from the clusters (no Prefect): ``--plan`` prints it and stops; otherwise it is
printed and, on a terminal, the command asks before writing (``--yes`` skips the question; without a
terminal ``--yes`` is required). The spec still lists X; drop X from it once the removal is done.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail

if TYPE_CHECKING:
    from clustermesh.spec import MeshSpec
    from clustermesh.steps.leave import LeavePlan

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
    if not yes:
        leave_plan = _read_plan(spec, cluster)
        typer.echo(leave_plan.render_text())
        if plan:
            return
        if leave_plan.changing:
            _confirm(cluster, spec.name)
        if main._main_program and "--yes" not in sys.argv:
            sys.argv.append("--yes")  # the warm runner re-runs this command line: answered once is enough
    elif plan:
        typer.echo(_read_plan(spec, cluster).render_text())
        return
    main._warm()
    rerun = f"a rerun continues safely: `clustermesh remove --config {config} --cluster {cluster} --yes` writes only "
    rerun += "where the entry is still there"
    code = main._flow_command(
        spec, "remove", lambda: _run_remove(spec, cluster, disable_in_removed), what="removal", rerun=rerun
    )
    raise typer.Exit(code)


def _read_plan(spec: MeshSpec, cluster: str) -> LeavePlan:
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.steps.leave import plan_leave

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


def _confirm(cluster: str, mesh: str) -> None:
    if not sys.stdin.isatty():
        fail("not a terminal, so nothing was asked and nothing written: pass --yes to write the plan above")
    if not typer.confirm(f"Remove {cluster} from mesh {mesh} as shown above?", default=False):
        fail("not confirmed: nothing written", 1)


def _run_remove(spec: MeshSpec, cluster: str, disable_in_removed: bool) -> int:
    from cli import app as main

    main._prefect_api()
    from clustermesh.errors import ClusterMeshError
    from clustermesh.stopping import stop_requested
    from flows.mesh_remove import mesh_remove_cluster

    try:
        result = mesh_remove_cluster(spec, cluster, disable_in_removed=disable_in_removed)
    except ClusterMeshError as exc:
        if not stop_requested():
            typer.echo(f"remove failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0
