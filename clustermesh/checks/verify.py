"""The nightly verification: read-only checks that a finished mesh is still what the spec implies.

Every check turns what it sees into :class:`~clustermesh.notify.slack.Finding`s (ok / warning / failure, one
line of reason, what to do), so the nightly flow hands them to Slack unchanged. Nothing here writes:
a drift is reported with "run the setup again", because the setup writes only what differs.

Findings never carry key material: certificates are named by Secret and key and shown as short
SHA-256 fingerprints; messages copied from KKP are cut and scrubbed of anything base64-shaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict

from clustermesh.certs import cert_info, issued_by, key_matches, load_cert, load_private_key
from clustermesh.checks.findings import Finding, Verdict, fail, ok, overall, warn
from clustermesh.cilium.profiles import CaMode, CiliumProfile, parse_cilium_version, profile_for
from clustermesh.errors import (
    CertificateError,
    ClusterMeshError,
    KubeApiError,
    PrerequisiteError,
    SpecError,
)
from clustermesh.kube.client import ClusterClient, is_transient
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step1_prerequisites import check_mesh_prerequisites, check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import install_state
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, SERVICE, service_address
from clustermesh.values import CLUSTERS_PATH, legacy_paths_to_remove, read_values, render_mesh_values

__all__ = [
    "LEAF_CERTS",
    "CertificateReport",
    "CertificateStatus",
    "Verdict",
    "VerifyClient",
    "certificate_report",
    "check_certificates",
    "check_drift",
    "check_reachability_and_versions",
    "nearest_expiry_days",
    "overall",
]

SERVER_CERT = "clustermesh-apiserver-server-cert"
ADMIN_CERT = "clustermesh-apiserver-admin-cert"
LEAF_CERTS: tuple[str, ...] = (SERVER_CERT, REMOTE_CERT, ADMIN_CERT)
"""The leaf certificates every meshed cluster has (reference/cilium.md §1.3)."""


RERUN_SETUP = "run the setup again (clustermesh setup); it writes only what differs"
_MAX_REASON = 300
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.DOTALL)
# Keys whose drift breaks the mesh at once (failure); other owned keys drifting is a warning.
_BREAKING_PATHS = {
    ("cluster", "name"),
    ("cluster", "id"),
    ("clustermesh", "useAPIServer"),
    ("clustermesh", "config", "enabled"),
}


class VerifyClient(Protocol):
    """The reads the verification needs; ``ClusterClient`` has them, test fakes too."""

    def version(self) -> str: ...

    def get_application_installation(self, namespace: str = "kube-system", name: str = "cilium") -> dict[str, Any]: ...

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...


# --------------------------------------------------------------------------------------- verdicts


def _redact_run(match: re.Match[str]) -> str:
    """A long run of base64 letters with mixed case and digits is data, not words or a path."""
    run = match.group(0)
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
    return "<redacted>" if mixed else run


def _safe_text(text: str, limit: int = _MAX_REASON) -> str:
    """One line, short, with PEM blocks and long base64 runs struck out: text from others may hold keys."""
    text = _PEM.sub("<redacted>", text)
    text = _BASE64_RUN.sub(_redact_run, text)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


_RAISE_TRANSIENT: ContextVar[bool] = ContextVar("clustermesh_verify_raise_transient", default=False)


@contextmanager
def transient_errors_raise(enabled: bool = True) -> Iterator[None]:
    """Inside, a transient API error (connection, 5xx, 429) propagates instead of becoming a finding.

    A caller with retries left uses it so that one dropped connection at night is retried, not
    reported as a failure; on its last attempt it records the error as a finding like any other.
    """
    token = _RAISE_TRANSIENT.set(enabled)
    try:
        yield
    finally:
        _RAISE_TRANSIENT.reset(token)


def _error_parts(exc: ClusterMeshError) -> tuple[str, str]:
    """(reason, fix) of one of our errors: the first line of what went wrong, and its own fix.

    Every place that turns an error into a finding passes through here, so this is also where a
    transient error is sent back to a caller that will retry (see :func:`transient_errors_raise`).
    """
    if _RAISE_TRANSIENT.get() and is_transient(exc):
        raise exc
    if isinstance(exc, KubeApiError):
        http = f"HTTP {exc.status}{' ' + exc.reason if exc.reason else ''}: " if exc.status else ""
        return _safe_text(f"{exc.verb} {exc.target} failed: {http}{exc.problem}"), exc.fix
    if isinstance(exc, SpecError) and exc.problems:
        first = exc.problems[0]
        return _safe_text(f"{first.field}: {first.message}"), first.fix
    problem = getattr(exc, "problem", None)
    fix = getattr(exc, "fix", "")
    lines = str(problem if isinstance(problem, str) and problem else exc).splitlines()
    return _safe_text(lines[0] if lines else type(exc).__name__), str(fix or "")


# --------------------------------------------------------------------- reachability and versions


def check_reachability_and_versions(
    clients: Mapping[str, VerifyClient], spec: MeshSpec
) -> tuple[dict[str, ClusterFacts], list[Finding]]:
    """Step 1 of the setup, read-only, as findings: who answers, what runs there, what rules out a mesh.

    Returns the facts of the clusters that passed (the later checks look only at those) and one
    finding per cluster, plus the cross-cluster rules (overlapping pod CIDRs fail, version skew warns).
    """
    facts: dict[str, ClusterFacts] = {}
    findings: list[Finding] = []
    for cluster in spec.clusters:
        client = clients.get(cluster.name)
        if client is None:
            findings.append(fail(cluster.name, "no client for this cluster", "check clusters[].kubeconfig in the spec"))
            continue
        try:
            # check_prerequisites only reads what VerifyClient offers; it is typed for the real client.
            found = check_prerequisites(cast(ClusterClient, client), cluster, spec)
        except ClusterMeshError as exc:
            reason, fix = _error_parts(exc)
            findings.append(fail(cluster.name, reason, fix))
            continue
        facts[cluster.name] = found
        findings.append(ok(cluster.name, _versions(found)))
        if found.detected_cilium_version and found.cilium_version != found.detected_cilium_version:
            detected_line = parse_cilium_version(found.detected_cilium_version).line
            if detected_line != found.profile_line:
                findings.append(
                    warn(
                        cluster.name,
                        f"the spec says Cilium {found.cilium_version}, the cluster runs "
                        f"{found.detected_cilium_version}: values are judged for the wrong version line",
                        "update cilium.version in the spec, or remove it so the version is detected",
                    )
                )
    if len(facts) >= 2:
        try:
            warnings = check_mesh_prerequisites(list(facts.values()))
        except PrerequisiteError as exc:
            reason, fix = _error_parts(exc)
            findings.append(fail(exc.cluster, reason, fix))
        else:
            findings.extend(
                warn("mesh", _safe_text(w), "upgrade the older clusters one minor at a time") for w in warnings
            )
    return facts, findings


def _versions(facts: ClusterFacts) -> str:
    text = f"Cilium {facts.detected_cilium_version}, Kubernetes {facts.kubernetes_version}"
    if facts.cilium_version != facts.detected_cilium_version:
        text += f" (judged as Cilium {facts.cilium_version}, from the spec)"
    return text + f"; {facts.nodes} nodes, prerequisites met"


# ------------------------------------------------------------------------------------- certificate helpers


def _fp(cert: x509.Certificate) -> str:
    """The short form people compare by eye; the full digest is what comparisons use."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()[:12] + "…"


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def _try_cert(data: object, source: str) -> tuple[x509.Certificate | None, str | None]:
    """(certificate, None) or (None, why not) — unreadable data is a finding, not an exception."""
    if not isinstance(data, str | bytes) or not data:
        return None, f"{source} is missing"
    try:
        return load_cert(data, source=source), None
    except CertificateError as exc:
        return None, f"{source}: {exc.problem}"


