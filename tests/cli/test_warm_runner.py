"""The warm runner (cli/runner.py) as a user meets it: ``clustermesh server start`` starts it, flow commands run in
its forks with the caller's environment, directory, descriptors and signals, ``server stop`` ends it.

One session server with its runner for the module, in a private state folder; stopped whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli import runner, server
from sandbox.process import send_fault
from tests.cli.test_server_cli import CLI_TIMEOUT, START_TIMEOUT, environment, flow_runs, processes_with
from tests.helpers import ROOT, run_cli, sandbox_process, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def warm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, server.ServerRecord]]:
    tmp = tmp_path_factory.mktemp("warm-server")
    state = tmp / "state"
    env = environment(tmp, state)
    try:
        started = run_cli(env, "server", "start", "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 60)
        assert started.returncode == 0, started.stdout + started.stderr
        record = server.read_record(state)
        assert record is not None
        assert f"warm runner: pid {runner.runner_pid(state)}" in started.stdout, started.stdout
        yield state, record
    finally:
        server.stop_server(state, grace=10)
        wait_until("no process of the session", lambda: not processes_with(f"PREFECT_HOME={state}"), 30)


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with sandbox_process(directory, "--clusters", "2", "--cilium-version", "1.16", env=env):
        yield directory


def served(state: Path) -> list[tuple[int, str]]:
    """(child pid, command line) of every command the runner forked, from its log."""
    text = (state / runner.LOG_NAME).read_text()
    return [(int(m[1]), m[2]) for m in re.finditer(r"^\S+ pid (\d+): (.*)$", text, re.MULTILINE)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] in ("Z", "X")


def test_setup_runs_in_the_runner_with_the_callers_environment_and_directory(
    warm_server: tuple[Path, server.ServerRecord], sandbox_dir: Path, tmp_path: Path
) -> None:
    """The spec is given relative to the caller's directory and names cluster-1's kubeconfig by an environment
    variable that only the caller has: the fork must take both over."""
    state, record = warm_server
    spec = yaml.safe_load((sandbox_dir / "mesh.yaml").read_text())
    first = spec["clusters"][0]["kubeconfig"]
    spec["clusters"][0]["kubeconfig"] = {"env": "CM_TEST_FIRST_KUBECONFIG"}
    (sandbox_dir / "mesh-env.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = environment(tmp_path, state, CM_TEST_FIRST_KUBECONFIG=first["path"])
    before = len(served(state))

    done = subprocess.run(
        [sys.executable, "-m", "cli.app", "setup", "--config", "mesh-env.yaml"],
        cwd=sandbox_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "\nhealthy" in done.stdout, done.stdout
    assert [command for _, command in served(state)[before:]] == ["setup --config mesh-env.yaml"]
    assert ("cluster-mesh-setup", "COMPLETED") in [(r["flow_name"], r["state_type"]) for r in flow_runs(record.url)]


def test_the_commands_exit_status_and_messages_come_back(
    warm_server: tuple[Path, server.ServerRecord], tmp_path: Path
) -> None:
    state, _ = warm_server
    clusters = [{"name": f"cluster-{i}", "id": 7, "kubeconfig": {"path": str(tmp_path / f"c{i}")}} for i in (1, 2)]
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "clusters": clusters}))
    before = len(served(state))

    done = run_cli(environment(tmp_path, state), "setup", "--config", str(config), timeout=CLI_TIMEOUT)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "clusters[1].id" in done.stderr and "both use id 7" in done.stderr, done.stderr
    assert len(served(state)) == before + 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "caller-killed"])
def test_a_signal_to_the_caller_ends_the_fork(
    warm_server: tuple[Path, server.ServerRecord], sandbox_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C reaches the fork (the caller passes it on); a caller killed outright takes its fork with it."""
    state, _ = warm_server
    send_fault(sandbox_dir, "lb-never", cluster="cluster-1", on=True)  # step 3 waits for an address that never comes
    before = len(served(state))
    out: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "setup", "--config", str(sandbox_dir / "mesh.yaml")],
        cwd=ROOT,
        env=environment(tmp_path, state),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until("the fork to start step 2", lambda: any("2. Enable Cluster Mesh" in line for line in out), 120)
        [(child, _)] = served(state)[before:]

        proc.send_signal(sig)

        code = proc.wait(timeout=60)
        assert code != 0, "".join(out)
        wait_until(f"the fork (pid {child}) to end", lambda: gone(child), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=30)


def test_server_stop_ends_the_runner_too(warm_server: tuple[Path, server.ServerRecord], tmp_path: Path) -> None:
    state, record = warm_server
    pid = runner.runner_pid(state)
    assert pid is not None

    stopped = run_cli(environment(tmp_path, state), "server", "stop", timeout=CLI_TIMEOUT)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until("the runner to end", lambda: gone(pid), 30)
    assert not (state / runner.SOCKET_NAME).exists() and runner.runner_pid(state) is None
    assert not server.healthy(record.url, timeout=1)


# ------------------------------------------------------------------------------------ in-process


def test_without_a_runner_the_command_runs_in_its_own_process(tmp_path: Path) -> None:
    assert runner.delegate(["clustermesh", "setup"], tmp_path) is None  # no socket
    (tmp_path / runner.SOCKET_NAME).write_text("")  # a socket file left behind, nobody listening
    assert runner.delegate(["clustermesh", "setup"], tmp_path) is None


def test_a_changed_module_file_makes_the_runner_stale(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("x = 1\n")
    snapshot = {str(module): module.stat().st_mtime_ns}
    assert runner.changed_files(snapshot) == []

    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 1_000_000))

    assert runner.changed_files(snapshot) == [str(module)]
    module.unlink()
    assert runner.changed_files(snapshot) == [str(module)]
