"""The ``clustermesh`` command line.

Typer, because Prefect already depends on it (no new dependency) and its type-annotated options give
``--help`` texts and value checking for free. The CLI is the composition root: the one package that reaches
the flows, the deployments and the sandbox together (``cli.sandbox_commands``, ``cli.server_commands`` hold
two groups of commands).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from cli.ca_command import ca_app
from cli.certs_command import certs_app
from cli.common import fail as _fail
from cli.remove_command import remove as remove_cluster
from cli.sandbox_commands import sandbox_app
from cli.server_commands import server_app
from cli.upgrade_command import upgrade_check_command

if TYPE_CHECKING:
    from cli.server import TemporaryServer
    from clustermesh.spec import MeshSpec

# Import time: this module imports typer only; the domain, Prefect and the sandbox are imported inside the
# command that needs them, and Prefect only once `_prefect_api` has chosen the server (Prefect reads its
# settings at import). `clustermesh --help` or `setup --plan` never import Prefect.


class _App(typer.Typer):
    """The Typer app, ending the process as soon as a command that ran a Prefect flow has finished.

    A process that imported Prefect, the flows and the Kubernetes client spends about half a second in the
    interpreter's own teardown (freeing every module) after Prefect's exit handlers have run. When a command
    ran a flow, ``app()`` (the ``clustermesh`` script and ``python -m cli.app``) runs what the interpreter
    would (threading's exit hooks: Prefect drains its log and event workers; then the ``atexit``
    handlers: the event-loop threads, a temporary server), flushes stdout and stderr and ends with
    ``os._exit``. In-process callers (``typer.testing.CliRunner``) do not go through ``__call__``.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        global _main_program
        _main_program = True
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            if _ran_prefect:
                _exit_now(exc.code)
            raise


def _exit_now(code: object) -> NoReturn:
    import atexit
    import contextlib
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first when it exits
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


_ran_prefect = False  # this process chose a Prefect API (and so imports Prefect)
_temporary: TemporaryServer | None = None  # the temporary server this process started (stopped on exit)
_main_program = False  # the command line runs through `app()` (the script, `python -m cli.app`, a warm child)
_in_runner = False  # this process is a child of the warm runner (cli/runner.py): it runs the command itself


def run_as_program() -> int:
    """The warm runner's child runs its caller's command line (``sys.argv``) like the ``clustermesh`` script."""
    global _in_runner
    _in_runner = True
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _warm() -> None:
    """Hand this command line to the warm runner of a `clustermesh server` session if one runs (it forks a
    process that has imported Prefect, the flows and the Kubernetes client already) and exit with its
    status; otherwise return, and the command runs here."""
    if not _main_program or _in_runner:
        return
    from cli.runner import delegate
    from cli.server import state_dir

    code = delegate(sys.argv, state_dir())
    if code is not None:
        raise typer.Exit(code)


def _prefect_api() -> None:
    """Choose the Prefect API before Prefect is imported: PREFECT_API_URL (environment or profile), else a
    running `clustermesh server`, else a temporary server for this command (and say how to avoid it next
    time). The temporary server runs in a session of its own (Ctrl-C is the command's, not the server's) and
    is stopped when the command ends (cli/server.py)."""
    global _ran_prefect, _temporary
    if _ran_prefect:
        return  # chosen already (the demo runs two flows)
    import atexit

    from cli.server import TEMPORARY_SERVER_HINT, ServerError, start_temporary_server, use_prefect_api

    _ran_prefect = True
    if use_prefect_api().source == "temporary":
        typer.echo(TEMPORARY_SERVER_HINT, err=True)
        try:
            _temporary = start_temporary_server()
        except ServerError as exc:
            _fail(str(exc), 1)
            raise  # unreachable: _fail exits
        atexit.register(_stop_temporary)  # after Prefect's own exit handlers, which still send logs to it
        os.environ["PREFECT_API_URL"] = _temporary.url
    if _in_runner:  # Prefect was imported by the warm runner: read its settings again, from this environment
        import prefect.context
        import prefect.logging.configuration

        prefect.context.refresh_global_settings_context()
        prefect.logging.configuration.setup_logging(incremental=False)


def _stop_temporary() -> None:
    global _temporary
    server, _temporary = _temporary, None
    if server is not None:
        server.stop()


