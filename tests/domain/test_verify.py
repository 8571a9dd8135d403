"""The nightly verification's judgements, on fake clusters with certificates minted here.

A fake cluster is a few dicts behind the reads the verification makes; a healthy mesh is built with the
setup's own renderer (drift means "differs from what the setup writes"), then one thing is broken per test.
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from clustermesh.checks.certificates import (
    CertificateReport,
    CertificateStatus,
    certificate_report,
    check_certificates,
    nearest_expiry_days,
)
from clustermesh.checks.drift import check_drift
from clustermesh.checks.findings import Finding, overall
from clustermesh.checks.health import explained_cells, health_findings
from clustermesh.checks.reachability import check_reachability_and_versions
from clustermesh.checks.setup_state import mesh_not_set_up
from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import NotFoundError, TransientKubeError
from clustermesh.spec import CertificateSettings, MeshSpec, from_data
from clustermesh.steps.step7_reachability import UDP_8472_PATH
from clustermesh.steps.step8_health import HealthCell, HealthMatrix
from clustermesh.values import CaMaterial, PeerEntry, deep_merge, render_mesh_values

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NS = "kube-system"
REMOTE = "clustermesh-apiserver-remote-cert"
SERVER = "clustermesh-apiserver-server-cert"
ADMIN = "clustermesh-apiserver-admin-cert"

# ------------------------------------------------------------------------------------------ certificates


@dataclass
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.PEM)).decode()

    @property
    def key_b64(self) -> str:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return base64.b64encode(pem).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Cilium CA", *, start: datetime | None = None, days: int = 1095) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or NOW - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def issue(ca: Pair, cn: str, *, start: datetime | None = None, days: int = 1095) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or NOW - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return Pair(cert, key)


def tls_data(ca: Pair, leaf: Pair) -> dict[str, str]:
    return {"ca.crt": ca.cert_b64, "tls.crt": leaf.cert_b64, "tls.key": leaf.key_b64}


# ------------------------------------------------------------------------------------------ fake clusters


@dataclass
class FakeCluster:
    """What one user cluster answers: the reads the verification makes, and nothing else."""

    name: str
    index: int
    cilium: str
    ca: Pair = field(default_factory=make_ca)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    service: dict[str, Any] | None = None
    ai: dict[str, Any] = field(default_factory=dict)
    down: bool = False

    def __post_init__(self) -> None:
        self.secrets["cilium-ca"] = {"data": {"ca.crt": self.ca.cert_b64, "ca.key": self.ca.key_b64}}
        for name in (SERVER, REMOTE, ADMIN):
            self.reissue(name)
        self.set_address(f"203.0.113.{self.index * 10}")

    @property
    def pod_cidr(self) -> str:
        return f"172.{24 + self.index}.0.0/16"

    def reissue(self, secret: str, **options: Any) -> None:
        self.secrets[secret] = {"data": tls_data(self.ca, issue(self.ca, secret, **options))}

    def set_address(self, ip: str) -> None:
        self.service = {
            "metadata": {"name": "clustermesh-apiserver", "namespace": NS},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 2379, "nodePort": 32379}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
        }

    def data(self, secret: str) -> dict[str, str]:
        return dict(self.secrets[secret]["data"])

    def values(self) -> dict[str, Any]:
        loaded = yaml.safe_load(self.ai["spec"]["valuesBlock"])
        assert isinstance(loaded, dict)
        return loaded

    def set_values(self, values: dict[str, Any]) -> None:
        self.ai["spec"]["valuesBlock"] = yaml.safe_dump(values, sort_keys=True)

    # -- the client's reads --

    def _reach(self, target: str) -> None:
        if self.down:
            raise TransientKubeError(self.name, "get", target, "cannot connect: connection refused")

    def version(self) -> str:
        self._reach("/version")
        return "v1.29.4"

    def get_application_installation(self, namespace: str = NS, name: str = "cilium") -> dict[str, Any]:
        self._reach(f"{namespace}/applicationinstallations/{name}")
        if not self.ai:
            raise NotFoundError(self.name, "get", f"{namespace}/applicationinstallations/{name}", "not found")
        return copy.deepcopy(self.ai)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._reach(f"{namespace}/secrets/{name}")
        return copy.deepcopy(self.secrets.get(name))

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._reach(f"{namespace}/services/{name}")
        return copy.deepcopy(self.service)

    def list_nodes(self) -> list[dict[str, Any]]:
        self._reach("nodes")
        return [
            {
                "metadata": {"name": f"{self.name}-node-{k}"},
                "spec": {"podCIDR": self.pod_cidr.replace(".0.0/16", f".{k}.0/24")},
                "status": {"addresses": [{"type": "InternalIP", "address": f"10.{self.index}.0.{k + 1}"}]},
            }
            for k in range(2)
        ]


@dataclass
class Mesh:
    spec: MeshSpec
    clusters: dict[str, FakeCluster]

    def __getitem__(self, name: str) -> FakeCluster:
        return self.clusters[name]

    def peer_entry(self, name: str) -> PeerEntry:
        c = self.clusters[name]
        remote = c.data(REMOTE)
        ingress = c.service["status"]["loadBalancer"]["ingress"] if c.service else []
        return PeerEntry(
            name=name,
            ips=[i["ip"] for i in ingress],
            port=2379,
            cert=remote["tls.crt"],
            key=SecretStr(remote["tls.key"]),
            ca_cert=remote["ca.crt"],
        )

    def set_up(self) -> None:
        """Write every cluster's values as the setup's step 6 would, from the clusters as they are now."""
        first = self.clusters[self.spec.first.name]
        for cluster in self.spec.clusters:
            c = self.clusters[cluster.name]
            profile = profile_for(c.cilium)
            shared = self.spec.cilium.resolve(profile).ca_mode == "shared"
            ca = CaMaterial(cert=first.ca.cert_b64, key=SecretStr(first.ca.key_b64)) if shared else None
            peers = [self.peer_entry(o.name) for o in self.spec.clusters if o.name != cluster.name]
            kkp: dict[str, Any] = {
                "cni": {"exclusive": False},
                "kubeProxyReplacement": "true",
                "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": [c.pod_cidr]}},
            }
            values = deep_merge(kkp, render_mesh_values(profile, cluster, self.spec, shared_ca=ca, peers=peers))
            c.ai = {
                "apiVersion": "apps.kubermatic.k8c.io/v1",
                "kind": "ApplicationInstallation",
                "metadata": {"name": "cilium", "namespace": NS, "generation": 3},
                "spec": {"applicationRef": {"name": "cilium", "version": c.cilium}, "values": {}},
                "status": {
                    "conditions": {
                        "Ready": {"status": "True", "reason": "InstallationSuccessful", "observedGeneration": 3}
                    },
                    "helmRelease": {"info": {"status": "deployed"}},
                },
            }
            c.set_values(values)
            if shared:  # certgen made the shared CA this cluster's own and re-issued by it
                c.ca = first.ca
                c.secrets["cilium-ca"] = copy.deepcopy(first.secrets["cilium-ca"])
                for name in (SERVER, REMOTE, ADMIN):
                    if c is not first:
                        c.reissue(name)
        if any(self.spec.cilium.resolve(profile_for(c.cilium)).ca_mode == "shared" for c in self.clusters.values()):
            for cluster in self.spec.clusters:  # leaf certs changed above: the entries are written again
                c = self.clusters[cluster.name]
                values = c.values()
                values["clustermesh"]["config"]["clusters"] = [
                    {
                        "name": p.name,
                        "address": "",
                        "port": p.port,
                        "ips": [str(ip) for ip in p.ips],
                        "tls": {"cert": p.cert, "key": p.key.get_secret_value()},
                    }
                    for p in (self.peer_entry(o.name) for o in self.spec.clusters if o.name != cluster.name)
                ]
                c.set_values(values)

    def verify(self) -> tuple[dict[str, Any], list[Finding]]:
        facts, findings = check_reachability_and_versions(self.clusters, self.spec)
        return facts, findings

    def drift(self) -> list[Finding]:
        facts, _ = self.verify()
        return check_drift(self.clusters, facts, self.spec)

    def certificates(self, **options: Any) -> CertificateReport:
        facts, _ = self.verify()
        return certificate_report(self.clusters, facts, now=NOW, **options)


def make_mesh(*versions: str, cilium: dict[str, Any] | None = None) -> Mesh:
    versions = versions or ("1.16.9", "1.16.9")
    names = [f"cluster-{i}" for i in range(1, len(versions) + 1)]
    spec = from_data(
        {
            "name": "test",
            "clusters": [{"name": n, "id": i, "kubeconfig": {"path": f"/k/{i}"}} for i, n in enumerate(names, start=1)],
            "cilium": cilium or {},
        }
    )
    clusters = {n: FakeCluster(n, i, v) for i, (n, v) in enumerate(zip(names, versions, strict=True), start=1)}
    mesh = Mesh(spec, clusters)
    mesh.set_up()
    return mesh


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level != "ok"]


def only(findings: list[Finding], level: str, subject: str | None = None) -> list[Finding]:
    return [f for f in findings if f.level == level and (subject is None or f.subject == subject)]


def assert_no_key_material(findings: list[Finding], mesh: Mesh) -> None:
    """No finding may carry a certificate or key, in PEM, base64 or as a long piece of either."""
    text = " ".join(f"{f.subject} {f.reason} {f.fix}" for f in findings)
    assert "BEGIN" not in text
    for c in mesh.clusters.values():
        for secret in c.secrets.values():
            for value in secret["data"].values():
                for chunk in re.findall(r".{24}", str(value)[:400]):
                    assert chunk not in text


@pytest.fixture
def mesh() -> Mesh:
    return make_mesh()


# -------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("levels", "verdict"),
    [
        ([], "PASS"),
        (["ok", "ok"], "PASS"),
        (["ok", "warning"], "WARN"),
        (["warning", "failure", "ok"], "FAIL"),
        (["failure"], "FAIL"),
    ],
)
def test_overall_fails_on_any_failure_and_warns_on_any_warning(levels: list[str], verdict: str) -> None:
    findings = [Finding(level=level, subject="s", reason="r") for level in levels]  # type: ignore[arg-type]
    assert overall(findings) == verdict


# ------------------------------------------------------------------------------ reachability and versions


def test_a_healthy_mesh_gives_one_ok_per_cluster_with_its_versions(mesh: Mesh) -> None:
    facts, findings = mesh.verify()
    assert set(facts) == {"cluster-1", "cluster-2"}
    assert [f.level for f in findings] == ["ok", "ok"]
    assert findings[0].subject == "cluster-1"
    assert findings[0].reason.startswith("Cilium 1.16.9, Kubernetes v1.29.4")


def test_an_unreachable_cluster_is_a_failure_and_the_others_are_still_checked(mesh: Mesh) -> None:
    mesh["cluster-2"].down = True
    facts, findings = mesh.verify()
    assert set(facts) == {"cluster-1"}
    [failure] = only(findings, "failure")
    assert failure.subject == "cluster-2"
    assert "/version" in failure.reason and "connection refused" in failure.reason
    assert "retrying is safe" in failure.fix
    assert only(findings, "ok", "cluster-1")


def test_a_failed_prerequisite_carries_its_own_fix(mesh: Mesh) -> None:
    values = mesh["cluster-2"].values()
    values["kubeProxyReplacement"] = "false"
    mesh["cluster-2"].set_values(values)
    _, findings = mesh.verify()
    [failure] = only(findings, "failure")
    assert failure.subject == "cluster-2"
    assert failure.reason.startswith("kube-proxy replacement is off")
    assert "proxyMode: ebpf" in failure.fix


def test_a_missing_client_is_a_failure() -> None:
    mesh = make_mesh()
    del mesh.clusters["cluster-2"]
    _, findings = mesh.verify()
    assert [(f.subject, f.level) for f in problems(findings)] == [("cluster-2", "failure")]


def test_version_skew_across_the_mesh_is_a_warning() -> None:
    mesh = make_mesh("1.14.16", "1.16.9")
    _, findings = mesh.verify()
    [warning] = only(findings, "warning")
    assert warning.subject == "mesh" and "1.14, 1.16" in warning.reason


def test_overlapping_pod_cidrs_are_a_failure(mesh: Mesh) -> None:
    c2 = mesh["cluster-2"]
    values = c2.values()
    values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] = [mesh["cluster-1"].pod_cidr]
    c2.set_values(values)
    _, findings = mesh.verify()
    [failure] = only(findings, "failure")
    assert "overlaps" in failure.reason and failure.fix


def test_a_spec_version_of_another_line_than_the_cluster_runs_is_a_warning() -> None:
    mesh = make_mesh("1.16.9", "1.16.9", cilium={"version": "1.17"})
    _, findings = mesh.verify()
    warnings = only(findings, "warning")
    assert {w.subject for w in warnings} == {"cluster-1", "cluster-2"}
    assert all("spec says Cilium 1.17" in w.reason for w in warnings)


# ------------------------------------------------------------------------------------------------- drift


def test_a_healthy_mesh_has_no_drift(mesh: Mesh) -> None:
    findings = mesh.drift()
    assert problems(findings) == []
    assert {f.subject for f in findings} >= {"cluster-1 → cluster-2", "cluster-2 → cluster-1"}


def test_a_missing_peer_is_a_failure_that_says_run_the_setup_again(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    values["clustermesh"]["config"]["clusters"] = []
    mesh["cluster-1"].set_values(values)
    findings = mesh.drift()
    [failure] = problems(findings)
    assert (failure.level, failure.subject) == ("failure", "cluster-1")
    assert "missing peer cluster-2" in failure.reason
    assert "run the setup again" in failure.fix


def test_a_re_issued_peer_certificate_leaves_a_copy_that_is_kept_while_it_is_current(mesh: Mesh) -> None:
    mesh["cluster-2"].reissue(REMOTE)  # same CA, years left: the copy cluster-1 holds still works
    findings = mesh.drift()
    assert problems(findings) == []
    [kept] = [f for f in findings if f.subject == "cluster-1 → cluster-2"]
    assert kept.level == "ok" and "still current: kept" in kept.reason, kept
    assert_no_key_material(findings, mesh)


def test_a_copy_near_expiry_is_stale_and_the_fix_is_certs_renew(mesh: Mesh) -> None:
    peer = mesh["cluster-2"]
    peer.reissue(REMOTE)
    short = issue(peer.ca, REMOTE, start=datetime.now(UTC) - timedelta(days=1), days=6)  # 5 days left
    values = mesh["cluster-1"].values()
    [entry] = [e for e in values["clustermesh"]["config"]["clusters"] if e["name"] == "cluster-2"]
    entry["tls"]["cert"], entry["tls"]["key"] = short.cert_b64, short.key_b64
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert (failure.level, failure.subject) == ("failure", "cluster-1 → cluster-2")
    assert failure.reason.startswith("stale remote certificate") and "under warn_days 30" in failure.reason
    assert "clustermesh certs renew --config <mesh.yaml> --cluster cluster-2" in failure.fix


def test_a_copy_from_another_ca_is_stale(mesh: Mesh) -> None:
    other = issue(make_ca(), REMOTE)
    mesh["cluster-2"].reissue(REMOTE)
    values = mesh["cluster-1"].values()
    [entry] = [e for e in values["clustermesh"]["config"]["clusters"] if e["name"] == "cluster-2"]
    entry["tls"]["cert"], entry["tls"]["key"] = other.cert_b64, other.key_b64
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert "not issued by a CA the cluster trusts now" in failure.reason


def test_a_rotated_peer_ca_fails_the_entry_cert_and_ca_cert(mesh: Mesh) -> None:
    c2 = mesh["cluster-2"]
    c2.ca = make_ca("Cilium CA")
    c2.secrets["cilium-ca"] = {"data": {"ca.crt": c2.ca.cert_b64, "ca.key": c2.ca.key_b64}}
    for name in (SERVER, REMOTE, ADMIN):
        c2.reissue(name)
    findings = mesh.drift()
    failures = only(findings, "failure", "cluster-1 → cluster-2")
    assert any(f.reason.startswith("stale remote certificate") for f in failures)
    assert any("tls.caCert" in f.reason and "does not verify" in f.reason for f in failures)
    assert not problems([f for f in findings if f.subject != "cluster-1 → cluster-2"])
    assert_no_key_material(findings, mesh)


def test_a_ca_cert_that_differs_but_still_verifies_is_reported(mesh: Mesh) -> None:
    """The entry's CA is compared with the peer's current one, not only by what it can verify."""
    c2 = mesh["cluster-2"]
    other = make_ca("Cilium CA")
    c2.secrets[REMOTE]["data"]["ca.crt"] = other.cert_b64
    findings = mesh.drift()
    [failure] = problems(findings)
    assert "tls.caCert is" in failure.reason and "CA is now" in failure.reason


def test_a_moved_peer_address_is_a_failure_with_both_addresses(mesh: Mesh) -> None:
    mesh["cluster-2"].set_address("198.51.100.7")
    [failure] = problems(mesh.drift())
    assert failure.subject == "cluster-1 → cluster-2"
    assert "203.0.113.20:2379" in failure.reason and "198.51.100.7:2379" in failure.reason


def test_a_wrong_port_is_a_failure(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    values["clustermesh"]["config"]["clusters"][0]["port"] = 32379
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert ":32379" in failure.reason and failure.level == "failure"


def test_a_peer_without_an_address_is_not_compared_but_warned(mesh: Mesh) -> None:
    assert mesh["cluster-2"].service is not None
    mesh["cluster-2"].service["status"] = {"loadBalancer": {}}
    [warning] = problems(mesh.drift())
    assert warning.level == "warning" and "has no address" in warning.reason


def test_duplicated_peer_entries_are_a_failure(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    entries = values["clustermesh"]["config"]["clusters"]
    entries.append(copy.deepcopy(entries[0]))
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert failure.level == "failure"
    assert "peer cluster-2 is listed 2 times" in failure.reason


def test_an_unknown_extra_peer_is_a_warning(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    extra = copy.deepcopy(values["clustermesh"]["config"]["clusters"][0])
    extra["name"] = "cluster-9"
    values["clustermesh"]["config"]["clusters"].append(extra)
    mesh["cluster-1"].set_values(values)
    findings = mesh.drift()
    [warning] = problems(findings)
    assert warning.level == "warning" and "unknown peer cluster-9" in warning.reason
    assert only(findings, "ok", "cluster-1 → cluster-2")


def test_listing_itself_is_a_failure(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    extra = copy.deepcopy(values["clustermesh"]["config"]["clusters"][0])
    extra["name"] = "cluster-1"
    values["clustermesh"]["config"]["clusters"].append(extra)
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert failure.level == "failure" and "lists the cluster itself" in failure.reason


def test_an_entry_key_that_does_not_match_its_cert_is_a_failure(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    values["clustermesh"]["config"]["clusters"][0]["tls"]["key"] = issue(mesh["cluster-2"].ca, "x").key_b64
    mesh["cluster-1"].set_values(values)
    findings = mesh.drift()
    [failure] = problems(findings)
    assert "tls.key does not belong to tls.cert" in failure.reason
    assert_no_key_material(findings, mesh)


def test_an_entry_with_garbage_as_cert_is_a_failure_without_echoing_it(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    garbage = base64.b64encode(b"not a certificate at all, but long enough to look like data").decode()
    values["clustermesh"]["config"]["clusters"][0]["tls"]["cert"] = garbage
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert "tls.cert" in failure.reason and "not a readable X.509 certificate" in failure.reason
    assert garbage not in failure.reason


@pytest.mark.parametrize(
    ("path", "value", "level", "words"),
    [
        (("cluster", "id"), 7, "failure", "cluster.id is 7, the spec implies 2"),
        (("cluster", "name"), "default", "failure", "cluster.name is 'default'"),
        (("clustermesh", "useAPIServer"), False, "failure", "clustermesh.useAPIServer is False"),
        (("clustermesh", "config", "enabled"), False, "failure", "clustermesh.config.enabled is False"),
        (("clustermesh", "apiserver", "service", "type"), "NodePort", "warning", "service.type is 'NodePort'"),
        (("clustermesh", "apiserver", "tls", "auto", "method"), "cronJob", "warning", "method is 'cronJob'"),
    ],
)
def test_owned_keys_changed_by_hand_are_drift(
    mesh: Mesh, path: tuple[str, ...], value: Any, level: str, words: str
) -> None:
    facts, _ = mesh.verify()  # before the edit: a changed cluster.id fails the prerequisites on its own
    values = mesh["cluster-2"].values()
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    mesh["cluster-2"].set_values(values)
    findings = check_drift(mesh.clusters, facts, mesh.spec)
    mine = [f for f in problems(findings) if f.subject == "cluster-2"]
    assert [f.level for f in mine] == [level], mine
    assert words in mine[0].reason
    assert mine[0].fix


def test_a_removed_owned_key_is_reported_as_not_set(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    del values["clustermesh"]["useAPIServer"]
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert failure.reason == "clustermesh.useAPIServer is not set, the spec implies True"


def test_an_install_kkp_failed_is_a_failure_with_kkps_message_scrubbed(mesh: Mesh) -> None:
    facts, _ = mesh.verify()
    secret_looking = "QmFzZTY0S2V5TWF0ZXJpYWxUaGF0TXVzdE5vdEFwcGVhckluU2xhY2tFdmVyMTIzNDU2Nzg5MA0K"
    mesh["cluster-1"].ai["status"]["conditions"]["Ready"] = {
        "status": "False",
        "reason": "InstallationFailed",
        "message": f"Helm upgrade failed: template: cilium: bad value {secret_looking}",
        "observedGeneration": 3,
    }
    findings = check_drift(mesh.clusters, facts, mesh.spec)
    [failure] = problems(findings)
    assert failure.subject == "cluster-1"
    assert "Ready=False (InstallationFailed): Helm upgrade failed" in failure.reason
    assert secret_looking not in failure.reason and "<redacted>" in failure.reason


def test_an_installation_not_yet_observed_is_a_warning(mesh: Mesh) -> None:
    mesh["cluster-2"].ai["metadata"]["generation"] = 4
    [warning] = problems(mesh.drift())
    assert warning.level == "warning" and "not applied yet" in warning.reason


def test_the_old_ca_key_on_a_line_that_refuses_it_is_a_warning(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    values["clustermesh"]["apiserver"]["tls"]["ca"] = {"cert": "x", "key": "y"}
    mesh["cluster-1"].set_values(values)
    [warning] = problems(mesh.drift())
    assert "clustermesh.apiserver.tls.ca is set" in warning.reason and "rejected" in warning.reason


def test_shared_ca_mode_on_1_13_is_healthy_when_every_cluster_carries_the_first_ca() -> None:
    mesh = make_mesh("1.13.14", "1.13.14")
    assert problems(mesh.drift()) == []
    assert problems(mesh.certificates().findings) == []


def test_shared_ca_mode_with_another_ca_in_the_values_is_a_failure() -> None:
    mesh = make_mesh("1.13.14", "1.13.14")
    other = make_ca("Cilium CA")
    values = mesh["cluster-2"].values()
    values["clustermesh"]["apiserver"]["tls"]["ca"] = {"cert": other.cert_b64, "key": other.key_b64}
    mesh["cluster-2"].set_values(values)
    findings = mesh.drift()
    [failure] = problems(findings)
    assert failure.subject == "cluster-2"
    assert "clustermesh.apiserver.tls.ca holds CA" in failure.reason and "shared CA of cluster-1" in failure.reason
    assert_no_key_material(findings, mesh)


# ------------------------------------------------------------------------------------------ certificates


def test_healthy_certificates_are_ok_and_report_the_nearest_expiry(mesh: Mesh) -> None:
    report = mesh.certificates()
    assert problems(report.findings) == []
    assert len(report.findings) == 8  # CA + 3 leaves, two clusters
    assert nearest_expiry_days(report) == 1094
    assert nearest_expiry_days(report.certificates) == 1094
    facts, _ = mesh.verify()
    assert check_certificates(mesh.clusters, facts, now=NOW) == report.findings


def test_an_expired_certificate_is_a_failure_saying_how_long_ago(mesh: Mesh) -> None:
    mesh["cluster-1"].reissue(REMOTE, start=NOW - timedelta(days=10), days=7)
    report = mesh.certificates()
    [failure] = problems(report.findings)
    assert (failure.level, failure.subject) == ("failure", "cluster-1 clustermesh-apiserver-remote-cert")
    assert failure.reason == "tls.crt expired 3 days ago (2025-05-29)"
    assert "clustermesh certs renew" in failure.fix
    assert nearest_expiry_days(report) == -3
    assert report.nearest is not None and report.nearest.secret == REMOTE


def test_a_certificate_expiring_within_the_threshold_is_a_warning_with_its_date(mesh: Mesh) -> None:
    mesh["cluster-2"].reissue(
        SERVER,
        start=NOW - timedelta(days=20),
        days=30,
    )
    report = mesh.certificates()
    [warning] = problems(report.findings)
    assert (warning.level, warning.subject) == ("warning", "cluster-2 clustermesh-apiserver-server-cert")
    assert "expires in 10 days (2025-06-11" in warning.reason
    assert nearest_expiry_days(report) == 10
    assert problems(mesh.certificates(thresholds=CertificateSettings(warn_days=5, fail_days=1)).findings) == []


def test_a_certificate_not_yet_valid_is_a_failure(mesh: Mesh) -> None:
    mesh["cluster-2"].reissue(ADMIN, start=NOW + timedelta(days=2))
    [failure] = problems(mesh.certificates().findings)
    assert failure.level == "failure" and "not valid before 2025-06-03" in failure.reason


def test_a_key_that_does_not_match_is_a_failure(mesh: Mesh) -> None:
    c1 = mesh["cluster-1"]
    c1.secrets[ADMIN]["data"]["tls.key"] = issue(c1.ca, "other").key_b64
    report = mesh.certificates()
    [failure] = problems(report.findings)
    assert failure.subject == "cluster-1 clustermesh-apiserver-admin-cert"
    assert "tls.key does not belong to tls.crt" in failure.reason
    assert_no_key_material(report.findings, mesh)


def test_a_certificate_not_issued_by_the_cluster_ca_is_a_failure(mesh: Mesh) -> None:
    c1 = mesh["cluster-1"]
    stranger = make_ca("Cilium CA")  # same name, other key: only the signature tells them apart
    c1.secrets[SERVER] = {"data": tls_data(stranger, issue(stranger, "server"))}
    [failure] = problems(mesh.certificates().findings)
    assert "not issued by the cluster's CA in cilium-ca" in failure.reason


def test_a_certificate_not_issued_by_its_own_ca_crt_is_a_failure(mesh: Mesh) -> None:
    c1 = mesh["cluster-1"]
    c1.secrets[SERVER]["data"]["ca.crt"] = make_ca("Cilium CA").cert_b64
    [failure] = problems(mesh.certificates().findings)
    assert "not issued by the CA in its own ca.crt" in failure.reason


def test_non_pem_data_is_a_failure_naming_the_secret_and_key(mesh: Mesh) -> None:
    mesh["cluster-2"].secrets[REMOTE]["data"]["tls.crt"] = base64.b64encode(b"garbage, not PEM").decode()
    report = mesh.certificates()
    [failure] = problems(report.findings)
    assert failure.subject == "cluster-2 clustermesh-apiserver-remote-cert"
    assert failure.reason.startswith("Secret kube-system/clustermesh-apiserver-remote-cert tls.crt:")
    assert "not a readable X.509 certificate" in failure.reason


def test_an_unreadable_key_is_a_failure_naming_it(mesh: Mesh) -> None:
    mesh["cluster-2"].secrets[REMOTE]["data"]["tls.key"] = base64.b64encode(b"nope").decode()
    [failure] = problems(mesh.certificates().findings)
    assert "clustermesh-apiserver-remote-cert tls.key" in failure.reason


def test_a_missing_leaf_secret_is_a_failure(mesh: Mesh) -> None:
    del mesh["cluster-1"].secrets[ADMIN]
    [failure] = problems(mesh.certificates().findings)
    assert "Secret kube-system/clustermesh-apiserver-admin-cert is missing" in failure.reason


def test_an_expired_ca_fails_with_a_rotation_fix(mesh: Mesh) -> None:
    c2 = mesh["cluster-2"]
    c2.ca = make_ca("Cilium CA", start=NOW - timedelta(days=40), days=30)
    c2.secrets["cilium-ca"] = {"data": {"ca.crt": c2.ca.cert_b64, "ca.key": c2.ca.key_b64}}
    for name in (SERVER, REMOTE, ADMIN):
        c2.reissue(name, start=NOW - timedelta(days=40), days=365)
    findings = mesh.certificates().findings
    [failure] = problems(findings)
    assert failure.subject == "cluster-2 cilium-ca"
    assert "ca.crt expired 10 days ago" in failure.reason
    assert "rotate the CA" in failure.fix


def test_a_ca_key_that_does_not_match_its_cert_is_a_failure(mesh: Mesh) -> None:
    mesh["cluster-1"].secrets["cilium-ca"]["data"]["ca.key"] = make_ca().key_b64
    [failure] = problems(mesh.certificates().findings)
    assert failure.subject == "cluster-1 cilium-ca" and "ca.key does not belong" in failure.reason


def test_no_ca_secret_is_a_failure_and_the_leaves_are_still_judged(mesh: Mesh) -> None:
    del mesh["cluster-1"].secrets["cilium-ca"]
    mesh["cluster-1"].reissue(REMOTE, start=NOW - timedelta(days=10), days=7)
    failures = only(mesh.certificates().findings, "failure")
    assert [f.subject for f in failures] == ["cluster-1", "cluster-1 clustermesh-apiserver-remote-cert"]
    assert "no CA Secret (cilium-ca)" in failures[0].reason


def test_a_cert_manager_style_ca_secret_is_read_from_tls_crt(mesh: Mesh) -> None:
    c1 = mesh["cluster-1"]
    c1.secrets["cilium-ca"] = {"data": {"tls.crt": c1.ca.cert_b64, "tls.key": c1.ca.key_b64}}
    assert problems(mesh.certificates().findings) == []


def test_an_unreachable_cluster_during_the_certificate_check_is_a_failure(mesh: Mesh) -> None:
    facts, _ = mesh.verify()
    mesh["cluster-1"].down = True
    findings = check_certificates(mesh.clusters, facts, now=NOW)
    [failure] = problems(findings)
    assert failure.subject == "cluster-1" and "connection refused" in failure.reason


def test_nearest_expiry_is_none_without_certificates() -> None:
    assert nearest_expiry_days(CertificateReport(findings=[], certificates=[])) is None
    status = CertificateStatus(
        cluster="c", secret="s", key="tls.crt", not_after=NOW, days_left=4, fingerprint="sha256:x"
    )
    assert nearest_expiry_days([status]) == 4


# ------------------------------------------------------------------------------------------ mesh health


def health_cell(src: str, dst: str, *, failing: str | None = None) -> HealthCell:
    """Two nodes per cluster, one agent; ``failing`` names the probe that fails to every node of ``dst``."""
    failures = [f"{src} agent on {src}-n1 → {dst}/{dst}-n1: {failing}: 0/1 paths reachable"] if failing else []
    return HealthCell(
        src=src,
        dst=dst,
        reachable=0 if failing else 2,
        expected=2,
        agents=1,
        failures=failures,
        failing_paths=[failing] if failing else [],
        missing=[],
    )


def health_of(*cells: HealthCell) -> HealthMatrix:
    return HealthMatrix(clusters=["cluster-1", "cluster-2"], cells=list(cells), agent_errors=[])


HEALTHY_CELLS = [health_cell(s, d) for s in ("cluster-1", "cluster-2") for d in ("cluster-1", "cluster-2")]


def test_a_healthy_matrix_is_one_ok_finding() -> None:
    matrix = health_of(*HEALTHY_CELLS)
    assert health_findings(matrix) == [Finding(level="ok", subject="mesh health", reason=matrix.summary())]


def test_a_blocked_path_is_a_failure_naming_the_port_and_what_to_open() -> None:
    cells = [c for c in HEALTHY_CELLS if (c.src, c.dst) != ("cluster-1", "cluster-2")]
    matrix = health_of(*cells, health_cell("cluster-1", "cluster-2", failing="endpoint ICMP"))
    [failure] = health_findings(matrix)
    assert failure.level == "failure" and failure.subject == "cluster-1 → cluster-2"
    assert failure.reason.startswith(f"{UDP_8472_PATH} blocked or broken: cluster-1 agent on cluster-1-n1")
    assert failure.fix == f"open {UDP_8472_PATH} from the nodes of cluster-1 to cluster-2 (step 7's rules)"


def not_listing(src: str, dst: str) -> HealthCell:
    """The agents of ``src`` list none of the two nodes of ``dst``: ``src`` is not connected to it."""
    missing = [f"{dst}-n1", f"{dst}-n2"]
    return HealthCell(
        src=src, dst=dst, reachable=0, expected=2, agents=1, failures=[], failing_paths=[], missing=missing
    )


def test_pods_unreachable_only_because_the_peer_is_not_connected_back_blame_no_port() -> None:
    """cluster-1 does not list cluster-2 (its entry is gone): cluster-2's pod probes fail on the way back."""
    matrix = health_of(
        health_cell("cluster-1", "cluster-1"),
        not_listing("cluster-1", "cluster-2"),
        health_cell("cluster-2", "cluster-1", failing="endpoint ICMP"),
        health_cell("cluster-2", "cluster-2"),
    )
    findings = health_findings(matrix)
    back = next(f for f in findings if f.subject == "cluster-2 → cluster-1")
    assert "cluster-1 is not connected back to cluster-2" in back.reason
    assert back.fix.startswith("connect cluster-1 to cluster-2 first (see cluster-1 → cluster-2)")
    assert "UDP 8472" not in f"{back.reason} {back.fix}"


