"""What the sandbox's real-chart mode costs the setup: ``cluster_mesh_setup`` against the same kind of sandbox with
KKP's built-in renderer and with the real Cilium chart (Helm's engine), in the same run.

Run: ``uv run python bench/setup_modes.py [--cilium-version 1.16 1.19] [--clusters 3] [--repeat 2]
[--charts ../shared/charts]``.

For each line, ``--repeat`` times and alternating (drift on a shared machine hits both modes alike), a fresh
instant sandbox (``clustermesh sandbox up --time-scale 0 --nodes 1``, its own process, as a user runs it) is
started without and then with ``--charts DIR``, and the setup flow's wall time is measured around the call. The
pipeline is configured the same in both modes: its own chart check (render before write) reads the same
folder, so the only difference is who renders KKP's installations in the sandbox. Sandbox start-up is not in
the figures (bench/sandbox_real_charts.py measures it). Prints the median of each mode and the ratio.

One temporary Prefect server (its own PREFECT_HOME) serves the whole bench; its start-up and one warm-up run
per mode are reported apart, never inside the figures. Endpoint caching is off (CLUSTERMESH_RESULT_KEY unset).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import sandbox_argv, wait_for_ready  # noqa: E402

MODES = ("built-in", "real charts")


def machine() -> str:
    return f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


@contextmanager
def sandbox(directory: Path, clusters: int, line: str, charts: Path | None) -> Iterator[Path]:
    """An instant sandbox in its own process (real charts when ``charts`` is given); yields its ``mesh.yaml``."""
    options = ["--clusters", str(clusters), "--nodes", "1", "--cilium-version", line]
    if charts is not None:
        options += ["--charts", str(charts)]
    argv = sandbox_argv(directory, *options)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=180, poll=0.02, error=SystemExit)
        yield directory / "mesh.yaml"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_flow(mesh_yaml: Path, charts: Path) -> float:
    """Seconds of one ``cluster_mesh_setup`` run, its chart check reading ``charts``; it must end healthy."""
    from clustermesh.spec import load_spec
    from flows.mesh_setup import cluster_mesh_setup

    data = yaml.safe_load(mesh_yaml.read_text())
    data.setdefault("cilium", {})["chart"] = {"source": str(charts)}
    edited = mesh_yaml.with_name("mesh-bench.yaml")
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(edited)
    start = time.perf_counter()
    result = cluster_mesh_setup(spec)
    elapsed = time.perf_counter() - start
    if not result.health.healthy:
        raise SystemExit(f"{mesh_yaml}: the setup finished unhealthy: {result.health.summary()}")
    return elapsed


def setup_once(tmp: Path, name: str, clusters: int, line: str, charts: Path, real: bool) -> float:
    with sandbox(tmp / name, clusters, line, charts if real else None) as mesh_yaml:
        return run_flow(mesh_yaml, charts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cilium-version", nargs="+", default=["1.16", "1.19"], help="Cilium lines to run")
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="runs per line and mode (fresh sandboxes); medians")
    parser.add_argument("--charts", type=Path, default=ROOT.parent / "shared" / "charts")
    args = parser.parse_args()
    if not any(args.charts.glob("cilium-*.tgz")):
        sys.exit(f"no cilium-*.tgz in {args.charts}: pass --charts DIR")
    os.environ.pop("CLUSTERMESH_RESULT_KEY", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")  # the runs' expected warnings would bury the table

    import logging

    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("prefect").setLevel(logging.ERROR)
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"sandbox: {args.clusters} clusters, 1 node each, time scale 0, its own process; charts {args.charts}")
    with tempfile.TemporaryDirectory(prefix="clustermesh-bench-modes-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}
        start = time.perf_counter()
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=120):
            print(f"prefect test server start-up: {time.perf_counter() - start:.1f} s (not in the figures)")
            line = args.cilium_version[0]
            for real, mode in zip((False, True), MODES, strict=True):
                seconds = setup_once(tmp, f"warm-up-{real}", 2, line, args.charts, real)
                print(f"warm-up setup ({mode}, 2 clusters, {line}): {seconds:.2f} s (not in the figures)")
            print()
            print(f"{'line':>5}  {'built-in s':>10}  {'real charts s':>13}  {'ratio':>6}")
            for line in args.cilium_version:
                times: dict[bool, list[float]] = {False: [], True: []}
                for r in range(args.repeat):
                    for real in (False, True):
                        name = f"{line}-{r}-{'real' if real else 'builtin'}"
                        times[real].append(setup_once(tmp, name, args.clusters, line, args.charts, real))
                builtin, charted = statistics.median(times[False]), statistics.median(times[True])
                print(f"{line:>5}  {builtin:>10.2f}  {charted:>13.2f}  {charted / builtin:>5.2f}x", flush=True)
    print(f"medians of {args.repeat} runs per line and mode; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