def _key_problem(cert: x509.Certificate, data: object, source: str, cert_field: str) -> str | None:
    """Why the key in ``source`` cannot serve ``cert`` (missing, unreadable, another key's), or None."""
    if not isinstance(data, str | bytes) or not data:
        return f"{source} is missing"
    try:
        key = load_private_key(str(data), source=source)
    except CertificateError as exc:
        return f"{source}: {exc.problem}"
    if not key_matches(cert, key):
        return f"{source} does not belong to {cert_field} ({_fp(cert)})"
    return None


def _data(secret: Mapping[str, Any] | None) -> dict[str, Any]:
    data = (secret or {}).get("data")
    return data if isinstance(data, dict) else {}


def _find_ca_secret(client: VerifyClient, profile: CiliumProfile) -> tuple[str, dict[str, Any]] | None:
    """The first of the profile's CA Secrets holding a certificate (cert-manager's keeps it in tls.crt)."""
    for name in profile.ca_secret_names:
        data = _data(client.get_secret(NAMESPACE, name))
        if data.get("ca.crt") or data.get("tls.crt"):
            return name, data
    return None


def _ca_keys(data: Mapping[str, Any]) -> tuple[str, str]:
    return ("ca.crt", "ca.key") if data.get("ca.crt") else ("tls.crt", "tls.key")