def test_a_drift_that_explains_the_unhealthy_pairs_is_named_instead_of_a_port(mesh: Mesh) -> None:
    """The issue's night: a peer entry deleted in one cluster, a corrupt caCert in the other, no port shut."""
    values = mesh["cluster-1"].values()
    values["clustermesh"]["config"]["clusters"] = []
    mesh["cluster-1"].set_values(values)
    values = mesh["cluster-2"].values()
    values["clustermesh"]["config"]["clusters"][0]["tls"]["caCert"] = base64.b64encode(b"not a cert").decode()
    mesh["cluster-2"].set_values(values)
    drift = problems(mesh.drift())
    assert {(f.subject, f.clusters) for f in drift} == {
        ("cluster-1", ("cluster-1", "cluster-2")),
        ("cluster-2 → cluster-1", ()),
    }
    matrix = health_of(
        health_cell("cluster-1", "cluster-1"),
        not_listing("cluster-1", "cluster-2"),
        health_cell("cluster-2", "cluster-1", failing="endpoint ICMP"),
        health_cell("cluster-2", "cluster-2"),
    )

    findings = health_findings(matrix, drift)

    assert [f.subject for f in findings] == ["cluster-1 → cluster-2", "cluster-2 → cluster-1"]
    text = " ".join(f"{f.reason} {f.fix}" for f in findings)
    assert "UDP 8472" not in text and "open " not in text and "TCP 2379" not in text
    first, second = findings
    assert "explained by the failure above: cluster-1: missing peer cluster-2" in first.reason
    assert "explained by the failure above: cluster-2 → cluster-1: the entry for cluster-1: tls.caCert" in second.reason
    assert all(f.fix.startswith("fix that first (run the setup again") for f in findings)
    assert all("no port is blamed while the configuration is wrong" in f.fix for f in findings)


