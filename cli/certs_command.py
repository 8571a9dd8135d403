"""``clustermesh certs renew --config FILE [--cluster X] [--plan] [--yes]`` (flows/mesh_renew.py).

The plan is read straight from the clusters (no Prefect): ``--plan`` prints it and stops; otherwise it is
printed and, on a terminal, the command asks before writing (``--yes`` skips the question; without a
terminal ``--yes`` is required).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import fail
from cli.lifecycle import plan_then_run, run_flow

if TYPE_CHECKING:
    from clustermesh.lifecycle.renew import RenewPlan
    from clustermesh.spec import MeshSpec

certs_app = typer.Typer(help="The mesh's certificates: renew them (and hand them to the peers).", no_args_is_help=True)


@certs_app.command("renew")
def renew(
    config: Annotated[Path, typer.Option("--config", help="The mesh spec (YAML).")],
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="Re-issue this cluster's certificates now, whatever their expiry."),
    ] = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Print what would be re-issued and replaced; write nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Write without asking (required without a terminal).")] = False,
) -> None:
    """Re-issue the certificates nearer than certificates.warn_days to expiry, hand them to every peer, verify."""
    from cli import app as main  # cli.app registers this command: imported here, not at import time

    spec = main._load(config)
    target = f" --cluster {cluster}" if cluster else ""
    rerun = f"a rerun continues safely: `clustermesh certs renew --config {config}{target} --yes` re-issues only what "
    rerun += "is still due and hands out only copies that differ"
    plan_then_run(
        spec,
        read_plan=lambda: _read_plan(spec, cluster),
        plan_only=plan,
        yes=yes,
        question=f"Renew the certificates of mesh {spec.name} as shown above?",
        command="certs renew",
        what="renewal",
        rerun=rerun,
        run=lambda: _run_renew(spec, cluster),
    )


def _read_plan(spec: MeshSpec, cluster: str | None) -> RenewPlan:
    from clustermesh import checks
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.lifecycle.renew import plan_renew

    try:
        with ExitStack() as stack:
            clients = {
                c.name: stack.enter_context(open_cluster(c, request_timeout=spec.timeouts.api)) for c in spec.clusters
            }
            facts, _findings = checks.check_reachability_and_versions(clients, spec)
            return plan_renew(spec, facts, lambda name: clients[name], cluster)
    except ClusterMeshError as exc:
        fail(str(exc))


def _run_renew(spec: MeshSpec, cluster: str | None) -> int:
    from flows.mesh_renew import mesh_renew_certificates

    return run_flow("certs renew", lambda: mesh_renew_certificates(spec, cluster))
