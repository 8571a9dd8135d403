"""Malformed cluster state: an error or finding naming the object and the fix, and nothing written on top.

The broken state is made by hand with the official ``kubernetes`` client on a sandbox (KKP 2.27, Cilium
1.16: ``valuesBlock`` and atomic Helm installs that KKP retries and then gives up on), never by
monkeypatching. The domain steps are called directly, as flows/mesh_setup.py calls them. "Nothing
written" is checked on the object itself: the ApplicationInstallation's resourceVersion, generation and
values are the same after the failed call as before it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s

from clustermesh.checks.certificates import certificate_report
from clustermesh.checks.common import ADMIN_CERT
from clustermesh.checks.drift import check_drift
from clustermesh.checks.findings import Finding
from clustermesh.errors import (
    ClusterStateError,
    EndpointError,
    PrerequisiteError,
    ValuesError,
    WaitTimeoutError,
)
from clustermesh.kube import ClusterClient
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import ClusterSpec, MeshSpec, Timeouts, load_spec
from clustermesh.steps.models import ClusterFacts, MeshEndpoint
from clustermesh.steps.step1_prerequisites import check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import configure_mesh
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, collect_mesh_endpoint
from tests.conftest import kube_client
from tests.helpers import wait_until

GROUP, VERSION, PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"
AI_NAME = "ApplicationInstallation kube-system/cilium"
SHORT = Timeouts(install=60, load_balancer=10, certificates=2, health=30, api=10, poll_interval=0.1)


@dataclass
class Mesh:
    sb: Any
    spec: MeshSpec
    clients: dict[str, ClusterClient]
    facts: dict[str, ClusterFacts]

    @property
    def first(self) -> str:
        return self.spec.first.name


@pytest.fixture
def mesh(sandbox_factory: Callable[..., Any]) -> Iterator[Mesh]:
    """Two KKP 2.27 clusters with Cilium 1.16, step 1 done (nothing written yet), short timeouts."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    spec = load_spec(sb.directory / "mesh.yaml")
    spec = spec.model_copy(update={"timeouts": SHORT})
    clients = {c.name: open_cluster(c, request_timeout=10) for c in spec.clusters}
    try:
        facts = {c.name: check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        yield Mesh(sb, spec, clients, facts)
    finally:
        for c in clients.values():
            c.close()


# ------------------------------------------------------------------------------------------- helpers


def edit_ai(m: Mesh, cluster: str, change: Callable[[dict[str, Any]], None]) -> None:
    """A hand edit of the cilium ApplicationInstallation with the official client (a 409 is retried)."""
    api = kube_client(m.sb.endpoint(cluster).kubeconfig)
    try:
        custom = k8s.CustomObjectsApi(api)
        for _ in range(5):
            ai = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "cilium")
            change(ai)
            try:
                custom.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "cilium", ai)
                return
            except k8s.ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError("the hand edit kept conflicting with KKP")
    finally:
        api.close()


def edit_values(m: Mesh, cluster: str, change: Callable[[dict[str, Any]], None]) -> None:
    def edit(ai: dict[str, Any]) -> None:
        values = yaml.safe_load(ai["spec"].get("valuesBlock") or "") or {}
        change(values)
        ai["spec"]["valuesBlock"] = yaml.safe_dump(values)
        ai["spec"]["values"] = {}

    edit_ai(m, cluster, edit)


def edit_secret(m: Mesh, cluster: str, name: str, change: Callable[[dict[str, str]], None]) -> None:
    api = kube_client(m.sb.endpoint(cluster).kubeconfig)
    try:
        core = k8s.CoreV1Api(api)
        secret = core.read_namespaced_secret(name, NAMESPACE)
        data = dict(secret.data or {})
        change(data)
        secret.data = data
        core.replace_namespaced_secret(name, NAMESPACE, secret)
    finally:
        api.close()