# ------------------------------------------------------------------------------------------------ drift


@dataclass
class _PeerNow:
    """What one cluster looks like to its peers right now: address, remote cert, CA, server cert."""

    name: str
    address: tuple[list[str], int] | None = None
    remote_cert: x509.Certificate | None = None
    remote_ca: x509.Certificate | None = None
    server_cert: x509.Certificate | None = None
    problem: str | None = None


def _read_peer(name: str, client: VerifyClient | None) -> _PeerNow:
    if client is None:
        return _PeerNow(name, problem="no client for this cluster")
    now = _PeerNow(name)
    try:
        svc = client.get_service(NAMESPACE, SERVICE)
        nodes = client.list_nodes()
        remote = _data(client.get_secret(NAMESPACE, REMOTE_CERT))
        server = _data(client.get_secret(NAMESPACE, SERVER_CERT))
    except ClusterMeshError as exc:
        now.problem = _error_parts(exc)[0]
        return now
    now.address = service_address(svc, nodes) if svc is not None else None
    now.remote_cert, _ = _try_cert(remote.get("tls.crt"), f"{REMOTE_CERT} tls.crt")
    now.remote_ca, _ = _try_cert(remote.get("ca.crt"), f"{REMOTE_CERT} ca.crt")
    now.server_cert, _ = _try_cert(server.get("tls.crt"), f"{SERVER_CERT} tls.crt")
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
            peers[name] = _read_peer(name, clients.get(name))
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
            reason, fix = _error_parts(exc)
            findings.append(fail(cluster.name, reason, fix))
    return findings


def _first_ca(
    client: VerifyClient | None, facts: ClusterFacts | None, spec: MeshSpec
) -> tuple[x509.Certificate | None, str]:
    """The shared CA: the first cluster's, as the setup copied it (None and why when unreadable)."""
    first = spec.first.name
    if client is None or facts is None:
        return None, f"{first} could not be read"
    try:
        found = _find_ca_secret(client, profile_for(facts.cilium_version))
    except ClusterMeshError as exc:
        return None, _error_parts(exc)[0]
    if found is None:
        return None, f"{first} has no CA Secret"
    name, data = found
    cert, problem = _try_cert(data.get(_ca_keys(data)[0]), f"{first} {name} {_ca_keys(data)[0]}")
    return cert, problem or ""


