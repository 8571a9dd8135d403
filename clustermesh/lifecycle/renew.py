"""Renew: re-issue the clustermesh certificates of the clusters that need it, then hand the new remote
certificates to every peer holding a copy.

A cluster is due when one of its leaf certificates (server, remote, admin) has fewer than
``certificates.warn_days`` left at the cluster's own clock (:meth:`ClusterClient.server_time`), or when it
is named with ``--cluster``. It is re-issued the way its ``clustermesh.apiserver.tls.auto.method`` allows
(:mod:`clustermesh.lifecycle.reissue`). The order never leaves a peer with a certificate its target refuses:
re-issuing keeps the CA, so the copy a peer holds stays valid until it is replaced; all re-issues finish
first, then each holder gets the current certificates of its peers in one values write (the setup's step 6
write: :func:`~clustermesh.steps.step2_4_6_mesh_values.configure_mesh`). A rerun with nothing due and every
copy equal to its cluster's current certificate writes nothing; a run stopped after any write converges on
the next one (a re-issued cluster is no longer due, its stale copies are still handed out).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from clustermesh.certs import cert_info, fingerprint, load_cert
from clustermesh.errors import CertificateError, ClusterMeshError, ClusterStateError, PrerequisiteError
from clustermesh.kube import ClusterClient
from clustermesh.lifecycle.reissue import LEAF_SECRETS, SERVER_CERT, reissue_refusal
from clustermesh.spec import MeshSpec
from clustermesh.steps.cert_copies import copy_problem, trusted_cas
from clustermesh.steps.models import ClusterFacts, MeshEndpoint, StepChange
from clustermesh.steps.step2_4_6_mesh_values import configure_mesh
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, collect_mesh_endpoint, uses_shared_ca
from clustermesh.values import peer_entries, read_values, value_at

RENEW_STEP = "Renew: hand out the peers' certificates"
METHOD_PATH = ("clustermesh", "apiserver", "tls", "auto", "method")


@dataclass(frozen=True)
class ClusterRenewal:
    """One cluster: its method, its nearest leaf expiry at its own clock, and whether it is re-issued."""

    cluster: str
    method: str
    days_left: int | None
    due: bool
    reason: str
    leaves: dict[str, str] = field(default_factory=dict)  # Secret → fingerprint now
    trusted_ca: str = ""  # base64 ca.crt of its server certificate: the CAs its clustermesh-apiserver trusts
    clock: dt.datetime | None = None  # the cluster's own time when read

    def describe(self) -> str:
        if not self.due:
            return f"{self.cluster}: not due ({self.reason}); nothing re-issued"
        return f"{self.cluster}: re-issued by {self.method} ({self.reason})"


@dataclass(frozen=True)
class CopyRenewal:
    """The copy ``holder`` keeps of ``of``'s remote certificate, replaced: fingerprints old → new."""

    holder: str
    of: str
    old: str
    new: str
    why: str = ""

    def describe(self) -> str:
        because = f" ({self.why})" if self.why else ""
        return f"{self.holder}: its copy of {self.of}'s remote certificate {self.old} → {self.new}{because}"


