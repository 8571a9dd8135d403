"""``clustermesh upgrade-check``: would each cluster's current values survive a Cilium upgrade, and what fixes them.

It lists, per cluster, what the --to version's chart would refuse or silently ignore, read straight from the
clusters (no Prefect). When some finding has a fix, it shows the plan: per cluster the values change that works
on both the current and the target line (proved with the real charts; key material as fingerprints) and what is
BLOCKING. ``--plan`` stops there; otherwise, on a terminal, it asks before writing (flows/mesh_upgrade.py);
``--yes`` writes without asking. Without a terminal and without ``--yes`` nothing is written (the listing, as
before). Exit 1 when something would break (a refusal not yet fixed, a BLOCKING finding).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from cli.common import fail

if TYPE_CHECKING:
    from clustermesh.lifecycle.upgrade_values import UpgradePlan
    from clustermesh.spec import MeshSpec

Format = Literal["text", "json"]


def upgrade_check_command(
    config: Annotated[Path, typer.Option("--config", help="The mesh spec (YAML), e.g. the sandbox's mesh.yaml.")],
    to: Annotated[str, typer.Option("--to", help="The Cilium version to upgrade to, e.g. 1.20.0.")],
    cluster: Annotated[str | None, typer.Option("--cluster", help="Check only this cluster of the spec.")] = None,
    output: Annotated[Format, typer.Option("--format", help="text, or json for scripts.")] = "text",
    plan: Annotated[bool, typer.Option("--plan", help="Show the findings and the values plan; write nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Write the values plan without asking.")] = False,
) -> None:
    """Render each cluster's current values with the --to version's chart (cilium.chart.source) and list what
    would break (refused), be silently ignored, or change by default; then offer the values that work on both
    lines (--plan: only show them; --yes: write them without asking)."""
    from cli import app as main  # cli.app registers this command: imported here, not at import time

    spec, target = _checked_input(config, to, cluster)
    rerun = f"a rerun continues safely: `clustermesh upgrade-check --config {config} --to {target} --yes` writes "
    rerun += "only where the values do not yet work on both lines"
    if yes and not plan:
        main._warm()
        code = main._flow_command(
            spec, "upgrade-prepare", lambda: _run_prepare(spec, target, cluster), what="upgrade values", rerun=rerun
        )
        raise typer.Exit(code)
    upgrade_plan = _read_plan(spec, target, cluster)
    _show(upgrade_plan, output)
    would_break = upgrade_plan.report().blocking or upgrade_plan.blocking
    if plan:
        raise typer.Exit(1 if upgrade_plan.blocking else 0)  # what is fixable is in the plan: only BLOCKING fails
    if not upgrade_plan.changing:
        raise typer.Exit(1 if would_break else 0)
    if not sys.stdin.isatty():
        typer.echo("not a terminal: nothing written; pass --yes to write the values plan above", err=True)
        raise typer.Exit(1 if would_break else 0)
    if not typer.confirm(f"Write these values to {', '.join(upgrade_plan.changing)}?", default=False):
        fail("not confirmed: nothing written", 1)
    if main._main_program and "--yes" not in sys.argv:
        sys.argv.append("--yes")  # the warm runner re-runs this command line: answered once is enough
    main._warm()
    code = main._flow_command(
        spec, "upgrade-prepare", lambda: _run_prepare(spec, target, cluster), what="upgrade values", rerun=rerun
    )
    raise typer.Exit(code)


def _checked_input(config: Path, to: str, cluster: str | None) -> tuple[MeshSpec, str]:
    from clustermesh.cilium.profiles import profile_for
    from clustermesh.errors import ClusterMeshError
    from clustermesh.spec import load_spec

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
    return spec, to.removeprefix("v")


def _read_plan(spec: MeshSpec, target: str, cluster: str | None) -> UpgradePlan:
    from clustermesh.errors import ClusterMeshError
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.lifecycle.upgrade_values import plan_mesh_upgrade

    try:
        return plan_mesh_upgrade(
            spec, lambda c: open_cluster(c, request_timeout=spec.timeouts.api), target, only=cluster
        )
    except ClusterMeshError as exc:
        fail(str(exc), 1)


def _show(upgrade_plan: UpgradePlan, output: Format) -> None:
    if output == "json":
        typer.echo(json.dumps({**upgrade_plan.report().as_dict(), "plan": upgrade_plan.as_dict()}, indent=2))
        return
    typer.echo(upgrade_plan.report().render_text())
    if any(p.fixes or p.blocking for p in upgrade_plan.clusters):
        typer.echo("")
        typer.echo(upgrade_plan.render_text())


def _run_prepare(spec: MeshSpec, target: str, cluster: str | None) -> int:
    from cli import app as main

    main._prefect_api()
    from clustermesh.errors import ClusterMeshError
    from clustermesh.stopping import stop_requested
    from flows.mesh_upgrade import mesh_upgrade_prepare

    try:
        result = mesh_upgrade_prepare(spec, target, cluster=cluster)
    except ClusterMeshError as exc:
        if not stop_requested():
            typer.echo(f"upgrade values failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0
