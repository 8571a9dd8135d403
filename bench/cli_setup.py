"""``clustermesh setup`` as whole processes against the KKP guide's own kubectl commands, on the same sandbox.

Run: ``uv run python bench/cli_setup.py [--repeat 3] [--cilium-version 1.13]``. Each measurement gets a fresh
instant sandbox (``clustermesh sandbox up --time-scale 0``, 2 clusters, 2 nodes each, its own process):

- **kubectl**: the guide's steps 2–8 scripted with kubectl 1.32, exactly as
  ``tests/sandbox/test_kubectl_guide.py`` does them (``kubectl edit`` with a scripted editor merging the
  guide's snippet, ``kubectl get`` until the CA, the LoadBalancer address and the remote certificate
  appear, ``kubectl exec … cilium-health status`` until every node of both clusters is OK);
- **setup, temporary server**: ``clustermesh setup --config mesh.yaml`` (the venv's console script, as
  ``uv run clustermesh`` execs it) with no Prefect server configured, so Prefect starts a temporary one in
  each process; first run on the fresh sandbox, then a rerun that writes nothing;
- **setup, clustermesh server**: the same after ``clustermesh server start --no-warm`` (the Prefect server
  only), then after ``clustermesh server start`` (the Prefect server and the warm runner, which forks each
  command from a process that has imported Prefect, the flows and the Kubernetes client); the start-ups
  are reported apart, not in the figures.

Every command gets its own PREFECT_HOME and a private ``CLUSTERMESH_STATE_DIR`` (nothing of the user's
Prefect or server state is used), no PREFECT_API_URL and no result key. Figures are medians of
``--repeat`` runs; the ratio is the setup's time over the kubectl guide's. The load average is printed
before and after: on a shared machine, read the figures with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import health_nodes, sandbox_argv, wait_for_ready  # noqa: E402
from tests.sandbox.test_kubectl_guide import (  # noqa: E402
    EDITOR,
    agent_exec,
    edit_values,
    external_ip,
    issued_by,
    peer_snippet,
    secret_yaml,
    step_2,
    wait_until,
)

CLUSTERMESH = Path(sys.executable).parent / "clustermesh"
SETUP_TIMEOUT = 300.0


def machine() -> str:
    return f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def sandbox(directory: Path, cilium_version: str) -> Iterator[Path]:
    """A fresh instant 2-cluster sandbox in its own process; yields its folder."""
    argv = sandbox_argv(directory, "--clusters", "2", "--nodes", "2", "--cilium-version", cilium_version)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=120, poll=0.02, error=SystemExit)
        yield directory
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------- the kubectl guide


def kubectl_for(home: Path, editor: Path, kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl 1.32 with its own HOME and KUBECONFIG, ``kubectl edit`` through the scripted editor (as the test)."""

    def run(*args: str, snippet: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        import json

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(kubeconfig),
            "KUBE_EDITOR": f"{shlex.quote(sys.executable)} {shlex.quote(str(editor))}",
        }
        if snippet is not None:
            env["GUIDE_SNIPPET"] = json.dumps(snippet)
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


def guide_with_kubectl(directory: Path, work: Path) -> float:
    """The guide's steps 2–8 for two clusters with kubectl, as tests/sandbox/test_kubectl_guide.py runs them."""
    home = work / "kubectl-home"
    home.mkdir()
    editor = work / "editor.py"
    editor.write_text(EDITOR)
    k1, k2 = (kubectl_for(home, editor, directory / f"cluster-{i}.kubeconfig") for i in (1, 2))
    start = time.perf_counter()
    # 2.–3. cluster 1
    edit_values(k1, step_2("cluster-1", 1))
    ca1 = wait_until("cilium-ca in cluster-1", lambda: secret_yaml(k1, "cilium-ca"))
    ip1 = wait_until("EXTERNAL-IP in cluster-1", lambda: external_ip(k1, "clustermesh-apiserver"))
    remote1 = wait_until("remote cert in cluster-1", lambda: secret_yaml(k1, "clustermesh-apiserver-remote-cert"))
    # 4.–5. cluster 2, pointing at cluster 1, with cluster 1's CA
    edit_values(k2, peer_snippet("cluster-2", 2, "cluster-1", ip1, remote1, ca1))
    ip2 = wait_until("EXTERNAL-IP in cluster-2", lambda: external_ip(k2, "clustermesh-apiserver"))
    remote2 = wait_until(
        "cluster-2's remote cert issued by cluster-1's CA",
        lambda: (
            (s := secret_yaml(k2, "clustermesh-apiserver-remote-cert")) and issued_by(s["tls.crt"], ca1["ca.crt"]) and s
        ),
    )
    # 6. cluster 1 points at cluster 2
    edit_values(k1, peer_snippet("cluster-1", None, "cluster-2", ip2, remote2, ca1))
    # 8. every node of both clusters OK in both clusters
    for kubectl in (k1, k2):
        wait_until(
            "cilium-health to show 4 healthy nodes of both clusters",
            lambda kubectl=kubectl: (
                (r := agent_exec(kubectl, "cilium-health", "status")).returncode == 0
                and len(nodes := health_nodes(r.stdout)) == 4
                and all(len(p) == 4 and all(x.startswith("OK") for x in p) for p in nodes.values())
            ),
        )
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ clustermesh setup


