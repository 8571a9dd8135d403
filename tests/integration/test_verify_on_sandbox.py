"""The nightly verification against a sandbox mesh: all ok when healthy, and the faults named when not.

The mesh is built by calling the domain steps in the guide's order (as flows/mesh_setup.py does, without
Prefect); the faults come from the sandbox's own controllers (a rotated CA, expired certificates) or from
a hand edit with the official client, so the verification judges state it did not produce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from clustermesh.checks.certificates import certificate_report, check_certificates, nearest_expiry_days
from clustermesh.checks.drift import check_drift
from clustermesh.checks.findings import Finding, overall
from clustermesh.checks.reachability import check_reachability_and_versions
from clustermesh.cilium.profiles import profile_for
from clustermesh.kube import ClusterClient
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec, load_spec
from clustermesh.steps.models import ClusterFacts, MeshEndpoint
from clustermesh.steps.step1_prerequisites import check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import configure_mesh
from clustermesh.steps.step3_5_endpoints import REMOTE_CERT, collect_mesh_endpoint
from tests.conftest import kube_client
from tests.sandbox.test_guide_by_hand import wait_until

GROUP, VERSION, PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"


@pytest.fixture
def mesh(sandbox_factory: Callable[..., Any]) -> Iterator[tuple[Any, MeshSpec, dict[str, ClusterClient]]]:
    """A healthy 2-cluster 1.16 mesh (per-peer CAs), set up by the domain steps in the guide's order."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    spec = load_spec(sb.directory / "mesh.yaml")
    clients = {c.name: open_cluster(c, request_timeout=10) for c in spec.clusters}
    try:
        facts = {c.name: check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        first = spec.first
        shared = spec.cilium.resolve(profile_for(facts[first.name].cilium_version)).ca_mode == "shared"

        def configure(name: str, peers: list[MeshEndpoint], step: str) -> None:
            entries = [p.peer_entry() for p in peers]
            ca = first_endpoint.shared_ca() if shared and peers else None
            configure_mesh(clients[name], facts[name], spec.cluster(name), spec, step=step, peers=entries, shared_ca=ca)

        configure_mesh(clients[first.name], facts[first.name], first, spec, step="2", peers=[])
        first_endpoint = collect_mesh_endpoint(clients[first.name], facts[first.name], spec, want_ca_key=shared)
        endpoints = {first.name: first_endpoint}
        for other in spec.others:
            configure(other.name, [first_endpoint], "4")
            endpoints[other.name] = collect_mesh_endpoint(
                clients[other.name],
                facts[other.name],
                spec,
                want_ca_key=False,
                expected_ca=first_endpoint.ca_cert if shared else None,
            )
        for cluster in spec.clusters:
            configure(cluster.name, [e for n, e in endpoints.items() if n != cluster.name], "6")
        yield sb, spec, clients
    finally:
        for c in clients.values():
            c.close()


def verify(spec: MeshSpec, clients: dict[str, ClusterClient]) -> tuple[dict[str, ClusterFacts], list[Finding]]:
    facts, findings = check_reachability_and_versions(clients, spec)
    findings += check_drift(clients, facts, spec)
    findings += check_certificates(clients, facts)
    return facts, findings


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level != "ok"]


def remote_cert(client: ClusterClient) -> str:
    secret = client.get_secret("kube-system", REMOTE_CERT) or {}
    return str((secret.get("data") or {}).get("tls.crt", ""))


def test_a_freshly_set_up_mesh_verifies_with_only_ok_findings(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    _, spec, clients = mesh
    facts, findings = verify(spec, clients)
    assert set(facts) == {"cluster-1", "cluster-2"}
    assert problems(findings) == []
    assert overall(findings) == "PASS"
    subjects = {f.subject for f in findings}
    assert {"cluster-1 → cluster-2", "cluster-2 → cluster-1"} <= subjects
    versions = next(f for f in findings if f.subject == "cluster-1")
    assert versions.reason.startswith("Cilium 1.16")
    report = certificate_report(clients, facts)
    days = nearest_expiry_days(report)
    assert days is not None and days > 300  # certgen issues for 1095 days
    assert len(report.certificates) == 2 * 4  # CA + server, remote, admin on each cluster


def test_a_rotated_ca_leaves_a_stale_remote_certificate_on_the_peer(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    sb, spec, clients = mesh
    before = remote_cert(clients["cluster-2"])
    sb.fault("rotate-ca", cluster="cluster-2")
    wait_until("cluster-2's remote cert re-issued", lambda: remote_cert(clients["cluster-2"]) not in ("", before))
    facts, _ = check_reachability_and_versions(clients, spec)
    findings = check_drift(clients, facts, spec)
    stale = [f for f in findings if f.subject == "cluster-1 → cluster-2" and f.level == "failure"]
    assert any("stale remote certificate" in f.reason for f in stale), findings
    assert all("run the setup again" in f.fix or "clustermesh certs renew" in f.fix for f in stale)
    assert any("tls.caCert" in f.reason for f in stale)  # per-peer mode: the copied CA is the old one too
    assert not problems([f for f in findings if f.subject == "cluster-2 → cluster-1"])
    assert overall(findings) == "FAIL"
    assert before not in " ".join(f"{f.reason} {f.fix}" for f in findings)  # never the key material


def test_expired_certificates_are_failures_naming_the_secret(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    sb, spec, clients = mesh
    sb.fault("expire-certs", cluster="cluster-1")
    facts, _ = check_reachability_and_versions(clients, spec)
    report = certificate_report(clients, facts)
    expired = [f for f in report.findings if f.level == "failure" and "expired" in f.reason]
    assert {f.subject for f in expired} >= {
        "cluster-1 clustermesh-apiserver-server-cert",
        "cluster-1 clustermesh-apiserver-remote-cert",
        "cluster-1 clustermesh-apiserver-admin-cert",
    }
    assert not [f for f in report.findings if f.subject.startswith("cluster-2") and f.level != "ok"]
    days = nearest_expiry_days(report)
    assert days is not None and days < 0
    assert report.nearest is not None and report.nearest.cluster == "cluster-1"


def test_a_peer_entry_removed_by_hand_is_a_missing_peer(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    sb, spec, clients = mesh
    api = kube_client(sb.endpoint("cluster-1").kubeconfig)
    try:
        custom = k8s.CustomObjectsApi(api)
        ai = custom.get_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium")
        assert isinstance(ai, dict)
        field = "valuesBlock" if (ai["spec"].get("valuesBlock") or "").strip() else "values"
        values = yaml.safe_load(ai["spec"][field]) if field == "valuesBlock" else ai["spec"][field]
        values["clustermesh"]["config"]["clusters"] = []
        ai["spec"][field] = yaml.safe_dump(values) if field == "valuesBlock" else values
        custom.replace_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium", ai)
    finally:
        api.close()
    facts, _ = check_reachability_and_versions(clients, spec)
    findings = check_drift(clients, facts, spec)
    missing = [f for f in findings if f.level == "failure" and f.subject == "cluster-1"]
    assert any("missing peer cluster-2" in f.reason for f in missing), findings
    assert not problems([f for f in findings if f.subject.startswith("cluster-2")])
