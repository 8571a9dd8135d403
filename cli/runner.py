"""The warm runner: flow commands run in a fork of a process that has imported Prefect, the flows and the
Kubernetes client already.

Importing what a flow command needs costs about 3.5 s of CPU in every process (Prefect ~1.6 s, the Kubernetes
client's API classes ~1.8 s, the rest), while the setup of an instant two-cluster sandbox itself takes about
a second. ``clustermesh server start`` therefore also starts this runner (``python -m cli.runner <state>``):
it imports all of that once, starts no thread, and listens on ``<state>/runner.sock`` (mode 0600 in the
user's 0700 state folder; peers of another uid are refused).

A flow command (``setup``, ``verify``, ``drill``, ``clusters create``, ``blocks register``) first asks the
runner (:func:`delegate`): it sends its argv, environment, working directory and umask, with its stdin,
stdout and stderr as file descriptors. The runner forks; the child takes over all of that (so kubeconfig
references to environment variables, relative paths, PREFECT_API_URL and every other Prefect setting are the
caller's: Prefect's settings and logging are re-read from the caller's environment once the command has
chosen its Prefect API), runs the command
exactly as the ``clustermesh`` process would, and exits; the runner sends the exit status back, and the
command exits with it. Signals the caller gets (Ctrl-C, SIGTERM, SIGHUP) are passed on to the child's process
group; a caller that disappears takes its child with it (SIGTERM).

The runner refuses, and the command runs in its own process as before, when it is not there, when the caller
is another checkout or another Python, or when a module it imported has changed on disk since it started
(then it also hands over to a fresh runner and exits once its running commands are done).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROTOCOL = 1
SOCKET_NAME = "runner.sock"
PID_NAME = "runner.pid"
LOG_NAME = "runner.log"
ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT = 2.0
FORK_TIMEOUT = 30.0  # from sending the request to the child's pid: the runner answers at once unless stopped
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_LENGTH = struct.Struct("!I")


# ------------------------------------------------------------------------------------- the caller


def _identity() -> dict[str, str]:
    return {"root": str(ROOT), "executable": os.path.realpath(sys.executable)}


def delegate(argv: list[str], directory: Path) -> int | None:
    """Run ``argv`` (this process's command line) in a fork of the warm runner of ``directory``.

    Returns the command's exit status, or None when no runner took it: then the caller runs the command
    itself. Prints nothing unless a runner refused for a reason worth knowing.
    """
    path = directory / SOCKET_NAME
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        replies, first = _send_request(sock, path, argv)
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in first:
        sock.close()
        if first.get("note"):
            print(f"note: {first['note']}", file=sys.stderr)
        return None
    try:
        result = _await_child(sock, replies, int(first["pid"]))
    finally:
        sock.close()
    if "exit" in result:
        return int(result["exit"])
    if "signal" in result:
        return 128 + int(result["signal"])
    print("error: the warm runner ended while running this command (see `clustermesh server status`)", file=sys.stderr)
    return 1


def _send_request(sock: socket.socket, path: Path, argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """Send argv, environment, directory, umask and stdin/stdout/stderr; the replies and the first one."""
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(str(path))
    request = {
        "protocol": PROTOCOL,
        "argv": list(argv),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": _umask(),
        **_identity(),
    }
    payload = json.dumps(request).encode()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    message = _LENGTH.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [message], [0, 1, 2])
    sock.sendall(message[sent:])
    sock.settimeout(FORK_TIMEOUT)
    replies = sock.makefile("rb")
    return replies, json.loads(replies.readline() or b"{}")


def _await_child(sock: socket.socket, replies: Any, child: int) -> dict[str, Any]:
    """Pass this process's signals on to the child's group until the runner reports how the child ended."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(child, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        sock.settimeout(None)
        while True:
            try:
                line = replies.readline()
                break
            except InterruptedError:  # a forwarded signal; keep waiting for the child's end
                continue
        return dict(json.loads(line)) if line else {}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -------------------------------------------------------------------------------------- the runner


def _module_files() -> dict[str, int]:
    """Every imported module's file and its modification time (a changed one makes the runner stale)."""
    files: dict[str, int] = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if isinstance(name, str) and name not in files:
            with contextlib.suppress(OSError):
                files[name] = os.stat(name).st_mtime_ns
    return files


def changed_files(snapshot: Mapping[str, int]) -> list[str]:
    changed = []
    for name, mtime in snapshot.items():
        try:
            if os.stat(name).st_mtime_ns != mtime:
                changed.append(name)
        except OSError:
            changed.append(name)
    return changed


def warm_up() -> None:
    """Import what the flow commands import, and the Kubernetes client's API classes their tasks use."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import fastapi.encoders  # noqa: F401  (Prefect serialises flow parameters with it)
    import kubernetes.stream  # noqa: F401
    from kubernetes import client

    import cli.app  # noqa: F401
    import deployments.blocks  # noqa: F401
    import flows.create_clusters  # noqa: F401
    import flows.failover_drill  # noqa: F401
    import flows.mesh_setup  # noqa: F401
    import flows.mesh_verify  # noqa: F401

    for name in ("CoreV1Api", "AppsV1Api", "CustomObjectsApi"):
        getattr(client, name)


class Runner:
    """The listening loop: one thread (forking is safe), children reaped as SIGCHLD arrives."""

    def __init__(self, directory: Path) -> None:
        import selectors
        import threading

        if threading.active_count() != 1:
            raise SystemExit(f"refusing to fork from {threading.active_count()} threads")
        self.directory = directory
        self.snapshot = _module_files()
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}  # child pid -> its caller's connection
        self.stale = False
        self.stopping = False
        path = directory / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(32)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _close_listener(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / SOCKET_NAME).unlink()

    def serve(self) -> None:
        print(f"warm runner {os.getpid()} ready at {self.directory / SOCKET_NAME}", flush=True)
        while not self.stopping and not (self.stale and not self.children):
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                else:
                    self._caller_readable(key.data, key.fileobj)  # type: ignore[arg-type]
            self._reap()
        if not self.stale:
            self._close_listener()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        fds: list[int] = []
        try:
            conn.setblocking(True)
            conn.settimeout(10)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                conn.close()
                return
            request, fds = self._read_request(conn)
            refusal = self._refusal(request)
            if refusal is not None:
                _send(conn, {"note": refusal} if refusal else {})
                conn.close()
                for fd in fds:
                    os.close(fd)
                return
            pid = os.fork()
            if pid == 0:  # the child: never returns
                _child(self, conn, request, fds)
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)  # as the child does: no signal forwarded before it is in its group gets lost
            for fd in fds:
                os.close(fd)
            _send(conn, {"pid": pid})
            conn.setblocking(False)
            self.children[pid] = conn
            import selectors

            self.selector.register(conn, selectors.EVENT_READ, pid)
            print(f"{time.strftime('%H:%M:%S')} pid {pid}: {' '.join(request['argv'][1:])}", flush=True)
        except (OSError, ValueError, KeyError) as exc:
            print(f"{time.strftime('%H:%M:%S')} request failed: {exc!r}", flush=True)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
        if len(data) < _LENGTH.size:
            raise ValueError("short request")
        (length,) = _LENGTH.unpack_from(data)
        body = bytearray(data[_LENGTH.size :])
        while len(body) < length:
            more = conn.recv(length - len(body))
            if not more:
                raise ValueError("request cut short")
            body += more
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
        return json.loads(bytes(body)), list(fds)

    def _refusal(self, request: Mapping[str, Any]) -> str | None:
        """Why the runner does not take this request ('' = silently), or None when it does."""
        if self.stale or self.stopping:
            return ""
        if request.get("protocol") != PROTOCOL or {k: request.get(k) for k in _identity()} != _identity():
            return ""  # another checkout or Python: it runs in its own process
        changed = changed_files(self.snapshot)
        if changed:
            self.stale = True
            self._close_listener()
            launch(self.directory, os.environ)  # a fresh runner for the next commands
            return (
                f"{changed[0]} changed since the warm runner started: this command starts cold, the next ones "
                "use a fresh runner"
            )
        return None

    def _caller_readable(self, pid: int, conn: socket.socket) -> None:
        """The caller's connection speaks only when it closes: a caller gone before its child ends the child."""
        try:
            data = conn.recv(1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and pid in self.children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
            self.selector.unregister(conn)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                reply = {"signal": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.waitstatus_to_exitcode(status)}
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.settimeout(5)
                _send(conn, reply)
            conn.close()


def _send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _child(runner: Runner, conn: socket.socket, request: Mapping[str, Any], fds: list[int]) -> None:
    """In the forked child: become the caller's ``clustermesh`` process and run its command; never returns."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)  # its own group: the caller's signals reach it and whatever it starts
        runner.listener.close()
        for other in runner.children.values():
            other.close()
        conn.close()
        os.close(runner.wake_r)
        os.close(runner.wake_w)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _reopen_stdio()
        import cli.app  # Prefect's settings are re-read once the command has chosen its API (cli.app._prefect_api)

        status = cli.app.run_as_program()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _reopen_stdio() -> None:
    """sys.stdin/stdout/stderr on the caller's descriptors (line-buffered on a terminal, as Python does)."""
    encoding = os.environ.get("PYTHONIOENCODING", "").split(":")[0] or sys.stdout.encoding
    streams = {
        "stdin": open(0, encoding=encoding, closefd=False),  # noqa: SIM115
        "stdout": open(1, "w", encoding=encoding, closefd=False, buffering=1 if os.isatty(1) else -1),  # noqa: SIM115
        "stderr": open(2, "w", encoding=encoding, closefd=False, buffering=1, errors="backslashreplace"),  # noqa: SIM115
    }
    for name, stream in streams.items():
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


# ----------------------------------------------------------------------------- start, stop, state


def runner_pid(directory: Path) -> int | None:
    """The recorded runner's pid if it runs and serves its socket; else None."""
    try:
        pid = int((directory / PID_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not (directory / SOCKET_NAME).exists() or not _running(pid):
        return None
    try:  # the pid is a runner's, not a reused one
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid  # no /proc: trust the record
    return pid if b"cli.runner" in cmdline else None


def launch(directory: Path, environ: Mapping[str, str], *, wait: float | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m cli.runner <directory>`` detached; with ``wait``, until its socket exists."""
    env = {k: v for k, v in environ.items() if not k.startswith("PREFECT_") or k == "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(directory / "prefect"), DO_NOT_TRACK="1", PYTHONPATH=str(ROOT))
    log_fd = os.open(directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.runner", str(directory)],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    if wait is not None:
        deadline = time.monotonic() + wait
        while runner_pid(directory) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    proc.kill()
                raise RuntimeError(f"the warm runner did not start; see {directory / LOG_NAME}")
            time.sleep(0.05)
    return proc


def stop(directory: Path, grace: float = 10.0) -> int | None:
    """End the runner (SIGTERM, SIGKILL after ``grace`` s); commands it is running finish on their own."""
    pid = runner_pid(directory)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while _running(pid) and time.monotonic() < end:
                time.sleep(0.05)
    for name in (SOCKET_NAME, PID_NAME):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return pid


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not our runner
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m cli.runner STATE_DIR")
    directory = Path(argv[0])
    began = time.monotonic()
    warm_up()
    runner = Runner(directory)
    tmp = directory / f".{PID_NAME}.{os.getpid()}"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, directory / PID_NAME)
    print(f"imports took {time.monotonic() - began:.1f} s", flush=True)
    try:
        runner.serve()
    finally:
        if not runner.stale:
            with contextlib.suppress(FileNotFoundError):
                if (directory / PID_NAME).read_text().split()[0] == str(os.getpid()):
                    (directory / PID_NAME).unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
