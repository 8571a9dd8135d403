"""How fast the sandbox serves the real ``kubernetes`` client, and what a 2-cluster sandbox costs.

Run: ``uv run python bench/sandbox_api.py [--seconds 5]``. Prints:

- start-up: ``clustermesh sandbox up`` in a fresh process until its ``ready`` file appears, and that
  process's resident memory (VmRSS, VmHWM) once ready;
- GET requests per second (one ConfigMap), LIST requests per second (1,000 ConfigMaps), and exec
  round trips per second (``cilium-health status`` in an agent pod), each from one client thread
  over verified TLS.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import agent_exec, sandbox_argv, wait_for_ready  # noqa: E402


def machine() -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    return f"{cpu}, Python {platform.python_version()}, {platform.system()}"


def startup(tmp: Path) -> tuple[float, int, int]:
    directory = tmp / "startup"
    start = time.perf_counter()
    proc = subprocess.Popen(sandbox_argv(directory), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=None, poll=0.01, error=SystemExit)
        elapsed = time.perf_counter() - start
        time.sleep(0.5)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields["VmRSS"].split()[0])
        hwm = int(fields["VmHWM"].split()[0])
        return elapsed, rss, hwm
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def rate(fn: object, seconds: float) -> tuple[float, int]:
    assert callable(fn)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        fn()
        n += 1
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each request loop runs")
    args = parser.parse_args()
    from sandbox.server import Sandbox

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        elapsed, rss, hwm = startup(tmp)
        print(f"start-up, 2 clusters (process start to `ready`): {elapsed:.2f} s")
        print(f"memory once ready: VmRSS {rss / 1024:.0f} MiB, peak VmHWM {hwm / 1024:.0f} MiB")

        with Sandbox(tmp / "api", clusters=2, time_scale=0) as sb:
            ep = sb.endpoints[0]
            conf = client.Configuration()
            config.load_kube_config(config_file=str(ep.kubeconfig), client_configuration=conf)
            api = client.ApiClient(conf)
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": "bench"}})
            for i in range(1000):
                core.create_namespaced_config_map(
                    "bench",
                    {"metadata": {"name": f"cm-{i:04d}", "labels": {"bench": "yes"}}, "data": {"i": str(i)}},
                )
            per_s, n = rate(lambda: core.read_namespaced_config_map("cm-0500", "bench"), args.seconds)
            print(f"GET one ConfigMap: {per_s:,.0f} requests/s ({n} requests)")
            per_s, n = rate(lambda: core.list_namespaced_config_map("bench"), args.seconds)
            print(f"LIST 1,000 ConfigMaps: {per_s:,.1f} requests/s ({n} requests)")
            pod = core.list_namespaced_pod("kube-system", label_selector="k8s-app=cilium").items[0].metadata.name
            exec_api = client.ApiClient(conf)
            exec_core = client.CoreV1Api(exec_api)

            def one_exec() -> None:
                out = agent_exec(exec_core, pod, ["cilium-health", "status"], stderr=True)
                assert "Nodes:" in out or "Cluster health" in out, out

            per_s, n = rate(one_exec, args.seconds)
            print(f"exec `cilium-health status` round trip: {per_s:,.1f} per second ({n} execs)")
            exec_api.close()
            api.close()


if __name__ == "__main__":
    main()