def test_a_port_is_still_named_between_clusters_whose_configuration_is_right() -> None:
    """Drift between cluster-1 and cluster-3 explains nothing about cluster-1 ↔ cluster-2."""
    clusters = ["cluster-1", "cluster-2", "cluster-3"]
    drift = [
        Finding(
            level="failure",
            subject="cluster-1",
            reason="missing peer cluster-3 in clustermesh.config.clusters",
            fix="run the setup again",
            clusters=("cluster-1", "cluster-3"),
        )
    ]
    cells = [health_cell(s, d) for s in clusters for d in clusters if {s, d} != {"cluster-1", "cluster-2"}]
    cells += [health_cell("cluster-1", "cluster-2", failing="endpoint ICMP"), health_cell("cluster-2", "cluster-1")]
    matrix = HealthMatrix(clusters=clusters, cells=cells, agent_errors=[])
    assert explained_cells(drift, clusters).keys() == {("cluster-1", "cluster-3"), ("cluster-3", "cluster-1")}
    [failure] = health_findings(matrix, drift)
    assert failure.fix == f"open {UDP_8472_PATH} from the nodes of cluster-1 to cluster-2 (step 7's rules)"


def test_a_cluster_wide_failure_explains_every_pair_of_that_cluster() -> None:
    found = [
        Finding(level="failure", subject="cluster-2 clustermesh-apiserver-remote-cert", reason="tls.crt expired"),
        Finding(level="warning", subject="cluster-1", reason="not applied yet"),
        Finding(level="failure", subject="mesh health", reason="from an earlier run"),
    ]
    explained = explained_cells(found, ["cluster-1", "cluster-2", "cluster-3"])
    assert set(explained) == {
        ("cluster-2", "cluster-1"),
        ("cluster-1", "cluster-2"),
        ("cluster-2", "cluster-3"),
        ("cluster-3", "cluster-2"),
    }
    assert {f.reason for f in explained.values()} == {"tls.crt expired"}


