"""What differs between Cilium lines 1.13 … 1.19, kept as data so no code branches on a version number.

Facts come from the chart archives and Cilium sources summarised in ``reference/cilium.md`` §1–§4 and
``reference/kkp.md`` §6–§7. Where the reference marks a 1.19 fact "(unverified)" the profile assumes
it equals 1.18, as the reference does.

CA choice (``default_ca_mode``): on 1.13 the chart has no per-entry ``tls.caCert``, so every cluster
must share one CA under ``clustermesh.apiserver.tls.ca`` — the old KKP guide (2.22–2.26). From 1.14
each ``clusters[]`` entry can carry the peer's ``caCert``; the new KKP guide (2.27+) dropped CA sharing
because the old key is ignored or fatal from 1.15, and writing ``tls.ca`` over a certgen-made
``cilium-ca`` breaks Helm ownership. So 1.14+ defaults to "per-peer": no CA is copied between
clusters (no CA key ever leaves its cluster), each entry names the CA that signed its peer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from clustermesh.errors import UnsupportedVersionError

__all__ = [
    "PROFILES",
    "SUPPORTED_LINES",
    "AgentCli",
    "CaMode",
    "CiliumProfile",
    "CiliumVersion",
    "HealthLayout",
    "OldCaKeyEffect",
    "TlsMethod",
    "parse_cilium_version",
    "profile_for",
]

AgentCli = Literal["cilium", "cilium-dbg"]
CaMode = Literal["shared", "per-peer"]
TlsMethod = Literal["helm", "cronJob", "certmanager"]
HealthLayout = Literal["probe-time", "cluster-health-table", "cluster-health-table-probe-interval"]
OldCaKeyEffect = Literal["used", "ignored", "rejected"]

LEGACY_CA_PATH: tuple[str, ...] = ("clustermesh", "apiserver", "tls", "ca")
TOP_LEVEL_CA_PATH: tuple[str, ...] = ("tls", "ca")

_VERSION_RE = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?(?:[-+][0-9A-Za-z.+-]*)?$")


class CiliumVersion(NamedTuple):
    """A parsed Cilium version; ``patch`` is None when only the line was given ("1.16")."""

    major: int
    minor: int
    patch: int | None

    @property
    def line(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return self.line if self.patch is None else f"{self.line}.{self.patch}"


def parse_cilium_version(version: str) -> CiliumVersion:
    """Accept "1.16", "1.16.9", "v1.16.9" and pre-release/build suffixes ("1.16.0-rc.1")."""
    match = _VERSION_RE.match(version.strip())
    if match is None:
        raise UnsupportedVersionError(version, SUPPORTED_LINES)
    patch = match.group("patch")
    return CiliumVersion(int(match.group("major")), int(match.group("minor")), None if patch is None else int(patch))


@dataclass(frozen=True)
class CiliumProfile:
    """Everything the pipeline must know about one Cilium minor line, and nothing else."""

    line: str
    """Minor line, e.g. "1.16"."""
    agent_cli: AgentCli
    """Agent debug CLI inside the ``cilium-agent`` container (``cilium-dbg`` from 1.15, cilium#28085)."""
    ca_placement: tuple[str, ...]
    """Where a shared CA ``{cert, key}`` goes: the old key on 1.13, top-level ``tls.ca`` later."""
    supports_per_peer_ca_cert: bool
    """Whether ``clusters[].tls.caCert`` exists (1.14+)."""
    default_ca_mode: CaMode
    """What ``ca_mode: auto`` means on this line (see the module docstring)."""
    ca_secret_names: tuple[str, ...]
    """Secrets that may hold the CA, in lookup order."""
    peer_tls_required: bool
    """1.13 needs ``tls`` on every entry, else the agents get empty etcd files."""
    certgen_is_helm_hook: bool
    """certgen runs as a post-install/upgrade hook (1.14–1.18): cronJob deadlocks with Helm --wait."""
    safe_tls_method_under_kkp: TlsMethod
    """What ``tls_method: auto`` means: the guide's cronJob where it works, ``helm`` where it deadlocks."""
    old_ca_key_rejected_from_patch: int | None
    """First patch of this line whose chart refuses the old CA key (0 = all, None = key still used)."""
    old_ca_key_ignored: bool
    """Whether the old CA key is silently ignored below ``old_ca_key_rejected_from_patch``."""
    annotation_prefixes_read: tuple[str, ...]
    """Service annotation families the agent reads (1.13 only ``io.cilium/``; unverified for the new ones)."""
    none_affinity_drops_remote: bool
    """``affinity: none`` drops all remote backends (cilium#46623, 1.18; 1.19 assumed): delete it instead."""
    preferred_marker_reliable: bool
    """``(preferred)`` in ``cilium service list`` marks the affinity pick (False from 1.18, cilium#43681)."""
    health_layout: HealthLayout
    """Default ``cilium-health status`` text layout."""
    service_list_has_protocol: bool
    """Service-list addresses end in ``/TCP`` or ``/UDP`` (1.17+)."""
    status_header: str
    """Words of the ClusterMesh header in ``cilium status`` ("clusters ready" / "remote clusters ready")."""
    max_connected_clusters_options: tuple[int, ...]
    """Allowed ``clustermesh.maxConnectedClusters`` (511 from 1.15)."""
    name_format_enforced: bool
    """Chart refuses cluster names that break the Cilium name rule (1.16+)."""
    kvstoremesh_default: bool
    """KVStoreMesh on by default (1.16+): ``ips`` edits then restart the clustermesh-apiserver too."""
    unverified: tuple[str, ...] = ()
    """Facts above taken from the previous line rather than a source."""

    @property
    def minor(self) -> int:
        return int(self.line.split(".")[1])

    @property
    def max_ids(self) -> int:
        """Largest cluster id this line can accept at all."""
        return max(self.max_connected_clusters_options)

    @property
    def legacy_ca_path(self) -> tuple[str, ...]:
        """The old CA key, which must not appear on lines that ignore or reject it."""
        return LEGACY_CA_PATH

    def old_ca_key_effect(self, patch: int | None) -> OldCaKeyEffect:
        """What the chart does with the old CA key; an unknown patch is judged as the newest."""
        if self.old_ca_key_rejected_from_patch is None:
            return "used"
        if patch is None or patch >= self.old_ca_key_rejected_from_patch:
            return "rejected"
        return "ignored" if self.old_ca_key_ignored else "used"

    def old_ca_key_rejected(self, patch: int | None) -> bool:
        """The chart refuses to render with the old CA key (1.15.8+, 1.16.2+, 1.17+)."""
        return self.old_ca_key_effect(patch) == "rejected"

    def global_annotations(self) -> dict[str, str]:
        """Annotations that make a Service global: both families on every line (old alias read everywhere)."""
        return {"io.cilium/global-service": "true", "service.cilium.io/global": "true"}

    def affinity_annotations(self, affinity: Literal["local", "remote", "none"]) -> dict[str, str]:
        """Affinity annotations to write; empty for "none" where that value black-holes remote traffic."""
        if affinity == "none" and self.none_affinity_drops_remote:
            return {}
        return {"io.cilium/service-affinity": affinity, "service.cilium.io/affinity": affinity}

    def supports_max_connected_clusters(self, value: int) -> bool:
        return value in self.max_connected_clusters_options


def _profile(minor: int) -> CiliumProfile:
    """Build one line's profile from the version matrix; kept in one place so the table stays readable."""
    return CiliumProfile(
        line=f"1.{minor}",
        agent_cli="cilium" if minor <= 14 else "cilium-dbg",
        ca_placement=LEGACY_CA_PATH if minor == 13 else TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=minor >= 14,
        default_ca_mode="shared" if minor == 13 else "per-peer",
        ca_secret_names={
            13: ("clustermesh-apiserver-ca-cert", "cilium-ca"),
            14: ("cilium-ca", "clustermesh-apiserver-ca-cert"),
        }.get(minor, ("cilium-ca",)),
        peer_tls_required=minor == 13,
        certgen_is_helm_hook=14 <= minor <= 18,
        safe_tls_method_under_kkp="helm" if 14 <= minor <= 18 else "cronJob",
        old_ca_key_rejected_from_patch={13: None, 14: None, 15: 8, 16: 2}.get(minor, 0),
        old_ca_key_ignored=minor in (15, 16),
        annotation_prefixes_read=("io.cilium/",) if minor == 13 else ("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=minor >= 18,
        preferred_marker_reliable=minor < 18,
        health_layout=(
            "probe-time"
            if minor <= 16
            else "cluster-health-table"
            if minor == 17
            else "cluster-health-table-probe-interval"
        ),
        service_list_has_protocol=minor >= 17,
        status_header="clusters ready" if minor <= 15 else "remote clusters ready",
        max_connected_clusters_options=(255,) if minor <= 14 else (255, 511),
        name_format_enforced=minor >= 16,
        kvstoremesh_default=minor >= 16,
        unverified=(
            ("old CA key rule", "health layout", "status header", "none-affinity bug", "name format")
            if minor == 19
            else ()
        ),
    )


PROFILES: dict[str, CiliumProfile] = {p.line: p for p in (_profile(m) for m in range(13, 20))}
SUPPORTED_LINES: tuple[str, ...] = tuple(PROFILES)


def profile_for(version: str) -> CiliumProfile:
    """The profile of ``version``'s line; anything outside 1.13–1.19 is refused, not guessed."""
    parsed = parse_cilium_version(version)
    profile = PROFILES.get(parsed.line)
    if profile is None:
        raise UnsupportedVersionError(version, SUPPORTED_LINES)
    return profile
