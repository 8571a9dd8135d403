"""``clustermesh ca rotate --config FILE [--cluster X] [--plan] [--yes]`` (flows/mesh_ca.py).

The plan is read straight from the clusters (no Prefect): ``--plan`` prints it (certificates as
fingerprints) and stops; otherwise it is printed and, on a terminal, the command asks before writing
(``--yes`` skips the question; without a terminal ``--yes`` is required). A refused cluster (certmanager
method, shared CA, Cilium 1.13, a ``tls.caBundle`` a person already uses) ends the command before anything is
written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail

if TYPE_CHECKING:
    from clustermesh.lifecycle.ca_plan import RotationPlan
    from clustermesh.spec import MeshSpec

ca_app = typer.Typer(help="The mesh's certificate authorities: rotate them with trust overlap.", no_args_is_help=True)


@ca_app.command("rotate")
def rotate(
    config: Annotated[Path, typer.Option("--config", help="The mesh spec (YAML).")],
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Rotate this cluster's CA; without it, every member's in turn.")
    ] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the phases and peers; write nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Write without asking (required without a terminal).")] = False,
) -> None:
    """Replace a cluster's CA: it and its peers trust old and new (its tls.caBundle, their caCert), certificates
    are re-issued and handed out, the old CA goes."""
    from cli import app as main  # cli.app registers this command: imported here, not at import time

    spec = main._load(config)
    if not yes or plan:
        rotation_plan = _read_plan(spec, cluster)
        typer.echo(rotation_plan.render_text())
        if rotation_plan.refused:
            fail("refused: nothing written (the reason and the fix are above)", 1)
        if plan:
            return
        if rotation_plan.changing:
            _confirm(rotation_plan.changing, spec.name)
        if main._main_program and "--yes" not in sys.argv:
            sys.argv.append("--yes")  # the warm runner re-runs this command line: answered once is enough
    main._warm()
    target = f" --cluster {cluster}" if cluster else ""
    rerun = f"a rerun continues safely: `clustermesh ca rotate --config {config}{target} --yes` goes on from the "
    rerun += "phase each cluster's CA is in"
    code = main._flow_command(spec, "ca-rotate", lambda: _run(spec, cluster), what="CA rotation", rerun=rerun)
    raise typer.Exit(code)


def _read_plan(spec: MeshSpec, cluster: str | None) -> RotationPlan:
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.lifecycle.ca_plan import plan_rotation
    from clustermesh.lifecycle.ca_rotation import NAMESPACE

    def read(name: str) -> dict[str, Any]:
        with open_cluster(spec.cluster(name), request_timeout=spec.timeouts.api) as client:
            return client.get_application_installation()

    def secret(name: str, secret_name: str) -> dict[str, Any] | None:
        with open_cluster(spec.cluster(name), request_timeout=spec.timeouts.api) as client:
            return client.get_secret(NAMESPACE, secret_name)

    try:
        return plan_rotation(spec, cluster, read, secret)
    except ClusterMeshError as exc:
        fail(str(exc))


def _confirm(clusters: list[str], mesh: str) -> None:
    if not sys.stdin.isatty():
        fail("not a terminal, so nothing was asked and nothing written: pass --yes to write the plan above")
    if not typer.confirm(f"Rotate the CA of {', '.join(clusters)} in mesh {mesh} as shown above?", default=False):
        fail("not confirmed: nothing written", 1)


def _run(spec: MeshSpec, cluster: str | None) -> int:
    from cli import app as main

    main._prefect_api()
    from clustermesh.errors import ClusterMeshError
    from clustermesh.stopping import stop_requested
    from flows.mesh_ca import mesh_rotate_ca

    try:
        result = mesh_rotate_ca(spec, cluster)
    except ClusterMeshError as exc:
        if not stop_requested():
            typer.echo(f"ca rotate failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0
