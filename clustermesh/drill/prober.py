"""Requests through the drill Service: one curl from the client pod, and a prober that keeps sending them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from clustermesh.drill.client import DrillClient
from clustermesh.drill.manifests import CLIENT_CONTAINER
from clustermesh.drill.text import cut

PROBE_MAX_TIME = 3
"""Seconds one curl through the service may take (``--max-time``)."""
PROBE_INTERVAL = 0.2
"""Pause between two requests of the background probe during a failover."""


def curl(client: DrillClient, namespace: str, pod: str, url: str, *, api_timeout: float) -> tuple[bool, str]:
    """One GET of ``url`` from the client pod ``pod``: (HTTP 200, what came back)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(PROBE_MAX_TIME), url]
    out = client.exec(namespace, pod, CLIENT_CONTAINER, argv, timeout=PROBE_MAX_TIME + api_timeout)
    code = out.stdout.strip()
    if out.ok and code == "200":
        return True, "HTTP 200"
    return (
        False,
        f"curl exit {out.exit_code}, HTTP {code or '000'}{': ' + cut(out.stderr, 120) if out.stderr else ''}",
    )


class Prober:
    """Requests through the service every ``interval`` seconds in a thread, counting what failed."""

    def __init__(self, probe: Callable[[], bool], interval: float) -> None:
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="clustermesh-drill-probe", daemon=True)
        self.requests = 0
        self.failures = 0
        self.errors: list[str] = []

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self._probe()
            except Exception as exc:  # the exec itself failed (no request made); the drill goes on
                with self._lock:
                    self.errors.append(cut(str(exc), 200))
            else:
                with self._lock:
                    self.requests += 1
                    self.failures += 0 if ok else 1
            self._stop.wait(self._interval)
