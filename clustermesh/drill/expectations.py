"""What the agents should list: in the steady state, and once a cluster's backends are gone.

Each function returns what is wrong (empty when nothing is), in words for the operator; :class:`Look`
keeps one such observation during a wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clustermesh.drill.agents import AGENT_LABEL, AgentView, BackendView
from clustermesh.drill.text import cut

AGENT_CHECK = (
    "`kubectl -n kube-system exec <cilium pod> -c cilium-agent -- cilium-dbg service list "
    "--clustermesh-affinity` (`cilium` on 1.13–1.14), `cilium-dbg status` (ClusterMesh line) and that the "
    "drill Service carries the global annotation in every cluster"
)

BASELINE_CHECK = (
    AGENT_CHECK + "; for missing or unreachable remote backends: TCP 2379 from every node to each peer's "
    "clustermesh-apiserver and UDP 8472 (VXLAN) between the clusters' nodes (the setup's steps 7 and 8)"
)


@dataclass
class Look:
    """One observation during a wait: what the agents listed, and what is still wrong."""

    views: dict[str, list[AgentView]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return cut("; ".join(self.problems) or "nothing wrong", 1500)

    def backends(self) -> dict[str, list[BackendView]]:
        return {c: [b for v in views for b in v.backends] for c, views in self.views.items()}


def _list_ips(ips: Iterable[str], limit: int = 6) -> str:
    shown = sorted(ips)
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def _no_agents(cluster: str) -> str:
    return f"{cluster}: no Cilium agent pods found (kube-system, {AGENT_LABEL})"


def _unreadable(view: AgentView) -> str | None:
    """Why ``view`` tells nothing about the backends (no listing, or no frontend in it); None when it does."""
    if view.error is not None:
        return f"{view.name}: could not read the service list: {view.error}"
    if not view.listed:
        return f"{view.name} does not list the drill Service's frontend {view.frontend}"
    return None


def _visible(
    affinity: str, marker_reliable: bool, local: set[str], remote: Mapping[str, set[str]]
) -> tuple[set[str], dict[str, set[str]]]:
    """Which local and remote backends an agent must list in the steady state.

    From 1.18 an agent lists only the preferred backends when it has any (cilium#43681): with local
    affinity the remote ones are hidden while local ones are active, so only those can be checked.
    """
    if marker_reliable:
        return set(local), {c: set(ips) for c, ips in remote.items()}
    if affinity == "local" and local:
        return set(local), {}
    if affinity == "remote" and any(remote.values()):
        return set(), {c: set(ips) for c, ips in remote.items()}
    return set(local), {c: set(ips) for c, ips in remote.items()}


def _missing(view: AgentView, want_local: set[str], want_remote: Mapping[str, set[str]], total: int) -> str | None:
    """Which expected backends ``view`` does not list as active; None when it lists them all."""
    active = view.active()
    missing: list[str] = []
    if want_local - active:
        missing.append(f"local backends {_list_ips(want_local - active)}")
    for peer, ips in sorted(want_remote.items()):
        if ips - active:
            missing.append(f"remote backends {_list_ips(ips - active)} ({peer})")
    if not missing:
        return None
    listed = sum(1 for ip in active if ip in want_local or any(ip in v for v in want_remote.values()))
    return f"{view.name} lists {listed}/{total} expected backends; missing {'; '.join(missing)}"


def _misplaced_preference(
    view: AgentView, local: set[str], remote: Mapping[str, set[str]], affinity: str
) -> str | None:
    """Where ``(preferred)`` is not on exactly the affinity's side; judged once that side has an active backend."""
    all_remote: set[str] = set().union(*remote.values())
    side = local if affinity == "local" else all_remote
    if not side & view.active():
        return None
    wrong = sorted(
        b.address
        for b in view.backends
        if b.state == "active" and (b.ip in local or b.ip in all_remote) and b.preferred != (b.ip in side)
    )
    if not wrong:
        return None
    return f"{view.name}: (preferred) does not follow affinity {affinity} on {', '.join(wrong)}"


def steady_problems(
    views: Sequence[AgentView],
    *,
    cluster: str,
    local: set[str],
    remote: Mapping[str, set[str]],
    affinity: str,
    marker_reliable: bool,
) -> list[str]:
    """Why ``cluster``'s agents are not in the steady state (empty when they are).

    Steady: every agent lists every ready backend of every cluster as active (only the preferred ones on
    1.18+, see :func:`_visible`), and where the marker is reliable the affinity's side is preferred.
    """
    if not views:
        return [_no_agents(cluster)]
    want_local, want_remote = _visible(affinity, marker_reliable, local, remote)
    total = len(want_local) + sum(len(v) for v in want_remote.values())
    problems: list[str] = []
    for view in views:
        unreadable = _unreadable(view)
        if unreadable is not None:
            problems.append(unreadable)
            continue
        missing = _missing(view, want_local, want_remote, total)
        if missing is not None:
            problems.append(missing)
        if marker_reliable and affinity in ("local", "remote"):
            misplaced = _misplaced_preference(view, local, remote, affinity)
            if misplaced is not None:
                problems.append(misplaced)
    return problems


def failover_problems(views: Sequence[AgentView], *, cluster: str, remote: Mapping[str, set[str]]) -> list[str]:
    """Why ``cluster``'s agents have not failed over yet: any local backend left, or a remote one missing."""
    if not views:
        return [_no_agents(cluster)]
    problems: list[str] = []
    for view in views:
        unreadable = _unreadable(view)
        if unreadable is not None:
            problems.append(unreadable)
            continue
        local = [b for b in view.backends if b.local]
        if local:
            problems.append(f"{view.name} still lists local backends {', '.join(b.describe() for b in local[:6])}")
        active = view.active()
        for peer, ips in sorted(remote.items()):
            if ips - active:
                problems.append(f"{view.name} is missing remote backends {_list_ips(ips - active)} ({peer})")
    return problems
