"""What Prefect costs the setup: the flow's wall time against the same domain steps called directly.

Run: ``uv run python bench/setup.py [--clusters 2 4 8 16] [--cilium-version 1.16] [--repeat 3]``. For each N:

- an instant sandbox (``clustermesh sandbox up --time-scale 0 --nodes 2``, its own process) runs
  ``cluster_mesh_setup`` once; the flow's wall time is measured around the call;
- a second, fresh sandbox of the same shape gets the same domain calls in the flow's order without
  Prefect (prerequisites, configure_mesh, collect_mesh_endpoint, reachability, health), one after the
  other, each with a fresh client as the tasks open them: the sum of the raw API work;
- overhead = flow wall time / direct time. The flow runs per-cluster steps in parallel, so at larger N
  the ratio can drop below what Prefect's bookkeeping alone would suggest.

One temporary Prefect server (``prefect_test_harness``, its own PREFECT_HOME) serves the whole bench; its
start-up and one warm-up flow run (first-run imports and registrations) are measured and reported
apart, never inside the figures. Endpoint caching is off (CLUSTERMESH_RESULT_KEY unset): a cold run.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import sandbox_argv, wait_for_ready  # noqa: E402


def machine() -> str:
    return f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


@contextmanager
def sandbox(directory: Path, clusters: int, cilium_version: str) -> Iterator[Path]:
    """An instant sandbox in its own process; yields its ``mesh.yaml``."""
    argv = sandbox_argv(directory, "--clusters", str(clusters), "--nodes", "2", "--cilium-version", cilium_version)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=120, poll=0.02, error=SystemExit)
        yield directory / "mesh.yaml"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_flow(mesh_yaml: Path) -> float:
    from clustermesh.spec import load_spec
    from flows.mesh_setup import cluster_mesh_setup

    spec = load_spec(mesh_yaml)
    start = time.perf_counter()
    result = cluster_mesh_setup(spec)
    elapsed = time.perf_counter() - start
    if not result.health.healthy:
        raise SystemExit(f"flow finished unhealthy: {result.health.summary()}")
    return elapsed


def run_direct(mesh_yaml: Path) -> float:
    """The flow's steps as plain domain calls, in the flow's order, one at a time, one client per cluster."""
    from clustermesh.kube import open_cluster
    from clustermesh.spec import load_spec

    spec = load_spec(mesh_yaml)
    clients = {c.name: open_cluster(c, request_timeout=spec.timeouts.api) for c in spec.clusters}
    try:
        start = time.perf_counter()
        matrix = _direct_steps(spec, clients)
        elapsed = time.perf_counter() - start
    finally:
        for client in clients.values():
            client.close()
    if not matrix.healthy:
        raise SystemExit(f"direct steps finished unhealthy: {matrix.summary()}")
    return elapsed


def _direct_steps(spec: Any, clients: dict[str, Any]) -> Any:
    from clustermesh.steps import step1_prerequisites as step1
    from clustermesh.steps import step2_4_6_mesh_values as step2_4_6
    from clustermesh.steps import step3_5_endpoints as step3_5
    from clustermesh.steps import step7_reachability as step7
    from clustermesh.steps import step8_health as step8

    t = spec.timeouts
    facts = {c.name: step1.check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}  # 1
    step1.check_mesh_prerequisites(list(facts.values()))
    first, others = spec.first.name, [c.name for c in spec.others]
    shared = step3_5.uses_shared_ca(spec, facts[first])

    def configure(name: str, step: str, peers: list[Any], ca: Any) -> None:
        step2_4_6.configure_mesh(
            clients[name], facts[name], spec.cluster(name), spec, step=step, peers=peers, shared_ca=ca
        )

    def collect(name: str, want_ca_key: bool, expected_ca: str | None) -> Any:
        return step3_5.collect_mesh_endpoint(
            clients[name], facts[name], spec, want_ca_key=want_ca_key, expected_ca=expected_ca
        )

    configure(first, "2", [], None)  # 2
    eps = {first: collect(first, shared, None)}  # 3
    shared_ca = eps[first].shared_ca() if shared else None
    for name in others:  # 4
        configure(name, "4", [eps[first].peer_entry()], shared_ca)
    for name in others:  # 5
        eps[name] = collect(name, False, eps[first].ca_cert if shared else None)
    for name in clients:  # 6
        configure(name, "6", [e.peer_entry() for n, e in eps.items() if n != name], shared_ca)
    nodes = {n: step7.list_node_addresses(cl, n) for n, cl in clients.items()}  # 7: one probe, read by step 8
    measured = step8.probe_mesh(clients, exec_timeout=t.api)
    step7.firewall_report(step7.firewall_rules(nodes, {e.cluster: (e.ips[0], e.port) for e in eps.values()}), measured)
    return step8.wait_for_mesh_health(  # 8
        clients, timeout=t.health, poll_interval=t.poll_interval, exec_timeout=t.api, first=measured
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, nargs="+", default=[2, 4, 8, 16], help="mesh sizes to run")
    parser.add_argument("--cilium-version", default="1.16", help="Cilium line of the sandboxes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (fresh sandboxes each); medians shown")
    args = parser.parse_args()
    os.environ.pop("CLUSTERMESH_RESULT_KEY", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import logging

    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("prefect").setLevel(logging.WARNING)
    print(f"machine: {machine()}")
    print(f"sandbox: Cilium {args.cilium_version}, 2 nodes per cluster, time scale 0, served by its own process")
    with tempfile.TemporaryDirectory(prefix="clustermesh-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}
        start = time.perf_counter()
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=120):
            print(f"prefect test server start-up: {time.perf_counter() - start:.1f} s (not in the figures)")
            with sandbox(tmp / "warm-up", 2, args.cilium_version) as mesh_yaml:
                print(f"warm-up flow run (2 clusters): {run_flow(mesh_yaml):.2f} s (not in the figures)")
            print()
            print(f"{'clusters':>8}  {'flow wall s':>11}  {'direct s':>9}  {'overhead':>8}")
            for n in args.clusters:
                flows, directs = [], []
                for r in range(args.repeat):
                    with sandbox(tmp / f"flow-{n}-{r}", n, args.cilium_version) as mesh_yaml:
                        flows.append(run_flow(mesh_yaml))
                    with sandbox(tmp / f"direct-{n}-{r}", n, args.cilium_version) as mesh_yaml:
                        directs.append(run_direct(mesh_yaml))
                flow_s, direct_s = statistics.median(flows), statistics.median(directs)
                print(f"{n:>8}  {flow_s:>11.2f}  {direct_s:>9.2f}  {flow_s / direct_s:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
