"""``clustermesh setup --plan``: what the setup would write, per cluster, without writing anything.

The plan reads the clusters as step 1 does, takes the peers' mesh data where it already exists, and
shows each cluster's values diff with key material as fingerprints. Peers whose data does not exist
yet (a first run) are listed as pending: their entries are written once their apiserver is up.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from clustermesh.errors import WaitTimeoutError
from clustermesh.kube import ClusterClient
from clustermesh.spec import ClusterSpec, MeshSpec, Timeouts
from clustermesh.steps.models import ClusterFacts, MeshEndpoint
from clustermesh.steps.step1_prerequisites import check_mesh_prerequisites, check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import plan_mesh_values
from clustermesh.steps.step3_5_endpoints import collect_mesh_endpoint, uses_shared_ca


class ClusterPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    cluster: str
    changed: bool
    diff: list[str]
    pending_peers: list[str]


class SetupPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    mesh: str
    warnings: list[str]
    clusters: list[ClusterPlan]

    def render_text(self) -> str:
        lines = [f"Plan for mesh {self.mesh} (nothing has been written):"]
        lines.extend(f"warning: {w}" for w in self.warnings)
        for plan in self.clusters:
            lines.append("")
            state = "changes" if plan.changed else "no change"
            lines.append(f"== {plan.cluster}: {state}")
            lines.extend(plan.diff)
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
        for cluster in self.clusters:
            parts.extend(["", f"## {cluster.cluster}: {'changes' if cluster.changed else 'no change'}"])
            if cluster.diff:
                parts.extend(["```diff", *cluster.diff, "```"])
            if cluster.pending_peers:
                parts.append(
                    f"Pending: entries for {', '.join(cluster.pending_peers)} are added once their "
                    "clustermesh-apiserver has an address and certificates."
                )
        return "\n".join(parts)


def _peek(client: ClusterClient, facts: ClusterFacts, spec: MeshSpec, want_ca_key: bool) -> MeshEndpoint | None:
    """An endpoint if it already exists; a plan never waits."""
    quick = spec.model_copy(
        update={
            "timeouts": Timeouts(install=0.02, load_balancer=0.02, certificates=0.02, health=0.02, poll_interval=0.01)
        }
    )
    try:
        return collect_mesh_endpoint(client, facts, quick, want_ca_key=want_ca_key)
    except WaitTimeoutError:
        return None


def plan_setup(spec: MeshSpec, open_client: Callable[[ClusterSpec], ClusterClient]) -> SetupPlan:
    clients = {c.name: open_client(c) for c in spec.clusters}
    try:
        facts = {c.name: check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        warnings = check_mesh_prerequisites(list(facts.values()))
        first = spec.first
        shared = uses_shared_ca(spec, facts[first.name])
        endpoints = {
            c.name: _peek(clients[c.name], facts[c.name], spec, shared and c.name == first.name) for c in spec.clusters
        }
        first_ep = endpoints[first.name]
        shared_ca = first_ep.shared_ca() if (shared and first_ep is not None) else None
        plans = []
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
            plans.append(
                ClusterPlan(cluster=c.name, changed=change.changed, diff=change.diff_lines(), pending_peers=pending)
            )
        return SetupPlan(mesh=spec.name, warnings=warnings, clusters=plans)
    finally:
        for client in clients.values():
            client.close()
