"""The plan of a CA rotation: per target cluster, refused (method, CA mode) or where it stands, and the
peers whose entry for it is re-keyed; certificates as fingerprints only. Nothing here writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clustermesh.certs import fingerprint
from clustermesh.cilium.profiles import parse_cilium_version, profile_for
from clustermesh.errors import ClusterMeshError, ClusterStateError
from clustermesh.lifecycle.ca_bundle import bundle_refusal, is_ours
from clustermesh.lifecycle.ca_rotation import (
    CA_VALIDITY_DAYS,
    PHASE_TEXT,
    Phase,
    entry_for,
    fingerprints,
    read_ca_state,
)
from clustermesh.spec import MeshSpec
from clustermesh.steps.membership import managed_peers
from clustermesh.values import read_values, value_at

METHOD_PATH = ("clustermesh", "apiserver", "tls", "auto")
NO_CA_BUNDLE_BEFORE = (1, 14)
"""``tls.caBundle`` (the trust overlap) is in every chart from 1.14.0; 1.13's values.yaml has no such key."""


def cluster_refusal(spec: MeshSpec, cluster: str, ai: Mapping[str, Any]) -> str | None:
    """Why X's CA cannot be rotated here (Cilium line, CA mode, method, a person's tls.caBundle), with the fix;
    None when it can."""
    values, _ = read_values(ai)
    version = spec.cilium.version or str(((ai.get("spec") or {}).get("applicationRef") or {}).get("version") or "")
    resolved = spec.cilium.resolve(profile_for(version)) if version else None
    parsed = parse_cilium_version(version) if version else None
    if parsed is not None and (parsed.major, parsed.minor) < NO_CA_BUNDLE_BEFORE:
        return (
            f"Cilium {version}: the chart has no tls.caBundle before 1.14, so the clustermesh-apiserver cannot "
            "trust two CAs at once — fix: upgrade the cluster to 1.14 or later first, then rotate"
        )
    if resolved is not None and resolved.ca_mode == "shared":
        return (
            f"shared CA mode (Cilium {resolved.profile.line}, cilium.ca_mode {spec.cilium.ca_mode}): every member "
            "trusts one CA; its rotation is not built — fix: replace the shared CA by hand, or use per-peer mode"
        )
    _, auto = value_at(values, METHOD_PATH)
    auto = auto if isinstance(auto, dict) else {}
    if auto.get("enabled") is False:
        return "tls.auto.enabled is false (certificates provided by hand) — fix: rotate those certificates yourself"
    method = str(auto.get("method") or (resolved.tls_method if resolved else "cronJob"))
    if method == "certmanager":
        return "tls.auto.method certmanager: cert-manager's issuer is not modelled — fix: rotate its issuer's CA"
    if method not in ("cronJob", "helm"):
        return f"tls.auto.method {method!r} is unknown — fix: use cronJob or helm"
    return None


def rotation_method(spec: MeshSpec, ai: Mapping[str, Any]) -> str:
    """X's ``tls.auto.method`` (the values', else the line's default): how its leaves are re-issued."""
    values, _ = read_values(ai)
    _, auto = value_at(values, METHOD_PATH)
    if isinstance(auto, dict) and auto.get("method"):
        return str(auto["method"])
    version = spec.cilium.version or str(((ai.get("spec") or {}).get("applicationRef") or {}).get("version") or "")
    return spec.cilium.resolve(profile_for(version)).tls_method if version else "cronJob"


@dataclass(frozen=True)
class ClusterRotationPlan:
    """One cluster's rotation as planned: where it stands, which peers get re-keyed; fingerprints only."""

    cluster: str
    phase: Phase | None
    current: tuple[str, ...]  # fingerprints of cilium-ca's ca.crt
    pending: str | None  # the fingerprint of a stored, not yet finished new CA
    peers: list[str]
    hand_added: list[str]
    refusal: str | None = None

    @property
    def changing(self) -> bool:
        return self.refusal is None and self.phase not in (None, "done")

    def describe(self) -> list[str]:
        head = f"{self.cluster}: CA {', '.join(self.current) or '(unread)'}"
        if self.refusal is not None:
            return [f"{head}: REFUSED: {self.refusal}"]
        lines = [f"{head}: {PHASE_TEXT.get(self.phase or '', '?')}"]
        if self.pending:
            lines.append(f"  new CA (stored, reused): {self.pending}")
        elif self.phase == "start":
            lines.append(f"  new CA: generated at the first write (ECDSA P-256, {CA_VALIDITY_DAYS} days)")
        if self.changing:
            lines.append(
                f"  {self.cluster}'s values: tls.caBundle trusts old and new while its certificates change, then "
                "back as it was (KKP rolls the agents and the clustermesh-apiserver twice)"
            )
        if self.changing:
            lines.append(
                f"  peers re-keyed (caCert and client certificate for {self.cluster}): "
                f"{', '.join(self.peers) or 'none'}"
            )
        lines.extend(
            f"  {name}: its entry for {self.cluster} was added by hand: NOT re-keyed, it will distrust "
            f"{self.cluster} once the old CA is dropped — update it yourself"
            for name in self.hand_added
        )
        return lines


