"""Drift: whether every cluster's mesh values are still what the spec and its peers imply.

Nothing here writes: a drift is reported with "run the setup again", because the setup writes only
what differs. Peers are read live, so an entry that still names a peer's old address, its re-issued
remote certificate or its replaced CA shows up as the stale copy it is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from clustermesh.certs import issued_by, key_matches, load_private_key
from clustermesh.checks.certificates import cluster_now
from clustermesh.checks.common import (
    RERUN_SETUP,
    SERVER_CERT,
    VerifyClient,
    ca_keys,
    error_parts,
    find_ca_secret,
    fingerprint,
    key_problem,
    safe_text,
    same_cert,
    secret_data,
    try_cert,
)
from clustermesh.checks.findings import Finding, fail, ok, warn
from clustermesh.cilium.mcs import mcs_api_values
from clustermesh.cilium.profiles import CaMode, CiliumProfile, parse_cilium_version, profile_for
from clustermesh.errors import CertificateError, ClusterMeshError
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.cert_copies import copy_problem, trusted_cas
from clustermesh.steps.membership import unlisted_managed_peers, unlisted_peer_problem
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step2_4_6_mesh_values import install_state
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, SERVICE, service_address
from clustermesh.values import (
    CLUSTERS_PATH,
    clusters_form,
    deep_merge,
    legacy_paths_to_remove,
    peer_entries,
    read_values,
    removed_keys_present,
    render_mesh_values,
    value_at,
)

__all__ = ["check_drift"]

# Keys whose drift breaks the mesh at once (failure); other owned keys drifting is a warning.
_BREAKING_PATHS = {
    ("cluster", "name"),
    ("cluster", "id"),
    ("clustermesh", "useAPIServer"),
    ("clustermesh", "config", "enabled"),
}


@dataclass
class _PeerNow:
    """What one cluster looks like to its peers right now: address, remote cert, CA, server cert."""

    name: str
    address: tuple[list[str], int] | None = None
    remote_cert: x509.Certificate | None = None
    remote_ca: x509.Certificate | None = None
    server_cert: x509.Certificate | None = None
    problem: str | None = None
    trusted: list[x509.Certificate] = field(default_factory=list)  # the CAs its clustermesh-apiserver trusts
    clock: datetime | None = None  # the cluster's own time (its API's Date)
    warn_days: int = 30  # the spec's certificates.warn_days: a copy nearer to expiry is not current


def _read_peer(name: str, client: VerifyClient | None, warn_days: int = 30) -> _PeerNow:
    if client is None:
        return _PeerNow(name, problem="no client for this cluster")
    now = _PeerNow(name, warn_days=warn_days)
    try:
        svc = client.get_service(NAMESPACE, SERVICE)
        nodes = client.list_nodes()
        remote = secret_data(client.get_secret(NAMESPACE, REMOTE_CERT))
        server = secret_data(client.get_secret(NAMESPACE, SERVER_CERT))
    except ClusterMeshError as exc:
        now.problem = error_parts(exc)[0]
        return now
    now.address = service_address(svc, nodes) if svc is not None else None
    now.remote_cert, _ = try_cert(remote.get("tls.crt"), f"{REMOTE_CERT} tls.crt")
    now.remote_ca, _ = try_cert(remote.get("ca.crt"), f"{REMOTE_CERT} ca.crt")
    now.server_cert, _ = try_cert(server.get("tls.crt"), f"{SERVER_CERT} tls.crt")
    now.trusted = trusted_cas(server.get("ca.crt"))
    try:
        now.clock = cluster_now(client)
    except ClusterMeshError:
        now.clock = None
    return now


def check_drift(
    clients: Mapping[str, VerifyClient], facts: Mapping[str, ClusterFacts], spec: MeshSpec
) -> list[Finding]:
    """Whether every cluster's mesh values are still what the spec and its peers imply.

    Compares each cluster's ``cluster``/``clustermesh`` keys with what the setup would write, and each
    ``clusters[]`` entry with the peer as it is now: its Service address, its current remote
    certificate (a re-issued one leaves a stale copy behind), its CA. Clusters without facts failed
    the prerequisites and are left out here; peers are always read live.
    """
    findings: list[Finding] = []
    peers: dict[str, _PeerNow] = {}

    def peer(name: str) -> _PeerNow:
        if name not in peers:
            peers[name] = _read_peer(name, clients.get(name), spec.certificates.warn_days)
        return peers[name]

    shared_ca: tuple[x509.Certificate | None, str] | None = None
    for cluster in spec.clusters:
        found = facts.get(cluster.name)
        client = clients.get(cluster.name)
        if found is None or client is None:
            continue
        try:
            profile = profile_for(found.cilium_version)
            ca_mode = spec.cilium.resolve(profile).ca_mode
            if ca_mode == "shared" and shared_ca is None:
                shared_ca = _first_ca(clients.get(spec.first.name), facts.get(spec.first.name), spec)
            findings.extend(_drift_of(client, found, cluster, spec, profile, ca_mode, peer, shared_ca))
        except ClusterMeshError as exc:
            reason, fix = error_parts(exc)
            findings.append(fail(cluster.name, reason, fix))
    findings.extend(_unlisted_managed_findings(facts, spec))
    return findings


def _unlisted_managed_findings(facts: Mapping[str, ClusterFacts], spec: MeshSpec) -> list[Finding]:
    """A peer the setup manages that the spec no longer lists: the setup refuses to run until it is resolved."""
    missing = unlisted_managed_peers(facts.values(), [c.name for c in spec.clusters])
    return [
        fail(peer, *unlisted_peer_problem(peer, holders), clusters=(*holders, peer))
        for peer, holders in missing.items()
    ]


def _first_ca(
    client: VerifyClient | None, facts: ClusterFacts | None, spec: MeshSpec
) -> tuple[x509.Certificate | None, str]:
    """The shared CA: the first cluster's, as the setup copied it (None and why when unreadable)."""
    first = spec.first.name
    if client is None or facts is None:
        return None, f"{first} could not be read"
    try:
        found = find_ca_secret(client, profile_for(facts.cilium_version))
    except ClusterMeshError as exc:
        return None, error_parts(exc)[0]
    if found is None:
        return None, f"{first} has no CA Secret"
    name, data = found
    cert, problem = try_cert(data.get(ca_keys(data)[0]), f"{first} {name} {ca_keys(data)[0]}")
    return cert, problem or ""


