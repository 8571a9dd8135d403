"""What differs between Cilium lines 1.13 … 1.20, kept as data so no code branches on a version number.

Facts come from the chart archives and Cilium sources summarised in ``reference/cilium.md`` §1–§5 and
``reference/kkp.md`` §6–§7; the 1.19 and 1.20 chart facts are proven by rendering the real charts
(``tests/domain/test_profiles_119_120.py``). Agent-output facts a chart cannot show are listed in a
row's ``unverified`` and assumed equal to the line before.

CA choice (``default_ca_mode``): on 1.13 the chart has no per-entry ``tls.caCert``, so every cluster
must share one CA under ``clustermesh.apiserver.tls.ca`` — the old KKP guide (2.22–2.26). From 1.14
each ``clusters[]`` entry can carry the peer's ``caCert``; the new KKP guide (2.27+) dropped CA sharing
because the old key is ignored or fatal from 1.15, and writing ``tls.ca`` over a certgen-made
``cilium-ca`` breaks Helm ownership. So 1.14+ defaults to "per-peer": no CA is copied between
clusters (no CA key ever leaves its cluster), each entry names the CA that signed its peer.

1.19 deprecates per-entry certificates: without them an entry uses the local remote certificate, which
a peer accepts only when every member shares one CA (top-level ``tls.ca``). ``auto`` still means
per-peer on 1.19 and 1.20: the real charts render ``tls.ca`` into a Helm-owned Secret ``cilium-ca``,
while under KKP that Secret already exists, made by certgen (KKP's default ``hubble.tls.auto.method:
cronJob``, and the clustermesh cronJob ``auto`` picks on 1.19+), so Helm would refuse to adopt it
("invalid ownership metadata", reference/cilium.md §4 pitfall 3). Per-peer with cronJob is the one combination
that keeps ``cilium-ca`` out of the release. ``ca_mode: shared`` stays available and writes the 1.19
form (entries without ``tls``) where ``cilium-ca`` is the release's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from clustermesh.errors import UnsupportedVersionError

__all__ = [
    "PROFILES",
    "REMOVED_IN_1_20",
    "SUPPORTED_LINES",
    "AgentCli",
    "AuthMode",
    "CaMode",
    "CiliumProfile",
    "CiliumVersion",
    "MCS_API_CONFIG_KEY",
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
AuthMode = Literal["legacy", "migration", "cluster"]

LEGACY_CA_PATH: tuple[str, ...] = ("clustermesh", "apiserver", "tls", "ca")
TOP_LEVEL_CA_PATH: tuple[str, ...] = ("tls", "ca")
SERVER_EXTRA_NAMES_PATH: tuple[str, ...] = ("clustermesh", "apiserver", "tls", "server")
AUTO_SERVER_EXTRA_NAMES_PATH: tuple[str, ...] = ("clustermesh", "apiserver", "tls", "auto", "server")
MCS_API_SUPPORT_PATH: tuple[str, ...] = ("clustermesh", "enableMCSAPISupport")
MCS_API_ENABLED_PATH: tuple[str, ...] = ("clustermesh", "mcsapi", "enabled")
MCS_API_CONFIG_KEY = "clustermesh-enable-mcs-api"
"""cilium-config's key for MCS-API on every line that has it ("true"/"false")."""

