"""``clustermesh ca rotate --config FILE [--cluster X] [--plan] [--yes]`` (flows/mesh_ca.py).

The plan is read straight from the clusters (no Prefect): ``--plan`` prints it (certificates as
fingerprints) and stops; otherwise it is printed and, on a terminal, the command asks before writing
(``--yes`` skips the question; without a terminal ``--yes`` is required). A refused cluster (certmanager
method, shared CA, Cilium 1.13, a ``tls.caBundle`` a person already uses) ends the command before anything is
written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail
from cli.lifecycle import plan_then_run, run_flow

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
    target = f" --cluster {cluster}" if cluster else ""
    rerun = f"a rerun continues safely: `clustermesh ca rotate --config {config}{target} --yes` goes on from the "
    rerun += "phase each cluster's CA is in"
    plan_then_run(
        spec,
        read_plan=lambda: _read_plan(spec, cluster),
        plan_only=plan,
        yes=yes,
        question=lambda shown: f"Rotate the CA of {', '.join(shown.changing)} in mesh {spec.name} as shown above?",
        command="ca-rotate",
        what="CA rotation",
        rerun=rerun,
        run=lambda: _run(spec, cluster),
        refused=lambda shown: bool(shown.refused),
    )


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


def _run(spec: MeshSpec, cluster: str | None) -> int:
    from flows.mesh_ca import mesh_rotate_ca

    return run_flow("ca rotate", lambda: mesh_rotate_ca(spec, cluster))
