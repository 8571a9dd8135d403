"""Controlling a sandbox as a process: serve one in the foreground until a signal, and, from another process,
read its ``sandbox.json``, stop it (``clustermesh sandbox down``) or send it a fault (``clustermesh sandbox fault``).

Kept apart from :mod:`sandbox.server` (which builds and runs the simulated clusters) so that ``down`` and
``fault`` need neither Starlette nor the world's controllers; :class:`SandboxError` lives here for the same
reason and :mod:`sandbox.server` re-exports it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.server import Sandbox


class SandboxError(Exception):
    """Bad sandbox options or a sandbox that did not come up; the message says what to change."""


def run_foreground(sandbox: Sandbox) -> None:
    """``clustermesh sandbox up``: serve until SIGINT or SIGTERM, then stop cleanly."""
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    old_int = signal.signal(signal.SIGINT, _handler)
    old_term = signal.signal(signal.SIGTERM, _handler)
    try:
        sandbox.start()
        print(
            f"sandbox ready: {len(sandbox.endpoints)} clusters, Cilium {sandbox.cilium_version}, "
            f"KKP {sandbox.kkp_version}{f', real charts from {sandbox.charts}' if sandbox.charts else ''}, "
            f"files in {sandbox.directory}",
            flush=True,
        )
        for ep in sandbox.endpoints:
            print(f"  {ep.name}: {ep.url}  kubeconfig {ep.kubeconfig}", flush=True)
        if sandbox.kkp:
            print(f"  KKP API: {sandbox.kkp_url} (token and project in kkp.json; spec: mesh-kkp.yaml)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def read_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "sandbox.json"
    if not path.exists():
        raise SandboxError(
            f"no sandbox in {directory}: {path} does not exist (start one with `clustermesh sandbox up`)"
        )
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def stop_running(directory: Path, timeout: float = 15.0) -> int:
    """``clustermesh sandbox down``: SIGTERM the serving process and wait until it has cleaned up."""
    info = read_info(directory)
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (Path(directory) / "ready").unlink(missing_ok=True)
        return pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.1)
    raise SandboxError(f"sandbox process {pid} did not stop within {timeout}s; kill it with `kill -9 {pid}`")


def _alive(pid: int) -> bool:
    """Running, and not a zombie its parent has yet to reap (that one has stopped already)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def send_fault(directory: Path, kind: str, **args: Any) -> dict[str, Any]:
    """``clustermesh sandbox fault``: call the control endpoint of a running sandbox."""
    return _control(directory, "/faults", {"kind": kind, **args}, what=f"fault {kind!r}")


def send_upgrade(directory: Path, cluster: str, version: str) -> dict[str, Any]:
    """``clustermesh sandbox upgrade``: KKP's upgrade of ``cluster``'s Cilium to ``version``."""
    body = {"cluster": cluster, "version": version}
    return _control(directory, "/upgrade", body, what=f"upgrade of {cluster} to {version!r}")


def send_calendar(directory: Path, advance_days: float) -> dict[str, Any]:
    """``clustermesh sandbox calendar``: move the certificates' calendar on by ``advance_days``."""
    return _control(directory, "/calendar", {"advance_days": advance_days}, what=f"calendar +{advance_days} days")


def _control(directory: Path, path: str, payload: dict[str, Any], *, what: str) -> dict[str, Any]:
    info = read_info(directory)
    req = urllib.request.Request(
        info["control_url"] + path,
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {info['control_token']}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        body = exc.read() or b"{}"
        try:
            detail = json.loads(body).get("error", str(exc))
        except (ValueError, AttributeError):  # a plain-text 500 (a control handler that crashed)
            detail = f"{exc} {body[:200].decode(errors='replace')}".strip()
        raise SandboxError(f"{what} refused: {detail}") from exc
    except urllib.error.URLError as exc:
        raise SandboxError(
            f"no sandbox answers for {directory} ({exc.reason}); "
            f"start one with `clustermesh sandbox up --dir {directory}`"
        ) from None
