"""Ctrl-C and SIGTERM to a flow command, as an operator sends them: real processes, real signals.

A sandbox in its own process, slowed down (time scale 0.5: KKP takes seconds to apply values), so a setup can
be interrupted right after its first values write, while it waits for KKP. The writes are seen from outside:
every cluster's ``cilium`` ApplicationInstallation is polled with the official client, and a write is a step
of its ``metadata.generation``. One session server (``clustermesh server start``, with its warm runner, in a
private state folder) serves the module; the runs' states are read from its API. One test runs without any
server: the command starts its own temporary one, which must not outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import server
from sandbox.process import send_fault
from tests.cli.test_server_cli import CLI_TIMEOUT, START_TIMEOUT, environment, flow_runs, processes_with
from tests.flows.conftest import Kube
from tests.helpers import ROOT, run_cli, sandbox_process, wait_until

EXIT_BOUND = 30.0  # generous: the command must end within seconds of the signal, this only catches a hang
FIRST_WRITE_WITHIN = 180.0  # a temporary server's start on a busy machine, then steps 1 and 2

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, server.ServerRecord]]:
    """``clustermesh server start`` (with the warm runner) in a private state folder; stopped at the end."""
    tmp = tmp_path_factory.mktemp("interrupt-server")
    state = tmp / "state"
    try:
        started = run_cli(environment(tmp, state), "server", "start", "--timeout", str(START_TIMEOUT), timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        record = server.read_record(state)
        assert record is not None, started.stdout
        yield state, record
    finally:
        server.stop_server(state, grace=10)
        wait_until("no process of the session server", lambda: not processes_with(f"PREFECT_HOME={state}"), 30)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """Two clusters (Cilium 1.16) at time scale 0.5, in a process of their own; yields its folder."""
    directory = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with sandbox_process(directory, "--clusters", "2", "--cilium-version", "1.16", "--time-scale", "0.5", env=env):
        yield directory


@dataclass(frozen=True)
class Write:
    cluster: str
    generation: int
    at: float  # time.monotonic() when the poll saw it


class Generations:
    """Polls every cluster's ``cilium`` ApplicationInstallation (official client); a write is a new generation."""

    def __init__(self, sandbox: Path) -> None:
        self.kubes = {name: Kube(sandbox / f"{name}.kubeconfig") for name in ("cluster-1", "cluster-2")}
        self.seen = {name: k.ai_version()[1] for name, k in self.kubes.items()}
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="generations")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            for name, kube in self.kubes.items():
                try:
                    generation = kube.ai_version()[1]
                except Exception:  # noqa: BLE001 - a slow answer is retried at the next poll
                    continue
                if generation > self.seen[name]:
                    self.writes.append(Write(name, generation, time.monotonic()))
                    self.seen[name] = generation

    def now(self) -> dict[str, int]:
        return {name: k.ai_version()[1] for name, k in self.kubes.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for kube in self.kubes.values():
            kube.close()


@pytest.fixture
def generations(sandbox: Path) -> Iterator[Generations]:
    watched = Generations(sandbox)
    yield watched
    watched.close()


class Command:
    """``clustermesh <args>`` as a process, its output (stdout and stderr together) read as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.app", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: signal.Signals) -> float:
        self.proc.send_signal(sig)
        return time.monotonic()

    def wait_until_written(self, watched: Generations, count: int = 1) -> None:
        def written() -> bool:
            assert self.proc.poll() is None, f"the command ended before its write:\n{self.output[-3000:]}"
            return len(watched.writes) >= count

        wait_until(f"{count} values write(s)", written, timeout=FIRST_WRITE_WITHIN, interval=0.02)

    def finish(self, within: float) -> tuple[int, float]:
        """Wait for the exit (at most ``within`` s, else kill and fail); (exit status, seconds waited)."""
        began = time.monotonic()
        try:
            code = self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"still running {within:g} s after the signal:\n{self.output[-4000:]}") from None
        self._reader.join(timeout=10)
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.kill()


def new_runs(api_url: str, before: set[str], flow: str) -> list[dict[str, Any]]:
    return [r for r in flow_runs(api_url) if r["id"] not in before and r["flow_name"] == flow]


def assert_no_write_after(watched: Generations, signalled: float, at_exit: dict[str, int]) -> None:
    """Nothing was written after the signal: not while the command ended, not a few seconds after it."""
    time.sleep(5)
    assert watched.now() == at_exit, f"a write landed after the command ended: {watched.writes}"
    late = [w for w in watched.writes if w.at > signalled]
    assert late == [], f"written after the signal: {late}"


def assert_peers_once(watched: Generations) -> None:
    for name, kube in watched.kubes.items():
        peers = Counter(kube.peer_names())
        assert set(peers) == set(watched.kubes) - {name} and set(peers.values()) == {1}, (name, dict(peers))


def test_ctrl_c_after_the_first_write_writes_nothing_more_says_so_and_a_rerun_converges(
    session: tuple[Path, server.ServerRecord],
    sandbox: Path,
    generations: Generations,
    commands: list[Command],
    tmp_path: Path,
) -> None:
    state, record = session
    env = environment(tmp_path, state)
    before = {r["id"] for r in flow_runs(record.url)}
    start = generations.now()
    setup = Command(env, "setup", "--config", str(sandbox / "mesh.yaml"))
    commands.append(setup)
    setup.wait_until_written(generations)

    signalled = setup.signal(signal.SIGINT)
    code, waited = setup.finish(within=EXIT_BOUND)

    out = setup.output
    assert code == 128 + signal.SIGINT, out[-4000:]
    at_exit = generations.now()
    assert at_exit == {"cluster-1": start["cluster-1"] + 1, "cluster-2": start["cluster-2"]}, generations.writes
    assert_no_write_after(generations, signalled, at_exit)
    assert "setup interrupted (SIGINT): stopped before its next write" in out, out[-4000:]
    assert "written before the stop (1): 2. Enable Cluster Mesh in cluster-1" in out, out[-4000:]
    assert "a rerun continues safely" in out and "Traceback" not in out, out[-4000:]
    [run] = new_runs(record.url, before, "cluster-mesh-setup")
    assert run["state_type"] in ("CRASHED", "CANCELLED"), run["state_type"]
    assert f"flow run '{run['name']}': {run['state_name']}" in out, out[-4000:]
    print(f"\nexit {waited:.1f} s after SIGINT; run {run['name']} {run['state_name']}")

    rerun = run_cli(env, "setup", "--config", str(sandbox / "mesh.yaml"), timeout=CLI_TIMEOUT)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "\nhealthy" in rerun.stdout, rerun.stdout
    assert_peers_once(generations)


def test_sigterm_during_verify_ends_its_run_crashed_not_running(
    session: tuple[Path, server.ServerRecord], sandbox: Path, commands: list[Command], tmp_path: Path
) -> None:
    state, record = session
    env = environment(tmp_path, state)
    mesh = str(sandbox / "mesh.yaml")
    done = run_cli(env, "setup", "--config", mesh, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    before = {r["id"] for r in flow_runs(record.url)}
    verify = Command(env, "verify", "--config", mesh)
    commands.append(verify)

    def running() -> bool:
        assert verify.proc.poll() is None, f"verify ended before it was signalled:\n{verify.output[-3000:]}"
        return any(r["state_type"] == "RUNNING" for r in new_runs(record.url, before, "nightly-mesh-verification"))

    wait_until("the nightly verification RUNNING", running, timeout=120, interval=0.1)

    verify.signal(signal.SIGTERM)
    code, waited = verify.finish(within=EXIT_BOUND)

    out = verify.output
    assert code == 128 + signal.SIGTERM, out[-4000:]
    assert "verification interrupted (SIGTERM)" in out and "Traceback" not in out, out[-4000:]
    runs = [r for r in flow_runs(record.url) if r["id"] not in before]
    assert runs and all(r["state_type"] in ("CRASHED", "CANCELLED", "COMPLETED") for r in runs), [
        (r["flow_name"], r["state_type"]) for r in runs
    ]
    [nightly] = [r for r in runs if r["flow_name"] == "nightly-mesh-verification"]
    assert nightly["state_type"] == "CRASHED", nightly["state_type"]
    print(f"\nexit {waited:.1f} s after SIGTERM; runs {[(r['flow_name'], r['state_name']) for r in runs]}")


def test_a_request_hanging_past_ctrl_c_does_not_hold_the_exit_and_the_run_is_marked_anyway(
    session: tuple[Path, server.ServerRecord],
    sandbox: Path,
    generations: Generations,
    commands: list[Command],
    tmp_path: Path,
) -> None:
    """The setup waits for KKP in a worker thread; its next read hangs (90 s of API latency, more than the grace)."""
    state, record = session
    env = environment(tmp_path, state)
    before = {r["id"] for r in flow_runs(record.url)}
    setup = Command(env, "setup", "--config", str(sandbox / "mesh.yaml"))
    commands.append(setup)
    setup.wait_until_written(generations)
    try:
        send_fault(sandbox, "api-latency", cluster="cluster-1", seconds=90)
        time.sleep(1)  # the worker's next read of cluster-1 is now stuck in the latency
        setup.signal(signal.SIGINT)
        code, waited = setup.finish(within=EXIT_BOUND)
    finally:
        send_fault(sandbox, "clear")
        # the process ended without leaving its slot of mesh-sandbox (a lease only expires after minutes):
        # the next test's setup of a mesh of that name must not wait for it
        httpx.delete(f"{record.url}/v2/concurrency_limits/mesh-sandbox", timeout=30)

    out = setup.output
    assert code == 128 + signal.SIGINT, out[-4000:]
    assert "ending it here" in out and "written before the stop (1): 2. Enable Cluster Mesh in cluster-1" in out, out
    [run] = new_runs(record.url, before, "cluster-mesh-setup")
    assert run["state_type"] == "CRASHED", run
    assert run["state"]["message"] == "interrupted (SIGINT) and ended by the command", run["state"]
    print(f"\nexit {waited:.1f} s after SIGINT with a request hanging")


def test_ctrl_c_without_a_server_also_ends_the_temporary_one_and_leaves_no_files(
    sandbox: Path, generations: Generations, commands: list[Command], tmp_path: Path
) -> None:
    state = tmp_path / "no-server-state"
    env = environment(tmp_path, state, PREFECT_SERVER_ANALYTICS_ENABLED="true")  # asked for: not given
    setup = Command(env, "setup", "--config", str(sandbox / "mesh.yaml"))
    commands.append(setup)
    setup.wait_until_written(generations)
    [home] = list((state / server.TEMPORARY_NAME).iterdir())
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "prefect.db").stat().st_mode & 0o777 == 0o600
    [pid] = processes_with(f"PREFECT_HOME={home}")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert os.getpgid(pid) == pid != os.getpgid(setup.proc.pid)  # its own group: the terminal's Ctrl-C misses it
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/api"
    settings = httpx.get(f"{url}/admin/settings", timeout=30).raise_for_status().json()
    assert settings["server"]["analytics_enabled"] is False

    signalled = setup.signal(signal.SIGINT)
    code, _ = setup.finish(within=EXIT_BOUND)

    out = setup.output
    assert code == 128 + signal.SIGINT, out[-4000:]
    assert "written before the stop (1): 2. Enable Cluster Mesh in cluster-1" in out, out[-4000:]
    assert ": Crashed (Execution was aborted by an interrupt signal.)" in out, out[-4000:]
    assert "Error logging to API" not in out and "Traceback" not in out, out[-4000:]
    assert_no_write_after(generations, signalled, generations.now())
    wait_until("the temporary server to end", lambda: not processes_with(f"PREFECT_HOME={home}"), 30)
    assert not home.exists()
    assert list((state / server.TEMPORARY_NAME).iterdir()) == []


def backend(kube: Kube) -> tuple[int, str | None]:
    """The drill backend's replica count and undo record, read with the official client."""
    from kubernetes import client

    d = client.AppsV1Api(kube.api).read_namespaced_deployment("clustermesh-drill-backend", "clustermesh-drill")
    return int(d.spec.replicas), (d.metadata.annotations or {}).get("clustermesh.io/drill-original-replicas")


def test_ctrl_c_during_a_failover_rolls_it_back_and_disrupts_nothing_more(
    session: tuple[Path, server.ServerRecord],
    sandbox: Path,
    generations: Generations,
    commands: list[Command],
    tmp_path: Path,
) -> None:
    state, _ = session
    env = environment(tmp_path, state)
    mesh = str(sandbox / "mesh.yaml")
    done = run_cli(env, "setup", "--config", mesh, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    drill = Command(env, "drill", "--config", mesh)
    commands.append(drill)

    def cluster_1_failed_over() -> bool:
        assert drill.proc.poll() is None, f"the drill ended before its failover:\n{drill.output[-3000:]}"
        try:
            return backend(generations.kubes["cluster-1"]) == (0, "2")
        except Exception:  # noqa: BLE001 - the drill has not created its workloads yet
            return False

    wait_until("the drill to scale cluster-1's backend to 0", cluster_1_failed_over, timeout=120, interval=0.02)

    drill.signal(signal.SIGINT)
    code, waited = drill.finish(within=EXIT_BOUND)

    out = drill.output
    assert code == 128 + signal.SIGINT, out[-4000:]
    assert "drill interrupted (SIGINT)" in out and "Traceback" not in out, out[-4000:]
    assert "cluster-1: scaled clustermesh-drill/clustermesh-drill-backend to 0 (failover drill)" in out, out[-4000:]
    # the rollback undid the failover; cluster-2 was never disrupted
    assert backend(generations.kubes["cluster-1"]) == (2, None), out[-4000:]
    assert backend(generations.kubes["cluster-2"]) == (2, None), out[-4000:]
    assert "cluster-2: scaled" not in out, out[-4000:]
    assert "cluster-1: scaled clustermesh-drill/clustermesh-drill-backend back to 2 replicas" in out, out[-4000:]
    print(f"\nexit {waited:.1f} s after SIGINT in the failover:\n{out[-2500:]}")
