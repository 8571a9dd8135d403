"""The ``clustermesh`` command line.

Typer, because Prefect already depends on it (no new dependency) and its type-annotated options give
``--help`` texts and value checking for free. The CLI is the composition root: it is the one module
of ``clustermesh/`` allowed to reach the flows and the sandbox (import-linter knows this exception).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from clustermesh.spec import MeshSpec

app = typer.Typer(
    help="Cilium Cluster Mesh between KKP user clusters: set up, verify, rehearse failover, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(help="Simulated KKP clusters with Cilium, on this machine.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

DirOption = Annotated[Path, typer.Option("--dir", help="Folder for kubeconfigs, mesh.yaml and sandbox.json.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@sandbox_app.command("up")
def sandbox_up(
    directory: DirOption = Path("sandbox-run"),
    clusters: Annotated[int, typer.Option(help="How many user clusters (1 to 64).")] = 2,
    cilium_version: Annotated[str, typer.Option(help="Cilium line 1.13 to 1.19, optionally with a patch.")] = "1.13",
    nodes: Annotated[int, typer.Option(help="Worker nodes per cluster.")] = 2,
    time_scale: Annotated[
        float,
        typer.Option(help="Scale of simulated delays: 0 = instant, 1 = realistic (LB ~10 s, certgen ~30 s)."),
    ] = 1.0,
    kkp_version: Annotated[
        str | None,
        typer.Option(help="KKP release to imitate (values before 2.25, valuesBlock after); default fits Cilium."),
    ] = None,
    overlap_pod_cidrs: Annotated[
        bool, typer.Option(help="Give cluster-2 the pod CIDR of cluster-1 (to see step 1 refuse it).")
    ] = False,
    kkp: Annotated[
        bool,
        typer.Option(
            "--kkp",
            help="Serve a simulated KKP API with no clusters yet (kkp.json, mesh-kkp.yaml); --clusters is "
            "then the number of KKP references in mesh-kkp.yaml.",
        ),
    ] = False,
) -> None:
    """Serve simulated clusters in the foreground until Ctrl-C or SIGTERM."""
    from sandbox.server import Sandbox, SandboxError, run_foreground

    try:
        sb = Sandbox(
            directory,
            clusters=0 if kkp else clusters,
            cilium_version=cilium_version,
            nodes=nodes,
            time_scale=time_scale,
            kkp_version=kkp_version,
            overlap_pod_cidrs=overlap_pod_cidrs,
            kkp=kkp,
            kkp_spec_clusters=clusters if kkp else 2,
        )
        run_foreground(sb)
    except SandboxError as exc:
        _fail(str(exc))


@sandbox_app.command("down")
def sandbox_down(directory: DirOption = Path("sandbox-run")) -> None:
    """Stop the sandbox serving from DIR."""
    from sandbox.server import SandboxError, stop_running

    try:
        pid = stop_running(directory)
    except SandboxError as exc:
        _fail(str(exc))
    typer.echo(f"sandbox (pid {pid}) stopped")


@sandbox_app.command("fault")
def sandbox_fault(
    kind: Annotated[
        str,
        typer.Argument(
            help="block-port | unblock-port | lb-never | certgen-delay | api-errors | api-latency | "
            "api-down | "
            "expire-certs | rotate-ca | pod-cidr | clear"
        ),
    ],
    directory: DirOption = Path("sandbox-run"),
    cluster: Annotated[str | None, typer.Option(help="Cluster the fault applies to (default: all, for api-*).")] = None,
    between: Annotated[str | None, typer.Option(help="For block-port: two clusters, 'cluster-1,cluster-2'.")] = None,
    port: Annotated[str | None, typer.Option(help="For block-port: udp/8472, tcp/4240, icmp or tcp/2379.")] = None,
    rate: Annotated[float | None, typer.Option(help="For api-errors: share of requests that fail (0..1).")] = None,
    seconds: Annotated[float | None, typer.Option(help="For api-latency and certgen-delay.")] = None,
    off: Annotated[bool, typer.Option("--off", help="Turn lb-never or api-down off again.")] = False,
    cidr: Annotated[str | None, typer.Option(help="For pod-cidr: the new pod CIDR of --cluster.")] = None,
) -> None:
    """Inject or clear a fault in a running sandbox."""
    from sandbox.server import SandboxError, send_fault

    args: dict[str, object] = {}
    if cluster:
        args["cluster"] = cluster
    if kind in ("block-port", "unblock-port"):
        if not between or "," not in between or not port:
            _fail(f"{kind} needs --between A,B and --port (udp/8472, tcp/4240, icmp, tcp/2379)")
        assert between is not None
        a, b = between.split(",", 1)
        args.update(a=a.strip(), b=b.strip(), port=port)
    if rate is not None:
        args["rate"] = rate
    if seconds is not None:
        args["seconds"] = seconds
    if cidr is not None:
        args["cidr"] = cidr
    if kind in ("lb-never", "api-down"):
        args["on"] = not off
    try:
        result = send_fault(directory, kind, **args)
    except SandboxError as exc:
        _fail(str(exc))
    typer.echo(f"ok: {result}")


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

    spec = _load(config)
    if plan:
        from clustermesh.kube.credentials import open_cluster
        from clustermesh.steps.plan import plan_setup

        try:
            result = plan_setup(spec, lambda c: open_cluster(c, request_timeout=spec.timeouts.api))
        except ClusterMeshError as exc:
            _fail(str(exc), 1)
        typer.echo(result.render_text())
        return
    raise typer.Exit(_run_setup(spec))


def _run_setup(spec: MeshSpec) -> int:
    from clustermesh.errors import ClusterMeshError
    from flows.mesh_setup import cluster_mesh_setup

    try:
        result = cluster_mesh_setup(spec)
    except ClusterMeshError as exc:
        typer.echo(f"setup failed: {exc}", err=True)
        return 1
    typer.echo(result.describe())
    typer.echo(result.health.render_text())
    return 0 if result.health.healthy else 1


clusters_app = typer.Typer(help="KKP user clusters of the mesh, through the KKP REST API.", no_args_is_help=True)
app.add_typer(clusters_app, name="clusters")


@clusters_app.command("create")
def clusters_create(
    config: ConfigOption,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would be created; create nothing.")] = False,
) -> None:
    """Create the spec's missing KKP user clusters (Cilium, ebpf, free pod CIDRs); wait until healthy."""
    from clustermesh.errors import ClusterMeshError

    spec = _load(config)
    try:
        if plan:
            from clustermesh.kkp.clusters import plan_user_clusters

            typer.echo(plan_user_clusters(spec).describe())
            return
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
    raise typer.Exit(_run_verify(_load(config), drill))


