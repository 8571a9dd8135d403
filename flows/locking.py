"""One run per mesh at a time: the lock that setup, the nightly and a drill started on its own all hold.

Holding it also arms the stop: while a flow holds its mesh, Ctrl-C or SIGTERM first asks every worker
thread to stop before its next write (``clustermesh.stopping``), then ends the flow as it always did
(KeyboardInterrupt, or Prefect's TerminationSignal: the run ends Crashed). Without that, the worker
threads running tasks would go on writing after the main thread was told to stop.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any
from uuid import UUID

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run

from clustermesh.errors import MeshBusyError
from clustermesh.spec import MeshSpec
from clustermesh.stopping import request_stop

LOCK_WAIT_SECONDS = 3600.0  # how long a run waits for another setup / nightly of the same mesh
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_runs: list[UUID] = []
_runs_lock = threading.Lock()


def mesh_lock_name(spec: MeshSpec) -> str:
    return f"mesh-{spec.name}"


@contextmanager
def mesh_lock(spec: MeshSpec, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the mesh's global concurrency limit (``mesh-<name>``, limit 1) shared by setup and nightly.

    Strict when the run comes from a deployment: there a missing limit is a configuration error
    (``clustermesh blocks register`` creates it), and running unlimited would let the nightly drill
    scale down backends in the middle of a setup. Elsewhere a missing limit only skips the lock (Prefect
    logs it): a flow called from Python, a test. The CLI's commands (``setup``, ``verify``, ``drill``,
    ``demo``) create the limit first, and also hold a lock of their own on this machine (cli/meshlock.py).
    Ctrl-C and SIGTERM stop writes while it is held (:func:`stop_writes_on_signals`).
    """
    name = mesh_lock_name(spec)
    strict = deployment.id is not None
    with ExitStack() as stack:
        stack.enter_context(stop_writes_on_signals())
        _remember_run()
        try:
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=strict))
        except ConcurrencySlotAcquisitionError as exc:
            raise MeshBusyError(
                f"cannot take global concurrency limit {name!r} ({exc}); without it this run could overlap "
                f"another setup or nightly of mesh {spec.name!r}. If it does not exist, create it with "
                f"`clustermesh blocks register --config <mesh.yaml>` (or `prefect gcl create {name} --limit 1`)"
            ) from None
        except TimeoutError:
            raise MeshBusyError(
                f"another run of mesh {spec.name!r} (setup or nightly verification) held {name!r} for more "
                f"than {wait_seconds:g}s; see the runs in the Prefect UI and retry once it has finished"
            ) from None
        yield


@contextmanager
def stop_writes_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM first request the stop of every write in this process, then do what they did.

    Only in the main thread (where Python runs signal handlers, and where a flow called directly runs);
    elsewhere it does nothing. An ignored signal stays ignored. The handlers it replaced are put back on
    leaving, unless someone replaced its own meanwhile.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: dict[signal.Signals, tuple[Any, Callable[[int, FrameType | None], None]]] = {}
    for sig in STOP_SIGNALS:
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN or previous is None:
            continue
        handler = _stopping_handler(previous)
        signal.signal(sig, handler)
        installed[sig] = (previous, handler)
    try:
        yield
    finally:
        for sig, (previous, handler) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)


def _stopping_handler(previous: Any) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        request_stop(signal.Signals(signum).name)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: end the way the signal would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def _remember_run() -> None:
    run_id = flow_run.get_id()
    if run_id is not None:
        with _runs_lock:
            _runs.append(UUID(str(run_id)))
            del _runs[:-100]  # a long-lived process (a served deployment) keeps only its latest runs


def runs_in_this_process() -> list[UUID]:
    """Every flow run that took a mesh lock in this process, in order (the CLI reports their states)."""
    with _runs_lock:
        return list(_runs)


__all__ = [
    "LOCK_WAIT_SECONDS",
    "mesh_lock",
    "mesh_lock_name",
    "runs_in_this_process",
    "stop_writes_on_signals",
]
