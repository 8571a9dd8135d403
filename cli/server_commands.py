"""``clustermesh server start|stop|status``: one Prefect server (and a warm runner) for the session."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.common import fail as _fail

server_app = typer.Typer(
    help="One Prefect server (and a warm runner) for the session: commands that run flows use it, unless "
    "PREFECT_API_URL is set, instead of starting a temporary server and importing Prefect each time.",
    no_args_is_help=True,
)


@server_app.command("start")
def server_start(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 180.0,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--no-warm",
            help="Also start the warm runner: flow commands run in a fork of a process that has imported Prefect, "
            "the flows and the Kubernetes client already (about 3 s less per command).",
        ),
    ] = True,
) -> None:
    """Start `prefect server start` in the background (SQLite in the state folder, 127.0.0.1, a free port,
    analytics off) and wait until it answers; nothing to do if it runs already."""
    import time

    from cli.runner import runner_pid
    from cli.server import ServerError, start_server, state_dir

    began = time.monotonic()
    try:
        record, started = start_server(timeout=timeout, warm=warm)
    except ServerError as exc:
        _fail(str(exc), 1)
        raise  # unreachable: _fail exits
    if started:
        typer.echo(f"clustermesh server started in {time.monotonic() - began:.1f} s: {record.url} (pid {record.pid})")
    else:
        typer.echo(f"clustermesh server already running: {record.url} (pid {record.pid})")
    runner = runner_pid(state_dir())
    if runner is not None:
        typer.echo(f"warm runner: pid {runner}")
    typer.echo(f"UI: {record.ui_url}   log: {record.log}   state: {state_dir()}")
    if os.environ.get("PREFECT_API_URL") and os.environ["PREFECT_API_URL"] != record.url:
        typer.echo("note: PREFECT_API_URL is set in this environment, so commands run here use that server instead")
    typer.echo("commands that run flows use it until `clustermesh server stop`")


@server_app.command("stop")
def server_stop(
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = 15.0,
) -> None:
    """Stop the server `clustermesh server start` started and forget it."""
    from cli.server import ServerError, stop_server

    try:
        record = stop_server(grace=grace)
    except ServerError as exc:
        _fail(str(exc), 1)
        raise  # unreachable: _fail exits
    if record is None:
        typer.echo("no clustermesh server running")
    else:
        typer.echo(f"clustermesh server (pid {record.pid}, {record.url}) stopped")


@server_app.command("status")
def server_status() -> None:
    """Say whether the clustermesh server runs (exit 0) or not (exit 1), and which server commands use."""
    from cli.runner import runner_pid
    from cli.server import server_state, state_dir

    state, record = server_state()
    configured = os.environ.get("PREFECT_API_URL")
    runner = runner_pid(state_dir())
    if state == "running" and record is not None:
        typer.echo(f"running: {record.url} (pid {record.pid}), UI {record.ui_url}, log {record.log}")
        typer.echo(f"warm runner: {f'pid {runner}' if runner is not None else 'not running'}")
    elif state == "not answering" and record is not None:
        typer.echo(f"not answering: pid {record.pid} runs but {record.url} does not answer (`server stop` ends it)")
    else:
        typer.echo(f"not running (state folder {state_dir()})")
    if configured and (record is None or configured != record.url):
        typer.echo(f"note: PREFECT_API_URL={configured} is set in this environment: commands run here use it")
    raise typer.Exit(0 if state == "running" else 1)
