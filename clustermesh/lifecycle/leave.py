"""Leave: take one cluster out of the mesh, from the values of every other member.

Only an entry the pipeline manages (``clustermesh.steps.membership``: recorded on the installation and
still present) is removed; an entry of the leaving cluster that a person added by hand is left where it
is and reported. The values keep their form (list or map, 1.19+), every other entry is untouched, and
the write goes the way every values write goes: the resourceVersion read is carried (a 409 means read
again and recompute), the managed-peers record and the values digest are updated in the same request,
and the run waits until KKP reports the new generation applied. A member that no longer holds the
entry is not written: a rerun writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from clustermesh.errors import ClusterMeshError, PrerequisiteError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps.membership import managed_peers
from clustermesh.steps.models import StepChange
from clustermesh.steps.step2_4_6_mesh_values import write_planned_values
from clustermesh.values import CLUSTERS_PATH, ValuesChange, peer_entries, read_values, value_at

LEAVE_STEP = "Remove"


def values_without_peers(values: Mapping[str, Any], peers: Collection[str]) -> dict[str, Any]:
    """A copy of ``values`` without the ``clusters`` entries named in ``peers`` (list or map form kept)."""
    result = copy.deepcopy(dict(values))
    _, clusters = value_at(result, CLUSTERS_PATH)
    parent = result
    for key in CLUSTERS_PATH[:-1]:
        parent = parent[key]
    if isinstance(clusters, dict):
        parent[CLUSTERS_PATH[-1]] = {k: v for k, v in clusters.items() if str(k) not in peers}
    elif isinstance(clusters, list):
        parent[CLUSTERS_PATH[-1]] = [e for e in clusters if not (isinstance(e, dict) and str(e.get("name")) in peers)]
    return result


@dataclass(frozen=True)
class MemberLeave:
    """What leaving means for one remaining member: does it hold the entry, is it ours, what changes."""

    cluster: str
    holds_entry: bool
    managed: bool
    change: ValuesChange | None  # None: nothing to remove here (no entry, or not ours)

    @property
    def changing(self) -> bool:
        return self.change is not None and self.change.changed

    def describe(self, leaving: str) -> str:
        if not self.holds_entry:
            return f"{self.cluster}: no entry for {leaving}; nothing to remove"
        if not self.managed:
            return (
                f"{self.cluster}: the entry for {leaving} was added by hand (not in the managed-peers record); "
                "left as it is — remove it yourself if it should go"
            )
        return f"{self.cluster}: the managed entry for {leaving} is removed"


def plan_member(cluster: str, ai: Mapping[str, Any], leaving: str) -> MemberLeave:
    """Pure: the removal of ``leaving``'s entry from ``ai``'s values, only when the pipeline manages it."""
    values, _field = read_values(ai)
    holds = any(str(e.get("name")) == leaving for e in peer_entries(values))
    managed = leaving in managed_peers(ai, values)
    if not (holds and managed):
        return MemberLeave(cluster, holds, managed, None)
    return MemberLeave(cluster, holds, managed, _change(values, {leaving}))


def plan_disable(cluster: str, ai: Mapping[str, Any]) -> MemberLeave:
    """Pure: the leaving cluster's own values without every peer the pipeline manages (hand-added ones stay)."""
    values, _field = read_values(ai)
    ours = set(managed_peers(ai, values))
    return MemberLeave(cluster, bool(ours), bool(ours), _change(values, ours) if ours else None)


def _change(values: Mapping[str, Any], peers: Collection[str]) -> ValuesChange:
    new_values = values_without_peers(values, peers)
    return ValuesChange(changed=True, new_values=new_values, current_values=copy.deepcopy(dict(values)))


@dataclass(frozen=True)
class LeavePlan:
    """The whole removal, before any write: per remaining member, plus what could not be read."""

    mesh: str
    leaving: str
    members: list[MemberLeave]
    unreadable: dict[str, str] = field(default_factory=dict)  # member → why its values could not be read
    notes: list[str] = field(default_factory=list)

    @property
    def changing(self) -> list[str]:
        return [m.cluster for m in self.members if m.changing]

    @property
    def hand_added(self) -> list[str]:
        return [m.cluster for m in self.members if m.holds_entry and not m.managed]

    def render_text(self) -> str:
        lines = [f"Remove {self.leaving} from mesh {self.mesh}:"]
        for member in self.members:
            lines.append(f"  {member.describe(self.leaving)}")
            if member.change is not None and member.changing:
                lines.extend(f"    {line}" for line in member.change.diff_lines(redact=True))
        lines.extend(f"  {name}: values not read ({why})" for name, why in self.unreadable.items())
        lines.extend(f"note: {note}" for note in self.notes)
        if not self.changing:
            lines.append(f"nothing to write: no member holds a managed entry for {self.leaving}")
        return "\n".join(lines)

    def render_markdown(self) -> str:
        head = "approve to write" if self.changing else "nothing to write"
        parts = [f"# Remove `{self.leaving}` from mesh `{self.mesh}`: {head}", ""]
        for member in self.members:
            parts.append(f"- {member.describe(self.leaving)}")
        parts.extend(f"- {name}: values not read ({why})" for name, why in self.unreadable.items())
        parts.extend(f"- note: {note}" for note in self.notes)
        for member in self.members:
            if member.change is not None and member.changing:
                parts.extend(["", f"## {member.cluster}", "```diff", *member.change.diff_lines(redact=True), "```"])
        return "\n".join(parts) + "\n"


