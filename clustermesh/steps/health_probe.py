"""Asking every Cilium agent of a cluster what it reaches (``cilium-health status``), folded as it is read.

Every answer lists every node of the mesh (800 at 16 clusters of 50), so each is folded into what the
matrix needs (``NodesSeen``: per cluster, the nodes reachable and the failures of the others) as soon
as it is parsed; the probe never holds more than one parsed answer at a time. Step 8 (and step 7's one
look) are built on it: :mod:`clustermesh.steps.step8_health`.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium import HealthNode, HealthStatus, parse_health
from clustermesh.errors import ClusterMeshError
from clustermesh.kube import ExecOutput

AGENT_NAMESPACE = "kube-system"
AGENT_LABEL = "k8s-app=cilium"
AGENT_CONTAINER = "cilium-agent"
HEALTH_JSON = ("cilium-health", "status", "-o", "json")
HEALTH_TEXT = ("cilium-health", "status")
MAX_FAILURES_PER_CELL = 5
DEFAULT_WORKERS = 8

MESH_HEALTH_CHECK = (
    "the firewall between the worker nodes of every pair of clusters (UDP 8472 VXLAN, TCP 4240 health "
    "checks, ICMP echo), TCP 2379 from every node to each peer's clustermesh-apiserver (LoadBalancer "
    "address or nodePort), that each peer's remote certificate and CA are the ones configured, and "
    "`cilium-dbg troubleshoot clustermesh` (`cilium` on 1.13–1.14) in an agent of the failing cluster"
)


class HealthClient(Protocol):
    """What the health probe needs of a cluster client; ``ClusterClient`` has it, test fakes too."""

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def list_pods(
        self, namespace: str, label_selector: str, field_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput: ...


# ------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True, slots=True)
class NodesSeen:
    """What one agent lists of one cluster's nodes: all the matrix needs of its `cilium-health status`.

    Kept instead of the parsed answer, which names every node of the mesh with its addresses and
    probes: one per agent would grow with agents × nodes (640,000 node objects at 16 clusters of 50).
    """

    reachable: frozenset[str]
    """Bare names of the nodes listed with every probed path OK."""
    failing: tuple[tuple[str, tuple[str, ...]], ...]
    """``(node, failures)`` of every node listed with a failing path, sorted by node."""


NOTHING_SEEN = NodesSeen(reachable=frozenset(), failing=())

_H = TypeVar("_H", bound=Hashable)


class _Shared:
    """One object per distinct value, for the agents of one cluster (they answer in parallel).

    The agents of a healthy cluster all see the same nodes, so their views are stored once instead of
    once per agent, and so are the failures that repeat from node to node in a broken one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, Hashable] = {}

    def __call__(self, value: _H, /) -> _H:
        with self._lock:
            return cast(_H, self._values.setdefault(value, value))


class _Share(Protocol):
    def __call__(self, value: _H, /) -> _H: ...


def _unshared(value: _H, /) -> _H:
    return value


def nodes_seen(status: HealthStatus, cluster: str, share: _Share = _unshared) -> dict[str, NodesSeen]:
    """Fold one agent's answer into what it sees of each cluster, by cluster name.

    ``cluster`` is the agent's own: Cilium prints the nodes of a cluster named ``default`` without a
    prefix, and only the agent's own cluster can be meant by a bare name. A name listed twice counts
    as its last listing. ``share`` may return an equal object already held (see ``_Shared``).
    """
    listed: dict[str, dict[str, HealthNode]] = {}
    for n in status.nodes:
        listed.setdefault(cluster if n.cluster is None else n.cluster, {})[n.node] = n
    return {
        name: share(
            NodesSeen(
                reachable=frozenset(node for node, n in nodes.items() if n.reachable),
                failing=tuple(sorted((node, share(tuple(n.failures))) for node, n in nodes.items() if not n.reachable)),
            )
        )
        for name, nodes in listed.items()
    }


class AgentHealth(BaseModel):
    """One agent's answer, or why there is none: an agent we could not ask cannot vouch for its node."""

    model_config = ConfigDict(frozen=True)

    pod: str
    node: str
    seen: dict[str, NodesSeen] | None
    """What the agent lists of each cluster's nodes (``nodes_seen``); None when it did not answer."""
    error: str | None
    probed_at: datetime | None = None
    """When the agent ran the probes it answered with (``Probe time`` / JSON ``timestamp``), if it said:
    an answer is a cached probe round, so only a later time proves it probed again."""

    @classmethod
    def from_status(cls, pod: str, node: str, status: HealthStatus, *, cluster: str) -> AgentHealth:
        """The answer ``status`` of an agent of ``cluster``, folded; the status itself is not kept."""
        return cls(pod=pod, node=node, seen=nodes_seen(status, cluster), error=None, probed_at=status.timestamp)