@dataclass(frozen=True)
class RenewPlan:
    """The whole renewal, before any write."""

    mesh: str
    clusters: list[ClusterRenewal]
    copies: list[CopyRenewal]
    unreadable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def due(self) -> list[str]:
        return [c.cluster for c in self.clusters if c.due]

    @property
    def holders(self) -> list[str]:
        return list(dict.fromkeys(c.holder for c in self.copies))

    @property
    def changing(self) -> bool:
        return bool(self.due or self.copies)

    def refusal(self) -> ClusterMeshError | None:
        """Why nothing may be written (None: go ahead): an unreadable member could not get its new copies, or a
        due cluster's method cannot be re-issued here."""
        for name, why in self.unreadable.items():
            return ClusterStateError(
                name,
                f"not readable ({why}); a renewal needs every member (its copies are replaced too); nothing was "
                "written",
                fix=f"bring {name} back (or remove it from the mesh: clustermesh remove --cluster {name}), then rerun",
            )
        for renewal in self.clusters:
            refused = reissue_refusal(renewal.cluster, renewal.method) if renewal.due else None
            if refused is not None:
                return refused
        return None

    def lines(self) -> list[str]:
        out = [c.describe() for c in self.clusters]
        out += [c.describe() for c in self.copies]
        out += [f"{name}: not read ({why})" for name, why in self.unreadable.items()]
        out += [f"note: {note}" for note in self.notes]
        if not self.changing:
            out.append("nothing to write: no certificate is due and every peer's copy is current")
        return out

    def render_text(self) -> str:
        return "\n".join([f"Renew the certificates of mesh {self.mesh}:", *(f"  {line}" for line in self.lines())])

    def render_markdown(self) -> str:
        head = "approve to write" if self.changing else "nothing to write"
        return "\n".join([f"# Renew certificates of mesh `{self.mesh}`: {head}", "", *(f"- {x}" for x in self.lines())])


def tls_method(ai: Mapping[str, Any], facts: ClusterFacts, spec: MeshSpec) -> str:
    """``clustermesh.apiserver.tls.auto.method`` as the values say, else what the setup writes for the line."""
    values, _ = read_values(ai)
    present, method = value_at(values, METHOD_PATH)
    if present and method:
        return str(method)
    return str(spec.cilium.resolve(facts.profile).tls_method)


def leaf_expiry(client: ClusterClient, now: dt.datetime) -> tuple[int | None, str, dict[str, str]]:
    """The smallest days-left over the leaf certificates at ``now``, which one, and every fingerprint."""
    nearest: tuple[int | None, str] = (None, "no leaf certificate readable")
    prints: dict[str, str] = {}
    for name in LEAF_SECRETS:
        data = (client.get_secret(NAMESPACE, name) or {}).get("data") or {}
        if not data.get("tls.crt"):
            prints[name] = "absent"
            continue
        prints[name] = fingerprint(str(data["tls.crt"]))
        try:
            days = cert_info(load_cert(str(data["tls.crt"]), source=name), now=now).days_left
        except CertificateError:
            return 0, f"{name} tls.crt does not parse", prints
        if nearest[0] is None or days < nearest[0]:
            nearest = (days, f"{name} expires in {days} days")
    return nearest[0], nearest[1], prints


def plan_cluster(
    client: ClusterClient, facts: ClusterFacts, spec: MeshSpec, *, forced: bool
) -> tuple[ClusterRenewal, dict[str, Any]]:
    """One cluster's renewal, judged at its own clock; also its installation (the copies it holds)."""
    ai = client.get_application_installation()
    now = client.server_time()
    days, which, prints = leaf_expiry(client, now)
    warn = spec.certificates.warn_days
    due = forced or days is None or days < warn
    reason = f"{which}, at the cluster's clock {now:%Y-%m-%d}; warning below {warn} days"
    if forced:
        reason = f"named with --cluster; {which}"
    server = (client.get_secret(NAMESPACE, SERVER_CERT) or {}).get("data") or {}
    method = tls_method(ai, facts, spec)
    renewal = ClusterRenewal(facts.name, method, days, due, reason, prints, str(server.get("ca.crt") or ""), now)
    return renewal, ai


