"""``clustermesh setup --plan``: what the setup would write, per cluster, without writing anything.

The plan reads the clusters as step 1 does, takes the peers' mesh data where it already exists, and
shows each cluster's values diff with key material as fingerprints. Peers whose data does not exist
yet (a first run) are listed as pending: their entries are written once their apiserver is up.

With a chart (``cilium.chart``), each cluster's final values are rendered with the chart it runs:
per peer, what its dialer will read (endpoint, trusted CA, client certificate as fingerprints); values
the chart refuses show as a blocking problem naming the key.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium.chart_source import ChartUnavailableError
from clustermesh.kube import ClusterClient
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.chart_check import ChartValuesRefusedError, PeerView, chart_view, known_endpoint
from clustermesh.steps.models import ClusterFacts, MeshEndpoint
from clustermesh.steps.step1_prerequisites import check_mesh_prerequisites, check_prerequisites, policy_warnings
from clustermesh.steps.step2_4_6_mesh_values import plan_mesh_values
from clustermesh.steps.step3_5_endpoints import uses_shared_ca
from clustermesh.values import CaMaterial


class ClusterPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    cluster: str
    changed: bool
    diff: list[str]
    pending_peers: list[str]
    peers: list[PeerView] = []
    """What the cluster's dialer reads per peer, from the chart's render (empty without a chart)."""
    blocking: list[str] = []
    """Why the setup would stop before writing (the chart refuses the values)."""


def _peer_lines(peers: list[PeerView]) -> list[str]:
    lines = ["   peers, as the chart renders them (read by " + (peers[0].read_by if peers else "-") + "):"]
    for peer in peers:
        lines.append(f"   - {peer.peer}: endpoint {peer.endpoint}")
        lines.append(f"       trusted CA {peer.trusted_ca}; client cert {peer.client_cert}")
    return lines


def _peer_table(peers: list[PeerView]) -> list[str]:
    rows = ["| peer | endpoint | trusted CA | client certificate |", "|---|---|---|---|"]
    rows.extend(f"| {p.peer} | {p.endpoint} | {p.trusted_ca} | {p.client_cert} |" for p in peers)
    return rows


class SetupPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    mesh: str
    warnings: list[str]
    clusters: list[ClusterPlan]
    chart_notes: list[str] = []
    """Why the values were not rendered with the chart (no chart reachable), once each."""

    @property
    def blocked(self) -> bool:
        return any(c.blocking for c in self.clusters)

    def render_text(self) -> str:
        lines = [f"Plan for mesh {self.mesh} (nothing has been written):"]
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.extend(f"chart not checked: {n}" for n in self.chart_notes)
        for plan in self.clusters:
            lines.append("")
            state = "changes" if plan.changed else "no change"
            lines.append(f"== {plan.cluster}: {state}")
            lines.extend(f"BLOCKING: {b}" for b in plan.blocking)
            lines.extend(plan.diff)
            if plan.peers:
                lines.extend(_peer_lines(plan.peers))
            if plan.pending_peers:
                lines.append(
                    f"   pending: entries for {', '.join(plan.pending_peers)} are added once their "
                    "clustermesh-apiserver has an address and certificates"
                )
        return "\n".join(lines)

    def render_markdown(self) -> str:
        """The same plan for the approval artifact in the Prefect UI."""
        parts = [f"# Plan for mesh `{self.mesh}`: approve to write", ""]
        parts.extend(f"- warning: {w}" for w in self.warnings)
        parts.extend(f"- chart not checked: {n}" for n in self.chart_notes)
        for cluster in self.clusters:
            parts.extend(["", f"## {cluster.cluster}: {'changes' if cluster.changed else 'no change'}"])
            parts.extend(f"**Blocking:** {b}" for b in cluster.blocking)
            if cluster.diff:
                parts.extend(["```diff", *cluster.diff, "```"])
            if cluster.peers:
                parts.extend(["", "Peers as the chart renders them:", "", *_peer_table(cluster.peers)])
            if cluster.pending_peers:
                parts.append(
                    f"Pending: entries for {', '.join(cluster.pending_peers)} are added once their "
                    "clustermesh-apiserver has an address and certificates."
                )
        return "\n".join(parts)


def plan_setup(spec: MeshSpec, open_client: Callable[[ClusterSpec], ClusterClient]) -> SetupPlan:
    clients = {c.name: open_client(c) for c in spec.clusters}
    try:
        facts = {c.name: check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        warnings = check_mesh_prerequisites(list(facts.values())) + policy_warnings(list(facts.values()))
        first = spec.first
        shared = uses_shared_ca(spec, facts[first.name])
        endpoints = {
            c.name: known_endpoint(clients[c.name], facts[c.name], spec, shared and c.name == first.name)
            for c in spec.clusters
        }
        first_ep = endpoints[first.name]
        shared_ca = first_ep.shared_ca() if (shared and first_ep is not None) else None
        plans = []
        notes: list[str] = []
        for c in spec.clusters:
            others = [o.name for o in spec.clusters if o.name != c.name]
            if c.name == first.name and not facts[c.name].mesh_enabled:
                peers_known, ca = [], None  # step 2: the first cluster starts without peers
            else:
                peers_known = [endpoints[o].peer_entry() for o in others if endpoints[o] is not None]  # type: ignore[union-attr]
                ca = shared_ca
            pending = [o for o in others if endpoints[o] is None]
            ai = clients[c.name].get_application_installation()
            change = plan_mesh_values(ai, facts[c.name], c, spec, peers=peers_known, shared_ca=ca)
            peers, blocking = _chart_peers(clients[c.name], facts[c.name], c, spec, endpoints, shared_ca, notes)
            plans.append(
                ClusterPlan(
                    cluster=c.name,
                    changed=change.changed,
                    diff=change.diff_lines(),
                    pending_peers=pending,
                    peers=peers,
                    blocking=blocking,
                )
            )
        return SetupPlan(mesh=spec.name, warnings=warnings, clusters=plans, chart_notes=list(dict.fromkeys(notes)))
    finally:
        for client in clients.values():
            client.close()


def _chart_peers(
    client: ClusterClient,
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    endpoints: dict[str, MeshEndpoint | None],
    shared_ca: CaMaterial | None,
    notes: list[str],
) -> tuple[list[PeerView], list[str]]:
    """(per-peer view, blocking problems) of ``cluster``'s final values rendered with its chart."""
    if spec.cilium.chart.source is None:
        notes.append("cilium.chart.source is empty")
        return [], []
    try:
        view = chart_view(client, facts, cluster, spec, endpoints=endpoints, shared_ca=shared_ca)
    except ChartUnavailableError as exc:
        notes.append(f"{exc.problem} ({exc.fix})")  # once per reason, not per cluster
        return [], []
    except ChartValuesRefusedError as exc:
        return [], [f"{exc} — {exc.fix}" if exc.fix not in str(exc) else str(exc)]
    return (view.peers if view is not None else []), []