def _leaves(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    for key, value in node.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


def _equal(a: Any, b: Any) -> bool:
    """Semantic equality that keeps ``true`` and ``1`` apart, as Helm does."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


# ------------------------------------------------------------------------------- one cluster's values


def _drift_of(
    client: VerifyClient,
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    profile: CiliumProfile,
    ca_mode: CaMode,
    peer: Callable[[str], _PeerNow],
    shared_ca: tuple[x509.Certificate | None, str] | None,
) -> list[Finding]:
    name = cluster.name
    ai = client.get_application_installation()
    values, _field = read_values(ai)
    findings = [_install_finding(name, ai)]

    owned = _owned_findings(name, values, facts, cluster, spec, profile)
    findings.extend(owned)
    if not owned:
        findings.append(ok(name, "cluster name/id and the clustermesh settings are as the setup writes them"))

    if ca_mode == "shared" and shared_ca is not None:
        findings.append(_shared_ca_finding(name, values, profile, shared_ca, spec.first.name))

    findings.extend(_peer_findings(name, values, spec, profile, ca_mode, peer, managed=facts.managed_peers))
    return findings


def _owned_findings(
    name: str,
    values: Mapping[str, Any],
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    profile: CiliumProfile,
) -> list[Finding]:
    """The keys we own, against what the setup would write, and old keys it removes; empty when all match.

    Peers and the CA are compared elsewhere, live.
    """
    findings: list[Finding] = []
    desired = render_mesh_values(profile, cluster, spec, shared_ca=None, peers=[])
    desired = deep_merge(desired, mcs_api_values(profile, enabled=spec.cilium.mcs_api, cluster=name))
    for path, want in _leaves(desired):
        present, have = value_at(values, path)
        if present and _equal(have, want):
            continue
        shown = repr(have) if present else "not set"
        dotted = ".".join(path)
        if path in _BREAKING_PATHS:
            fix = RERUN_SETUP
            if path[0] == "cluster" and present and have not in (None, "", 0, "default"):
                fix = (
                    f"set {dotted} back to {want!r}, or correct the spec if the cluster really changed; "
                    "changing it live restarts every workload"
                )
            findings.append(fail(name, f"{dotted} is {shown}, the spec implies {want!r}", fix))
        else:
            findings.append(
                warn(
                    name,
                    f"{dotted} is {shown}, the setup writes {want!r}",
                    f"{RERUN_SETUP}; or change the spec if the new value is intended",
                )
            )
    patch = parse_cilium_version(facts.cilium_version).patch
    for path in legacy_paths_to_remove(profile, values, patch):
        effect = profile.old_ca_key_effect(patch)
        findings.append(
            warn(
                name,
                f"{'.'.join(path)} is set, which Cilium {facts.cilium_version} {effect} (reference/cilium.md §4)",
                f"{RERUN_SETUP} (it removes the old key)",
            )
        )
    findings.extend(_removed_key_findings(name, values, profile, facts.cilium_version))
    return findings


_EDIT = "kubectl edit applicationinstallation cilium -n kube-system"
_REMOVED_KEY_FIX = {
    "enableSecrets": "remove it ({edit}): the chart never creates these Secrets from values any more",
    "enableMCSAPISupport": "set clustermesh.mcsapi.enabled instead and remove the old key ({edit})",
}


def _removed_key_findings(name: str, values: Mapping[str, Any], profile: CiliumProfile, version: str) -> list[Finding]:
    """Keys the line's chart no longer reads (1.20): silently ignored, so the cluster runs without them."""
    findings = []
    for path in removed_keys_present(profile, values):
        fix = _REMOVED_KEY_FIX.get(
            path[-1],
            "remove it ({edit}); tls.auto issues the clustermesh-apiserver certificates (with tls.auto.enabled "
            f"false, create Secret clustermesh-apiserver-{path[-2]}-cert yourself)",
        )
        findings.append(
            warn(
                name,
                f"{'.'.join(path)} is set, which the Cilium {version} chart no longer reads (silently ignored)",
                fix.format(edit=_EDIT),
            )
        )
    return findings


def _install_finding(name: str, ai: Mapping[str, Any]) -> Finding:
    """KKP's view of the installation: a failed Helm release means none of our values are deployed."""
    conditions = (ai.get("status") or {}).get("conditions") or {}
    conditions = conditions if isinstance(conditions, dict) else {}
    manifests = conditions.get("ManifestsRetrieved")
    ready = conditions.get("Ready")
    fix = "read the message in KKP (Applications → cilium) and repair the installation; then run the setup again"
    for kind, cond in (("ManifestsRetrieved", manifests), ("Ready", ready)):
        if isinstance(cond, dict) and cond.get("status") == "False":
            message = safe_text(str(cond.get("message") or "no message"), 240)
            return fail(name, f"cilium ApplicationInstallation {kind}=False ({cond.get('reason')}): {message}", fix)
    state, why = install_state(dict(ai))
    if state == "applied":
        return ok(name, f"cilium ApplicationInstallation applied ({why})")
    return warn(
        name,
        f"cilium ApplicationInstallation not applied yet: {safe_text(why, 200)}",
        "wait for KKP to finish (up to its 10m Helm timeout) and look again; if it stays, check its status",
    )


def _shared_ca_finding(
    name: str,
    values: Mapping[str, Any],
    profile: CiliumProfile,
    shared_ca: tuple[x509.Certificate | None, str],
    first: str,
) -> Finding:
    expected, why = shared_ca
    where = ".".join(profile.ca_placement)
    if expected is None:
        return fail(name, f"cannot read the shared CA of {first}: {why}", f"check {first}'s CA Secret")
    present, ca = value_at(values, profile.ca_placement)
    if not present or not isinstance(ca, dict) or not ca.get("cert"):
        return fail(name, f"no shared CA in {where}", RERUN_SETUP)
    cert, problem = try_cert(ca.get("cert"), f"{where}.cert")
    if cert is None:
        return fail(name, problem or f"{where}.cert unreadable", RERUN_SETUP)
    if not same_cert(cert, expected):
        return fail(
            name,
            f"{where} holds CA {fingerprint(cert)}, the shared CA of {first} is {fingerprint(expected)}",
            f"{RERUN_SETUP}; every cluster must carry {first}'s CA",
        )
    key_data = ca.get("key")
    if key_data:
        try:
            key = load_private_key(str(key_data), source=f"{where}.key")
        except CertificateError as exc:
            return fail(name, f"{where}.key: {exc.problem}", RERUN_SETUP)
        if not key_matches(cert, key):
            return fail(name, f"{where}.key does not belong to {where}.cert ({fingerprint(cert)})", RERUN_SETUP)
    return ok(name, f"{where} is the shared CA of {first} ({fingerprint(cert)})")


# ------------------------------------------------------------------------------------ peer entries


def _form_problem(values: Mapping[str, Any], profile: CiliumProfile) -> str | None:
    """Why the chart cannot read ``clusters`` at all: neither a list nor a map, or a map before 1.19."""
    present, entries = value_at(values, CLUSTERS_PATH)
    form = clusters_form(values)
    if present and entries is not None and form is None:
        return "is neither a list nor a map of peer entries"
    if form == "map" and not profile.clusters_map_accepted:
        return f"is a map keyed by name, which Cilium {profile.line} does not read (a list; maps from 1.19)"
    return None


def _peer_findings(
    name: str,
    values: Mapping[str, Any],
    spec: MeshSpec,
    profile: CiliumProfile,
    ca_mode: CaMode,
    peer: Callable[[str], _PeerNow],
    *,
    managed: Collection[str] = (),
) -> list[Finding]:
    """Each entry against the peer it names; ``managed`` peers the spec lost are reported once, mesh-wide."""
    findings: list[Finding] = []
    where = ".".join(CLUSTERS_PATH)
    problem = _form_problem(values, profile)
    if problem is not None:
        return [fail(name, f"{where} {problem}", f"make it a list of peer entries; then {RERUN_SETUP}")]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in peer_entries(values):
        by_name.setdefault(str(entry.get("name") or ""), []).append(entry)
    expected = [c.name for c in spec.clusters if c.name != name]
    edit = _EDIT

    if "" in by_name:
        findings.append(warn(name, f"{len(by_name.pop(''))} entries in {where} have no name", f"remove them ({edit})"))
    if name in by_name:
        findings.append(fail(name, f"{where} lists the cluster itself", f"remove the entry named {name} ({edit})"))
        del by_name[name]
    for other, items in sorted(by_name.items()):
        if len(items) > 1:
            findings.append(
                fail(
                    name,
                    f"peer {other} is listed {len(items)} times in {where}",
                    # the setup keeps one entry per peer of the spec, with the peer's current address
                    RERUN_SETUP if other in expected else f"keep one entry named {other} ({edit})",
                    clusters=(name, other),
                )
            )
        if other not in expected and other not in managed:
            findings.append(
                warn(
                    name,
                    f"unknown peer {other} in {where} (not in the spec)",
                    f"remove the entry if {other} left the mesh ({edit}), or add the cluster to the spec",
                )
            )
    for other in expected:
        if other not in by_name:
            findings.append(fail(name, f"missing peer {other} in {where}", RERUN_SETUP, clusters=(name, other)))
            continue
        # with duplicates, the first entry is the one compared (the duplicate is a failure of its own)
        entry = by_name[other][0]
        if entry.get("enabled") is False:
            findings.append(
                fail(name, f"peer {other} is disabled in {where} (enabled: false)", RERUN_SETUP, clusters=(name, other))
            )
            continue
        certs_expected = ca_mode == "per-peer" or not profile.per_entry_certs_deprecated
        findings.extend(_entry_findings(name, entry, peer(other), ca_mode, certs_expected=certs_expected))
    return findings


def _entry_findings(
    name: str, entry: Mapping[str, Any], now: _PeerNow, ca_mode: CaMode, *, certs_expected: bool = True
) -> list[Finding]:
    """One ``clusters[]`` entry against its peer as it is now; at most one finding per aspect.

    Without ``certs_expected`` (a shared CA on 1.19+) the entry should carry no certificate: the agents
    use the local remote certificate, which the shared CA issued.
    """
    subject = f"{name} → {now.name}"
    label = f"the entry for {now.name}"
    if now.problem is not None:
        return [
            warn(
                subject,
                f"{now.name} could not be read, entry not compared: {now.problem}",
                "see that cluster's finding",
            )
        ]
    ips = [str(ip) for ip in entry.get("ips") or []]
    port = entry.get("port")
    found = _address_findings(subject, label, entry, ips, port, now)

    tls = entry.get("tls") if isinstance(entry.get("tls"), dict) else {}
    assert isinstance(tls, dict)
    cert: x509.Certificate | None = None
    if certs_expected:
        cert, cert_findings = _remote_cert_findings(subject, label, tls, now)
        found.extend(cert_findings)
    elif tls.get("cert") or tls.get("key"):
        found.append(
            warn(
                subject,
                f"{label} carries a certificate in tls.cert/tls.key: deprecated from Cilium 1.19 and not needed "
                "with a shared CA (the local remote certificate is used)",
                f"{RERUN_SETUP} (it writes the entry without them)",
            )
        )

    if ca_mode == "per-peer":
        found.extend(_ca_cert_findings(subject, label, tls, now))
    if not found:
        address = f"{', '.join(ips)}:{port}"
        remote = fingerprint(cert) if cert else "-" if certs_expected else "the local one (shared CA)"
        found.append(ok(subject, f"{label} matches {now.name}: {address}, remote certificate {remote}"))
    return found


def _address_findings(
    subject: str, label: str, entry: Mapping[str, Any], ips: list[str], port: Any, now: _PeerNow
) -> list[Finding]:
    """The entry's address against the peer's clustermesh-apiserver Service, as peers reach it now."""
    if now.address is None:
        return [
            warn(
                subject,
                f"{now.name}'s Service {NAMESPACE}/{SERVICE} has no address: {label} not compared",
                f"kubectl get svc {SERVICE} -n {NAMESPACE} in {now.name}",
            )
        ]
    if not ips:
        address = str(entry.get("address") or "")
        return [fail(subject, f"{label} has no ips" + (f" (address {address!r})" if address else ""), RERUN_SETUP)]
    live_ips, live_port = now.address
    if sorted(ips) != sorted(live_ips) or not _equal(port, live_port):
        return [
            fail(
                subject,
                f"{label} points at {', '.join(ips)}:{port}, {now.name}'s clustermesh-apiserver is at "
                f"{', '.join(live_ips)}:{live_port}",
                RERUN_SETUP,
            )
        ]
    return []


def _remote_cert_findings(
    subject: str, label: str, tls: Mapping[str, Any], now: _PeerNow
) -> tuple[x509.Certificate | None, list[Finding]]:
    """The entry's tls.cert against the peer's current remote certificate, and its tls.key against it."""
    cert, problem = try_cert(tls.get("cert"), f"{label}: tls.cert")
    if cert is None:
        return None, [fail(subject, problem or f"{label}: tls.cert unreadable", RERUN_SETUP)]
    found: list[Finding] = []
    if now.remote_cert is None:
        found.append(
            warn(
                subject,
                f"{now.name} has no readable {REMOTE_CERT}: tls.cert not compared",
                f"see the certificate findings of {now.name}",
            )
        )
    elif not same_cert(cert, now.remote_cert):
        # an earlier certificate of the peer is fine while it is current (trusted, far from expiry)
        stale = copy_problem(tls, now.trusted, now=now.clock or datetime.now(UTC), warn_days=now.warn_days)
        if stale is None:
            found.append(
                ok(
                    subject,
                    f"{label} carries {fingerprint(cert)}, an earlier remote certificate of {now.name} (now "
                    f"{fingerprint(now.remote_cert)}) that is still current: kept",
                )
            )
        else:
            found.append(
                fail(
                    subject,
                    f"stale remote certificate: {label} carries {fingerprint(cert)}, {now.name} now has "
                    f"{fingerprint(now.remote_cert)}: {stale}",
                    f"clustermesh certs renew --config <mesh.yaml> --cluster {now.name} (hands {now.name}'s "
                    "current certificate to its peers)",
                )
            )
    problem = key_problem(cert, tls.get("key"), f"{label}: tls.key", "tls.cert")
    if problem is not None:
        found.append(fail(subject, problem, RERUN_SETUP))
    return cert, found


def _ca_cert_findings(subject: str, label: str, tls: Mapping[str, Any], now: _PeerNow) -> list[Finding]:
    """Per-peer CA mode: the entry's caCert must be the peer's CA, the one that verifies its server."""
    ca, problem = try_cert(tls.get("caCert"), f"{label}: tls.caCert")
    if ca is None:
        return [fail(subject, problem or f"{label}: tls.caCert unreadable", RERUN_SETUP)]
    if now.server_cert is not None and not issued_by(now.server_cert, ca):
        return [
            fail(
                subject,
                f"{label}: tls.caCert {fingerprint(ca)} does not verify {now.name}'s server certificate "
                f"(agents fail with 'tls: bad certificate')",
                f"run the setup again to copy {now.name}'s current CA",
            )
        ]
    if now.remote_ca is not None and not same_cert(ca, now.remote_ca):
        return [
            fail(
                subject,
                f"{label}: tls.caCert is {fingerprint(ca)}, {now.name}'s CA is now {fingerprint(now.remote_ca)}",
                f"run the setup again to copy {now.name}'s current CA",
            )
        ]
    return []
