"""The real Cilium chart decides before the setup writes: a refused key stops the run with nothing written,
``--plan`` shows per peer what the dialer reads (endpoint, trusted CA, client certificate as fingerprints),
a Helm repository source is pulled once and cached, an unreachable source is said once and the run goes on,
and the ``helm`` renderer without a ``helm`` binary is a clear error naming the setting.

Real sandboxes (KKP 2.27 with Cilium 1.16: values KKP enforces there are ones the real chart accepts), the
real flow on the session's Prefect test server, the CLI as a subprocess, charts from ``../shared/charts``.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from clustermesh.certs import issued_by, load_cert
from clustermesh.cilium.chart_source import forget_unreachable
from clustermesh.errors import ChartRenderError
from clustermesh.kube.credentials import open_cluster
from clustermesh.steps.chart_check import ChartValuesRefusedError, values_checker
from clustermesh.steps.step1_prerequisites import check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import configure_mesh
from clustermesh.values import peer_entries
from flows.mesh_setup import cluster_mesh_setup
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_chart_check import HelmRepo
from tests.flows.conftest import AI, REMOTE_CERT, ai_versions, cli, edited_spec, write_edited_yaml
from tests.flows.test_nightly import run_logs
from tests.helpers import wait_until

CHARTS = CHARTS_DIR
pytestmark = [charts_mark("cilium-1.16.9.tgz"), engine_mark]
Kubes = Callable[[Any], dict[str, Any]]
SKIPPED = "Values not rendered with the Cilium chart"


@pytest.fixture(autouse=True)
def _fresh_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test pulls into a cache of its own and remembers no unreachable source of another test."""
    monkeypatch.setenv("CLUSTERMESH_STATE_DIR", str(tmp_path / "state"))
    forget_unreachable()
    yield
    forget_unreachable()


def sandbox(sandbox_factory: Callable[..., Any]) -> Any:
    return sandbox_factory(clusters=2, cilium_version="1.16", kkp_version="2.27")


def with_chart(**chart: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("cilium", {})["chart"] = chart

    return edit


def fingerprint(pem_b64: str) -> str:
    """``sha256:`` + the first 12 hex of the certificate's SHA-256, computed here (the pipeline's format)."""
    cert = x509.load_pem_x509_certificate(base64.b64decode(pem_b64))
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()[:12]


def peer_lines(plan: str, cluster: str, peer: str) -> tuple[str, str]:
    """The two lines of ``--plan`` about ``peer`` in ``cluster``'s section: endpoint, then CA and cert."""
    section = plan.split(f"== {cluster}:", 1)[1].split("\n== ", 1)[0]
    lines = section.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"- {peer}: endpoint "):
            return line, lines[i + 1]
    raise AssertionError(f"no peer line for {peer} in {cluster}'s plan:\n{section}")


def quote_cluster_2_replicas(k: dict[str, Any]) -> None:
    """A quoted number in cluster-2's values: KKP's sandbox deploys it, Cilium 1.16's schema does not."""
    ai = k["cluster-2"].ai()
    values = yaml.safe_load(ai["spec"]["valuesBlock"])
    values.setdefault("clustermesh", {}).setdefault("apiserver", {})["replicas"] = "2"
    ai["spec"]["valuesBlock"] = yaml.safe_dump(values)
    k["cluster-2"].custom.replace_namespaced_custom_object(*AI, ai)
    wait_until("the sandbox's KKP applies the hand edit", k["cluster-2"].applied)


def test_a_key_the_real_chart_refuses_stops_the_run_before_any_write(
    sandbox_factory: Callable[..., Any], kubes: Kubes, cli_env: dict[str, str]
) -> None:
    assert CHARTS is not None
    sb = sandbox(sandbox_factory)
    k = kubes(sb)
    quote_cluster_2_replicas(k)
    spec = edited_spec(sb, with_chart(source=str(CHARTS)))
    before = ai_versions(k)

    with pytest.raises(ChartValuesRefusedError) as caught:
        cluster_mesh_setup(spec)

    message = str(caught.value)
    assert caught.value.cluster == "cluster-2"
    assert caught.value.key == "clustermesh.apiserver.replicas"
    assert "cluster cluster-2" in message and "clustermesh.apiserver.replicas" in message
    assert "got string, want integer" in message, "Helm's own message is shown"
    assert ai_versions(k) == before, "nothing may be written when the chart refuses a cluster's values"
    assert k["cluster-1"].peer_names() == [] and k["cluster-2"].peer_names() == []

    path = Path(sb.directory) / "edited.yaml"  # the spec edited_spec wrote
    plan = cli(cli_env, "setup", "--config", str(path), "--plan")
    assert plan.returncode == 1, plan.stdout + plan.stderr
    blocking = plan.stdout.split("== cluster-2:", 1)[1].splitlines()[1]
    assert blocking.startswith("BLOCKING: ") and "the key to fix: clustermesh.apiserver.replicas" in blocking
    assert "BLOCKING" not in plan.stdout.split("== cluster-2:", 1)[0], "cluster-1's values are fine"