def remaining_members(spec: MeshSpec, leaving: str) -> list[str]:
    """The members that stay, in the spec's order; refuses a ``leaving`` the spec does not list."""
    names = [c.name for c in spec.clusters]
    if leaving not in names:
        raise PrerequisiteError(
            leaving,
            f"--cluster {leaving} is not a cluster of mesh {spec.name} (its clusters: {', '.join(names)}); "
            "nothing was written",
            fix="name one of the spec's clusters: the spec still lists the cluster being removed, and you drop it "
            "from the spec once the removal is done",
        )
    return [n for n in names if n != leaving]


GLOBAL_SERVICE_ANNOTATIONS = ("service.cilium.io/global", "io.cilium/global-service")


def global_services(services: list[dict[str, Any]]) -> set[str]:
    """``namespace/name`` of every Service marked global (either annotation, as Cilium reads them)."""
    found = set()
    for service in services:
        meta = service.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if any(str(annotations.get(key, "")).lower() == "true" for key in GLOBAL_SERVICE_ANNOTATIONS):
            found.add(f"{meta.get('namespace')}/{meta.get('name')}")
    return found


def sole_global_services(
    leaving: str, read_services: Callable[[str], list[dict[str, Any]]], remaining: list[str]
) -> list[str]:
    """Warnings: global services that only the leaving cluster defines (its backends are the mesh's only ones).

    Definitions are compared, not backend counts: a member defining the service with no ready backend is
    not noticed. An unreadable leaving cluster is one note; an unreadable member counts as not defining it.
    """
    try:
        ours = global_services(read_services(leaving))
    except ClusterMeshError as exc:
        return [f"global services of {leaving} not checked: {str(exc).splitlines()[0][:200]}"]
    for name in remaining:
        if not ours:
            break
        try:
            ours -= global_services(read_services(name))
        except ClusterMeshError:
            continue
    return [
        f"{leaving} is the only member defining global service {service}: once it leaves, the mesh has no backends "
        "for it (move them to a remaining member first if it is still used)"
        for service in sorted(ours)
    ]


def plan_leave(
    spec: MeshSpec,
    leaving: str,
    read_installation: Callable[[str], dict[str, Any]],
    read_services: Callable[[str], list[dict[str, Any]]] | None = None,
) -> LeavePlan:
    """Read every remaining member's installation (never the leaving one's: it may be dead) and plan the removal;
    with ``read_services``, warn about global services only the leaving cluster defines."""
    members: list[MemberLeave] = []
    unreadable: dict[str, str] = {}
    remaining = remaining_members(spec, leaving)
    for name in remaining:
        try:
            members.append(plan_member(name, read_installation(name), leaving))
        except ClusterMeshError as exc:
            unreadable[name] = str(exc).splitlines()[0][:300]
    notes = sole_global_services(leaving, read_services, remaining) if read_services is not None else []
    if len(remaining) < 2:
        notes.append(f"only {', '.join(remaining)} remains: there is no mesh left to verify")
    return LeavePlan(mesh=spec.name, leaving=leaving, members=members, unreadable=unreadable, notes=notes)


def remove_peer(client: ClusterClient, spec: MeshSpec, cluster: str, leaving: str) -> StepChange:
    """Remove ``leaving``'s managed entry from ``cluster``'s values, with optimistic concurrency; see module doc."""
    return _write(
        client, spec, cluster, f"{LEAVE_STEP} {leaving} from {cluster}", lambda ai: plan_member(cluster, ai, leaving)
    )


def disable_mesh_peers(client: ClusterClient, spec: MeshSpec, cluster: str) -> StepChange:
    """In the leaving cluster itself: remove every managed peer entry, so it connects to none of them."""
    step = f"Disconnect {cluster} from its managed peers"
    return _write(client, spec, cluster, step, lambda ai: plan_disable(cluster, ai))


def _write(
    client: ClusterClient, spec: MeshSpec, cluster: str, step: str, plan: Callable[[dict[str, Any]], MemberLeave]
) -> StepChange:
    return write_planned_values(client, spec, cluster, step, lambda ai: plan(ai).change)
