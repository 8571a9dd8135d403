"""How the nightly verification scales with the mesh: wall time and peak memory per number of clusters.

Run: ``uv run python bench/scale.py [--clusters 2 4 8 16] [--nodes 50] [--tracemalloc] [--profile DIR]``.
For each N, in a fresh child process (so that peak RSS is this N's alone):

- an instant sandbox (``clustermesh sandbox up --time-scale 0``) with N clusters of ``--nodes`` nodes, in its
  own process: its CPU and memory are not the pipeline's (its peak RSS is reported apart, from
  ``/proc/<pid>/status`` VmHWM);
- ``cluster_mesh_setup`` once, timed on its own (column ``setup s``);
- ``nightly_mesh_verification(spec, run_drill=False)`` timed (column ``nightly s``), checked for PASS with
  every cell of the N×N health matrix complete;
- the child's peak RSS (``resource.getrusage`` ``ru_maxrss``, the whole run: Prefect, setup and nightly),
  and with ``--tracemalloc`` the peak of Python allocations during the nightly alone (tracemalloc slows
  Python down by a factor of about two, so the nightly time of such a run is not comparable).

One temporary Prefect server per child (``prefect_test_harness``, its own PREFECT_HOME); its start-up is
not in the figures. Endpoint caching is off (CLUSTERMESH_RESULT_KEY unset).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT_PREFIX = "RESULT "


def machine() -> str:
    return f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of another process (Linux), in MiB; None where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextmanager
def sandbox(directory: Path, clusters: int, nodes: int, profile: Path | None = None) -> Iterator[tuple[Path, int]]:
    """An instant sandbox in its own process; yields its ``mesh.yaml`` and pid.

    With ``profile``, the sandbox runs under cProfile and writes its profile there when stopped.
    """
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "cli.app", "sandbox", "up", "--dir", str(directory)]
    argv += ["--clusters", str(clusters), "--nodes", str(nodes), "--cilium-version", "1.16", "--time-scale", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (directory / "ready").exists():
            if proc.poll() is not None:
                raise SystemExit(f"sandbox exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise SystemExit("sandbox not ready within 300 s")
            time.sleep(0.05)
        yield directory / "mesh.yaml", proc.pid
    finally:
        proc.terminate()  # the sandbox stops cleanly on SIGTERM, so cProfile writes its file
        proc.wait(timeout=120)


def measure_one(clusters: int, nodes: int, use_tracemalloc: bool, profile: Path | None = None) -> dict[str, Any]:
    """One mesh size, in this (fresh) process: setup, then the nightly verification without the drill."""
    import logging
    import tracemalloc

    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from clustermesh.spec import load_spec
    from flows.mesh_setup import cluster_mesh_setup
    from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result

    logging.getLogger("prefect").setLevel(logging.WARNING)
    out: dict[str, Any] = {"clusters": clusters, "nodes": nodes}
    with tempfile.TemporaryDirectory(prefix="clustermesh-scale-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}
        with (
            temporary_settings(updates=settings),
            prefect_test_harness(server_startup_timeout=120),
            sandbox(tmp / "sandbox", clusters, nodes, _profile_file(profile, clusters, "sandbox")) as (
                mesh_yaml,
                sandbox_pid,
            ),
        ):
            spec = load_spec(mesh_yaml)
            profiler = cProfile.Profile() if profile is not None else None
            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            setup = cluster_mesh_setup(spec)
            out["setup_s"] = time.perf_counter() - start
            if not setup.health.healthy:
                raise SystemExit(f"setup finished unhealthy: {setup.health.summary()}")

            if use_tracemalloc:
                tracemalloc.start()
            start = time.perf_counter()
            state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
            out["nightly_s"] = time.perf_counter() - start
            if use_tracemalloc:
                out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(_profile_file(profile, clusters, "pipeline")))
            result = verification_result(state)
            if not isinstance(result, VerificationResult) or result.health is None:
                raise SystemExit(f"nightly gave no result: {state}")
            cells = result.health.cells
            out["status"] = result.status
            out["cells_complete"] = sum(c.healthy and c.reachable == c.expected == nodes for c in cells)
            out["cells"] = len(cells)
            out["sandbox_peak_rss_mib"] = peak_rss_mib(sandbox_pid)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def _profile_file(directory: Path | None, clusters: int, part: str) -> Path | None:
    return None if directory is None else directory / f"{part}-{clusters}.prof"


def run_child(clusters: int, nodes: int, use_tracemalloc: bool, profile: Path | None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--one", str(clusters), "--nodes", str(nodes)]
    if use_tracemalloc:
        argv.append("--tracemalloc")
    if profile is not None:
        argv += ["--profile", str(profile)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
    raise SystemExit(f"{clusters} clusters: the measurement failed (exit {proc.returncode}):\n{tail}")


def _mib(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clusters", type=int, nargs="+", default=[2, 4, 8, 16], help="mesh sizes to run")
    parser.add_argument("--nodes", type=int, default=50, help="worker nodes per cluster")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write cProfile files here: sandbox-N.prof (the sandbox process) and pipeline-N.prof (setup + nightly)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size here
    args = parser.parse_args()
    os.environ.pop("CLUSTERMESH_RESULT_KEY", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    if args.one is not None:
        print(RESULT_PREFIX + json.dumps(measure_one(args.one, args.nodes, args.tracemalloc, args.profile)), flush=True)
        return

    print(f"machine: {machine()}")
    print(
        f"sandbox: Cilium 1.16, {args.nodes} nodes per cluster, time scale 0, its own process; "
        "each size in a fresh child process"
    )
    header = f"{'clusters':>8}  {'agents':>6}  {'setup s':>8}  {'nightly s':>9}  {'verdict':>7}  {'matrix':>9}"
    header += f"  {'peak RSS MiB':>12}  {'sandbox RSS MiB':>15}"
    if args.tracemalloc:
        header += f"  {'tracemalloc MiB':>15}"
    print(header, flush=True)
    for n in args.clusters:
        r = run_child(n, args.nodes, args.tracemalloc, args.profile)
        matrix = f"{r['cells_complete']}/{r['cells']}"
        line = f"{n:>8}  {n * args.nodes:>6}  {r['setup_s']:>8.1f}  {r['nightly_s']:>9.1f}  {r['status']:>7}"
        line += f"  {matrix:>9}  {_mib(r['peak_rss_mib']):>12}  {_mib(r.get('sandbox_peak_rss_mib')):>15}"
        if args.tracemalloc:
            line += f"  {_mib(r.get('tracemalloc_peak_mib')):>15}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