def test_the_exact_values_are_rendered_again_right_before_each_write(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """The values can change between the check before step 2 and a write: the write step renders its own."""
    assert CHARTS is not None
    sb = sandbox(sandbox_factory)
    k = kubes(sb)
    spec = edited_spec(sb, with_chart(source=str(CHARTS)))
    cluster = spec.cluster("cluster-2")
    client = open_cluster(cluster, request_timeout=spec.timeouts.api)
    try:
        facts = check_prerequisites(client, cluster, spec)
        quote_cluster_2_replicas(k)  # after the check, before the write
        before = ai_versions(k)
        with pytest.raises(ChartValuesRefusedError, match="clustermesh.apiserver.replicas"):
            configure_mesh(
                client,
                facts,
                cluster,
                spec,
                step="4. Enable Cluster Mesh",
                peers=[],
                check_values=values_checker(spec, facts),
            )
    finally:
        client.close()
    assert ai_versions(k) == before


def test_plan_shows_per_peer_endpoint_trusted_ca_and_client_cert_as_the_chart_renders_them(
    sandbox_factory: Callable[..., Any], kubes: Kubes, cli_env: dict[str, str]
) -> None:
    """A first run's plan shows placeholders; once meshed (with the chart check on), the real fingerprints."""
    assert CHARTS is not None
    sb = sandbox(sandbox_factory)
    k = kubes(sb)
    path = write_edited_yaml(Path(sb.directory) / "mesh.yaml", with_chart(source=str(CHARTS)), "charted.yaml")

    first = cli(cli_env, "setup", "--config", str(path), "--plan")
    assert first.returncode == 0, first.stderr
    endpoint, _ = peer_lines(first.stdout, "cluster-1", "cluster-2")
    assert "192.0.2.1 (placeholder" in endpoint

    result = cluster_mesh_setup(edited_spec(sb, with_chart(source=str(CHARTS))))
    assert result.health.healthy, result.health.render_text()

    plan = cli(cli_env, "setup", "--config", str(path), "--plan")
    assert plan.returncode == 0, plan.stderr
    assert "chart not checked" not in plan.stdout
    for cluster, peer in (("cluster-1", "cluster-2"), ("cluster-2", "cluster-1")):
        remote = k[peer].secret_data(REMOTE_CERT)
        assert remote is not None
        service = k[peer].core.read_namespaced_service("clustermesh-apiserver", "kube-system")
        address = service.status.load_balancer.ingress[0].ip
        endpoint, files = peer_lines(plan.stdout, cluster, peer)
        assert f"https://{peer}.mesh.cilium.io:2379 → {address}" in endpoint
        assert f"trusted CA {peer}.etcd-client-ca.crt: {fingerprint(remote['ca.crt'])}" in files
        # the copy of the peer's remote certificate this cluster holds: under helm every render re-issues the
        # peer's leaves, so the copy may be older than the peer's newest, as long as the peer's CA signed it
        held = next(e for e in peer_entries(k[cluster].values()) if e["name"] == peer)["tls"]["cert"]
        assert f"client cert {peer}.etcd-client.crt: {fingerprint(held)}" in files
        assert issued_by(load_cert(held), load_cert(remote["ca.crt"]))
    assert "read by Deployment/clustermesh-apiserver:kvstoremesh" in plan.stdout  # 1.16: KVStoreMesh dials


def test_a_helm_repository_source_is_pulled_once_then_served_from_the_cache(
    sandbox_factory: Callable[..., Any], cli_env: dict[str, str]
) -> None:
    assert CHARTS is not None
    repo = HelmRepo(CHARTS / "cilium-1.16.9.tgz")
    try:
        sb = sandbox(sandbox_factory)
        path = write_edited_yaml(Path(sb.directory) / "mesh.yaml", with_chart(source=repo.url), "repo.yaml")
        first = cli(cli_env, "setup", "--config", str(path), "--plan")
        assert first.returncode == 0, first.stderr
        assert repo.requests == ["/index.yaml", "/charts/cilium-1.16.9.tgz"], "one pull for both clusters"
        second = cli(cli_env, "setup", "--config", str(path), "--plan")
        assert second.returncode == 0, second.stderr
        assert repo.requests == ["/index.yaml", "/charts/cilium-1.16.9.tgz"], "the second run must ask nothing"
        for plan in (first.stdout, second.stdout):
            assert "chart not checked" not in plan
            peer_lines(plan, "cluster-1", "cluster-2")  # rendered: the peer's view is there
        cached = list(Path(cli_env["CLUSTERMESH_STATE_DIR"]).rglob("cilium-1.16.9.tgz"))
        assert len(cached) == 1 and cached[0].read_bytes() == (CHARTS / "cilium-1.16.9.tgz").read_bytes()
    finally:
        repo.close()


def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()  # nothing listens: connections are refused
    return port


def test_an_unreachable_chart_source_is_said_once_and_the_setup_goes_on_as_before(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox(sandbox_factory)
    k = kubes(sb)
    url = f"http://127.0.0.1:{closed_port()}/"
    state = cluster_mesh_setup(edited_spec(sb, with_chart(source=url)), return_state=True)

    result = state.result()
    assert result.health.healthy, result.health.render_text()
    assert k["cluster-1"].peer_names() == ["cluster-2"] and k["cluster-2"].peer_names() == ["cluster-1"]
    said = [log.message for log in run_logs(state) if SKIPPED in log.message]
    assert len(said) == 1, said
    assert "cannot reach" in said[0] and url in said[0] and "cilium.chart.source" in said[0]


def test_the_helm_renderer_without_a_helm_binary_stops_before_any_write_naming_the_setting(
    sandbox_factory: Callable[..., Any], kubes: Kubes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CHARTS is not None
    if shutil.which("helm") is not None:
        empty = tmp_path / "no-helm"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))  # this machine has helm: hide it
    sb = sandbox(sandbox_factory)
    k = kubes(sb)
    spec = edited_spec(sb, with_chart(source=str(CHARTS), renderer="helm"))
    before = ai_versions(k)

    with pytest.raises(ChartRenderError) as caught:
        cluster_mesh_setup(spec)

    assert "cilium.chart.renderer is 'helm'" in str(caught.value)
    assert re.search(r"install helm .*or set cilium\.chart\.renderer to engine", str(caught.value))
    assert ai_versions(k) == before
