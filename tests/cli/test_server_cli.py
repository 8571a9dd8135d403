"""``clustermesh server start|status|stop`` and the flow commands as a user runs them: separate processes.

One real session server for the module (``clustermesh server start`` in a private state folder, its own
SQLite); each CLI process has its own PREFECT_HOME and no Prefect setting of the test process. The module
stops the server whatever happens, and checks that no process of it is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import server
from tests.helpers import ROOT, run_cli, sandbox_process, wait_until

START_TIMEOUT = 240.0  # `server start` on a busy 2-core machine (10-25 s when quiet)
CLI_TIMEOUT = 240.0

pytestmark = pytest.mark.timeout(600)


def environment(tmp: Path, state: Path, **extra: str) -> dict[str, str]:
    """This process's environment less every Prefect setting and the result key; a fresh PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("CLUSTERMESH_RESULT_KEY", None)
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_HOME=str(home), CLUSTERMESH_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def processes_with(marker: str) -> list[int]:
    """Pids of this machine's processes whose environment holds ``marker`` (e.g. PREFECT_HOME=<a temp dir>)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def flow_runs(api_url: str) -> list[dict[str, Any]]:
    """Every flow run the server at ``api_url`` knows, each with its flow's name under ``flow_name``."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        runs = client.post("/flow_runs/filter", json={}).raise_for_status().json()
        for run in runs:
            run["flow_name"] = client.get(f"/flows/{run['flow_id']}").raise_for_status().json()["name"]
    return list(runs)


@pytest.fixture(scope="module")
def session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, server.ServerRecord]]:
    """``clustermesh server start`` with a private state folder; stopped (and checked gone) at the end."""
    tmp = tmp_path_factory.mktemp("session-server")
    state = tmp / "state"
    env = environment(tmp, state)
    try:
        started = run_cli(env, "server", "start", "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        assert started.returncode == 0, started.stdout + started.stderr
        record = server.read_record(state)
        assert record is not None, started.stdout
        assert "clustermesh server started in" in started.stdout and record.url in started.stdout
        yield state, record
    finally:
        server.stop_server(state, grace=10)  # a no-op when the test stopped it already
        wait_until("no process of the session server", lambda: not processes_with(f"PREFECT_HOME={state}"), 30)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """An instant 2-cluster sandbox in its own process; yields its mesh.yaml."""
    directory = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with sandbox_process(directory, "--clusters", "2", "--cilium-version", "1.16", env=env):
        yield directory / "mesh.yaml"


def test_prefect_api_url_in_the_environment_wins_over_the_session_server(
    session_server: tuple[Path, server.ServerRecord], sandbox: Path, tmp_path: Path
) -> None:
    """With PREFECT_API_URL pointing where nothing answers, setup fails reaching *that* URL: it never falls back
    to the running session server, which gets no flow run."""
    state, record = session_server
    assert server.live_record(state) == record
    before = flow_runs(record.url)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    env = environment(tmp_path, state, PREFECT_API_URL=unused)

    status = run_cli(env, "server", "status", timeout=CLI_TIMEOUT)
    assert status.returncode == 0 and f"PREFECT_API_URL={unused} is set" in status.stdout, status.stdout
    done = run_cli(env, "setup", "--config", str(sandbox), timeout=CLI_TIMEOUT)

    assert done.returncode != 0, done.stdout + done.stderr
    assert unused in done.stdout + done.stderr, done.stdout + done.stderr
    assert flow_runs(record.url) == before


def test_the_session_servers_folder_and_database_are_the_owners_alone(
    session_server: tuple[Path, server.ServerRecord],
) -> None:
    """The SQLite database holds flow parameters and logs: 0600 files in 0700 folders, whatever the umask."""
    state, record = session_server
    home = Path(record.home)
    assert state.stat().st_mode & 0o777 == 0o700
    assert home.stat().st_mode & 0o777 == 0o700
    files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "prefect.db" for p in files), files
    assert {p.name: p.stat().st_mode & 0o777 for p in files if p.stat().st_mode & 0o077} == {}
    assert {p.name for p in home.rglob("*") if p.is_dir() and p.stat().st_mode & 0o077} == set()