class ClusterHealth(BaseModel):
    """Every agent of one cluster; ``error`` when the agents could not even be listed."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    agents: list[AgentHealth]
    error: str | None = None

    @property
    def agent_errors(self) -> list[str]:
        """Problems that make the cluster's view incomplete, in words for a report."""
        out = [f"{self.cluster}: {self.error}"] if self.error else []
        if not self.agents and not self.error:
            out.append(f"{self.cluster}: no cilium agent pods ({AGENT_LABEL} in {AGENT_NAMESPACE})")
        out.extend(f"{self.cluster} agent {a.pod} on {a.node or '?'}: {a.error}" for a in self.agents if a.error)
        return out


def short_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_READING = threading.Lock()
"""One answer parsed at a time in the process: parsing holds the GIL, so parallel parses gain nothing
and only multiply the decoded JSON alive at once (64 answers of 800 nodes at 16 clusters)."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the duration (and back on after, if it was on).

    An answer decodes into thousands of dicts that reference counting frees the moment the fold is
    done. Collections while they are alive only promote them to the oldest generation, and every
    full collection then walks the whole process (some 400,000 objects under Prefect): at 8 clusters
    of 50 nodes that was a third of the probe's CPU. Only held under ``_READING``, so never nested.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_answer(text: str, cluster: str, share: _Share) -> tuple[dict[str, NodesSeen], datetime | None]:
    """Parse one agent's answer and fold it at once: the full ``HealthStatus`` never outlives this call.

    Returns the fold and the answer's probe time.
    """
    with _READING, _collector_paused():
        status = parse_health(text)
        return nodes_seen(status, cluster, share), status.timestamp


def _ask_agent(
    client: HealthClient, cluster: str, pod: str, node: str, *, timeout: float, share: _Share
) -> AgentHealth:
    """JSON first (one layout across versions); the text form when JSON is refused or unreadable."""
    problems: list[str] = []
    for argv in (HEALTH_JSON, HEALTH_TEXT):
        shown = " ".join(argv)
        try:
            out = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, list(argv), timeout=timeout)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` failed: {short_text(str(exc))}")
            continue
        if not out.ok:
            problems.append(f"`{shown}` exited {out.exit_code}: {short_text(out.stderr or out.stdout) or 'no output'}")
            continue
        try:
            seen, probed_at = _read_answer(out.stdout, cluster, share)
        except ClusterMeshError as exc:
            problems.append(f"`{shown}` output unreadable: {short_text(str(exc))}")
            continue
        return AgentHealth(pod=pod, node=node, seen=seen, error=None, probed_at=probed_at)
    return AgentHealth(pod=pod, node=node, seen=None, error="; ".join(problems))


def probe_cluster(
    client: HealthClient, cluster: str, *, timeout: float, max_workers: int = DEFAULT_WORKERS
) -> ClusterHealth:
    """`cilium-health status` in every agent of one cluster; per-agent failures are recorded, not raised.

    Pods being deleted are skipped (a rollout's old agents); pods not Running are recorded as errors,
    since their node has no working agent yet. Listing the pods may raise ``KubeApiError``.
    """
    agents: list[tuple[str, str]] = []
    not_running: list[AgentHealth] = []
    for pod in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name") or "")
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        phase = str((pod.get("status") or {}).get("phase") or "Unknown")
        if phase == "Running":
            agents.append((name, node))
        else:
            not_running.append(AgentHealth(pod=name, node=node, seen=None, error=f"agent pod is {phase}, not Running"))
    share = _Shared()
    workers = max(1, min(max_workers, len(agents)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"health-{cluster}") as pool:
        answers = list(
            pool.map(lambda a: _ask_agent(client, cluster, a[0], a[1], timeout=timeout, share=share), agents)
        )
    return ClusterHealth(cluster=cluster, agents=sorted(answers + not_running, key=lambda a: (a.node, a.pod)))


def expected_nodes(client: HealthClient) -> list[str]:
    """The node names a healthy mesh must show for this cluster, sorted."""
    return sorted(str((n.get("metadata") or {}).get("name") or "") for n in client.list_nodes())
