"""``clustermesh sandbox up|down|fault|upgrade|calendar``: simulated KKP clusters with Cilium on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail as _fail

sandbox_app = typer.Typer(help="Simulated KKP clusters with Cilium, on this machine.", no_args_is_help=True)

DirOption = Annotated[Path, typer.Option("--dir", help="Folder for kubeconfigs, mesh.yaml and sandbox.json.")]


@sandbox_app.command("up")
def sandbox_up(
    directory: DirOption = Path("sandbox-run"),
    clusters: Annotated[int, typer.Option(help="How many user clusters (1 to 64).")] = 2,
    cilium_version: Annotated[str, typer.Option(help="Cilium line 1.13 to 1.20, optionally with a patch.")] = "1.13",
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
    charts: Annotated[
        Path | None,
        typer.Option(
            "--charts",
            help="Folder of cilium-<version>.tgz: KKP installs the real Cilium chart of each cluster's exact "
            "version (needs `uv sync --group charts`); default: the sandbox's own, faster renderer.",
        ),
    ] = None,
) -> None:
    """Serve simulated clusters in the foreground until Ctrl-C or SIGTERM."""
    from sandbox.process import SandboxError, run_foreground
    from sandbox.server import Sandbox

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
            charts=charts,
        )
        run_foreground(sb)
    except SandboxError as exc:
        _fail(str(exc))


@sandbox_app.command("down")
def sandbox_down(directory: DirOption = Path("sandbox-run")) -> None:
    """Stop the sandbox serving from DIR."""
    from sandbox.process import SandboxError, stop_running

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
    from sandbox.process import SandboxError, send_fault

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


@sandbox_app.command("upgrade")
def sandbox_upgrade(
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster whose Cilium KKP upgrades (cluster-1).")],
    to: Annotated[str, typer.Option("--to", help="The Cilium version: a line (1.19) or a patch (1.19.4).")],
    directory: DirOption = Path("sandbox-run"),
) -> None:
    """Upgrade one cluster's Cilium the way KKP does: a new chart version, the same values."""
    from sandbox.process import SandboxError, send_upgrade

    try:
        result = send_upgrade(directory, cluster, to)
    except SandboxError as exc:
        _fail(str(exc))
    typer.echo(
        f"{result['cluster']}: cilium ApplicationInstallation set to {result['to']} (was {result['from']}); "
        "KKP installs it now (kubectl -n kube-system get applicationinstallation cilium)"
    )


@sandbox_app.command("calendar")
def sandbox_calendar(
    advance_days: Annotated[
        float, typer.Option("--advance-days", help="Days to move the certificates' calendar on (e.g. 340).")
    ],
    directory: DirOption = Path("sandbox-run"),
) -> None:
    """Move the sandbox's calendar on: certificates age (and expire) as if that many days had passed."""
    from sandbox.process import SandboxError, send_calendar

    try:
        result = send_calendar(directory, advance_days)
    except SandboxError as exc:
        _fail(str(exc))
    typer.echo(
        f"calendar now {result['now']} ({result['offset_days']:g} days ahead of real time); the clusters' APIs send "
        "that date, certgen issues at it and expired certificates break the links that rely on them"
    )
