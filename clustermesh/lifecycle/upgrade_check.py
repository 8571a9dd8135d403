"""Before a Cilium upgrade: would each cluster's current values still work on the target line?

The values a cluster runs (its ApplicationInstallation's, as the plan reads them) are rendered with the
target version's chart from ``cilium.chart.source``. Reported per cluster:

- refused: the target chart refuses the values (Helm's message and the key) — the upgrade would fail;
- ignored: keys the target line no longer reads (the profile's removed keys, the old CA key where the
  target ignores it) — the upgrade goes through and the cluster silently runs without them;
- notes: facts whose default changes between the lines that the values do not pin (policyDefaultLocalCluster,
  certgen as a Helm hook, the certificate lifetime, authMode);
- peer changes: what each peer's dialer reads (endpoint, trusted CA, client certificate as fingerprints)
  before and after, when both lines render — a change there is a warning.

Read-only: nothing is written. The nightly asks the same question for the next minor line.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clustermesh.certs import fingerprint
from clustermesh.cilium.chart import AGENT_SECRET, KVSTOREMESH_SECRET, peer_etcd_configs
from clustermesh.cilium.chart_source import ChartUnavailableError
from clustermesh.cilium.profiles import CiliumProfile, parse_cilium_version, profile_for
from clustermesh.errors import ChartRenderError
from clustermesh.kube import ClusterClient
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.chart_check import ChartValuesRefusedError, check_values
from clustermesh.steps.step1_prerequisites import check_prerequisites
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT
from clustermesh.values import configured_peers, legacy_paths_to_remove, read_values, removed_keys_present, value_at

__all__ = ["ClusterUpgrade", "DefaultChange", "PeerChange", "UpgradeReport", "check_upgrade", "upgrade_check"]

_RUNTIME_FILES = ("common-etcd-client", "local-etcd-client")


@dataclass(frozen=True)
class DefaultChange:
    """A chart default that differs between the lines, and the key that would pin it."""

    key: str
    before: str
    after: str
    meaning: str

    def line(self) -> str:
        return f"{self.key}: {self.before} → {self.after} when unset ({self.meaning}); set it to keep today's behaviour"


@dataclass(frozen=True)
class PeerChange:
    """What the dialer reads for one peer, before and after the upgrade, where it differs."""

    peer: str
    what: str
    before: str
    after: str

    def line(self) -> str:
        return f"peer {self.peer}: the dialer's {self.what} changes: {self.before} → {self.after}"


@dataclass
class ClusterUpgrade:
    """One cluster's answer: empty lists mean the upgrade changes nothing the mesh depends on."""

    cluster: str
    current: str
    target: str
    refused: list[str] = field(default_factory=list)
    """``key: Helm's message`` for each refusal (the upgrade would fail)."""
    ignored: list[str] = field(default_factory=list)
    """Keys set in the values that the target line no longer reads."""
    notes: list[DefaultChange] = field(default_factory=list)
    peer_changes: list[PeerChange] = field(default_factory=list)
    skipped: str = ""
    """Why the target chart could not be rendered (no source, unreachable, not a version the source has)."""

    @property
    def blocking(self) -> bool:
        return bool(self.refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "current": self.current,
            "target": self.target,
            "blocking": self.blocking,
            "refused": self.refused,
            "ignored": self.ignored,
            "notes": [n.line() for n in self.notes],
            "peer_changes": [c.line() for c in self.peer_changes],
            "skipped": self.skipped,
        }

    def render_text(self) -> str:
        head = f"{self.cluster}: {self.current} → {self.target}"
        lines = [f"  REFUSED {r}" for r in self.refused]
        lines += [f"  IGNORED {k} (the {self.target} chart no longer reads it; remove it)" for k in self.ignored]
        lines += [f"  WARNING {c.line()}" for c in self.peer_changes]
        lines += [f"  NOTE    {n.line()}" for n in self.notes]
        if self.skipped:
            lines.append(f"  SKIPPED {self.skipped}")
        return "\n".join([head, *(lines or ["  nothing would break or be ignored"])])


@dataclass
class UpgradeReport:
    target: str
    clusters: list[ClusterUpgrade]

    @property
    def blocking(self) -> bool:
        return any(c.blocking for c in self.clusters)

    def render_text(self) -> str:
        verdict = "would break" if self.blocking else "nothing blocking"
        return "\n".join(
            [f"Upgrade check to Cilium {self.target}: {verdict}", *(c.render_text() for c in self.clusters)]
        )

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "blocking": self.blocking, "clusters": [c.as_dict() for c in self.clusters]}


# ------------------------------------------------------------------------------ one cluster's values


