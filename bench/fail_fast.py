"""How long the nightly verification takes to its verdict when the answer is already clear.

Run: ``uv run python bench/fail_fast.py [--repeat 3] [--cilium-version 1.16]``. Prints the machine and
its load (before and after), then, for each night, the seconds from the flow call to its verdict, the
verdict, what it names and how many progress lines the health wait logged meanwhile. Every night runs
with ``timeouts.health`` at 600 s (the default), the figure the old behaviour waited out in full (the
issue measured 10 m 2 s with UDP 8472 blocked, 621 s before any setup):

- ``blocked``: a 2-cluster mesh set up by the setup flow, then UDP 8472 blocked between the clusters
  (the sandbox's own fault); the verdict must be FAIL naming UDP 8472 between cluster-1 and cluster-2;
- ``flaky``: the same block, lifted 3 s after the wait's first progress line; the verdict must be PASS;
- ``drift``: no port blocked, but a peer entry deleted and a caCert corrupted by hand (official
  client); the verdict must be FAIL naming both, and no port;
- ``not set up``: fresh clusters, no setup; the verdict must be FAIL with one finding, "run setup".

Each sandbox is an instant one (``clustermesh sandbox up --time-scale 0 --nodes 2``) in its own process,
faults through its control API. One temporary Prefect server (``prefect_test_harness``, its own
PREFECT_HOME) serves the whole bench; its start-up and the setup runs are reported apart, never inside
the figures. Slack is not configured (the summary is printed by the flow; its output is discarded here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import ProgressLines, sandbox_argv, wait_for_ready  # noqa: E402

HEALTH = 600.0
AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")


def machine() -> str:
    return (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# ------------------------------------------------------------------------------------------ sandbox


class Sandbox:
    """``clustermesh sandbox up`` in its own process: its directory, spec and fault control."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        info = json.loads((directory / "sandbox.json").read_text())
        self.control_url, self.control_token = info["control_url"], info["control_token"]
        self.kubeconfigs = {c["name"]: Path(c["kubeconfig"]) for c in info["clusters"]}

    def fault(self, kind: str, **args: str) -> None:
        body = json.dumps({"kind": kind, **args}).encode()
        request = urllib.request.Request(
            self.control_url + "/faults",
            data=body,
            headers={"Authorization": f"Bearer {self.control_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            reply = json.loads(answer.read())
        if not reply.get("ok"):
            raise SystemExit(f"fault {kind} refused: {reply}")

    def spec(self) -> Any:
        from clustermesh.spec import load_spec

        spec = load_spec(self.directory / "mesh.yaml")
        return spec.model_copy(update={"timeouts": spec.timeouts.model_copy(update={"health": HEALTH})})

    def edit_values(self, cluster: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """``kubectl edit applicationinstallation cilium`` by hand, with the official client."""
        import yaml
        from kubernetes import client

        from tests.conftest import kube_client

        api = kube_client(self.kubeconfigs[cluster])
        try:
            custom = client.CustomObjectsApi(api)
            ai: dict[str, Any] = custom.get_namespaced_custom_object(*AI)  # type: ignore[assignment]
            field = "valuesBlock" if (ai["spec"].get("valuesBlock") or "").strip() else "values"
            values = yaml.safe_load(ai["spec"][field]) if field == "valuesBlock" else ai["spec"][field]
            edit(values)
            ai["spec"][field] = yaml.safe_dump(values) if field == "valuesBlock" else values
            custom.replace_namespaced_custom_object(*AI, ai)
        finally:
            api.close()


@contextmanager
def sandbox(directory: Path, cilium_version: str) -> Iterator[Sandbox]:
    argv = sandbox_argv(directory, "--clusters", "2", "--nodes", "2", "--cilium-version", cilium_version)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_ready(proc, directory, within=120, poll=0.02, error=SystemExit)
        yield Sandbox(directory)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def set_up(sb: Sandbox) -> float:
    from flows.mesh_setup import cluster_mesh_setup

    quiet_console()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = cluster_mesh_setup(sb.spec())
    if not result.health.healthy:
        raise SystemExit(f"setup finished unhealthy: {result.health.summary()}")
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ nights


def quiet_console() -> None:
    """Prefect's console handlers print nothing below CRITICAL (the figures stay readable); loggers keep INFO."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger) and (logger is logging.getLogger() or logger.name.startswith("prefect")):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, ProgressLines):
                    handler.setLevel(logging.CRITICAL)


def night(sb: Sandbox, on_first_progress: Callable[[], None] | None = None) -> tuple[float, Any, list[str]]:
    """One nightly run (drill on, as deployed): seconds to its verdict, the VerificationResult, progress lines."""
    from flows.mesh_verify import nightly_mesh_verification

    quiet_console()
    lines = ProgressLines(on_first_progress)
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(lines)
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            state = nightly_mesh_verification(sb.spec(), run_drill=True, return_state=True)
        seconds = time.perf_counter() - start
    finally:
        prefect_logger.removeHandler(lines)
    data = state.result(raise_on_failure=False)
    result = getattr(data, "result", data)  # a FAIL may carry its VerificationResult inside its exception
    if not hasattr(result, "findings"):
        raise SystemExit(f"the nightly ended without a verdict: {state}: {data!r}")
    return seconds, result, lines.lines


def failures(result: Any) -> list[Any]:
    return [f for f in result.findings if f.level == "failure"]


def check(ok: bool, what: str, result: Any) -> None:
    if not ok:
        shown = "; ".join(f"{f.subject}: {f.reason}" for f in failures(result))
        raise SystemExit(f"wrong verdict ({what}): {result.status}: {shown}")


def blocked(sb: Sandbox) -> tuple[float, str, int]:
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    try:
        seconds, result, lines = night(sb)
    finally:
        sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="udp/8472")
    named = {f.subject for f in failures(result) if "UDP 8472" in f.reason}
    check(result.status == "FAIL" and named == {"cluster-1 → cluster-2", "cluster-2 → cluster-1"}, "blocked", result)
    return seconds, f"FAIL, UDP 8472 named for {', '.join(sorted(named))}", len(lines)


def flaky(sb: Sandbox) -> tuple[float, str, int]:
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")

    def recover() -> None:
        sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="udp/8472")

    seconds, result, lines = night(sb, lambda: threading.Timer(3, recover).start())
    check(result.status == "PASS" and bool(lines), "flaky", result)
    return seconds, "PASS (the path came back 3 s after the first progress line)", len(lines)


def drift(sb: Sandbox) -> tuple[float, str, int]:
    def corrupt(values: dict[str, Any]) -> None:
        values["clustermesh"]["config"]["clusters"][0]["tls"]["caCert"] = "bm90IGEgY2VydGlmaWNhdGU="

    sb.edit_values("cluster-1", lambda v: v["clustermesh"]["config"].update(clusters=[]))
    sb.edit_values("cluster-2", corrupt)
    seconds, result, lines = night(sb)
    text = " ".join(f"{f.reason} {f.fix}" for f in failures(result))
    check(
        result.status == "FAIL" and "missing peer cluster-2" in text and "tls.caCert" in text and "UDP" not in text,
        "drift",
        result,
    )
    return seconds, f"FAIL, {len(failures(result))} failures, the drift named, no port", len(lines)


def not_set_up(sb: Sandbox) -> tuple[float, str, int]:
    seconds, result, lines = night(sb)
    [only] = failures(result)
    check(only.reason.startswith("the mesh is not set up"), "not set up", result)
    return seconds, f"FAIL, {len(result.findings)} findings, 1 failure: the mesh is not set up", len(lines)


# -------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1, help="runs of each night (fresh sandboxes); medians shown")
    parser.add_argument("--cilium-version", default="1.16", help="Cilium line of the sandboxes")
    args = parser.parse_args()
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "CLUSTERMESH_RESULT_KEY"):
        os.environ.pop(name, None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("prefect").setLevel(logging.INFO)  # the progress lines are INFO
    print(f"machine: {machine()}")
    print(f"load before: {uptime()}")
    print(f"sandbox: Cilium {args.cilium_version}, 2 clusters × 2 nodes, time scale 0, its own process")
    print(f"timeouts.health: {HEALTH:g} s in every night (the old behaviour waited it out: 600 s and more)")
    nights: list[tuple[str, bool, Callable[[Sandbox], tuple[float, str, int]]]] = [
        ("blocked", True, blocked),
        ("flaky", True, flaky),
        ("drift", True, drift),
        ("not set up", False, not_set_up),
    ]
    with tempfile.TemporaryDirectory(prefix="clustermesh-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}
        start = time.perf_counter()
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=120):
            print(f"prefect test server start-up: {time.perf_counter() - start:.1f} s (not in the figures)")
            print()
            print(f"{'night':<11}  {'verdict s':>9}  {'vs 600 s':>8}  {'progress':>8}  verdict")
            for label, meshed, run in nights:
                figures, said, progress, setups = [], "", 0, []
                for r in range(args.repeat):
                    with sandbox(tmp / f"{label.replace(' ', '-')}-{r}", args.cilium_version) as sb:
                        if meshed:
                            setups.append(set_up(sb))
                        seconds, said, progress = run(sb)
                        figures.append(seconds)
                seconds = statistics.median(figures)
                spread = f" ({min(figures):.1f}–{max(figures):.1f})" if len(figures) > 1 else ""
                print(
                    f"{label:<11}  {seconds:>9.1f}  {seconds / HEALTH:>7.0%}  {progress:>8}  {said}{spread}",
                    flush=True,
                )
                if setups:
                    print(f"{'':<11}  (setup flow before it: {statistics.median(setups):.1f} s, not in the figure)")
    print()
    print(f"load after: {uptime()}")


if __name__ == "__main__":
    main()