def snapshot(client: ClusterClient) -> tuple[Any, Any, Any, Any]:
    """What a write would change: resourceVersion, generation and both values fields."""
    ai = client.get_application_installation()
    meta, spec = ai["metadata"], ai["spec"]
    return meta["resourceVersion"], meta.get("generation"), spec.get("valuesBlock"), spec.get("values")


def ready(client: ClusterClient) -> dict[str, Any]:
    ai = client.get_application_installation()
    return dict(((ai.get("status") or {}).get("conditions") or {}).get("Ready") or {})


def wait_for_kkp_to_give_up(client: ClusterClient) -> dict[str, Any]:
    """KKP retries a failing atomic install, then stops: a settled state that no controller touches."""
    return wait_until(
        "KKP to report InstallationFailedRetriesExceeded",
        lambda: (r := ready(client)).get("reason") == "InstallationFailedRetriesExceeded" and r,
        timeout=60,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def other_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def enable_first(m: Mesh) -> None:
    """Step 2 of the guide on the first cluster: certgen then issues the clustermesh Secrets."""
    first = m.spec.first
    configure_mesh(m.clients[first.name], m.facts[first.name], first, m.spec, step="2", peers=[])


def set_up(m: Mesh) -> dict[str, MeshEndpoint]:
    """Steps 2–6 for the per-peer CA mode of 1.16, as flows/mesh_setup.py orders them."""
    first = m.spec.first
    enable_first(m)
    endpoints = {
        first.name: collect_mesh_endpoint(m.clients[first.name], m.facts[first.name], m.spec, want_ca_key=False)
    }
    for other in m.spec.others:
        peers = [endpoints[first.name].peer_entry()]
        configure_mesh(m.clients[other.name], m.facts[other.name], other, m.spec, step="4", peers=peers)
        endpoints[other.name] = collect_mesh_endpoint(
            m.clients[other.name], m.facts[other.name], m.spec, want_ca_key=False
        )
    for cluster in m.spec.clusters:
        peers = [e.peer_entry() for n, e in endpoints.items() if n != cluster.name]
        configure_mesh(m.clients[cluster.name], m.facts[cluster.name], cluster, m.spec, step="6", peers=peers)
    return endpoints


def failures(findings: list[Finding], subject: str) -> list[str]:
    return [f.reason for f in findings if f.level == "failure" and f.subject == subject]


# ---------------------------------------------------------------------------------- values not YAML


def test_values_that_are_not_yaml_stop_step_1_naming_the_object_and_nothing_is_written(mesh: Mesh) -> None:
    name = mesh.first
    client, cluster = mesh.clients[name], mesh.spec.first
    edit_ai(mesh, name, lambda ai: ai["spec"].update(valuesBlock="{{ not yaml", values={}))

    # Before or after KKP noticed: an error naming the object, never a crash or a guess.
    with pytest.raises((ValuesError, PrerequisiteError)) as early:
        check_prerequisites(client, cluster, mesh.spec)
    assert AI_NAME in str(early.value)

    given_up = wait_for_kkp_to_give_up(client)
    assert "failed to unmarshal valuesBlock" in given_up["message"]
    before = snapshot(client)
    with pytest.raises(PrerequisiteError) as info:
        check_prerequisites(client, cluster, mesh.spec)
    text = str(info.value)
    assert f"cluster {name!r}" in text and AI_NAME in text
    assert "InstallationFailedRetriesExceeded" in text and "failed to unmarshal valuesBlock" in text
    assert "nothing is written" in info.value.fix
    # KKP has given up on this block: the write step refuses the failing installation before reading it
    with pytest.raises(ClusterStateError) as write:
        configure_mesh(client, mesh.facts[name], cluster, mesh.spec, step="2", peers=[])
    assert "kube-system/cilium is failing" in str(write.value) and "nothing was written" in str(write.value)
    assert "{{ not yaml" not in str(write.value)  # the block may hold keys: never echoed
    assert snapshot(client) == before


# -------------------------------------------------------------------------- an installation stuck failing


def make_kkp_give_up(m: Mesh) -> tuple[ClusterClient, ClusterSpec, tuple[Any, Any, Any, Any]]:
    """The old guide's CA key, by hand: the 1.16.9 chart refuses it, KKP retries the atomic install, gives up."""
    name = m.first
    client = m.clients[name]
    old_ca = {"cert": b64(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"), "key": b64(other_key_pem())}
    edit_values(
        m,
        name,
        lambda v: v.setdefault("clustermesh", {}).setdefault("apiserver", {}).setdefault("tls", {}).update(ca=old_ca),
    )
    given_up = wait_for_kkp_to_give_up(client)
    assert "clustermesh.apiserver.tls.ca.cert" in given_up["message"]
    return client, m.spec.first, snapshot(client)


def test_an_installation_kkp_gave_up_on_stops_step_1_with_kkps_message(mesh: Mesh) -> None:
    client, cluster, before = make_kkp_give_up(mesh)
    with pytest.raises(PrerequisiteError) as info:
        check_prerequisites(client, cluster, mesh.spec)
    text = str(info.value)
    assert f"cluster {cluster.name!r}" in text and AI_NAME in text
    assert "InstallationFailedRetriesExceeded" in text and "Max number of retries was exceeded" in text
    assert "clustermesh.apiserver.tls.ca.cert" in text  # KKP's own message, so the cause is visible
    assert "Applications" in info.value.fix and "nothing is written" in info.value.fix
    assert snapshot(client) == before


def test_configure_mesh_writes_nothing_on_an_installation_kkp_gave_up_on(mesh: Mesh) -> None:
    client, cluster, before = make_kkp_give_up(mesh)
    try:
        with pytest.raises(ClusterStateError) as refused:
            configure_mesh(client, mesh.facts[cluster.name], cluster, mesh.spec, step="2", peers=[])
        assert AI_NAME in str(refused.value)
    finally:
        if snapshot(client) != before:
            pytest.fail("configure_mesh wrote on top of an installation KKP gave up on")


# ------------------------------------------------------------------------- foreign peers, unknown keys


def test_a_hand_added_peer_with_unknown_keys_survives_the_setup_and_is_reported_as_unknown(mesh: Mesh) -> None:
    endpoints = set_up(mesh)
    name, other = mesh.first, mesh.spec.others[0].name
    client = mesh.clients[name]
    stranger = {
        "name": "cluster-9",
        "foo": "bar",
        "address": "",
        "port": 2379,
        "ips": ["198.51.100.9"],
        "tls": {"cert": endpoints[other].remote_cert, "key": endpoints[other].remote_key.get_secret_value()},
    }

    def hand_edit(values: dict[str, Any]) -> None:
        entries = values["clustermesh"]["config"]["clusters"]
        for entry in entries:
            if entry["name"] == other:
                entry["ips"] = ["198.51.100.77"]  # a stale address the setup must correct
        entries.append(stranger)

    edit_values(mesh, name, hand_edit)
    wait_until(
        "KKP to apply the hand edit",
        lambda: (
            ready(client).get("status") == "True"
            and ready(client).get("observedGeneration")
            == client.get_application_installation()["metadata"]["generation"]
        ),
    )

    peers = [endpoints[other].peer_entry()]
    change = configure_mesh(client, mesh.facts[name], mesh.spec.first, mesh.spec, step="6", peers=peers)
    assert change.written and change.applied
    values = yaml.safe_load(client.get_application_installation()["spec"]["valuesBlock"])
    entries = {e["name"]: e for e in values["clustermesh"]["config"]["clusters"]}
    assert entries["cluster-9"] == stranger  # kept as written, unknown key included
    assert entries[other]["ips"] == [str(ip) for ip in endpoints[other].ips]
    assert "foo" not in entries[other]

    findings = check_drift(mesh.clients, mesh.facts, mesh.spec)
    unknown = [
        f for f in findings if f.subject == name and f.level == "warning" and "unknown peer cluster-9" in f.reason
    ]
    assert unknown, findings
    assert "cluster-9" in unknown[0].fix and "kubectl edit applicationinstallation" in unknown[0].fix
    assert not [f for f in findings if f.level == "failure"], findings


# ------------------------------------------------------------------------------- broken Secrets


BROKEN_REMOTE = {
    "tls.key removed": (lambda d: d.pop("tls.key"), "tls.key missing", "tls.key is missing"),
    "tls.crt not PEM": (
        lambda d: d.update({"tls.crt": b64(b"this is not a certificate")}),
        f"{REMOTE_CERT} tls.crt: not a readable X.509 certificate",
        "tls.crt: not a readable X.509 certificate",
    ),
    "tls.key not PEM": (
        lambda d: d.update({"tls.key": b64(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")}),
        f"{REMOTE_CERT} tls.key: not a readable unencrypted private key",
        "tls.key: not a readable unencrypted private key",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_REMOTE))
def test_a_remote_cert_secret_with_a_missing_or_unreadable_key_is_named_by_secret_and_key(
    mesh: Mesh, broken: str
) -> None:
    name = mesh.first
    client = mesh.clients[name]
    enable_first(mesh)
    damage, endpoint_words, report_words = BROKEN_REMOTE[broken]
    edit_secret(mesh, name, REMOTE_CERT, damage)
    before = snapshot(client)

    with pytest.raises(WaitTimeoutError) as info:
        collect_mesh_endpoint(client, mesh.facts[name], mesh.spec, want_ca_key=False)
    text = str(info.value)
    assert f"Secret {NAMESPACE}/{REMOTE_CERT}" in text and endpoint_words in text
    assert "certgen" in info.value.check

    report = certificate_report({name: client}, {name: mesh.facts[name]})
    reasons = failures(report.findings, f"{name} {REMOTE_CERT}")
    assert any(report_words in r and f"Secret {NAMESPACE}/{REMOTE_CERT}" in r for r in reasons), report.findings
    assert snapshot(client) == before


def test_a_remote_key_that_does_not_match_its_certificate_is_an_endpoint_error(mesh: Mesh) -> None:
    name = mesh.first
    client = mesh.clients[name]
    enable_first(mesh)
    admin_key = (client.get_secret(NAMESPACE, ADMIN_CERT) or {})["data"]["tls.key"]
    edit_secret(mesh, name, REMOTE_CERT, lambda d: d.update({"tls.key": admin_key}))  # a real key, the wrong one
    before = snapshot(client)

    with pytest.raises(EndpointError) as info:
        collect_mesh_endpoint(client, mesh.facts[name], mesh.spec, want_ca_key=False)
    text = str(info.value)
    assert f"Secret {NAMESPACE}/{REMOTE_CERT}" in text and "does not match its key" in text
    assert admin_key not in text
    assert "delete the Secret" in info.value.fix

    report = certificate_report({name: client}, {name: mesh.facts[name]})
    assert any("tls.key does not belong to tls.crt" in r for r in failures(report.findings, f"{name} {REMOTE_CERT}"))
    assert snapshot(client) == before


def test_expired_certificates_fail_the_certificate_report_per_secret(mesh: Mesh) -> None:
    name = mesh.first
    client = mesh.clients[name]
    enable_first(mesh)
    mesh.sb.fault("expire-certs", cluster=name)
    report = certificate_report({name: client}, {name: mesh.facts[name]})
    for secret in (REMOTE_CERT, ADMIN_CERT):
        reasons = failures(report.findings, f"{name} {secret}")
        assert any("tls.crt expired" in r for r in reasons), report.findings
    leaves = [f for f in report.findings if "expired" in f.reason and "cilium-ca" not in f.subject]
    assert leaves and all("clustermesh certs renew" in f.fix for f in leaves), leaves  # re-issued, not deleted
    days = min(c.days_left for c in report.certificates)
    assert days < 0