def check_upgrade(
    spec: MeshSpec, cluster: str, current: str, target: str, values: Mapping[str, Any], *, remote_cert: str = ""
) -> ClusterUpgrade:
    """Render ``values`` with the ``target`` chart (and the ``current`` one, for the dialer comparison).

    ``remote_cert`` is the cluster's ``clustermesh-apiserver-remote-cert`` ``tls.crt`` when known: files
    certgen makes at runtime are shown by it on both sides. Raises nothing for a chart that cannot be had:
    that is ``skipped``.
    """
    before, after = profile_for(current), profile_for(target)
    result = ClusterUpgrade(cluster=cluster, current=current, target=target)
    result.ignored = [".".join(p) for p in removed_keys_present(after, values)]
    patch = parse_cilium_version(target).patch
    if after.old_ca_key_effect(patch) == "ignored":
        result.ignored += [".".join(p) for p in legacy_paths_to_remove(after, values, patch)]
    result.notes = default_changes(before, after, values)
    try:
        rendered = check_values(spec, cluster, target, values)
    except ChartValuesRefusedError as exc:
        result.refused.append(f"{exc.key}: {' '.join(exc.helm_message.split())}")
        return result
    except ChartUnavailableError as exc:
        result.skipped = f"{exc.chart}: {exc.problem} ({exc.fix})"
        return result
    if rendered is None:
        result.skipped = "cilium.chart.source is empty: the values are not rendered"
        return result
    try:
        today = check_values(spec, cluster, current, values)
    except (ChartValuesRefusedError, ChartUnavailableError):
        return result  # nothing to compare with: the target's answer stands on its own
    if today is not None:
        peers = configured_peers(values)
        result.peer_changes = _compare(
            _dialer_reads(today, peers, remote_cert), _dialer_reads(rendered, peers, remote_cert)
        )
    return result


def default_changes(before: CiliumProfile, after: CiliumProfile, values: Mapping[str, Any]) -> list[DefaultChange]:
    """Chart defaults that differ between the two lines for keys the values leave unset."""
    api_tls = ("clustermesh", "apiserver", "tls")
    facts: list[tuple[tuple[str, ...], Any, Any, str]] = [
        (
            ("clustermesh", "policyDefaultLocalCluster"),
            before.policy_default_local_cluster,
            after.policy_default_local_cluster,
            "true: a policy without a cluster selector matches local endpoints only",
        ),
        (
            (*api_tls, "auto", "method"),
            "certgen as a Helm hook" if before.certgen_is_helm_hook else "certgen without a Helm hook",
            "certgen as a Helm hook" if after.certgen_is_helm_hook else "certgen without a Helm hook",
            "cronJob deadlocks with Helm --wait where certgen is a hook; KKP's guide uses cronJob",
        ),
        (
            (*api_tls, "auto", "certValidityDuration"),
            f"{before.cert_validity_days} days",
            f"{after.cert_validity_days} days",
            "the lifetime of the clustermesh-apiserver certificates tls.auto issues",
        ),
        (
            (*api_tls, "authMode"),
            before.auth_mode_default or "no such key",
            after.auth_mode_default or "no such key",
            "how the clustermesh-apiserver authenticates its peers",
        ),
    ]
    changes = []
    for path, old, new, meaning in facts:
        pinned, _ = value_at(values, path)
        if old != new and not pinned and old != "no such key":  # a key that did not exist had one behaviour
            changes.append(DefaultChange(".".join(path), str(old).lower(), str(new).lower(), meaning))
    return changes


# ------------------------------------------------------------------------------ what the dialer reads


def _dialer_reads(manifests: list[dict[str, Any]], peers: list[str], remote_cert: str) -> dict[str, dict[str, str]]:
    """Per peer: endpoint, trusted CA and client certificate (fingerprints) as KVStoreMesh or the agents read them."""
    try:
        configs = peer_etcd_configs(manifests, secret=KVSTOREMESH_SECRET)
    except ChartRenderError:
        configs = {}
    if not (configs and all(p in configs for p in peers)):
        try:
            configs = peer_etcd_configs(manifests, secret=AGENT_SECRET)
        except ChartRenderError:
            return {}
    return {
        name: {
            "endpoint": ", ".join(config.endpoints),
            "trusted CA": _file(config.ca_file, config.ca_file_content, remote_cert),
            "client certificate": _file(config.cert_file, config.cert, remote_cert),
        }
        for name, config in configs.items()
    }


def _file(path: str, content: str | None, remote_cert: str) -> str:
    """Fingerprint of a file the values provide; runtime files (certgen's) by name."""
    name = posixpath.basename(path) or "(none)"
    if content is None or name.startswith(_RUNTIME_FILES):
        return f"{name} (issued at runtime{'; ' + fingerprint(remote_cert) if remote_cert else ''})"
    return f"{name}: {fingerprint(content)}" if content.strip() else f"{name}: empty"


def _compare(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[PeerChange]:
    changes = []
    for peer in sorted(set(before) | set(after)):
        if peer not in after:
            changes.append(PeerChange(peer, "config", "present", "absent: the peer is no longer dialled"))
            continue
        if peer not in before:
            changes.append(PeerChange(peer, "config", "absent", "present"))
            continue
        for what, old in before[peer].items():
            new = after[peer].get(what, "-")
            if old != new:
                changes.append(PeerChange(peer, what, old, new))
    return changes


# ------------------------------------------------------------------------------ the mesh


def upgrade_check(
    spec: MeshSpec, open_client: Callable[[ClusterSpec], ClusterClient], target: str, *, only: str | None = None
) -> UpgradeReport:
    """Every cluster of ``spec`` (or ``only`` that one): its current values checked against ``target``."""
    profile_for(target)  # an unsupported target is the caller's error, before any cluster is opened
    report = UpgradeReport(target=target, clusters=[])
    for cluster in spec.clusters:
        if only is not None and cluster.name != only:
            continue
        client = open_client(cluster)
        try:
            facts = check_prerequisites(client, cluster, spec)
            values, _ = read_values(client.get_application_installation())
            remote = (client.get_secret(NAMESPACE, REMOTE_CERT) or {}).get("data") or {}
            report.clusters.append(
                check_upgrade(
                    spec,
                    cluster.name,
                    facts.detected_cilium_version,
                    target,
                    values,
                    remote_cert=str(remote.get("tls.crt") or ""),
                )
            )
        finally:
            client.close()
    return report
