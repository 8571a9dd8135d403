"""One Prefect server for the session (``clustermesh server start|stop|status``), and which Prefect API a command uses.

Without a server, every process that runs a flow makes Prefect start a temporary server of its own: 10–25 s
before the first task, for a setup whose own work takes about a second. ``clustermesh server start`` starts
``prefect server start`` once, detached (SQLite under a per-user state folder, 127.0.0.1, a free port,
analytics off), and records its URL and pid; every later command that runs a flow finds the record and
talks to that server instead. It also starts the warm runner (cli/runner.py, unless ``--no-warm``), in which
those commands run without importing Prefect, the flows and the Kubernetes client again; ``server stop``
ends both.

Which API a command uses, in this order (:func:`use_prefect_api`, called before Prefect is imported,
because Prefect reads its settings once, at import):

1. ``PREFECT_API_URL`` in the environment, or in the active Prefect profile: a server someone configured;
2. the URL of a live ``clustermesh server`` record (the pid is alive and ``/api/health`` answers);
3. a temporary server for this command alone (:func:`start_temporary_server`), with one line on stderr
   suggesting ``clustermesh server start``.

The temporary server is not Prefect's own: that one runs in the terminal's process group, so the Ctrl-C
meant for the command killed it too, and the interrupted run could then never be marked (the run stayed
"Running", and every log line after it was a traceback). This one runs in a session of its own, in a
private PREFECT_HOME under the state folder, and ends with the command (also when the command is killed:
the kernel sends it SIGTERM, PR_SET_PDEATHSIG). Every server started here makes its files owner-only
(umask 077: the SQLite database holds flow parameters and logs).

This module imports nothing heavy (no Prefect, no httpx): it runs before every flow command. The state
folder is ``$CLUSTERMESH_STATE_DIR``, else ``$XDG_STATE_HOME/clustermesh``, else ``~/.local/state/clustermesh``.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

STATE_DIR_ENV = "CLUSTERMESH_STATE_DIR"
"""Overrides the state folder (default ``$XDG_STATE_HOME/clustermesh``, else ``~/.local/state/clustermesh``)."""

HOST = "127.0.0.1"
RECORD_NAME = "server.json"
LOCK_NAME = "server.lock"
LOG_NAME = "server.log"
START_TIMEOUT = 180.0  # a cold start on a busy 2-core machine takes 10-25 s; the first one also builds the UI
STOP_GRACE = 15.0  # SIGTERM, then SIGKILL after this long
HEALTH_TIMEOUT = 2.0  # one /api/health request
LOCK_TIMEOUT = START_TIMEOUT + 30.0  # another `server start|stop` holding the state folder
TEMPORARY_NAME = "temporary"  # <state>/temporary/<pid>-<n>: one command's server, removed when it ends
OWNER_ONLY_UMASK = 0o077

TEMPORARY_SERVER_HINT = (
    "note: no Prefect server configured (PREFECT_API_URL) or running, so a temporary one is started for this "
    "run (10-25 s); `clustermesh server start` keeps one running and makes the next runs start in seconds"
)

# Runs ``argv[2:]`` (the server) so that the kernel sends it SIGTERM when the process that started it ends,
# even by SIGKILL: a temporary server never outlives its command (Linux; elsewhere the guard just execs).
_ORPHAN_GUARD = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the command ended before the guard was armed
os.execv(sys.argv[2], sys.argv[2:])
"""


class ServerError(Exception):
    """The session server could not be started or stopped; the message says why and what to do."""


# --------------------------------------------------------------------------------------- the record


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user folder holding the server's record, log, lock and PREFECT_HOME (with its SQLite database)."""
    env = os.environ if environ is None else environ
    explicit = env.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "clustermesh"


@dataclass(frozen=True)
class ServerRecord:
    """What ``server start`` wrote: the API URL, the server's pid (leader of its own process group) and where
    its PREFECT_HOME and log are. ``started`` is the process's start time (clock ticks since boot, from
    /proc) so that a pid reused by another process is not taken for the server."""

    url: str
    pid: int
    started: int | None
    home: str
    log: str

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")