def test_blocks_register_prints_the_spec_as_json_for_deployment_run_params(
    session_server: tuple[Path, server.ServerRecord], sandbox: Path, tmp_path: Path
) -> None:
    state, _ = session_server
    env = environment(tmp_path, state)
    args = ["--slack-token-env", "", "--result-key-env", "", "--webhook-env", ""]

    done = run_cli(env, "blocks", "register", "--config", str(sandbox), *args, "--format", "json", timeout=CLI_TIMEOUT)

    assert done.returncode == 0, done.stdout + done.stderr
    params = json.loads(done.stdout)  # stdout is the JSON alone: `prefect deployment run --params "$(...)"`
    assert list(params) == ["spec"] and params["spec"]["name"] == "sandbox", params
    blocks = [c["kubeconfig"] for c in params["spec"]["clusters"]]
    assert blocks == [{"secret_block": f"kubeconfig-sandbox-cluster-{i}"} for i in (1, 2)], blocks
    assert "mesh sandbox: registered on the Prefect server" in done.stderr, done.stderr
    text = run_cli(env, "blocks", "register", "--config", str(sandbox), *args, timeout=CLI_TIMEOUT)
    assert text.returncode == 0 and "--format json" in text.stdout, text.stdout + text.stderr


def test_setup_runs_on_the_session_server_and_stop_ends_it(
    session_server: tuple[Path, server.ServerRecord], sandbox: Path, tmp_path: Path
) -> None:
    state, record = session_server
    env = environment(tmp_path, state)

    status = run_cli(env, "server", "status", timeout=CLI_TIMEOUT)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith(f"running: {record.url} (pid {record.pid})"), status.stdout
    again = run_cli(env, "server", "start", timeout=CLI_TIMEOUT)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert server.read_record(state) == record

    done = run_cli(env, "setup", "--config", str(sandbox), timeout=CLI_TIMEOUT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "\nhealthy" in done.stdout, done.stdout
    assert "temporary" not in done.stderr, done.stderr
    runs = [r for r in flow_runs(record.url) if r["flow_name"] == "cluster-mesh-setup"]
    assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
    # the process that ran the flow has ended, and it started no Prefect server of its own
    assert processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}") == []
    settings = httpx.get(f"{record.url}/admin/settings", timeout=30).raise_for_status().json()
    assert settings["server"]["analytics_enabled"] is False
    assert settings["server"]["api"]["host"] == "127.0.0.1"

    stopped = run_cli(env, "server", "stop", timeout=CLI_TIMEOUT)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"(pid {record.pid}, {record.url}) stopped" in stopped.stdout
    assert processes_with(f"PREFECT_HOME={state}") == []
    assert not server.healthy(record.url, timeout=1)
    assert server.read_record(state) is None
    status = run_cli(env, "server", "status", timeout=CLI_TIMEOUT)
    assert status.returncode == 1 and status.stdout.startswith("not running"), status.stdout
    stopped = run_cli(env, "server", "stop", timeout=CLI_TIMEOUT)
    assert stopped.returncode == 0 and "no clustermesh server running" in stopped.stdout


def test_without_a_server_setup_uses_a_temporary_one_says_how_to_avoid_it_and_leaves_nothing_running(
    sandbox: Path, tmp_path: Path
) -> None:
    env = environment(tmp_path, tmp_path / "no-server-state")

    done = run_cli(env, "setup", "--config", str(sandbox), timeout=CLI_TIMEOUT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "\nhealthy" in done.stdout, done.stdout
    hints = [line for line in done.stderr.splitlines() if "clustermesh server start" in line]
    assert hints == [server.TEMPORARY_SERVER_HINT], done.stderr
    assert "skipping acquisition" not in done.stderr, done.stderr  # the CLI created the mesh's limit there
    # the temporary server was stopped by the CLI process on its way out, and its folder removed
    assert processes_with(f"PREFECT_HOME={tmp_path / 'no-server-state'}") == []
    assert list((tmp_path / "no-server-state" / server.TEMPORARY_NAME).iterdir()) == []
