"""Evidence on failure, the pure part: who is asked, what is kept of each answer, and that secrets never leave.

The sandbox's ``troubleshoot clustermesh`` is checked here too, printed from hand-made snapshots: its
stages, its certificate lines, and the lines that do not have it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from clustermesh.checks import Finding
from clustermesh.checks import evidence as ev
from sandbox.cilium_cli import run_agent_command
from sandbox.cilium_model import AgentSnapshot, CertInfo, HealthReport, MeshConfigCheck
from sandbox.pki import issue, make_ca

STATUS = """\
KVStore:                Ok   Disabled
Cilium:                 Ok   1.16.9 (v1.16.9-785574d1)
ClusterMesh:            0/1 remote clusters ready, 0 global-services
   cluster-2: not-ready, 0 nodes, 0 endpoints, 0 identities, 0 services, 1 reconnections (last: 0s ago)
   └  tls: failed to verify certificate: x509: certificate signed by unknown authority
   └  remote configuration: expected=unknown, retrieved=unknown
IPv4 BIG TCP:           Disabled
Cluster health:         2/2 reachable   (2026-12-06T07:25:28Z)
"""

SERVICES = """\
ID   Frontend            Service Type   Backend
1    10.96.0.1:443       ClusterIP      1 => 10.1.0.2:6443 (active)
7    10.96.12.34:80      ClusterIP      1 => 172.25.0.10:80 (active)
                                        2 => 172.26.0.11:80 (active)
