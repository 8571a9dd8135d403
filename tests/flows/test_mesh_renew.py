"""Renew end to end: real sandboxes, the real setup, nightly and renewal flows on the session's Prefect.

The sandbox's calendar is moved on until the clustermesh certificates are inside ``warn_days``: the nightly
warns, ``certs renew --plan`` lists what would be re-issued and writes nothing, the renewal re-issues the
leaves (new fingerprints, same CA) and hands the new remote certificates to the peers while a continuous
probe sees no drop, the mesh verifies, and a rerun writes nothing. Then runs stopped after each write
(``max_writes``, as a killed run) are rerun and converge with no member distrusting another. Read back
with the official client only.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from typer.testing import CliRunner

from cli.app import app
from clustermesh.errors import StopRequested
from flows.mesh_renew import mesh_renew_certificates
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification, verification_result
from tests.flows.conftest import REMOTE_CERT, Kube, ai_versions, cli, mesh_spec
from tests.flows.test_managed_peers import SLACK_ENV
from tests.probe import SandboxProbe
from tests.slack_server import SlackTestServer

Kubes = Callable[[Any], dict[str, Kube]]
LEAVES = ("clustermesh-apiserver-server-cert", REMOTE_CERT, "clustermesh-apiserver-admin-cert")


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackTestServer]:
    with SlackTestServer() as server:
        monkeypatch.setenv("SLACK_BOT_TOKEN", server.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", server.url)
        yield server


def sha(b64: str) -> str:
    return hashlib.sha256(base64.b64decode(b64)).hexdigest()


def leaves(k: Kube) -> dict[str, str]:
    return {name: sha((k.secret_data(name) or {})["tls.crt"]) for name in LEAVES}


def ca_of(k: Kube) -> str:
    return sha((k.secret_data("cilium-ca") or {})["ca.crt"])


def copies(k: Kube) -> dict[str, str]:
    """Peer name → hash of the remote certificate this cluster holds for it (values tls.cert)."""
    entries = ((k.values().get("clustermesh") or {}).get("config") or {}).get("clusters") or []
    return {str(e["name"]): sha(e["tls"]["cert"]) for e in entries if (e.get("tls") or {}).get("cert")}


def jobs(k: Kube) -> list[str]:
    batch = client.BatchV1Api(k.api)
    return sorted(j.metadata.name for j in batch.list_namespaced_job("kube-system").items)


def nobody_distrusts(kubes: dict[str, Kube]) -> None:
    """Every copy a member holds is issued by its peer's CA (verified here) and is the peer's current one."""
    for name, k in kubes.items():
        for peer, held in copies(k).items():
            entry = next(e for e in k.values()["clustermesh"]["config"]["clusters"] if e["name"] == peer)
            cert = x509.load_pem_x509_certificate(base64.b64decode(entry["tls"]["cert"]))
            ca = x509.load_pem_x509_certificate(base64.b64decode(kubes[peer].secret_data("cilium-ca")["ca.crt"]))
            cert.verify_directly_issued_by(ca)
            assert held == leaves(kubes[peer])[REMOTE_CERT], f"{name} holds a stale copy of {peer}"


def test_renew_with_cronjob_on_1_19_reissues_hands_out_without_a_drop_reruns_quietly_and_resumes(
    meshed: Callable[..., Any], kubes: Kubes, cli_env: dict[str, str]
) -> None:
    sb = meshed(clusters=2, cilium_version="1.19")
    k = kubes(sb)
    spec = mesh_spec(sb)
    mesh_yaml = str(Path(sb.directory) / "mesh.yaml")
    before = {name: leaves(kube) for name, kube in k.items()}
    cas = {name: ca_of(kube) for name, kube in k.items()}

    sb.advance_calendar(1095 - 20)  # 1.19's leaves last 1095 days: 20 left, inside warn_days (30)
    nightly = verification_result(nightly_mesh_verification(spec, run_drill=False, return_state=True))
    assert nightly is not None
    warned = [f for f in nightly.findings if f.level == "warning" and "expires in 19 days" in f.reason]
    assert {f.subject.split()[0] for f in warned} == {"cluster-1", "cluster-2"}, nightly.findings

    versions, job_names = ai_versions(k), {n: jobs(kube) for n, kube in k.items()}
    shown = CliRunner().invoke(app, ["certs", "renew", "--config", mesh_yaml, "--plan"])
    assert shown.exit_code == 0, shown.output
    assert "cluster-1: re-issued by cronJob" in shown.output and "cluster-2: re-issued by cronJob" in shown.output
    assert "cluster-1: its copy of cluster-2's remote certificate sha256:" in shown.output, shown.output
    assert "BEGIN" not in shown.output
    refused = CliRunner().invoke(app, ["certs", "renew", "--config", mesh_yaml])
    assert refused.exit_code == 2 and "pass --yes" in refused.output, refused.output
    assert ai_versions(k) == versions and {n: jobs(kube) for n, kube in k.items()} == job_names
    assert {name: leaves(kube) for name, kube in k.items()} == before

    with SandboxProbe(sb, ["cluster-1", "cluster-2"]) as probe:
        with pytest.raises(StopRequested, match="max_writes 1 reached"):  # as if killed after its first write
            mesh_renew_certificates(spec, max_writes=1)
        result = mesh_renew_certificates(spec)  # the rerun goes on from what the clusters hold
    assert probe.samples > 0 and probe.worst().samples == 0, probe.drops()
    assert result.status != "FAIL", result.describe()
    assert [line.split(":")[0] for line in result.reissued] == ["cluster-2"], result.describe()  # 1 was done
    for name, kube in k.items():
        after = leaves(kube)
        assert all(after[leaf] != before[name][leaf] for leaf in LEAVES), name
        assert ca_of(kube) == cas[name]
        assert any(j.startswith("clustermesh-apiserver-generate-certs-renew-") for j in jobs(kube)), jobs(kube)
    nobody_distrusts(k)
    assert_nightly_quiet(spec)

    versions, job_names = ai_versions(k), {n: jobs(kube) for n, kube in k.items()}
    again = cli(cli_env, "certs", "renew", "--config", mesh_yaml, "--yes")  # the command, as run by hand
    assert again.returncode == 0 and "mesh sandbox: nothing due" in again.stdout, again.stdout + again.stderr
    assert ai_versions(k) == versions and {n: jobs(kube) for n, kube in k.items()} == job_names

    # a forced renewal of cluster-1 (re-issue, then cluster-2's copy) stopped after each write: the same
    # command again converges
    for max_writes in (1, 2):
        with pytest.raises(StopRequested, match=f"max_writes {max_writes} reached"):
            mesh_renew_certificates(spec, "cluster-1", max_writes=max_writes)
        resumed = mesh_renew_certificates(spec, "cluster-1")
        assert resumed.status != "FAIL", resumed.describe()
        nobody_distrusts(k)
        assert not mesh_renew_certificates(spec).wrote_anything


def assert_nightly_quiet(spec: Any) -> None:
    """The nightly has no failure and no warning about a leaf certificate or a peer's copy any more."""
    verdict = verification_result(nightly_mesh_verification(spec, run_drill=False, return_state=True))
    assert verdict is not None
    loud = [f for f in verdict.findings if f.level != "ok" and "cilium-ca" not in f.subject]
    assert loud == [], verdict.describe()


