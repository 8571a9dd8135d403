"""One run per mesh from the command line: a lock file the CLI holds for the whole command.

Two ``clustermesh setup`` of one mesh started together both ran: the flows' lock is the Prefect limit
``mesh-<name>``, and a temporary server has no such limit ("skipping acquisition"). So every command that
runs a mesh's flow (``setup``, ``verify``, ``drill``) first takes ``<state>/locks/mesh-<name>.lock``
(``fcntl.flock``, released by the kernel however the process ends), whichever server it uses; a second
command of the same mesh says what holds it and waits, at most ``LOCK_WAIT_SECONDS`` (the flows' own
bound), then gives up without having touched anything.

On a server that outlives the command (a configured one, or ``clustermesh server start``) the flows also
hold the Prefect limit, which orders CLI runs against deployment runs and other machines: the CLI creates
it there when it is missing (limit 1, as ``clustermesh blocks register`` does). A temporary server is the
command's alone: the lock file is the guarantee there.

The lock is keyed by the mesh's name, as the Prefect limit is. It is re-entrant within one process (the
demo runs setup and verification of one mesh under one hold).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCKS_NAME = "locks"
POLL_SECONDS = 0.2

_held: dict[str, int] = {}  # lock path -> how many holds of this process are open


class MeshBusy(Exception):
    """Another command of the mesh held the lock for longer than the wait allows; nothing was touched."""


def lock_path(state: Path, mesh: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in mesh)
    return state / LOCKS_NAME / f"mesh-{safe}.lock"


def holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it ("`clustermesh setup` (pid 123) since 01:46:17")."""
    try:
        data = json.loads(path.read_text() or "{}")
        return f"`clustermesh {data['command']}` (pid {data['pid']}) since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another clustermesh command"


@contextlib.contextmanager
def hold_mesh(
    state: Path, mesh: str, command: str, *, wait_seconds: float, say: Callable[[str], None]
) -> Iterator[None]:
    """Hold mesh ``mesh``'s lock for the block; wait for another holder (``say`` tells why), at most
    ``wait_seconds``, else :class:`MeshBusy`."""
    path = lock_path(state, mesh)
    key = str(path)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, path, mesh, wait_seconds, say)
        os.ftruncate(fd, 0)
        since = time.strftime("%H:%M:%S")
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": since}).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path, mesh: str, wait_seconds: float, say: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    say(
        f"mesh {mesh} is busy: {holder(path)} runs it; waiting for it to finish (at most {wait_seconds / 60:g} "
        "min, Ctrl-C to give up: nothing has been written)"
    )
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            say(f"mesh {mesh} is free: going on")
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise MeshBusy(
                    f"mesh {mesh} was still busy after {wait_seconds:g} s ({holder(path)}); nothing was written: "
                    "retry once it has finished"
                ) from None
            time.sleep(POLL_SECONDS)


def ensure_limit(name: str) -> bool:
    """Create the global concurrency limit ``name`` (limit 1) on the chosen Prefect API if it is missing;
    True when this call created it. Imports Prefect: call it once the API is chosen."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            return False  # another command created it meanwhile
        return True


__all__ = ["MeshBusy", "ensure_limit", "hold_mesh", "holder", "lock_path"]
