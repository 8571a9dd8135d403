"""``clustermesh upgrade-check``: would each cluster's current values survive a Cilium upgrade? Read-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.common import fail

Format = Literal["text", "json"]


def upgrade_check_command(
    config: Annotated[Path, typer.Option("--config", help="The mesh spec (YAML), e.g. the sandbox's mesh.yaml.")],
    to: Annotated[str, typer.Option("--to", help="The Cilium version to upgrade to, e.g. 1.20.0.")],
    cluster: Annotated[str | None, typer.Option("--cluster", help="Check only this cluster of the spec.")] = None,
    output: Annotated[Format, typer.Option("--format", help="text, or json for scripts.")] = "text",
) -> None:
    """Render each cluster's current values with the --to version's chart (cilium.chart.source) and list what
    would break (refused: exit 1), be silently ignored, or change by default. Writes nothing."""
    from clustermesh.cilium.profiles import profile_for
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.spec import load_spec
    from clustermesh.steps.upgrade_check import upgrade_check

    try:
        spec = load_spec(config)
        profile_for(to)
    except ClusterMeshError as exc:
        fail(str(exc))  # the spec or --to: bad input (2)
    names = [c.name for c in spec.clusters]
    if cluster is not None and cluster not in names:
        fail(f"--cluster {cluster!r} is not in {config} (clusters there: {', '.join(names)}); pick one of those")
    if spec.cilium.chart.source is None:
        fail(f"cilium.chart.source is empty in {config}: set it to a folder of cilium-<version>.tgz or a Helm repo URL")
    try:
        report = upgrade_check(
            spec, lambda c: open_cluster(c, request_timeout=spec.timeouts.api), to.removeprefix("v"), only=cluster
        )
    except ClusterMeshError as exc:
        fail(str(exc), 1)
    typer.echo(json.dumps(report.as_dict(), indent=2) if output == "json" else report.render_text())
    if report.blocking:
        raise typer.Exit(1)
