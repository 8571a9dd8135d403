"""One client per cluster for the length of a run: opened on first use, shared by every step, closed together.

Opening a client resolves its reference (reads and parses a kubeconfig, or asks the KKP API for one);
doing that once per cluster per run instead of once per step spares KKP the repeated kubeconfig
requests and each step the parsing. Clients are thread-safe for ordinary calls (one urllib3 pool) and
open their own ``ApiClient`` per exec, so parallel steps may share them.

Whoever made the sessions closes them; everyone else only borrows a client and must not close it.
A reference that fails to open (a KKP 503, a missing file) is not remembered: the next use tries again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from clustermesh.kube.client import ClusterClient
from clustermesh.spec import ClusterSpec

__all__ = ["ClusterSessions", "Opener"]

Opener = Callable[[ClusterSpec], ClusterClient]


class ClusterSessions:
    """The clients of one run, by cluster name; ``open_client`` makes one from a spec entry on first use."""

    def __init__(self, open_client: Opener) -> None:
        self._open = open_client
        self._lock = threading.Lock()
        self._held: dict[str, tuple[ClusterSpec, ClusterClient]] = {}
        self._opening: dict[str, threading.Lock] = {}
        self._closed = False
        self.opened = 0
        """How many clients were opened so far (one per cluster, unless opening failed and was retried)."""

    def matches(self, cluster: ClusterSpec) -> bool:
        """Whether :meth:`client` would serve ``cluster``: nothing open under its name yet, or the same entry."""
        with self._lock:
            held = self._held.get(cluster.name)
        return held is None or held[0] == cluster

    def client(self, cluster: ClusterSpec) -> ClusterClient:
        """The run's client of ``cluster``, opened now if it is the first use. Borrowed: do not close it.

        Opening one cluster (a KKP lookup may take a while) holds up only other users of that cluster.
        """
        with self._lock:
            gate = self._opening.setdefault(cluster.name, threading.Lock())
        with gate:
            with self._lock:
                self._refuse_closed()
                held = self._held.get(cluster.name)
            if held is not None:
                return self._same(cluster, held)
            client = self._open(cluster)
            with self._lock:
                if self._closed:  # closed while we were opening: nobody would close this one
                    client.close()
                    self._refuse_closed()
                self._held[cluster.name] = (cluster, client)
                self.opened += 1
            return client

    def close(self) -> None:
        """Close every client opened so far; later uses are refused. Safe to call twice."""
        with self._lock:
            self._closed = True
            held, self._held = list(self._held.values()), {}
        errors: list[BaseException] = []
        for _, client in held:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - close the others first, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> ClusterSessions:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            names = sorted(self._held)
        return f"ClusterSessions(open={names!r}, closed={self._closed})"

    def _refuse_closed(self) -> None:
        if self._closed:
            raise RuntimeError("these cluster sessions are closed: the run that opened them has ended")

    @staticmethod
    def _same(cluster: ClusterSpec, held: tuple[ClusterSpec, ClusterClient]) -> ClusterClient:
        if held[0] != cluster:
            raise ValueError(
                f"cluster {cluster.name!r} is already open in this run from another reference; "
                "one run serves one spec (check ClusterSessions.matches first)"
            )
        return held[1]