def test_renew_with_helm_on_1_16_makes_kkp_render_again_and_keeps_copies_that_stay_current(
    meshed: Callable[..., Any], kubes: Kubes, slack: SlackTestServer
) -> None:
    # the chart's genSignedCert re-issues the leaves on every render: each values write re-issues them
    sb = meshed(clusters=2, cilium_version="1.16", helm_reissues_on_render=True)
    k = kubes(sb)
    spec = mesh_spec(sb)
    versions = ai_versions(k)
    stale = [(n, p) for n, kube in k.items() for p, held in copies(kube).items() if held != leaves(k[p])[REMOTE_CERT]]
    assert stale, "step 6's writes re-issued leaves after their copies were taken"
    cluster_mesh_setup(spec)  # the copies the peers hold are older than the leaves, but current: kept
    assert ai_versions(k) == versions
    before = {name: leaves(kube) for name, kube in k.items()}
    cas = {name: ca_of(kube) for name, kube in k.items()}

    sb.advance_calendar(1095 - 20)
    with SandboxProbe(sb, ["cluster-1", "cluster-2"]) as probe:
        result = mesh_renew_certificates(spec)
    assert probe.samples > 0 and probe.worst().samples == 0, probe.drops()
    assert result.status != "FAIL", result.describe()
    assert all("KKP renders the release again" in line for line in result.reissued), result.reissued
    for name, kube in k.items():
        assert all(leaves(kube)[leaf] != before[name][leaf] for leaf in LEAVES), name
        assert ca_of(kube) == cas[name]
        annotations = kube.values()["clustermesh"]["apiserver"]["podAnnotations"]
        assert "clustermesh.io/certificates-renewed" in annotations
    trusted_and_fresh(k, sb)
    summary = [m for m in slack.messages if "certificates renewed" in str(m)]
    assert len(summary) == 1 and "cluster-1" in str(summary[0]) and "cluster-2" in str(summary[0]), slack.messages
    assert "BEGIN" not in str(slack.messages) and "LS0tLS1CRUdJTi" not in str(slack.messages)  # no PEM, no base64 PEM
    assert_nightly_quiet(spec)
    versions = ai_versions(k)
    assert not mesh_renew_certificates(spec).wrote_anything
    assert ai_versions(k) == versions


def trusted_and_fresh(kubes: dict[str, Kube], sb: Any) -> None:
    """Every copy is issued by its peer's CA and has more than 30 days left at the sandbox's calendar."""
    now = sb.world.calendar.now()
    for name, k in kubes.items():
        for entry in k.values()["clustermesh"]["config"]["clusters"]:
            cert = x509.load_pem_x509_certificate(base64.b64decode(entry["tls"]["cert"]))
            ca_data = kubes[entry["name"]].secret_data("cilium-ca") or {}
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(base64.b64decode(ca_data["ca.crt"])))
            assert (cert.not_valid_after_utc - now).days > 30, f"{name}'s copy of {entry['name']}"
