"""How a flow command ends on Ctrl-C or SIGTERM: before the next write, saying what was written, soon.

Tasks run in Prefect's worker threads, which go on after the main thread got KeyboardInterrupt. So the
first Ctrl-C, SIGTERM or SIGHUP requests the stop of every write in this process
(``clustermesh.stopping``: each values write and the drill's scaling check it right before they are
sent, and waits for KKP notice it at their next poll), then ends the flow in the main thread as Python
and Prefect do (the engine marks the run Crashed: "aborted by an interrupt signal"). The Prefect server a
command started runs in its own session, so the signal does not reach it and the run can be marked.

The command then prints what was written before the stop, that a rerun continues safely, and the run's
state, and exits with 128 + the signal's number. A wait that does not notice the stop (a task blocked in
a call outside the pipeline's polls) cannot hold the exit: :data:`GRACE_SECONDS` after the signal the
command marks its runs Crashed itself, prints the same and ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from clustermesh import stopping

GRACE_SECONDS = 15.0  # from the signal to the forced end, if the run has not ended by itself
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class Interrupts:
    """Around one flow command (main thread): handlers for the stop signals, and the forced end.

    ``describe`` gives the lines that say what the stop left (the command's own words: what a rerun
    does); ``cleanup`` runs before a forced end (the temporary server).
    """

    def __init__(self, describe: Callable[[], list[str]], cleanup: Callable[[], None]) -> None:
        self.describe = describe
        self.cleanup = cleanup
        self.signals: list[str] = []  # the signals this command's handler saw, in order
        self.done = threading.Event()
        self.previous: dict[int, Any] = {}
        self.watchdog: threading.Thread | None = None

    def __enter__(self) -> Interrupts:
        stopping.reset()
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self.previous[sig] = previous
                    signal.signal(sig, self._handle)
        self.watchdog = threading.Thread(target=self._watch, name="clustermesh-interrupt", daemon=True)
        self.watchdog.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.done.set()
        for sig, previous in self.previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """The first stop signal ends the run; later ones (and Prefect's re-sent SIGTERM) change nothing."""
        name = signal.Signals(signum).name
        first = not self.signals
        self.signals.append(name)
        if stopping.stop_requested() and (stopping.stop_reason() != name or not first or signum != signal.SIGINT):
            return  # the run is being ended already (a flow's handler raised into it for this signal)
        stopping.request_stop(name)
        raise KeyboardInterrupt

    @property
    def interrupted(self) -> bool:
        return stopping.stop_requested()

    @property
    def exit_code(self) -> int:
        reason = stopping.stop_reason()
        number = getattr(signal.Signals, reason, signal.SIGINT) if reason.startswith("SIG") else signal.SIGINT
        return 128 + int(number)

    def _watch(self) -> None:
        while not self.done.is_set():
            if stopping.wait_for_stop(0.25):
                break
        else:
            return
        _say(
            f"{stopping.stop_reason()}: stopping before the next write (one already sent may still land); "
            f"the run is marked and this command ends within {GRACE_SECONDS:g} s"
        )
        if self.done.wait(GRACE_SECONDS):
            return
        self._force_end()

    def _force_end(self) -> None:
        """The run did not end by itself: mark it, say what was written, end the process."""
        code = self.exit_code
        try:
            _say(f"the run did not end within {GRACE_SECONDS:g} s of {stopping.stop_reason()}: ending it here")
            mark_runs_crashed(f"interrupted ({stopping.stop_reason()}) and ended by the command")
            for line in self.describe():
                _say(line)
            self.cleanup()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)


def mark_runs_crashed(message: str) -> None:
    """Every flow run this process took a mesh lock for that is not final yet: Crashed, with ``message``."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from flows.locking import runs_in_this_process

    with get_client(sync_client=True) as client:
        for run_id in runs_in_this_process():
            with contextlib.suppress(Exception):  # the server may be gone: nothing more to do about it
                run = client.read_flow_run(run_id)
                if run.state is None or not run.state.is_final():
                    client.set_flow_run_state(run_id, Crashed(message=message), force=True)


def run_states() -> list[str]:
    """ "flow run 'name': State (message)" for each run this process took a mesh lock for."""
    from prefect.client.orchestration import get_client

    from flows.locking import runs_in_this_process

    lines = []
    with get_client(sync_client=True) as client:
        for run_id in runs_in_this_process():
            try:
                run = client.read_flow_run(run_id)
            except Exception as exc:  # noqa: BLE001 - said, not raised: the command is ending anyway
                lines.append(f"flow run {run_id}: state unknown ({type(exc).__name__})")
                continue
            state = run.state
            text = "no state" if state is None else f"{state.name}" + (f" ({state.message})" if state.message else "")
            lines.append(f"flow run '{run.name}': {text}")
    return lines


def stopped_lines(what: str, rerun: str) -> list[str]:
    """What the command says after a stop: what was written, that a rerun is safe (``rerun``), the runs."""
    reason = stopping.stop_reason() or "a stop request"
    writes = stopping.written()
    lines = [f"{what} interrupted ({reason}): stopped before its next write"]
    if writes:
        lines.append(f"written before the stop ({len(writes)}): " + "; ".join(writes))
    else:
        lines.append("nothing was written before the stop")
    lines.append(rerun)
    try:
        lines.extend(run_states())
    except Exception as exc:  # noqa: BLE001 - the Prefect API may be what is gone
        lines.append(f"the run's state could not be read: {type(exc).__name__}")
    return lines


__all__ = ["GRACE_SECONDS", "Interrupts", "mark_runs_crashed", "run_states", "stopped_lines"]
