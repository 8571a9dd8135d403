"""What each lifecycle flow costs as the mesh grows: wall time and values writes per cluster (issue 14).

Run: ``uv run python bench/lifecycle.py [--sizes 2,8,16] [--flows join,leave,renew,rotate] [--cilium-version 1.19]``.
For each size N, one instant sandbox (``clustermesh sandbox up --time-scale 0 --nodes 2``, its own process) and,
one after the other on it:

- **join**: the first N-1 clusters are meshed by ``cluster_mesh_setup`` (not timed), then the spec of all N runs
  it again: the time of adding one cluster. At N = 2 there is no 1-cluster mesh (a spec needs two clusters), so the
  figure is the setup of both from nothing;
- **renew**: every member's clustermesh certificates are expired first (the sandbox's ``expire-certs`` fault),
  then ``mesh_renew_certificates(spec)`` re-issues them all and hands the new ones to every holder;
- **rotate**: ``mesh_rotate_ca(spec)``, every member's CA with trust overlap, one member at a time;
- **leave**: ``mesh_remove_cluster(spec, cluster-N)``.

Renew and rotate are imported when they run: where ``flows.mesh_renew`` or ``flows.mesh_ca`` is missing the row
says "not available". Writes are counted as the change of every ``cilium`` ApplicationInstallation's
``metadata.generation`` (the API server bumps it on each spec change, and only then), read with the official
client: a re-issue that does not touch the values (certgen's job) is not a values write. The writes column
shows how many clusters got how many writes (``7×1 1×2``: seven clusters one write each, one cluster two).

One temporary Prefect server (``prefect_test_harness``, its own PREFECT_HOME) serves the whole bench; its
start-up is not in the figures, and the first (untimed) setup of each size warms imports. Endpoint caching is
off (CLUSTERMESH_RESULT_KEY unset). The spec is the sandbox's own ``mesh.yaml`` (the chart check as it
configures it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import sandbox_argv, wait_for_ready  # noqa: E402

FLOWS = ("join", "renew", "rotate", "leave")  # the order they run in on one sandbox
AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")
RESULT_PREFIX = "RESULT "


@dataclass
class Figure:
    clusters: int
    flow: str
    seconds: float | None = None
    writes: dict[str, int] | None = None
    outcome: str = ""

    def writes_text(self) -> str:
        if self.writes is None:
            return "-"
        spread = Counter(self.writes.values())
        return " ".join(f"{spread[w]}×{w}" for w in sorted(spread))


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}, {platform.machine()}"


@contextmanager
def sandbox(directory: Path, clusters: int, cilium_version: str) -> Iterator[Path]:
    """An instant sandbox in its own process; yields its ``mesh.yaml``."""
    argv = sandbox_argv(directory, "--clusters", str(clusters), "--nodes", "2", "--cilium-version", cilium_version)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=300, poll=0.05, error=SystemExit)
        yield directory / "mesh.yaml"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def without_last(mesh_yaml: Path) -> Path:
    """The sandbox's spec without its last cluster, written beside it."""
    data = yaml.safe_load(mesh_yaml.read_text())
    data["clusters"] = data["clusters"][:-1]
    path = mesh_yaml.parent / "mesh-without-last.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def generations(mesh_yaml: Path) -> dict[str, int]:
    """Every cluster's ``cilium`` ApplicationInstallation ``metadata.generation``, with the official client."""
    from kubernetes import client, config

    out: dict[str, int] = {}
    for cluster in yaml.safe_load(mesh_yaml.read_text())["clusters"]:
        ref = cluster["kubeconfig"]
        api = config.new_client_from_config(config_file=ref["path"], context=ref.get("context"))
        try:
            ai = client.CustomObjectsApi(api).get_namespaced_custom_object(*AI)
            out[cluster["name"]] = int(ai["metadata"]["generation"])
        finally:
            api.close()
    return out


def outcome(result: Any) -> str:
    """A short verdict from whatever the flow returned."""
    health = getattr(result, "health", None)
    if health is not None:
        return "healthy" if health.healthy else "UNHEALTHY"
    if not hasattr(result, "status"):
        return type(result).__name__
    return "done, no mesh left to verify" if result.status is None else str(result.status)


def measure(figure: Figure, mesh_yaml: Path, run: Callable[[], Any]) -> Figure:
    """Time ``run`` and count the values writes it made on every cluster; a failure is the row's outcome."""
    before = generations(mesh_yaml)
    start = time.perf_counter()
    try:
        result = run()
        figure.outcome = outcome(result)
    except Exception as exc:  # noqa: BLE001 - a bench reports a failing flow and goes on
        figure.outcome = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    figure.seconds = time.perf_counter() - start
    after = generations(mesh_yaml)
    figure.writes = {name: after[name] - before[name] for name in after}
    return figure


