"""What every lifecycle command (remove, certs renew, ca rotate) does around its flow, once.

The plan is read straight from the clusters (no Prefect) and printed: ``--plan`` stops there; otherwise, on a
terminal the command asks before writing (``--yes`` skips the question; without a terminal ``--yes`` is
required), then runs the flow through ``cli.app._flow_command`` (the warm runner, the mesh lock, signals).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import typer

from cli.common import fail

if TYPE_CHECKING:
    from clustermesh.spec import MeshSpec


class Plan(Protocol):
    """What a lifecycle plan shows: its text, and whether it would write anything."""

    def render_text(self) -> str: ...

    @property
    def changing(self) -> Any: ...


def plan_then_run(
    spec: MeshSpec,
    *,
    read_plan: Callable[[], Plan],
    plan_only: bool,
    yes: bool,
    question: str | Callable[[Any], str],
    command: str,
    what: str,
    rerun: str,
    run: Callable[[], int],
    refused: Callable[[Any], bool] | None = None,
) -> NoReturn:
    """Print the plan; unless ``plan_only``, ask ``question`` (a text, or made from the plan) or take ``yes``,
    then run the flow; exits. A plan ``refused`` says no ends the command (exit 1) right after it is shown."""
    from cli import app as main  # cli.app registers the commands: imported here, not at import time

    if not yes or plan_only:
        shown = read_plan()
        typer.echo(shown.render_text())
        if refused is not None and refused(shown):
            fail("refused: nothing written (the reason and the fix are above)", 1)
        if plan_only:
            raise typer.Exit(0)
        if shown.changing:
            confirm(question if isinstance(question, str) else question(shown))
        if main._main_program and "--yes" not in sys.argv:
            sys.argv.append("--yes")  # the warm runner re-runs this command line: answered once is enough
    main._warm()
    raise typer.Exit(main._flow_command(spec, command, run, what=what, rerun=rerun))


def confirm(question: str) -> None:
    """Ask on a terminal; without one, or without a yes, nothing is written and the command fails."""
    if not sys.stdin.isatty():
        fail("not a terminal, so nothing was asked and nothing written: pass --yes to write the plan above")
    if not typer.confirm(question, default=False):
        fail("not confirmed: nothing written", 1)


def run_flow(command: str, call: Callable[[], Any]) -> int:
    """Run a lifecycle flow in this process: print its result; exit code 1 when it failed or its verdict is FAIL."""
    from cli import app as main

    main._prefect_api()
    from clustermesh.errors import ClusterMeshError
    from clustermesh.stopping import stop_requested

    try:
        result = call()
    except ClusterMeshError as exc:
        if not stop_requested():
            typer.echo(f"{command} failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0


__all__ = ["Plan", "confirm", "plan_then_run", "run_flow"]