# Keys the 1.20 chart no longer reads; its schema lets unknown keys through, so they are silently ignored
# (``server``/``admin``/``remote`` certs with ``tls.auto.enabled: false`` are a render error instead).
REMOVED_IN_1_20: tuple[tuple[str, ...], ...] = (
    ("clustermesh", "apiserver", "tls", "server", "cert"),
    ("clustermesh", "apiserver", "tls", "server", "key"),
    ("clustermesh", "apiserver", "tls", "admin", "cert"),
    ("clustermesh", "apiserver", "tls", "admin", "key"),
    ("clustermesh", "apiserver", "tls", "remote", "cert"),
    ("clustermesh", "apiserver", "tls", "remote", "key"),
    ("clustermesh", "apiserver", "tls", "enableSecrets"),
    ("clustermesh", "enableMCSAPISupport"),
)

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
    clusters_map_accepted: bool
    """``clustermesh.config.clusters`` may be a map keyed by cluster name (1.19+, the form the docs recommend)."""
    per_entry_certs_deprecated: bool
    """``clusters[].tls.{cert,key,caCert}`` marked "(deprecated)" (1.19+): without them a peer is reached with
    the local ``clustermesh-apiserver-remote-cert``, which works when every member shares one CA."""
    auth_mode_default: AuthMode | None
    """Chart default of ``clustermesh.apiserver.tls.authMode`` (``migration`` from 1.19; None: no such key)."""
    cache_ttl_supported: bool
    """``clustermesh.cacheTTL`` exists (1.19+; "0s", the default, keeps a lost cluster's services forever)."""
    policy_default_local_cluster: bool
    """Chart default of ``clustermesh.policyDefaultLocalCluster`` (True from 1.19): a network policy without
    a cluster selector matches local endpoints only. False where the key does not exist."""
    global_namespaces: bool
    """1.20+: a Service is global only when annotated *and* in a global namespace
    (``clustermesh.defaultGlobalNamespace``, namespace annotation ``clustermesh.cilium.io/global``)."""
    removed_value_paths: tuple[tuple[str, ...], ...]
    """Keys the chart no longer reads (silently ignored): never written, reported as drift when present."""
    cert_validity_days: int
    """Lifetime of the clustermesh-apiserver certificates ``tls.auto`` makes (1095; 365 from 1.20)."""
    server_extra_names_path: tuple[str, ...]
    """Where the server certificate's ``extraDnsNames``/``extraIpAddresses`` go (``tls.auto.server`` from 1.20)."""
    mcs_api_values_path: tuple[str, ...] | None
    """The key that turns the Multi-Cluster Services API on (cilium-config ``clustermesh-enable-mcs-api``, the
    clustermesh-apiserver's ``--clustermesh-enable-mcs-api``, the operator's MCS controllers): ``enableMCSAPISupport``
    on 1.17–1.18, ``mcsapi.enabled`` from 1.19 (the old key deprecated there, gone in 1.20). None: no MCS-API
    (1.16's chart has the old key, but the clustermesh-apiserver gets no flag: partial, not supported here)."""
    mcs_api_coredns_auto: bool
    """The chart can configure CoreDNS for ``clusterset.local`` (``clustermesh.mcsapi.corednsAutoConfigure``,
    1.19+, CoreDNS 1.12.2+); before, CoreDNS's ``multicluster`` plugin is configured by hand."""
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