def lazy_flow(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` when the module exists (another flow may not be written yet), else None."""
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except ModuleNotFoundError:
        return None


def expire_all(directory: Path, clusters: list[str]) -> str:
    """Every member's clustermesh certificates expired (so renew has them all due); what failed, or ""."""
    from sandbox.process import send_fault

    for name in clusters:
        try:
            send_fault(directory, "expire-certs", cluster=name)
        except Exception as exc:  # noqa: BLE001 - the sandbox answered with an error (or not JSON)
            return f"the sandbox's expire-certs fault failed on {name}: {type(exc).__name__}: {exc}"[:160]
    return ""


def run_size(n: int, flows: list[str], tmp: Path, cilium_version: str, report: Callable[[Figure], None]) -> None:
    """Every wanted flow on one sandbox of ``n`` clusters, in FLOWS' order; each figure is reported when done."""
    from clustermesh.spec import load_spec
    from flows.mesh_remove import mesh_remove_cluster
    from flows.mesh_setup import cluster_mesh_setup

    with sandbox(tmp / f"mesh-{n}", n, cilium_version) as mesh_yaml:
        spec = load_spec(mesh_yaml)
        if n >= 3:
            cluster_mesh_setup(load_spec(without_last(mesh_yaml)))  # the N-1 mesh, not timed
        if "join" in flows:
            report(measure(Figure(n, "join"), mesh_yaml, lambda: cluster_mesh_setup(spec)))
        else:
            cluster_mesh_setup(spec)
        lifecycle = {
            "renew": ("flows.mesh_renew", "mesh_renew_certificates"),
            "rotate": ("flows.mesh_ca", "mesh_rotate_ca"),
        }
        for name, (module, function) in lifecycle.items():
            if name not in flows:
                continue
            run = lazy_flow(module, function)
            if run is None:
                report(Figure(n, name, outcome=f"not available ({module} missing)"))
                continue
            if name == "renew" and (refused := expire_all(mesh_yaml.parent, [c.name for c in spec.clusters])):
                report(Figure(n, name, outcome=f"not measured: {refused}"))
                continue
            report(measure(Figure(n, name), mesh_yaml, lambda run=run: run(spec, cluster=None, require_approval=False)))
        if "leave" in flows:
            last = spec.clusters[-1].name
            report(measure(Figure(n, "leave"), mesh_yaml, lambda: mesh_remove_cluster(spec, last)))


def print_row(f: Figure) -> None:
    seconds = "-" if f.seconds is None else f"{f.seconds:.1f}"
    total = "-" if f.writes is None else str(sum(f.writes.values()))
    print(f"{f.clusters:>8}  {f.flow:<6}  {seconds:>7}  {f.writes_text():<20}  {total:>6}  {f.outcome}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="2,8,16", help="mesh sizes, comma-separated (default 2,8,16)")
    parser.add_argument("--flows", default="join,leave,renew,rotate", help=f"any of {','.join(FLOWS)}")
    parser.add_argument("--cilium-version", default="1.19", help="Cilium line of the sandboxes (default 1.19)")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(n < 2 for n in args.sizes):
        parser.error(f"--sizes {args.sizes}: a mesh has at least 2 clusters")
    wanted = {f.strip() for f in args.flows.split(",") if f.strip()}
    if unknown := wanted - set(FLOWS):
        parser.error(f"--flows: unknown {', '.join(sorted(unknown))}; use any of {','.join(FLOWS)}")
    args.flows = [f for f in FLOWS if f in wanted]
    return args


def main() -> None:
    args = parse_args()
    os.environ.pop("CLUSTERMESH_RESULT_KEY", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")  # the table stays readable; failures still show
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL"):
        os.environ.pop(name, None)  # a bench posts nothing

    import logging

    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("prefect").setLevel(logging.ERROR)
    print(f"sandbox: Cilium {args.cilium_version}, 2 nodes per cluster, time scale 0, served by its own process")
    with tempfile.TemporaryDirectory(prefix="clustermesh-lifecycle-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}
        os.environ["CLUSTERMESH_STATE_DIR"] = str(tmp / "state")  # the bench's own mesh locks
        start = time.perf_counter()
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=120):
            print(f"prefect test server start-up: {time.perf_counter() - start:.1f} s (not in the figures)")
            print()
            print(f"{'clusters':>8}  {'flow':<6}  {'wall s':>7}  {'values writes':<20}  {'total':>6}  outcome")
            figures: list[Figure] = []

            def report(figure: Figure) -> None:
                print_row(figure)
                figures.append(figure)

            for n in args.sizes:
                run_size(n, args.flows, tmp, args.cilium_version, report)
    print()
    print(f"machine: {machine()}")
    line = {"cores": os.cpu_count(), "python": platform.python_version(), "figures": [vars(f) for f in figures]}
    print(RESULT_PREFIX + json.dumps(line))


if __name__ == "__main__":
    main()
