"""Stopping a run between writes: one stop request per process, checked right before every write.

Tasks run in worker threads, which go on after the main thread got Ctrl-C or SIGTERM; only they can
stop themselves before their next write. Whoever sees the signal (the flows' signal hook, the CLI)
calls :func:`request_stop`; every write to a cluster calls :func:`raise_if_stopping` first, and waits
poll through :func:`raise_if_stopping` too, so a worker ends within one poll. A write already sent may
still land: the next run reads it back and goes on from there. What was written is kept
(:func:`note_written`) so that whoever stopped the run can say so.

No Prefect and no signals here: a plain process-wide flag and a list.
"""

from __future__ import annotations

import threading

from clustermesh.errors import StopRequested

__all__ = [
    "StopRequested",
    "note_written",
    "raise_if_stopping",
    "request_stop",
    "reset",
    "stop_reason",
    "stop_requested",
    "wait_for_stop",
    "written",
]

_requested = threading.Event()
_lock = threading.Lock()
_reason = ""
_written: list[str] = []


def request_stop(reason: str) -> None:
    """Ask every worker of this process to stop before its next write; the first reason is kept."""
    global _reason
    with _lock:
        if not _requested.is_set():
            _reason = reason
            _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def stop_reason() -> str:
    """Why the stop was requested (e.g. "SIGINT"); empty while none was."""
    with _lock:
        return _reason


def raise_if_stopping(what: str) -> None:
    """Raise :class:`StopRequested` naming ``what`` (which was then not done) once a stop was requested."""
    if _requested.is_set():
        raise StopRequested(what, stop_reason())


def wait_for_stop(timeout: float | None = None) -> bool:
    """Block until a stop is requested (True) or ``timeout`` seconds passed (False)."""
    return _requested.wait(timeout)


def note_written(what: str) -> None:
    """Remember one write that reached a cluster (e.g. "cluster-1: 2. Enable Cluster Mesh")."""
    with _lock:
        _written.append(what)


def written() -> list[str]:
    """Every write noted in this process since the last :func:`reset`, in order."""
    with _lock:
        return list(_written)


def reset() -> None:
    """Forget the stop request and the writes (a new command in the same process, a test)."""
    global _reason
    with _lock:
        _requested.clear()
        _reason = ""
        _written.clear()