# One row per line, every fact spelled out; the comment above a row says what changed from the row before.
# Supporting a new line is adding its row (and its facts' sources to reference/cilium.md).
_ROWS: tuple[CiliumProfile, ...] = (
    # The old KKP guide's line: one shared CA under the old key, ``tls`` on every peer entry.
    CiliumProfile(
        line="1.13",
        agent_cli="cilium",
        ca_placement=LEGACY_CA_PATH,
        supports_per_peer_ca_cert=False,
        default_ca_mode="shared",
        ca_secret_names=("clustermesh-apiserver-ca-cert", "cilium-ca"),
        peer_tls_required=True,
        certgen_is_helm_hook=False,
        safe_tls_method_under_kkp="cronJob",
        old_ca_key_rejected_from_patch=None,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/",),
        none_affinity_drops_remote=False,
        preferred_marker_reliable=True,
        health_layout="probe-time",
        service_list_has_protocol=False,
        status_header="clusters ready",
        max_connected_clusters_options=(255,),
        name_format_enforced=False,
        kvstoremesh_default=False,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default=None,
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=None,
        mcs_api_coredns_auto=False,
    ),
    # Per-peer ``caCert``, top-level ``tls.ca``, ``cilium-ca`` first, certgen a Helm hook, new annotations.
    CiliumProfile(
        line="1.14",
        agent_cli="cilium",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca", "clustermesh-apiserver-ca-cert"),
        peer_tls_required=False,
        certgen_is_helm_hook=True,
        safe_tls_method_under_kkp="helm",
        old_ca_key_rejected_from_patch=None,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=False,
        preferred_marker_reliable=True,
        health_layout="probe-time",
        service_list_has_protocol=False,
        status_header="clusters ready",
        max_connected_clusters_options=(255,),
        name_format_enforced=False,
        kvstoremesh_default=False,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default="legacy",
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=None,
        mcs_api_coredns_auto=False,
    ),
    # ``cilium-dbg``, only ``cilium-ca``, old CA key ignored then rejected from 1.15.8, 511 clusters.
    CiliumProfile(
        line="1.15",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=True,
        safe_tls_method_under_kkp="helm",
        old_ca_key_rejected_from_patch=8,
        old_ca_key_ignored=True,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=False,
        preferred_marker_reliable=True,
        health_layout="probe-time",
        service_list_has_protocol=False,
        status_header="clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=False,
        kvstoremesh_default=False,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default="legacy",
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=None,
        mcs_api_coredns_auto=False,
    ),
    # Old CA key rejected from 1.16.2, "remote clusters ready", name rule enforced, KVStoreMesh on.
    CiliumProfile(
        line="1.16",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=True,
        safe_tls_method_under_kkp="helm",
        old_ca_key_rejected_from_patch=2,
        old_ca_key_ignored=True,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=False,
        preferred_marker_reliable=True,
        health_layout="probe-time",
        service_list_has_protocol=False,
        status_header="remote clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=True,
        kvstoremesh_default=True,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default="legacy",
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=None,
        mcs_api_coredns_auto=False,
    ),
    # Old CA key rejected on every patch, health table layout, ``/TCP`` on service-list addresses, MCS-API.
    CiliumProfile(
        line="1.17",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=True,
        safe_tls_method_under_kkp="helm",
        old_ca_key_rejected_from_patch=0,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=False,
        preferred_marker_reliable=True,
        health_layout="cluster-health-table",
        service_list_has_protocol=True,
        status_header="remote clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=True,
        kvstoremesh_default=True,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default="legacy",
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=MCS_API_SUPPORT_PATH,
        mcs_api_coredns_auto=False,
    ),
    # ``affinity: none`` drops remote backends, ``(preferred)`` on every backend, probe interval shown.
    CiliumProfile(
        line="1.18",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=True,
        safe_tls_method_under_kkp="helm",
        old_ca_key_rejected_from_patch=0,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=True,
        preferred_marker_reliable=False,
        health_layout="cluster-health-table-probe-interval",
        service_list_has_protocol=True,
        status_header="remote clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=True,
        kvstoremesh_default=True,
        clusters_map_accepted=False,
        per_entry_certs_deprecated=False,
        auth_mode_default="legacy",
        cache_ttl_supported=False,
        policy_default_local_cluster=False,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=MCS_API_SUPPORT_PATH,
        mcs_api_coredns_auto=False,
    ),
    # certgen no longer a Helm hook (cronJob safe again); clusters map, per-entry certs deprecated, authMode
    # migration, cacheTTL, policyDefaultLocalCluster true, MCS-API under ``mcsapi.*``; agent output assumed as 1.18.
    CiliumProfile(
        line="1.19",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=False,
        safe_tls_method_under_kkp="cronJob",
        old_ca_key_rejected_from_patch=0,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=True,
        preferred_marker_reliable=False,
        health_layout="cluster-health-table-probe-interval",
        service_list_has_protocol=True,
        status_header="remote clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=True,
        kvstoremesh_default=True,
        clusters_map_accepted=True,
        per_entry_certs_deprecated=True,
        auth_mode_default="migration",
        cache_ttl_supported=True,
        policy_default_local_cluster=True,
        global_namespaces=False,
        removed_value_paths=(),
        cert_validity_days=1095,
        server_extra_names_path=SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=MCS_API_ENABLED_PATH,
        mcs_api_coredns_auto=True,
        unverified=("health layout", "status header", "none-affinity bug"),
    ),
    # Global namespaces, 365-day certificates, server/admin/remote cert keys and enableSecrets removed,
    # extra server names under ``tls.auto.server``; agent output assumed as 1.19.
    CiliumProfile(
        line="1.20",
        agent_cli="cilium-dbg",
        ca_placement=TOP_LEVEL_CA_PATH,
        supports_per_peer_ca_cert=True,
        default_ca_mode="per-peer",
        ca_secret_names=("cilium-ca",),
        peer_tls_required=False,
        certgen_is_helm_hook=False,
        safe_tls_method_under_kkp="cronJob",
        old_ca_key_rejected_from_patch=0,
        old_ca_key_ignored=False,
        annotation_prefixes_read=("io.cilium/", "service.cilium.io/"),
        none_affinity_drops_remote=True,
        preferred_marker_reliable=False,
        health_layout="cluster-health-table-probe-interval",
        service_list_has_protocol=True,
        status_header="remote clusters ready",
        max_connected_clusters_options=(255, 511),
        name_format_enforced=True,
        kvstoremesh_default=True,
        clusters_map_accepted=True,
        per_entry_certs_deprecated=True,
        auth_mode_default="migration",
        cache_ttl_supported=True,
        policy_default_local_cluster=True,
        global_namespaces=True,
        removed_value_paths=REMOVED_IN_1_20,
        cert_validity_days=365,
        server_extra_names_path=AUTO_SERVER_EXTRA_NAMES_PATH,
        mcs_api_values_path=MCS_API_ENABLED_PATH,
        mcs_api_coredns_auto=True,
        unverified=("health layout", "status header", "none-affinity bug", "service list ID column"),
    ),
)

PROFILES: dict[str, CiliumProfile] = {profile.line: profile for profile in _ROWS}
SUPPORTED_LINES: tuple[str, ...] = tuple(PROFILES)


def profile_for(version: str) -> CiliumProfile:
    """The profile of ``version``'s line; anything outside 1.13–1.20 is refused, not guessed."""
    parsed = parse_cilium_version(version)
    profile = PROFILES.get(parsed.line)
    if profile is None:
        raise UnsupportedVersionError(version, SUPPORTED_LINES)
    return profile