def read_record(directory: Path) -> ServerRecord | None:
    try:
        data = json.loads((directory / RECORD_NAME).read_text())
        return ServerRecord(
            url=str(data["url"]),
            pid=int(data["pid"]),
            started=None if data.get("started") is None else int(data["started"]),
            home=str(data["home"]),
            log=str(data["log"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(directory: Path, record: ServerRecord) -> None:
    tmp = directory / f".{RECORD_NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(record), fh, indent=2)
    os.replace(tmp, directory / RECORD_NAME)


def _remove_record(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / RECORD_NAME).unlink()


@contextlib.contextmanager
def _locked(directory: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Only one ``server start`` or ``stop`` at a time per state folder (a bounded wait for the other)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"another `clustermesh server start|stop` has held {directory / LOCK_NAME} for more "
                        f"than {timeout:g} s; wait for it, or end it"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    """``pid`` runs (not a zombie) and is the process that was recorded (same start time, where known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the start time decides
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        state = ""
    if state in ("Z", "X"):
        return False
    return started is None or _start_ticks(pid) in (None, started)


def healthy(url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    """``GET <url>/health`` answers 200 ``true``: a Prefect server serves ``url`` (an API URL ending in /api)."""
    rest = url.removeprefix("http://")
    if rest == url:
        return False  # only the plain-HTTP loopback servers this module starts are checked this way
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", f"/{path}/health".replace("//", "/"))
            response = conn.getresponse()
            body = response.read(64)
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return response.status == 200 and body.strip() == b"true"


def live_record(directory: Path | None = None) -> ServerRecord | None:
    """The recorded server, if its process is alive and its API answers; else None."""
    record = read_record(state_dir() if directory is None else directory)
    if record is None or not _alive(record.pid, record.started):
        return None
    return record if healthy(record.url) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_environment(environ: Mapping[str, str], home: Path, port: int) -> dict[str, str]:
    """The server's environment: the caller's without any PREFECT_ setting (a profile, a database or an API
    URL meant for something else), then its own home, SQLite database, address, and no analytics."""
    env = {k: v for k, v in environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_API_HOST=HOST,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=f"http://{HOST}:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",  # no access log line per request in server.log
        DO_NOT_TRACK="1",
    )
    return env


def server_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port), "--analytics-off"]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """``sig`` to the server's process group (it leads its own session), else to the pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, started: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _end(pid: int, started: int | None, grace: float) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within ``grace`` seconds."""
    if not _alive(pid, started):
        return
    _signal_group(pid, signal.SIGTERM)
    if _wait_gone(pid, started, grace):
        return
    _signal_group(pid, signal.SIGKILL)
    if not _wait_gone(pid, started, 10.0):
        raise ServerError(f"the Prefect server (pid {pid}) did not exit after SIGKILL")


# ------------------------------------------------------------------------------- start/stop/status


def start_server(
    directory: Path | None = None, *, timeout: float = START_TIMEOUT, warm: bool = True
) -> tuple[ServerRecord, bool]:
    """Start the session server unless a live one is recorded, and (``warm``) its warm runner unless one runs;
    returns (record, whether this call started the Prefect server)."""
    directory = state_dir() if directory is None else directory
    _private_folder(directory)
    with _locked(directory):
        record = read_record(directory)
        started = False
        if record is not None and not _alive(record.pid, record.started):
            _remove_record(directory)  # the process is gone: a stale record
            record = None
        if record is None:
            home = directory / "prefect"
            _private_folder(home)
            _owner_only(home)  # a database an earlier version left readable by others
            record = _launch(home, directory / LOG_NAME, timeout)
            _write_record(directory, record)
            started = True
        elif not healthy(record.url):
            raise ServerError(
                f"a clustermesh server (pid {record.pid}) is recorded but does not answer at {record.url}; "
                "`clustermesh server stop` ends it"
            )
        if warm:
            from cli import runner

            if runner.runner_pid(directory) is None:
                try:
                    runner.launch(directory, {**os.environ, "PREFECT_API_URL": record.url}, wait=timeout)
                except RuntimeError as exc:
                    raise ServerError(f"{exc} (the Prefect server runs: {record.url})") from None
        return record, started


def _private_folder(path: Path) -> None:
    """``path`` exists and only its owner may enter it (0700), also when an earlier version made it 0755."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)


def _owner_only(home: Path) -> None:
    """Files under ``home`` 0600 and folders 0700 (what the server's umask gives new ones)."""
    for root, folders, files in os.walk(home):
        for name in folders:
            with contextlib.suppress(OSError):
                Path(root, name).chmod(0o700)
        for name in files:
            path = Path(root, name)
            with contextlib.suppress(OSError):
                if not path.is_symlink():
                    path.chmod(0o600)


Command = Callable[[int], tuple[list[str], dict[str, str]]]
"""The server's argv and environment for a port."""


def _session_command(home: Path) -> Command:
    return lambda port: (server_argv(port), server_environment(os.environ, home, port))


def _launch(
    home: Path, log_path: Path, timeout: float, attempts: int = 3, *, command: Command | None = None
) -> ServerRecord:
    """A Prefect server detached on a free port, once it answers; another port if this one was taken
    between choosing it and the server binding it (``attempts`` at most). ``command`` gives its argv and
    environment (default: ``prefect server start`` with :func:`server_environment`)."""
    command = command or _session_command(home)
    for attempt in range(1, attempts + 1):
        port = _free_port()
        argv, env = command(port)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=home,  # no prefect.toml or .env of the caller's folder
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # away from the terminal's signals (Ctrl-C is for the command)
                close_fds=True,
                umask=OWNER_ONLY_UMASK,  # its SQLite database and files: the owner's alone
            )
        finally:
            os.close(log_fd)
        started = _start_ticks(proc.pid)
        url = f"http://{HOST}:{port}/api"
        deadline = time.monotonic() + timeout
        while not healthy(url, timeout=1.0):
            code = proc.poll()
            if code is not None:
                log = _tail(log_path)
                if "in use" in log and attempt < attempts:
                    break  # the port was taken meanwhile: try another
                raise ServerError(
                    f"the Prefect server exited with {code} before answering; its log ({log_path}):\n{log}"
                )
            if time.monotonic() > deadline:
                _end(proc.pid, started, STOP_GRACE)
                raise ServerError(
                    f"the Prefect server did not answer at {url} within {timeout:g} s (stopped it); "
                    f"its log ({log_path}):\n" + _tail(log_path)
                )
            time.sleep(0.1)
        else:
            return ServerRecord(url=url, pid=proc.pid, started=started, home=str(home), log=str(log_path))
    raise AssertionError("unreachable: the last attempt returns or raises")


def stop_server(directory: Path | None = None, *, grace: float = STOP_GRACE) -> ServerRecord | None:
    """End the recorded server (SIGTERM, SIGKILL after ``grace`` s) and remove the record; None if none."""
    from cli import runner

    directory = state_dir() if directory is None else directory
    runner.stop(directory, grace=grace)
    if not (directory / RECORD_NAME).exists():
        return None
    with _locked(directory):
        record = read_record(directory)
        if record is None:
            _remove_record(directory)
            return None
        _end(record.pid, record.started, grace)
        _remove_record(directory)
        return record


# ------------------------------------------------------------------------------ the temporary server


@dataclass(frozen=True)
class TemporaryServer:
    """A Prefect server for one command: :func:`start_temporary_server` starts it, :meth:`stop` ends it and
    removes its folder (database and log included)."""

    url: str
    pid: int
    started: int | None
    home: Path

    def stop(self, grace: float = STOP_GRACE) -> None:
        _end(self.pid, self.started, grace)
        shutil.rmtree(self.home, ignore_errors=True)


def guarded_argv(argv: list[str], guarded_by: int) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the thread of process ``guarded_by`` that starts it ends."""
    return [sys.executable, "-c", _ORPHAN_GUARD, str(guarded_by), *argv]


def temporary_argv(port: int, guarded_by: int) -> list[str]:
    """What Prefect runs for its own temporary server (uvicorn on the API app, no UI), behind the orphan guard."""
    server = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    server += ["--host", HOST, "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    return guarded_argv(server, guarded_by)


def temporary_environment(environ: Mapping[str, str], home: Path, port: int) -> dict[str, str]:
    """:func:`server_environment`, as a temporary server: the services of one, and no UI."""
    env = server_environment(environ, home, port)
    env.update(PREFECT__SERVER_EPHEMERAL="1", PREFECT_SERVER_UI_ENABLED="false")
    return env


def start_temporary_server(directory: Path | None = None, *, timeout: float = START_TIMEOUT) -> TemporaryServer:
    """A server for this command alone, in ``<state>/temporary/<pid>-<n>`` (0700), once it answers.

    Call it from the main thread: the server gets SIGTERM when the thread that started it ends (and so
    when this process dies, however it dies). Folders of temporary servers whose command is gone are
    removed first.
    """
    parent = (state_dir() if directory is None else directory) / TEMPORARY_NAME
    _private_folder(parent.parent)
    _private_folder(parent)
    _remove_abandoned(parent)
    home = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))  # 0700
    me = os.getpid()

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        return temporary_argv(port, me), temporary_environment(os.environ, home, port)

    try:
        record = _launch(home, home / LOG_NAME, timeout, command=command)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return TemporaryServer(url=record.url, pid=record.pid, started=record.started, home=home)


def _remove_abandoned(parent: Path) -> None:
    """Folders of temporary servers whose command no longer runs (it was killed: its server went with it)."""
    for folder in parent.iterdir():
        pid_text = folder.name.partition("-")[0]
        if folder.is_dir() and pid_text.isdigit() and not _alive(int(pid_text), None):
            shutil.rmtree(folder, ignore_errors=True)


ServerState = Literal["running", "not answering", "not running"]


def server_state(directory: Path | None = None) -> tuple[ServerState, ServerRecord | None]:
    record = read_record(state_dir() if directory is None else directory)
    if record is None or not _alive(record.pid, record.started):
        return "not running", record
    return ("running" if healthy(record.url) else "not answering"), record


# ----------------------------------------------------------------------- which API a command uses

ApiSource = Literal["environment", "profile", "clustermesh server", "temporary"]


@dataclass(frozen=True)
class ApiChoice:
    source: ApiSource
    url: str | None


def _profile_api_url(environ: Mapping[str, str]) -> str | None:
    """PREFECT_API_URL of the active Prefect profile (profiles.toml), read without importing Prefect."""
    import tomllib

    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = (data.get("profiles") or {}).get(active) or {}
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(url) if url else None


def use_prefect_api(environ: dict[str, str] | os._Environ[str] | None = None) -> ApiChoice:
    """Decide the Prefect API of this process and put it in the environment; call before importing Prefect.

    Also turns Prefect's telemetry off unless the environment says otherwise (``DO_NOT_TRACK``, and the
    analytics of a temporary server).
    """
    env = os.environ if environ is None else environ
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if env.get("PREFECT_API_URL"):
        return ApiChoice("environment", env["PREFECT_API_URL"])
    configured = _profile_api_url(env)
    if configured:
        return ApiChoice("profile", configured)
    record = live_record(state_dir(env))
    if record is not None:
        env["PREFECT_API_URL"] = record.url
        return ApiChoice("clustermesh server", record.url)
    return ApiChoice("temporary", None)


__all__ = [
    "ApiChoice",
    "ServerError",
    "ServerRecord",
    "TEMPORARY_SERVER_HINT",
    "TemporaryServer",
    "healthy",
    "live_record",
    "server_state",
    "start_server",
    "start_temporary_server",
    "state_dir",
    "stop_server",
    "use_prefect_api",
]