PYCACHE: Path | None = None  # with --bytecode: a bytecode cache shared by every CLI process of the run


def cli_env(work: Path, state: Path) -> dict[str, str]:
    """No Prefect setting of this environment, a fresh PREFECT_HOME, a private server state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("CLUSTERMESH_RESULT_KEY", None)
    home = work / "prefect-home"
    home.mkdir(exist_ok=True)
    env.update(PREFECT_HOME=str(home), CLUSTERMESH_STATE_DIR=str(state))
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def bytecode_state() -> str:
    """Whether the CLI processes read compiled bytecode (without it every import is compiled from source)."""
    import prefect  # noqa: F401 (only to find its folder)

    compiled = any((Path(sys.modules["prefect"].__file__ or "").parent / "__pycache__").glob("*.pyc"))
    if PYCACHE is not None:
        return "a bytecode cache filled before the figures (--bytecode)"
    writes = "not written (PYTHONDONTWRITEBYTECODE is set)" if sys.dont_write_bytecode else "written on first import"
    return f"installed packages {'compiled' if compiled else 'not compiled'}; bytecode {writes}"


def clustermesh(env: dict[str, str], *args: str, timeout: float = SETUP_TIMEOUT) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [str(CLUSTERMESH), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"clustermesh {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def setup_twice(env: dict[str, str], directory: Path) -> tuple[float, float]:
    """First run on a fresh sandbox, then the rerun that writes nothing; both must end healthy."""
    config = str(directory / "mesh.yaml")
    first, out = clustermesh(env, "setup", "--config", config)
    if "\nhealthy" not in out:
        raise SystemExit(f"first setup did not end healthy:\n{out}")
    again, out = clustermesh(env, "setup", "--config", config)
    if "nothing written" not in out:
        raise SystemExit(f"the rerun wrote something:\n{out}")
    return first, again


def measure_setups(
    tmp: Path, state: Path, repeat: int, cilium_version: str, record: Callable[[str, float], None]
) -> None:
    """``clustermesh setup`` twice per fresh sandbox: with a temporary server, a session server, and the runner."""
    for r in range(repeat):
        work = tmp / f"temporary-{r}"
        work.mkdir()
        with sandbox(work / "sandbox", cilium_version) as directory:
            first, again = setup_twice(cli_env(work, state), directory)
        record("setup, temporary server: first run", first)
        record("setup, temporary server: rerun", again)
    print(f"temporary-server runs done; load {load()}", flush=True)
    env = cli_env(tmp, state)
    starts = {}
    for variant, option in (("clustermesh server", "--no-warm"), ("clustermesh server + warm runner", "--warm")):
        starts[variant], _ = clustermesh(env, "server", "start", option)
        try:
            for r in range(repeat):
                work = tmp / f"{option.strip('-')}-{r}"
                work.mkdir()
                with sandbox(work / "sandbox", cilium_version) as directory:
                    first, again = setup_twice(cli_env(work, state), directory)
                record(f"setup, {variant}: first run", first)
                record(f"setup, {variant}: rerun", again)
        finally:
            clustermesh(env, "server", "stop", timeout=60)
        print(f"{variant} runs done; load {load()}", flush=True)
    log = state / "runner.log"
    served = log.read_text().count(": setup --config") if log.exists() else 0
    print(f"the warm runner served {served} of {2 * repeat} setups (the others ran cold)")
    for variant, seconds in starts.items():
        print(f"`clustermesh server start` for {variant} (once, not in the figures): {seconds:.1f} s")


def main() -> None:
    global PYCACHE
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="fresh sandboxes per variant; medians shown")
    parser.add_argument("--cilium-version", default="1.13", help="Cilium line of the sandboxes (the guide's: 1.13)")
    parser.add_argument(
        "--bytecode",
        action="store_true",
        help="give the CLI processes a bytecode cache, as `uv sync --compile-bytecode` or an environment "
        "without PYTHONDONTWRITEBYTECODE would",
    )
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        raise SystemExit("kubectl is not on PATH")
    print(f"machine: {machine()}")
    print(f"sandbox: 2 clusters × 2 nodes, Cilium {args.cilium_version}, time scale 0, own process; {args.repeat} runs")
    print(f"load average at start: {load()}", flush=True)
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="clustermesh-bench-cli-") as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "server-state"
        if args.bytecode:
            PYCACHE = tmp / "pycache"
            warm_up = "import cli.runner; cli.runner.warm_up()"
            subprocess.run([sys.executable, "-c", warm_up], cwd=ROOT, env=cli_env(tmp, state), check=True, timeout=300)
        print(f"bytecode: {bytecode_state()}", flush=True)
        for r in range(args.repeat):
            work = tmp / f"kubectl-{r}"
            work.mkdir()
            with sandbox(work / "sandbox", args.cilium_version) as directory:
                record("kubectl guide", guide_with_kubectl(directory, work))
        print(f"kubectl guide done; load {load()}", flush=True)
        measure_setups(tmp, state, args.repeat, args.cilium_version, record)

    kubectl = statistics.median(results["kubectl guide"])
    print()
    print(f"{'what':<56} {'median s':>8}  {'runs s':<20} {'÷ kubectl':>9}")
    for name, values in results.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<56} {median:>8.2f}  {runs:<20} {median / kubectl:>8.1f}x")
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
