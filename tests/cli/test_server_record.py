"""``cli.server`` in-process, without a Prefect server: which API a command uses, the record, stopping.

A tiny HTTP server on loopback answers ``/api/health`` like Prefect's; "server" processes are small Python
children, ended by the tests themselves.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import server
from cli.server import ServerRecord
from tests.helpers import ROOT, wait_until


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"true" if self.path == "/api/health" else b"{}"
        self.send_response(200 if self.path == "/api/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        pass


@pytest.fixture
def health_url() -> Iterator[str]:
    """An API URL on 127.0.0.1 whose /health answers ``true`` (as a Prefect server's does)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def write_record(directory: Path, url: str, pid: int) -> ServerRecord:
    record = ServerRecord(url=url, pid=pid, started=server._start_ticks(pid), home=str(directory), log="")
    directory.mkdir(parents=True, exist_ok=True)
    server._write_record(directory, record)
    return record


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no Prefect setting, its own PREFECT_HOME and state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), CLUSTERMESH_STATE_DIR=str(tmp_path / "state"))
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ which API is used


def test_prefect_api_url_in_the_environment_wins_over_a_live_server_record(tmp_path: Path, health_url: str) -> None:
    write_record(tmp_path / "state", health_url, os.getpid())
    env = env_for(tmp_path, PREFECT_API_URL="http://127.0.0.1:1/api")

    choice = server.use_prefect_api(env)

    assert choice == server.ApiChoice("environment", "http://127.0.0.1:1/api")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:1/api"


def test_the_active_profiles_api_url_counts_as_configured(tmp_path: Path, health_url: str) -> None:
    write_record(tmp_path / "state", health_url, os.getpid())
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        textwrap.dedent(
            """\
            active = "work"
            [profiles.ephemeral]
            [profiles.work]
            PREFECT_API_URL = "http://127.0.0.1:4200/api"
            """
        )
    )
    env = env_for(tmp_path)

    choice = server.use_prefect_api(env)

    assert choice == server.ApiChoice("profile", "http://127.0.0.1:4200/api")
    assert "PREFECT_API_URL" not in env  # Prefect reads the profile itself


def test_a_live_record_is_used_and_put_in_the_environment(tmp_path: Path, health_url: str) -> None:
    write_record(tmp_path / "state", health_url, os.getpid())
    env = env_for(tmp_path)

    choice = server.use_prefect_api(env)

    assert choice == server.ApiChoice("clustermesh server", health_url)
    assert env["PREFECT_API_URL"] == health_url
    assert env["DO_NOT_TRACK"] == "1" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_without_a_configured_or_live_server_prefect_starts_a_temporary_one(tmp_path: Path, health_url: str) -> None:
    env = env_for(tmp_path)
    assert server.use_prefect_api(env) == server.ApiChoice("temporary", None)
    assert "PREFECT_API_URL" not in env

    # a record whose process is gone is not live, even while something answers at its URL
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    write_record(tmp_path / "state", health_url, dead.pid)
    assert server.use_prefect_api(env).source == "temporary"

    # nor is a live process whose URL does not answer
    write_record(tmp_path / "state", closed_port_url(), os.getpid())
    assert server.use_prefect_api(env).source == "temporary"
    assert server.server_state(tmp_path / "state")[0] == "not answering"


def test_an_explicit_telemetry_choice_is_kept(tmp_path: Path) -> None:
    env = env_for(tmp_path, DO_NOT_TRACK="0", PREFECT_SERVER_ANALYTICS_ENABLED="true")
    server.use_prefect_api(env)
    assert env["DO_NOT_TRACK"] == "0" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


# ------------------------------------------------------------------------------ the server process


def test_the_server_environment_has_its_own_settings_and_no_analytics(tmp_path: Path) -> None:
    caller = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://elsewhere/api", "PREFECT_PROFILE": "work"}

    env = server.server_environment(caller, tmp_path / "home", 4321)

    assert env["PATH"] == "/usr/bin" and "PREFECT_PROFILE" not in env
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and env["PREFECT_SERVER_API_PORT"] == "4321"
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("sqlite+aiosqlite:///")
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith(str(tmp_path / "home" / "prefect.db"))
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert "--analytics-off" in server.server_argv(4321) and "127.0.0.1" in server.server_argv(4321)


def test_a_temporary_server_never_asks_for_analytics_and_serves_no_ui(tmp_path: Path) -> None:
    caller = {"PATH": "/usr/bin", "PREFECT_SERVER_ANALYTICS_ENABLED": "true", "DO_NOT_TRACK": "0"}

    env = server.temporary_environment(caller, tmp_path / "home", 4321)

    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_SERVER_UI_ENABLED"] == "false" and env["PREFECT__SERVER_EPHEMERAL"] == "1"
    assert env["PREFECT_HOME"] == str(tmp_path / "home")


def test_the_orphan_guard_ends_a_temporary_server_with_the_command_that_started_it_even_killed() -> None:
    """The command is SIGKILLed (no exit handler runs): the kernel still sends its server SIGTERM."""
    starter = (
        "import os, subprocess, sys, time\n"
        "from cli import server\n"
        "argv = server.guarded_argv([sys.executable, '-c', 'import time; time.sleep(300)'], os.getpid())\n"
        "child = subprocess.Popen(argv, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    command = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert command.stdout is not None
        child = int(command.stdout.readline())
        wait_until("the guarded child to run its own program", lambda: b"sleep(300)" in cmdline(child), 30)
        assert os.getpgid(child) == child  # its own session: a Ctrl-C in the terminal does not reach it
        command.kill()
        command.wait(timeout=30)
        wait_until("the guarded child to end", lambda: not server._alive(child, None), 30)
    finally:
        command.kill()
        command.wait(timeout=30)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_stop_ends_a_server_that_ignores_sigterm_with_sigkill_and_forgets_it(tmp_path: Path) -> None:
    ignoring = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
    ignoring += "time.sleep(120)\n"
    proc = subprocess.Popen([sys.executable, "-c", ignoring], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        state = tmp_path / "state"
        write_record(state, closed_port_url(), proc.pid)
        began = time.monotonic()

        stopped = server.stop_server(state, grace=0.5)

        assert stopped is not None and stopped.pid == proc.pid
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - began < 10
        assert server.read_record(state) is None
        assert server.stop_server(state) is None  # nothing left to stop
        assert server.server_state(state) == ("not running", None)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_record_whose_pid_was_reused_is_not_taken_for_the_server(tmp_path: Path, health_url: str) -> None:
    state = tmp_path / "state"
    record = write_record(state, health_url, os.getpid())
    assert record.started is not None
    server._write_record(state, ServerRecord(**{**record.__dict__, "started": record.started + 1}))

    assert server.live_record(state) is None
    assert server.use_prefect_api(env_for(tmp_path)).source == "temporary"


def test_health_is_false_where_nothing_answers_and_for_other_schemes() -> None:
    assert not server.healthy(closed_port_url(), timeout=1)
    assert not server.healthy("https://127.0.0.1:1/api", timeout=1)
    assert not server.healthy("not a url", timeout=1)
