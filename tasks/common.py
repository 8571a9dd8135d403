"""What the Prefect tasks share, and nothing else: retry policy, the Secret-block loader, each run's clients.

Every task retries transient failures only (connection errors, 5xx, 429 from a cluster or from KKP;
never bad input). Parameters carry references, never credentials: a task resolves its cluster's
kubeconfig through the run's :class:`~clustermesh.kube.ClusterSessions`, which a flow opens with
``with cluster_sessions(spec):`` (keyed by the flow run's id) so each cluster's kubeconfig is read, or
fetched from KKP, once per run. A task borrows the run's client and never closes it; outside a flow
run that opened sessions (a task called on its own, another process) it gets a client of its own,
closed when it is done. Clients are never task parameters: inputs are hashed into cache keys.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.blocks.system import Secret
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext

from clustermesh.kube import ClusterClient, ClusterSessions, is_transient, open_cluster
from clustermesh.spec import ClusterSpec, MeshSpec
from tasks.results import owner_only_files

__all__ = [
    "COMMON",
    "RETRY_DELAYS",
    "cluster_client",
    "cluster_clients",
    "cluster_sessions",
    "load_secret_block",
    "open_client",
    "retry_transient",
]

RETRY_DELAYS = [1, 3, 10]


def load_secret_block(name: str) -> str:
    """The text of a Prefect Secret block (how kubeconfigs and tokens are stored for deployments)."""
    block: Any = Secret.load(name)
    return str(block.get())


def retry_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what another attempt can fix: the cluster's API or KKP was unreachable, busy or failing."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's exception is what we classify
        return is_transient(exc)
    return False


COMMON: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}


# ------------------------------------------------------------------------------ clients of a run


def open_client(spec: MeshSpec, cluster: str) -> ClusterClient:
    """A client of its own for ``cluster``, resolved from its reference now: the caller closes it."""
    return _open(spec, spec.cluster(cluster))


def _open(spec: MeshSpec, entry: ClusterSpec) -> ClusterClient:
    return open_cluster(entry, request_timeout=spec.timeouts.api, load_secret=load_secret_block)


@dataclass(frozen=True)
class _RunSessions:
    sessions: ClusterSessions
    api_timeout: float

    def serves(self, spec: MeshSpec, entry: ClusterSpec) -> bool:
        return spec.timeouts.api == self.api_timeout and self.sessions.matches(entry)


_RUNS: dict[UUID, _RunSessions] = {}
_RUNS_LOCK = threading.Lock()
_ENCLOSING: ContextVar[_RunSessions | None] = ContextVar("clustermesh_enclosing_sessions", default=None)
"""The sessions of the flow whose body is running here: a subflow called from it sees them."""


def _flow_run_id() -> UUID | None:
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return UUID(str(task_ctx.task_run.flow_run_id))
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return UUID(str(flow_ctx.flow_run.id))
    return None


@contextmanager
def cluster_sessions(spec: MeshSpec) -> Iterator[ClusterSessions | None]:
    """The flow run's clients, one per cluster of ``spec``, opened on first use and closed on leaving.

    A subflow called from a flow that holds sessions for the same clusters (the drill inside the
    nightly) borrows the caller's, which the caller closes. Outside a flow run this does nothing
    (tasks then open clients of their own) and yields None.

    Every flow that talks to clusters opens its sessions first, so this is also where its files become
    the owner's alone (:func:`~tasks.results.owner_only_files`): result records, the failed run's own
    result included, are 0600 in 0700 folders.
    """
    run_id = _flow_run_id()
    if run_id is None:
        yield None
        return
    with owner_only_files():
        yield from _run_sessions(spec, run_id)


def _run_sessions(spec: MeshSpec, run_id: UUID) -> Iterator[ClusterSessions]:
    enclosing = _ENCLOSING.get()
    borrowed = enclosing is not None and all(enclosing.serves(spec, c) for c in spec.clusters)
    run = (
        enclosing
        if borrowed and enclosing is not None
        else _RunSessions(ClusterSessions(lambda entry: _open(spec, entry)), spec.timeouts.api)
    )
    with _RUNS_LOCK:
        _RUNS[run_id] = run
    token = _ENCLOSING.set(run)
    try:
        yield run.sessions
    finally:
        _ENCLOSING.reset(token)
        with _RUNS_LOCK:
            _RUNS.pop(run_id, None)
        if not borrowed:
            run.sessions.close()


@contextmanager
def cluster_client(spec: MeshSpec, cluster: str) -> Iterator[ClusterClient]:
    """The run's client of ``cluster``, borrowed (left open); else a client of its own, closed on leaving."""
    entry = spec.cluster(cluster)
    run_id = _flow_run_id()
    with _RUNS_LOCK:
        run = _RUNS.get(run_id) if run_id is not None else None
    if run is not None and run.serves(spec, entry):
        yield run.sessions.client(entry)
        return
    with _open(spec, entry) as client:
        yield client


@contextmanager
def cluster_clients(spec: MeshSpec) -> Iterator[dict[str, ClusterClient]]:
    """Every cluster's client by name, as :func:`cluster_client` gives them (own ones closed on leaving)."""
    with ExitStack() as stack:
        yield {c.name: stack.enter_context(cluster_client(spec, c.name)) for c in spec.clusters}