app = _App(
    help="Cilium Cluster Mesh between KKP user clusters: set up, verify, rehearse failover, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(server_app, name="server")
app.command("upgrade-check")(upgrade_check_command)

ConfigOption = Annotated[Path, typer.Option("--config", help="The mesh spec (YAML), e.g. the sandbox's mesh.yaml.")]


def _load(config: Path) -> MeshSpec:
    from clustermesh.errors import SpecError
    from clustermesh.spec import load_spec

    try:
        return load_spec(config)
    except SpecError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@app.command("setup")
def setup(
    config: ConfigOption,
    plan: Annotated[bool, typer.Option("--plan", help="Print each cluster's values diff; write nothing.")] = False,
) -> None:
    """Set up Cluster Mesh between the spec's clusters (the KKP guide's steps 1-8). Exit 0 only when healthy."""
    from clustermesh.errors import ClusterMeshError

    if not plan:
        _warm()
    spec = _load(config)
    if plan:
        from clustermesh.kube.credentials import open_cluster
        from clustermesh.steps.plan import plan_setup

        try:
            result = plan_setup(spec, lambda c: open_cluster(c, request_timeout=spec.timeouts.api))
        except ClusterMeshError as exc:
            _fail(str(exc), 1)
        typer.echo(result.render_text())
        if result.blocked:  # the chart refuses a cluster's values: the setup would stop before writing
            raise typer.Exit(1)
        return
    rerun = f"a rerun continues safely from there: `clustermesh setup --config {config}` writes only what is missing"
    raise typer.Exit(_flow_command(spec, "setup", lambda: _run_setup(spec), what="setup", rerun=rerun))


def _run_setup(spec: MeshSpec) -> int:
    _prefect_api()
    from clustermesh.errors import ClusterMeshError
    from clustermesh.stopping import stop_requested
    from flows.mesh_setup import cluster_mesh_setup

    _quiet_setup_summary(spec)
    try:
        result = cluster_mesh_setup(spec)
    except ClusterMeshError as exc:
        if not stop_requested():  # a stop is reported by _flow_command
            typer.echo(f"setup failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    typer.echo(result.health.render_text())
    return 0 if result.health.healthy else 1


def _flow_command(spec: MeshSpec, command: str, body: Callable[[], int], *, what: str, rerun: str) -> int:
    """Run ``body`` (a flow of mesh ``spec``) the way every flow command does, and return its exit status.

    It holds the mesh on this machine for the whole command (cli/meshlock.py: a second command of the
    mesh waits, saying so) and makes sure the mesh's Prefect limit exists on the chosen server. Ctrl-C,
    SIGTERM or SIGHUP stop it before the next write (cli/interrupt.py); it then says what was written and
    that a rerun is safe (``rerun``), and exits with 128 + the signal.
    """
    from cli.interrupt import Interrupts, stopped_lines
    from clustermesh import stopping

    with Interrupts(lambda: stopped_lines(what, rerun), _stop_temporary) as interrupts:
        code = 1
        try:
            _prefect_api()
            with _holding_mesh(spec, command):
                code = body()
        except KeyboardInterrupt:
            stopping.request_stop("SIGINT")  # already, unless Python's own handler raised it
        except SystemExit:
            raise
        except BaseException:
            if not interrupts.interrupted:
                raise  # Prefect's TerminationSignal, or an error the stop caused: the stop is what to report
        if interrupts.interrupted:
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                for line in stopped_lines(what, rerun):
                    typer.echo(line, err=True)
            return interrupts.exit_code
        return code


@contextlib.contextmanager
def _holding_mesh(spec: MeshSpec, command: str) -> Iterator[None]:
    """The mesh's lock on this machine, and its Prefect limit on the chosen server (created if missing)."""
    from cli.meshlock import MeshBusy, ensure_limit, hold_mesh
    from cli.server import state_dir
    from flows.locking import LOCK_WAIT_SECONDS, mesh_lock_name

    try:
        with hold_mesh(
            state_dir(), spec.name, command, wait_seconds=LOCK_WAIT_SECONDS, say=lambda line: typer.echo(line, err=True)
        ):
            try:
                ensure_limit(mesh_lock_name(spec))
            except Exception as exc:  # noqa: BLE001 - the API is unreachable or refuses: nothing was touched
                url = os.environ.get("PREFECT_API_URL", "the Prefect API")
                _fail(f"{url} could not be asked for limit {mesh_lock_name(spec)}: {exc}", 1)
            yield
    except MeshBusy as exc:
        _fail(str(exc), 1)


def _quiet_setup_summary(spec: MeshSpec) -> None:
    """The setup flow logs its summary (every values change) for the UI; this command prints the same text
    on stdout next, so the terminal's copy of that log line is left out (the API still gets it)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    prefix = f"mesh {spec.name}: "

    def not_the_summary(record: logging.LogRecord) -> bool:
        if record.name != "prefect.flow_runs" or record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        return not (message.startswith(prefix) and "\n  " in message and " clusters, health: " in message)

    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root logger
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(not_the_summary)


app.command("remove")(remove_cluster)  # cli/remove_command.py: a cluster leaves the mesh
app.add_typer(certs_app, name="certs")  # cli/certs_command.py: certs renew
app.add_typer(ca_app, name="ca")  # cli/ca_command.py: ca rotate

clusters_app = typer.Typer(help="KKP user clusters of the mesh, through the KKP REST API.", no_args_is_help=True)
app.add_typer(clusters_app, name="clusters")


@clusters_app.command("create")
def clusters_create(
    config: ConfigOption,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would be created; create nothing.")] = False,
) -> None:
    """Create the spec's missing KKP user clusters (Cilium, ebpf, free pod CIDRs); wait until healthy."""
    from clustermesh.errors import ClusterMeshError

    if not plan:
        _warm()
    spec = _load(config)
    try:
        if plan:
            from clustermesh.kkp.clusters import plan_user_clusters

            typer.echo(plan_user_clusters(spec).describe())
            return
        _prefect_api()
        from flows.create_clusters import create_user_clusters

        result = create_user_clusters(spec)
    except ClusterMeshError as exc:
        typer.echo(f"clusters create failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.describe())


@app.command("verify")
def verify(
    config: ConfigOption,
    drill: Annotated[bool, typer.Option("--drill/--no-drill", help="Run the failover drill as part of it.")] = True,
) -> None:
    """The nightly verification, now: exit 0 when it passes (warnings allowed), 1 when it fails."""
    _warm()
    spec = _load(config)
    raise typer.Exit(
        _flow_command(spec, "verify", lambda: _run_verify(spec, drill), what="verification", rerun=_VERIFY_RERUN)
    )


_VERIFY_RERUN = (
    "the verification writes nothing but the drill's scaling, undone by its rollback (the next drill restores "
    "anything left); a rerun is safe"
)


def _run_verify(spec: MeshSpec, drill: bool) -> int:
    _prefect_api()
    from flows.mesh_verify import nightly_mesh_verification, verification_result

    state: Any = nightly_mesh_verification(spec, run_drill=drill, return_state=True)
    result = verification_result(state)
    if result is None:
        error = state.result(raise_on_failure=False)
        typer.echo(
            f"verification could not run: {error if isinstance(error, BaseException) else state.message}", err=True
        )
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0


@app.command("drill")
def drill_command(
    config: ConfigOption,
    scenario: Annotated[
        str,
        typer.Option(
            help="scale-to-zero: backends scaled to 0 one cluster at a time; cluster-loss: one member's "
            "clustermesh-apiserver scaled to 0, the others watched; mcs: the failover through an MCS-API "
            "exported service (cilium.mcs_api)."
        ),
    ] = "scale-to-zero",
    cluster: Annotated[str | None, typer.Option(help="Disrupt only this cluster (default: each in turn).")] = None,
) -> None:
    """The failover drill alone: exit 0 only when it passed."""
    _warm()
    spec = _load(config)
    if scenario not in ("scale-to-zero", "cluster-loss", "mcs"):
        typer.echo(f"--scenario {scenario!r} is not a drill scenario: use scale-to-zero, cluster-loss or mcs", err=True)
        raise typer.Exit(2)
    if cluster is not None and cluster not in [c.name for c in spec.clusters]:
        names = ", ".join(c.name for c in spec.clusters)
        typer.echo(f"--cluster {cluster!r} is not a cluster of {config}: use one of {names}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(
        _flow_command(spec, "drill", lambda: _run_drill(spec, scenario, cluster), what="drill", rerun=_DRILL_RERUN)
    )


_DRILL_RERUN = "the drill's rollback undid its scaling (the next drill restores anything left); a rerun is safe"


def _run_drill(spec: MeshSpec, scenario: str = "scale-to-zero", cluster: str | None = None) -> int:
    _prefect_api()
    from flows.failover_drill import failover_drill

    chosen: Literal["scale-to-zero", "cluster-loss", "mcs"] = (
        "mcs" if scenario == "mcs" else "cluster-loss" if scenario == "cluster-loss" else "scale-to-zero"
    )
    result = failover_drill(spec, scenario=chosen, cluster=cluster)
    typer.echo(result.summary())
    for row in result.table_rows():
        typer.echo("  " + " | ".join(f"{k}: {v}" for k, v in row.items() if v))
    return 0 if result.status == "passed" else 1


@app.command("demo")
def demo(
    clusters: Annotated[int, typer.Option(help="How many sandbox clusters.")] = 2,
    cilium_version: Annotated[str, typer.Option(help="Cilium line of the sandbox, 1.13 to 1.20.")] = "1.13",
    time_scale: Annotated[float, typer.Option(help="Sandbox delays: 0 = instant, 1 = realistic.")] = 0.0,
    charts: Annotated[
        Path | None, typer.Option("--charts", help="Folder of cilium-<version>.tgz: the sandbox installs real charts.")
    ] = None,
) -> None:
    """Start a sandbox in this process, set up the mesh, verify it with the drill, stop the sandbox."""
    import tempfile

    from clustermesh.spec import load_spec
    from sandbox.server import Sandbox, SandboxError

    # a demo phones nobody: no client telemetry, no server analytics (a machine without internet printed
    # "Failed to send telemetry")
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="clustermesh-demo-") as tmp:
        try:
            sb = Sandbox(
                Path(tmp), clusters=clusters, cilium_version=cilium_version, time_scale=time_scale, charts=charts
            )
        except SandboxError as exc:
            _fail(str(exc))
        with sb:
            typer.echo(f"sandbox: {clusters} clusters, Cilium {cilium_version}, KKP {sb.kkp_version}, in {tmp}")
            spec = load_spec(Path(tmp) / "mesh.yaml")

            def setup_and_verify() -> int:
                code = _run_setup(spec)
                if code == 0:
                    typer.echo("\nnightly verification with the failover drill:")
                    code = _run_verify(spec, drill=True)
                return code

            rerun = "the sandbox goes with the demo: nothing is left to continue"
            code = _flow_command(spec, "demo", setup_and_verify, what="demo", rerun=rerun)
    raise typer.Exit(code)


blocks_app = typer.Typer(help="Prefect blocks, limits and alerts a deployed mesh needs.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


@blocks_app.command("register")
def blocks_register(
    config: ConfigOption,
    slack_token_env: Annotated[
        str, typer.Option(help="NAME of the env var holding the Slack bot token ('' = skip).")
    ] = "SLACK_BOT_TOKEN",
    result_key_env: Annotated[
        str, typer.Option(help="NAME of the env var holding the result-encryption (Fernet) key ('' = skip).")
    ] = "CLUSTERMESH_RESULT_KEY",
    webhook_env: Annotated[
        str,
        typer.Option(help="NAME of the env var holding a Slack incoming-webhook URL for the failure automation."),
    ] = "CLUSTERMESH_ALERT_WEBHOOK_URL",
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="text: what was registered and the spec as YAML (for the UI's form); json: only "
            '{"spec": ...} on stdout, what `prefect deployment run --params` takes (the rest goes to stderr).',
        ),
    ] = "text",
) -> None:
    """Store kubeconfigs and tokens as Secret blocks, create the mesh's concurrency limit and failure alert.

    Idempotent: re-running updates. Prints a spec that references the blocks by name (for deployment runs).
    """
    if output_format not in ("text", "json"):
        _fail(f"--format {output_format!r}: use text or json")
    _warm()
    spec = _load(config)
    _prefect_api()
    from deployments.blocks import RegistrationError, register, snippet_json

    try:
        result = register(
            spec,
            slack_token_env=slack_token_env or None,
            result_key_env=result_key_env or None,
            webhook_env=webhook_env or None,
        )
    except RegistrationError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    if output_format == "json":
        summary, _, _ = result.render().partition("\n\n# Spec for deployment parameters")
        typer.echo(summary, err=True)
        typer.echo(snippet_json(result))
        return
    typer.echo(result.render())
    typer.echo("(for `prefect deployment run --params`: `clustermesh blocks register --format json` prints it as JSON)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