@dataclass(frozen=True)
class RotationPlan:
    mesh: str
    clusters: list[ClusterRotationPlan]
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def changing(self) -> list[str]:
        return [c.cluster for c in self.clusters if c.changing]

    @property
    def refused(self) -> list[ClusterRotationPlan]:
        return [c for c in self.clusters if c.refusal is not None]

    def render_text(self) -> str:
        lines = [f"Rotate the CA of {', '.join(c.cluster for c in self.clusters)} in mesh {self.mesh}, one at a time:"]
        for plan in self.clusters:
            lines.extend(f"  {line}" for line in plan.describe())
        lines.extend(f"  {name}: not read ({why})" for name, why in self.unreadable.items())
        if self.refused:
            lines.append("nothing will be written: " + "; ".join(f"{c.cluster} refused" for c in self.refused))
        elif not self.changing:
            lines.append("nothing to write")
        return "\n".join(lines)

    def render_markdown(self) -> str:
        head = "refused" if self.refused else ("approve to write" if self.changing else "nothing to write")
        parts = [f"# Rotate the CA in mesh `{self.mesh}`: {head}", ""]
        for plan in self.clusters:
            parts.extend(f"- {line.strip()}" for line in plan.describe())
        parts.extend(f"- {name}: not read ({why})" for name, why in self.unreadable.items())
        return "\n".join(parts) + "\n"


def rotation_targets(spec: MeshSpec, cluster: str | None) -> list[str]:
    """The clusters to rotate, in the spec's order: ``cluster`` alone, or every member."""
    names = [c.name for c in spec.clusters]
    if cluster is None:
        return names
    if cluster not in names:
        raise ClusterStateError(
            cluster,
            f"--cluster {cluster} is not a cluster of mesh {spec.name} (its clusters: {', '.join(names)})",
            fix="name one of the spec's clusters, or leave --cluster out to rotate every member's CA",
        )
    return [cluster]


def peers_of(target: str, installations: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(members whose managed entry for ``target`` is re-keyed, members whose entry for it was added by hand)."""
    managed: list[str] = []
    by_hand: list[str] = []
    for name, ai in installations.items():
        if name == target:
            continue
        values, _ = read_values(ai)
        if entry_for(values, target) is None:
            continue
        (managed if target in managed_peers(ai, values) else by_hand).append(name)
    return managed, by_hand


def plan_cluster(
    spec: MeshSpec,
    target: str,
    installations: Mapping[str, Mapping[str, Any]],
    read_secret: Callable[[str], dict[str, Any] | None],
    now: dt.datetime | None = None,
) -> ClusterRotationPlan:
    """Pure over what was read: X's refusal or its phase, the peers to re-key."""
    managed, by_hand = peers_of(target, installations)
    ai = installations[target]
    refusal = cluster_refusal(spec, target, ai)
    if refusal is not None:
        return ClusterRotationPlan(target, None, (), None, managed, by_hand, refusal)
    state = read_ca_state(read_secret, target)
    values, _ = read_values(ai)
    nxt = state.next_ca
    ours = nxt is not None and is_ours(ai, values, nxt.cert_pem, (state.previous or "", nxt.cert_pem))
    found = state.phase(now, ours)
    if found == "start" and (taken := bundle_refusal(values)) is not None:
        return ClusterRotationPlan(target, None, fingerprints(state.certs), None, managed, by_hand, taken)
    pending = fingerprint(state.next_ca.cert_pem) if state.next_ca else None
    return ClusterRotationPlan(target, found, fingerprints(state.certs), pending, managed, by_hand)


def plan_rotation(
    spec: MeshSpec,
    cluster: str | None,
    read_installation: Callable[[str], dict[str, Any]],
    read_secret: Callable[[str, str], dict[str, Any] | None],
) -> RotationPlan:
    """Read every member's installation and each target's CA Secrets; plan, writing nothing."""
    targets = rotation_targets(spec, cluster)
    installations: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for member in spec.clusters:
        try:
            installations[member.name] = read_installation(member.name)
        except ClusterMeshError as exc:
            unreadable[member.name] = str(exc).splitlines()[0][:300]
    plans = []
    for target in targets:
        if target not in installations:
            continue
        try:
            plans.append(plan_cluster(spec, target, installations, _reader(read_secret, target)))
        except ClusterMeshError as exc:
            plans.append(ClusterRotationPlan(target, None, (), None, [], [], str(exc).splitlines()[0][:300]))
    return RotationPlan(spec.name, plans, unreadable)


def _reader(
    read_secret: Callable[[str, str], dict[str, Any] | None], target: str
) -> Callable[[str], dict[str, Any] | None]:
    return lambda name: read_secret(target, name)