8    10.96.12.35:80      ClusterIP      1 => 172.25.0.12:80 (active)
"""


def _pem_texts() -> tuple[str, str, str]:
    ca = make_ca("Cilium CA")
    leaf = issue(ca, "remote", client=True)
    return ca.cert_pem.decode(), leaf.key_pem.decode(), base64.b64encode(leaf.cert_pem).decode()


def test_redaction_strikes_certificates_keys_their_base64_and_tokens_but_keeps_certificate_facts() -> None:
    cert, key, cert_b64 = _pem_texts()
    der_b64 = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 80
    text = (
        f"Subject: CN=remote\nIssuer: CN=Cilium CA\n{cert}\n{key}\n"
        f"ca.crt: {cert_b64}\nder: {der_b64}\nAuthorization: Bearer abc.def-123456\n"
        "cut -----BEGIN CERTIFICATE-----\nMIIB"
    )

    out = ev.redact(text)

    assert "BEGIN" not in out and "END" not in out, out
    assert cert.splitlines()[1] not in out and key.splitlines()[1] not in out
    assert cert_b64[:40] not in out and der_b64[:40] not in out and "abc.def-123456" not in out
    assert "[redacted certificate]" in out and "private key]" in out
    assert "Subject: CN=remote" in out and "Issuer: CN=Cilium CA" in out


def test_a_section_is_truncated_with_the_count_of_lines_left_out_and_redacted() -> None:
    cert, _key, _b64 = _pem_texts()
    stdout = cert + "".join(f"line {i}\n" for i in range(100))

    sec = ev.section("troubleshoot clustermesh", ["cilium-dbg", "troubleshoot", "clustermesh"], (0, stdout, ""))

    lines = sec.text.splitlines()
    assert sec.ok and len(lines) == ev.MAX_LINES + 1
    assert lines[-1] == f"… {100 + 1 - ev.MAX_LINES} more lines", lines[-1]
    assert "BEGIN" not in sec.text and lines[0] == "[redacted certificate]"


def test_a_missing_troubleshoot_command_says_not_available_on_the_version_and_failures_are_recorded() -> None:
    unknown = (1, "", 'Error: unknown command "troubleshoot" for "cilium"\nRun \'cilium --help\' for usage.\n')

    missing = ev.section(
        "troubleshoot clustermesh", ["cilium", "troubleshoot", "clustermesh"], unknown, version="1.13.8"
    )
    failed = ev.section("ClusterMesh status", ["cilium", "status"], (2, "", "connection refused"))
    not_run = ev.section("ClusterMesh status", ["cilium", "status"], "pods/x/exec: did not finish within 20s")

    assert not missing.ok and missing.text.startswith("not available on Cilium 1.13.8"), missing.text
    assert not failed.ok and failed.text == "exited 2: connection refused"
    assert not not_run.ok and not_run.text == "not run: pods/x/exec: did not finish within 20s"


def test_the_clustermesh_block_and_the_drill_service_rows_are_cut_out() -> None:
    block = ev.clustermesh_block(STATUS)
    rows = ev.service_rows(SERVICES, "10.96.12.34:80")

    assert block.splitlines()[0].startswith("ClusterMesh:") and len(block.splitlines()) == 4, block
    assert "IPv4 BIG TCP" not in block and "unknown authority" in block
    assert rows.splitlines() == [SERVICES.splitlines()[0], *SERVICES.splitlines()[2:4]], rows
    assert "no entry for 10.96.99.9:80" in ev.service_rows(SERVICES, "10.96.99.9:80")
    assert ev.clustermesh_block("KVStore: Ok\n") == ""


def test_affected_members_come_from_the_matrix_the_drill_and_the_findings_at_most_four() -> None:
    clusters = [f"cluster-{i}" for i in range(1, 7)]
    findings = [
        Finding(level="failure", subject="cluster-5 → cluster-6", reason="x"),
        Finding(level="warning", subject="cluster-4", reason="only a warning"),
        Finding(level="failure", subject="cluster-6", reason="y"),
    ]

    matrix_only = ev.affected_members(clusters[:2], [], unhealthy_pairs=[("cluster-1", "cluster-2")])
    drill_only = ev.affected_members(clusters[:3], [], failed_phases=[("cluster-2", "failover")])
    many = ev.affected_members(
        clusters, findings, unhealthy_pairs=[("cluster-1", "cluster-2"), ("cluster-2", "cluster-3")]
    )

    assert [(t.cluster, t.peers) for t in matrix_only] == [("cluster-1", ("cluster-2",))]
    assert "cannot reach cluster-2" in matrix_only[0].why
    assert [(t.cluster, t.peers) for t in drill_only] == [("cluster-1", ("cluster-2",)), ("cluster-3", ("cluster-2",))]
    assert [t.cluster for t in many] == ["cluster-1", "cluster-2", "cluster-5", "cluster-6"]
    assert len(many) == ev.MAX_AGENTS and many[2].peers == ("cluster-6",)
    assert ev.affected_members(clusters, [findings[1]]) == []


def test_the_evidence_renders_for_the_artifact_and_the_thread_without_any_pem() -> None:
    cert, _key, _b64 = _pem_texts()
    sec = ev.section("troubleshoot clustermesh", ["cilium-dbg", "troubleshoot", "clustermesh"], (0, cert, ""))
    agent = ev.AgentEvidence(cluster="cluster-1", agent="cilium-abc", why="cannot reach cluster-2", sections=[sec])
    evidence = ev.Evidence(subject="mesh m: cluster-1 → cluster-2", agents=[agent], probes=["from \\ to  cluster-1"])

    md, lines = evidence.markdown(), evidence.slack_lines()

    for text in (md, "\n".join(lines)):
        assert "BEGIN" not in text and "cluster-1/cilium-abc" in text and "cannot reach cluster-2" in text
    assert "## Last probe results" in md and lines[-1] == "from \\ to  cluster-1"


# ------------------------------------------------------------------------- the sandbox's troubleshoot


def _snapshot(version: str, checks: list[MeshConfigCheck]) -> AgentSnapshot:
    now = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
    return AgentSnapshot(
        cilium_version=version,
        cluster_name="cluster-1",
        cluster_id=1,
        node_name="node-1",
        health=HealthReport(nodes=[], timestamp=now),
        services=[],
        mesh_enabled=True,
        peers=[],
        mesh_checks=checks,
    )


CA = CertInfo(
    serial="1ceb3f",
    subject="CN=Cilium CA",
    issuer="CN=Cilium CA",
    not_before=datetime(2026, 1, 1, tzinfo=UTC),
    not_after=datetime(2029, 1, 1, tzinfo=UTC),
)


def test_sandbox_troubleshoot_stops_at_the_failing_stage_and_describes_the_certificates() -> None:
    endpoint = "https://cluster-2.mesh.cilium.io:2379"
    unknown_ca = MeshConfigCheck(
        name="cluster-2",
        endpoint=endpoint,
        resolved_ip="203.0.113.20",
        tls_error="tls: failed to verify certificate: x509: certificate signed by unknown authority",
        root_cas=(CA,),
        client_certs=(CA,),
        client_verifies=False,
    )
    blocked = MeshConfigCheck(
        name="cluster-3",
        endpoint=endpoint,
        resolved_ip="203.0.113.30",
        tcp_error="dial tcp 203.0.113.30:2379: i/o timeout",
    )

    code, out, err = run_agent_command(
        _snapshot("1.16.9", [unknown_ca, blocked]), ["cilium-dbg", "troubleshoot", "clustermesh"]
    )

    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "Found 2 cluster configurations"
    two = lines[lines.index('Cluster "cluster-2":') : lines.index('Cluster "cluster-3":')]
    assert "     ✅ TCP connection successfully established to 203.0.113.20:2379" in two
    assert any(
        line.startswith("     ❌ Cannot establish TLS connection to cluster-2.mesh.cilium.io:2379: tls:")
        for line in two
    )
    assert (
        "      - Serial number:       1c:eb:3f" in two and "          Not after:   2029-01-01 00:00:00 +0000 UTC" in two
    )
    assert "        ⚠️ Cannot verify certificate with the configured root CAs" in two
    assert two[-2:] == ["   ❌ Failed to establish connection: context deadline exceeded", ""]
    three = lines[lines.index('Cluster "cluster-3":') :]
    tcp = "dial tcp 203.0.113.30:2379: i/o timeout"
    assert f"     ❌ Cannot establish TCP connection to cluster-2.mesh.cilium.io:2379: {tcp}" in three
    assert not any("TLS connection" in line for line in three)


def test_lines_without_troubleshoot_answer_unknown_command_as_cobra_does() -> None:
    argv = ["cilium", "troubleshoot", "clustermesh"]
    for version, has in (
        ("1.13.8", False),
        ("1.14.11", False),
        ("1.14.16", True),
        ("1.15.5", False),
        ("1.15.16", True),
        ("1.16.0", True),
    ):
        code, out, err = run_agent_command(_snapshot(version, []), argv)
        if has:
            assert (code, out) == (0, "Found 0 cluster configurations\n"), version
        else:
            assert code == 1 and out == "", version
            root = "cilium-dbg" if version >= "1.15" else "cilium"  # the command tree's name on that line
            assert err.startswith(f'Error: unknown command "troubleshoot" for "{root}"\n'), (version, err)
            section = ev.section("troubleshoot clustermesh", argv, (code, out, err), version=version)
            assert section.text.startswith(f"not available on Cilium {version}"), section.text