def plan_copies(
    installations: Mapping[str, Mapping[str, Any]], clusters: Mapping[str, ClusterRenewal], warn_days: int
) -> list[CopyRenewal]:
    """Pure: every copy a holder keeps of a due cluster's remote certificate, and every copy of another cluster
    that is no longer current (``clustermesh.steps.cert_copies``, judged at that cluster's clock); a copy that
    differs from its cluster's newest certificate but is still current is kept."""
    copies: list[CopyRenewal] = []
    for holder, ai in installations.items():
        values, _ = read_values(ai)
        for entry in peer_entries(values):
            name, tls = str(entry.get("name")), entry.get("tls") or {}
            target = clusters.get(name)
            if target is None or not isinstance(tls, dict) or not tls.get("cert"):
                continue
            old, newest = fingerprint(str(tls["cert"])), target.leaves.get(REMOTE_CERT, "absent")
            if target.due:
                copies.append(CopyRenewal(holder, name, old, "the re-issued certificate", f"{name} is re-issued"))
                continue
            now = target.clock or dt.datetime.now(dt.UTC)
            problem = copy_problem(tls, trusted_cas(target.trusted_ca), now=now, warn_days=warn_days)
            if problem is not None:
                copies.append(CopyRenewal(holder, name, old, newest, problem))
    return copies


def plan_renew(
    spec: MeshSpec,
    facts: Mapping[str, ClusterFacts],
    client_of: Callable[[str], ClusterClient],
    only: str | None = None,
) -> RenewPlan:
    """Read every member (its clock, leaves, installation) and plan; ``only``: that cluster is re-issued
    whatever its expiry, and no other is."""
    names = [c.name for c in spec.clusters]
    if only is not None and only not in names:
        raise PrerequisiteError(
            only,
            f"--cluster {only} is not a cluster of mesh {spec.name} (its clusters: {', '.join(names)}); "
            "nothing was written",
            fix="name one of the spec's clusters, or leave --cluster out to renew whatever is due",
        )
    clusters: list[ClusterRenewal] = []
    installations: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for name in names:
        if name not in facts:
            unreadable[name] = "step 1 could not read it"
            continue
        try:
            renewal, ai = plan_cluster(client_of(name), facts[name], spec, forced=only == name)
        except ClusterMeshError as exc:
            unreadable[name] = str(exc).splitlines()[0][:300]
            continue
        if only is not None and name != only:
            renewal = ClusterRenewal(name, renewal.method, renewal.days_left, False, "not named", renewal.leaves)
        clusters.append(renewal)
        installations[name] = ai
    by_name = {c.cluster: c for c in clusters}
    notes = [
        f"{c.cluster}: REFUSED, nothing will be written: {refusal}"
        for c in clusters
        if c.due and (refusal := reissue_refusal(c.cluster, c.method)) is not None
    ]
    copies = plan_copies(installations, by_name, spec.certificates.warn_days)
    return RenewPlan(spec.name, clusters, copies, unreadable, notes)


def collect_endpoints(
    spec: MeshSpec, facts: Mapping[str, ClusterFacts], client_of: Callable[[str], ClusterClient]
) -> dict[str, MeshEndpoint]:
    """Every member's endpoint as steps 3 and 5 read it (the first one's CA key only with a shared CA)."""
    shared = uses_shared_ca(spec, facts[spec.first.name])
    return {
        c.name: collect_mesh_endpoint(
            client_of(c.name), facts[c.name], spec, want_ca_key=shared and c.name == spec.first.name
        )
        for c in spec.clusters
    }


def hand_out(
    client: ClusterClient,
    spec: MeshSpec,
    facts: ClusterFacts,
    endpoints: Mapping[str, MeshEndpoint],
    replace: Collection[str],
) -> StepChange:
    """The holder's values with the newest certificate of every peer in ``replace`` (the others' current copies
    are kept): the setup's step 6 write."""
    cluster = next(c for c in spec.clusters if c.name == facts.name)
    shared = uses_shared_ca(spec, facts) and spec.first.name in endpoints
    shared_ca = endpoints[spec.first.name].shared_ca() if shared else None
    peers = [endpoints[o.name].peer_entry() for o in spec.clusters if o.name != cluster.name]
    step = f"{RENEW_STEP} in {cluster.name}"
    return configure_mesh(
        client, facts, cluster, spec, step=step, peers=peers, shared_ca=shared_ca, replace_copies=replace
    )