def _get(values: Any, path: Sequence[str]) -> tuple[bool, Any]:
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


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

    # The keys we own, as the setup would write them (peers and CA are compared below, live).
    desired = render_mesh_values(profile, cluster, spec, shared_ca=None, peers=[])
    owned_ok = True
    for path, want in _leaves(desired):
        present, have = _get(values, path)
        if present and _equal(have, want):
            continue
        owned_ok = False
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
        owned_ok = False
        effect = profile.old_ca_key_effect(patch)
        findings.append(
            warn(
                name,
                f"{'.'.join(path)} is set, which Cilium {facts.cilium_version} {effect} (reference/cilium.md §4)",
                f"{RERUN_SETUP} (it removes the old key)",
            )
        )
    if owned_ok:
        findings.append(ok(name, "cluster name/id and the clustermesh settings are as the setup writes them"))

    if ca_mode == "shared" and shared_ca is not None:
        findings.append(_shared_ca_finding(name, values, profile, shared_ca, spec.first.name))

    findings.extend(_peer_findings(name, values, spec, ca_mode, peer))
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
            message = _safe_text(str(cond.get("message") or "no message"), 240)
            return fail(name, f"cilium ApplicationInstallation {kind}=False ({cond.get('reason')}): {message}", fix)
    state, why = install_state(dict(ai))
    if state == "applied":
        return ok(name, f"cilium ApplicationInstallation applied ({why})")
    return warn(
        name,
        f"cilium ApplicationInstallation not applied yet: {_safe_text(why, 200)}",
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
    present, ca = _get(values, profile.ca_placement)
    if not present or not isinstance(ca, dict) or not ca.get("cert"):
        return fail(name, f"no shared CA in {where}", RERUN_SETUP)
    cert, problem = _try_cert(ca.get("cert"), f"{where}.cert")
    if cert is None:
        return fail(name, problem or f"{where}.cert unreadable", RERUN_SETUP)
    if not _same_cert(cert, expected):
        return fail(
            name,
            f"{where} holds CA {_fp(cert)}, the shared CA of {first} is {_fp(expected)}",
            f"{RERUN_SETUP}; every cluster must carry {first}'s CA",
        )
    key_data = ca.get("key")
    if key_data:
        try:
            key = load_private_key(str(key_data), source=f"{where}.key")
        except CertificateError as exc:
            return fail(name, f"{where}.key: {exc.problem}", RERUN_SETUP)
        if not key_matches(cert, key):
            return fail(name, f"{where}.key does not belong to {where}.cert ({_fp(cert)})", RERUN_SETUP)
    return ok(name, f"{where} is the shared CA of {first} ({_fp(cert)})")


def _peer_findings(
    name: str,
    values: Mapping[str, Any],
    spec: MeshSpec,
    ca_mode: CaMode,
    peer: Callable[[str], _PeerNow],
) -> list[Finding]:
    findings: list[Finding] = []
    present, entries = _get(values, CLUSTERS_PATH)
    where = ".".join(CLUSTERS_PATH)
    if present and entries is not None and not isinstance(entries, list):
        return [fail(name, f"{where} is not a list", f"make it a list of peer entries; then {RERUN_SETUP}")]
    listed = [e for e in entries or [] if isinstance(e, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in listed:
        by_name.setdefault(str(entry.get("name") or ""), []).append(entry)
    expected = [c.name for c in spec.clusters if c.name != name]
    edit = "kubectl edit applicationinstallation cilium -n kube-system"

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
                    f"keep one entry named {other} ({edit}), then {RERUN_SETUP}",
                )
            )
        if other not in expected:
            findings.append(
                warn(
                    name,
                    f"unknown peer {other} in {where} (not in the spec)",
                    f"remove the entry if {other} left the mesh ({edit}), or add the cluster to the spec",
                )
            )
    for other in expected:
        if other not in by_name:
            findings.append(fail(name, f"missing peer {other} in {where}", RERUN_SETUP))
            continue
        # with duplicates, the first entry is the one compared (the duplicate is a failure of its own)
        findings.extend(_entry_findings(name, by_name[other][0], peer(other), ca_mode))
    return findings


def _entry_findings(name: str, entry: Mapping[str, Any], now: _PeerNow, ca_mode: CaMode) -> list[Finding]:
    """One ``clusters[]`` entry against its peer as it is now; at most one finding per aspect."""
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
    found: list[Finding] = []

    # Address: the peer's clustermesh-apiserver Service, as peers reach it now.
    ips = [str(ip) for ip in entry.get("ips") or []]
    port = entry.get("port")
    if now.address is None:
        found.append(
            warn(
                subject,
                f"{now.name}'s Service {NAMESPACE}/{SERVICE} has no address: {label} not compared",
                f"kubectl get svc {SERVICE} -n {NAMESPACE} in {now.name}",
            )
        )
    elif not ips:
        address = str(entry.get("address") or "")
        found.append(fail(subject, f"{label} has no ips" + (f" (address {address!r})" if address else ""), RERUN_SETUP))
    else:
        live_ips, live_port = now.address
        if sorted(ips) != sorted(live_ips) or not _equal(port, live_port):
            found.append(
                fail(
                    subject,
                    f"{label} points at {', '.join(ips)}:{port}, {now.name}'s clustermesh-apiserver is at "
                    f"{', '.join(live_ips)}:{live_port}",
                    RERUN_SETUP,
                )
            )

    tls = entry.get("tls") if isinstance(entry.get("tls"), dict) else {}
    assert isinstance(tls, dict)
    cert, problem = _try_cert(tls.get("cert"), f"{label}: tls.cert")
    if cert is None:
        found.append(fail(subject, problem or f"{label}: tls.cert unreadable", RERUN_SETUP))
    else:
        if now.remote_cert is None:
            found.append(
                warn(
                    subject,
                    f"{now.name} has no readable {REMOTE_CERT}: tls.cert not compared",
                    f"see the certificate findings of {now.name}",
                )
            )
        elif not _same_cert(cert, now.remote_cert):
            found.append(
                fail(
                    subject,
                    f"stale remote certificate: {label} carries {_fp(cert)}, {now.name} now has "
                    f"{_fp(now.remote_cert)} ({now.name} re-issued its certificate)",
                    f"run the setup again to copy {now.name}'s current remote certificate",
                )
            )
        key_problem = _key_problem(cert, tls.get("key"), f"{label}: tls.key", "tls.cert")
        if key_problem is not None:
            found.append(fail(subject, key_problem, RERUN_SETUP))

    if ca_mode == "per-peer":
        found.extend(_ca_cert_findings(subject, label, tls, now))
    if not found:
        address = f"{', '.join(ips)}:{port}"
        found.append(
            ok(subject, f"{label} matches {now.name}: {address}, remote certificate {_fp(cert) if cert else '-'}")
        )
    return found


def _ca_cert_findings(subject: str, label: str, tls: Mapping[str, Any], now: _PeerNow) -> list[Finding]:
    """Per-peer CA mode: the entry's caCert must be the peer's CA, the one that verifies its server."""
    ca, problem = _try_cert(tls.get("caCert"), f"{label}: tls.caCert")
    if ca is None:
        return [fail(subject, problem or f"{label}: tls.caCert unreadable", RERUN_SETUP)]
    if now.server_cert is not None and not issued_by(now.server_cert, ca):
        return [
            fail(
                subject,
                f"{label}: tls.caCert {_fp(ca)} does not verify {now.name}'s server certificate "
                f"(agents fail with 'tls: bad certificate')",
                f"run the setup again to copy {now.name}'s current CA",
            )
        ]
    if now.remote_ca is not None and not _same_cert(ca, now.remote_ca):
        return [
            fail(
                subject,
                f"{label}: tls.caCert is {_fp(ca)}, {now.name}'s CA is now {_fp(now.remote_ca)}",
                f"run the setup again to copy {now.name}'s current CA",
            )
        ]
    return []


# ------------------------------------------------------------------------------------------ certificates


class CertificateStatus(BaseModel):
    """One certificate's validity, for the report's "nearest expiry" figure; no key material."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    secret: str
    key: str
    not_after: datetime
    days_left: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.cluster} {self.secret} {self.key}: {self.days_left} days (until {self.not_after.date()})"


class CertificateReport(BaseModel):
    """The certificate check's findings and every certificate it read, so the nearest expiry is known."""

    model_config = ConfigDict(frozen=True)

    findings: list[Finding]
    certificates: list[CertificateStatus]

    @property
    def nearest(self) -> CertificateStatus | None:
        """The certificate that expires first (the figure a Slack summary shows)."""
        return min(self.certificates, key=lambda c: c.not_after, default=None)


def nearest_expiry_days(report: CertificateReport | Sequence[CertificateStatus]) -> int | None:
    """The smallest days-left over all certificates read; None when none could be read."""
    certificates = report.certificates if isinstance(report, CertificateReport) else report
    return min((c.days_left for c in certificates), default=None)


def check_certificates(
    clients: Mapping[str, VerifyClient],
    facts: Mapping[str, ClusterFacts],
    *,
    warn_days: int = 30,
    now: datetime | None = None,
) -> list[Finding]:
    """The certificate findings alone; use :func:`certificate_report` to get the nearest expiry too."""
    return certificate_report(clients, facts, warn_days=warn_days, now=now).findings


def certificate_report(
    clients: Mapping[str, VerifyClient],
    facts: Mapping[str, ClusterFacts],
    *,
    warn_days: int = 30,
    now: datetime | None = None,
) -> CertificateReport:
    """Per cluster: the CA and the clustermesh-apiserver leaf certificates, judged by cryptography.

    Readable, valid now, far enough from expiry, issued by both the CA in their own ``ca.crt`` and the
    cluster's CA (by signature), and matching their key. One finding per problem; one ok per sound cert.
    """
    now = now or datetime.now(UTC)
    findings: list[Finding] = []
    statuses: list[CertificateStatus] = []
    for name, found in facts.items():
        client = clients.get(name)
        if client is None:
            continue
        try:
            _certs_of(name, client, profile_for(found.cilium_version), warn_days, now, findings, statuses)
        except ClusterMeshError as exc:
            reason, fix = _error_parts(exc)
            findings.append(fail(name, reason, fix))
    return CertificateReport(findings=findings, certificates=statuses)


_REISSUE = (
    "have certgen issue it again: delete the Secret (certgen — its CronJob, or KKP's next Helm upgrade "
    "with tls.auto.method helm — recreates it), then run the setup again so peers get the new certificate"
)
_ROTATE_CA = (
    "rotate the CA: delete {secret} so certgen issues a new CA and new leaf certificates, then run the "
    "setup again so every peer gets them"
)


def _validity(
    subject: str, key: str, cert: x509.Certificate, warn_days: int, now: datetime, fix: str
) -> tuple[list[Finding], int]:
    info = cert_info(cert, now=now)
    until = info.not_after.date().isoformat()
    if info.not_before > now:
        return [fail(subject, f"{key} is not valid before {info.not_before.isoformat()}", fix)], info.days_left
    if info.not_after <= now:
        ago = math.floor((now - info.not_after).total_seconds() / 86400)
        when = "today" if ago == 0 else f"{ago} day{'s' if ago != 1 else ''} ago"
        return [fail(subject, f"{key} expired {when} ({until})", fix)], info.days_left
    if info.days_left < warn_days:
        return [
            warn(subject, f"{key} expires in {info.days_left} days ({until}; warning below {warn_days})", fix)
        ], info.days_left
    return [], info.days_left


def _status(cluster: str, secret: str, key: str, cert: x509.Certificate, now: datetime) -> CertificateStatus:
    info = cert_info(cert, now=now)
    return CertificateStatus(
        cluster=cluster,
        secret=secret,
        key=key,
        not_after=info.not_after,
        days_left=info.days_left,
        fingerprint=_fp(cert),
    )


def _certs_of(
    cluster: str,
    client: VerifyClient,
    profile: CiliumProfile,
    warn_days: int,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> None:
    ca_found = _find_ca_secret(client, profile)
    ca: x509.Certificate | None = None
    ca_name = " or ".join(profile.ca_secret_names)
    if ca_found is None:
        findings.append(
            fail(
                cluster,
                f"no CA Secret ({ca_name}) in {NAMESPACE}",
                "certgen creates it when the mesh is enabled: check the certgen Job/CronJob, or run the setup",
            )
        )
    else:
        ca_name, data = ca_found
        ca = _judge_ca(cluster, ca_name, data, warn_days, now, findings, statuses)

    for secret_name in LEAF_CERTS:
        subject = f"{cluster} {secret_name}"
        secret = client.get_secret(NAMESPACE, secret_name)
        if secret is None:
            findings.append(
                fail(
                    subject,
                    f"Secret {NAMESPACE}/{secret_name} is missing",
                    "certgen has not created it: check the certgen Job/CronJob and the clustermesh-apiserver "
                    "pod's events, then run the setup again",
                )
            )
            continue
        _judge_leaf(cluster, secret_name, _data(secret), ca, ca_name, warn_days, now, findings, statuses)


def _judge_ca(
    cluster: str,
    secret: str,
    data: Mapping[str, Any],
    warn_days: int,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> x509.Certificate | None:
    subject = f"{cluster} {secret}"
    cert_key, key_key = _ca_keys(data)
    fix = _ROTATE_CA.format(secret=secret)
    ca, problem = _try_cert(data.get(cert_key), f"Secret {NAMESPACE}/{secret} {cert_key}")
    if ca is None:
        findings.append(fail(subject, problem or "unreadable", fix))
        return None
    problems, _days = _validity(subject, cert_key, ca, warn_days, now, fix)
    statuses.append(_status(cluster, secret, cert_key, ca, now))
    if not cert_info(ca, now=now).is_ca:
        problems.append(fail(subject, f"{cert_key} is not a CA (basicConstraints CA is not set)", fix))
    if data.get(key_key):
        try:
            key = load_private_key(str(data[key_key]), source=f"Secret {NAMESPACE}/{secret} {key_key}")
        except CertificateError as exc:
            problems.append(fail(subject, f"Secret {NAMESPACE}/{secret} {key_key}: {exc.problem}", fix))
        else:
            if not key_matches(ca, key):
                problems.append(fail(subject, f"{key_key} does not belong to {cert_key} ({_fp(ca)})", fix))
    findings.extend(problems)
    if not problems:
        info = cert_info(ca, now=now)
        findings.append(ok(subject, f"CA {_fp(ca)} valid until {info.not_after.date()} ({info.days_left} days left)"))
    return ca


def _judge_leaf(
    cluster: str,
    secret: str,
    data: Mapping[str, Any],
    cluster_ca: x509.Certificate | None,
    ca_name: str,
    warn_days: int,
    now: datetime,
    findings: list[Finding],
    statuses: list[CertificateStatus],
) -> None:
    subject = f"{cluster} {secret}"
    source = f"Secret {NAMESPACE}/{secret}"
    cert, problem = _try_cert(data.get("tls.crt"), f"{source} tls.crt")
    if cert is None:
        findings.append(fail(subject, problem or "unreadable", _REISSUE))
        return
    problems, _days = _validity(subject, "tls.crt", cert, warn_days, now, _REISSUE)
    statuses.append(_status(cluster, secret, "tls.crt", cert, now))

    own_ca, ca_problem = _try_cert(data.get("ca.crt"), f"{source} ca.crt")
    if own_ca is None:
        problems.append(fail(subject, ca_problem or "ca.crt unreadable", _REISSUE))
    elif not issued_by(cert, own_ca):
        problems.append(fail(subject, f"tls.crt was not issued by the CA in its own ca.crt ({_fp(own_ca)})", _REISSUE))
    if cluster_ca is not None and not issued_by(cert, cluster_ca):
        problems.append(
            fail(
                subject,
                f"tls.crt was not issued by the cluster's CA in {ca_name} ({_fp(cluster_ca)})",
                "the CA was replaced after this certificate was issued: " + _REISSUE,
            )
        )
    key_problem = _key_problem(cert, data.get("tls.key"), f"{source} tls.key", "tls.crt")
    if key_problem is not None:
        problems.append(fail(subject, key_problem, _REISSUE))
    findings.extend(problems)
    if not problems:
        info = cert_info(cert, now=now)
        findings.append(
            ok(
                subject,
                f"tls.crt {_fp(cert)} valid until {info.not_after.date()} ({info.days_left} days left), "
                f"issued by {ca_name}, key matches",
            )
        )