# --------------------------------------------------------------------------------------- not set up


def without_mesh_values(mesh: Mesh, *names: str) -> None:
    for name in names:
        values = mesh[name].values()
        del values["clustermesh"]
        mesh[name].set_values(values)


def test_clusters_the_setup_never_touched_are_one_finding_run_setup(mesh: Mesh) -> None:
    without_mesh_values(mesh, "cluster-1", "cluster-2")
    facts, _ = mesh.verify()
    finding = mesh_not_set_up(facts)
    assert finding is not None and finding.level == "failure" and finding.subject == "mesh"
    assert finding.reason.startswith("the mesh is not set up: none of cluster-1, cluster-2 has Cluster Mesh enabled")
    assert finding.fix.startswith("run setup (clustermesh setup --config ")


def test_a_setup_stopped_half_way_is_a_mesh_to_verify(mesh: Mesh) -> None:
    without_mesh_values(mesh, "cluster-2")
    facts, _ = mesh.verify()
    assert mesh_not_set_up(facts) is None
    assert mesh_not_set_up({}) is None, "no cluster answered: their own findings say why"


def test_a_duplicated_peer_of_the_spec_is_repaired_by_the_setup(mesh: Mesh) -> None:
    values = mesh["cluster-1"].values()
    entries = values["clustermesh"]["config"]["clusters"]
    stale = copy.deepcopy(entries[0])
    stale["ips"] = ["198.51.100.99"]
    entries.append(stale)
    mesh["cluster-1"].set_values(values)
    [failure] = problems(mesh.drift())
    assert failure.reason == "peer cluster-2 is listed 2 times in clustermesh.config.clusters"
    assert failure.fix == "run the setup again (clustermesh setup); it writes only what differs"
    assert failure.clusters == ("cluster-1", "cluster-2")