def _run_verify(spec: MeshSpec, drill: bool) -> int:
    from flows.mesh_verify import nightly_mesh_verification

    state: Any = nightly_mesh_verification(spec, run_drill=drill, return_state=True)
    result: Any = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        typer.echo(f"verification could not run: {result}", err=True)
        return 1
    typer.echo(result.describe())
    return 1 if result.status == "FAIL" else 0


@app.command("drill")
def drill_command(config: ConfigOption) -> None:
    """The failover drill alone: exit 0 only when it passed."""
    from flows.failover_drill import failover_drill

    result = failover_drill(_load(config))
    typer.echo(result.summary())
    for row in result.table_rows():
        typer.echo("  " + " | ".join(f"{k}: {v}" for k, v in row.items() if v))
    raise typer.Exit(0 if result.status == "passed" else 1)


@app.command("demo")
def demo(
    clusters: Annotated[int, typer.Option(help="How many sandbox clusters.")] = 2,
    cilium_version: Annotated[str, typer.Option(help="Cilium line of the sandbox, 1.13 to 1.19.")] = "1.13",
    time_scale: Annotated[float, typer.Option(help="Sandbox delays: 0 = instant, 1 = realistic.")] = 0.0,
) -> None:
    """Start a sandbox in this process, set up the mesh, verify it with the drill, stop the sandbox."""
    import tempfile

    from clustermesh.spec import load_spec
    from sandbox.server import Sandbox, SandboxError

    with tempfile.TemporaryDirectory(prefix="clustermesh-demo-") as tmp:
        try:
            sb = Sandbox(Path(tmp), clusters=clusters, cilium_version=cilium_version, time_scale=time_scale)
        except SandboxError as exc:
            _fail(str(exc))
        with sb:
            typer.echo(f"sandbox: {clusters} clusters, Cilium {cilium_version}, KKP {sb.kkp_version}, in {tmp}")
            spec = load_spec(Path(tmp) / "mesh.yaml")
            code = _run_setup(spec)
            if code == 0:
                typer.echo("\nnightly verification with the failover drill:")
                code = _run_verify(spec, drill=True)
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
) -> None:
    """Store kubeconfigs and tokens as Secret blocks, create the mesh's concurrency limit and failure alert.

    Idempotent: re-running updates. Prints a spec that references the blocks by name (for deployment runs).
    """
    from deployments.blocks import RegistrationError, register

    spec = _load(config)
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
    typer.echo(result.render())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
