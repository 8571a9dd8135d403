"""The values the pipeline writes, rendered by Helm's own engine with Cilium's real charts (offline).

What the agents (or KVStoreMesh) would dial and trust is read from the rendered Secrets, so a values
shape the chart ignores, moves or refuses shows here and not first on a cluster.
"""

from __future__ import annotations

import base64
import functools
import sys
from pathlib import Path
from typing import Any

import pytest

from clustermesh.cilium import profile_for
from clustermesh.cilium.chart import (
    AGENT_SECRET,
    KVSTOREMESH_SECRET,
    EtcdConfig,
    chart_for,
    peer_etcd_configs,
    render_chart,
)
from clustermesh.errors import ChartRenderError, ClusterMeshError
from clustermesh.values import CaMaterial, deep_merge, render_mesh_values
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_values import CA_2, CERT_2, KEY_2, KKP_VALUES, SHARED_CA_CERT, SHARED_CA_KEY, mesh, peer

CHARTS = CHARTS_DIR
needs_charts = charts_mark()
needs_engine = engine_mark


def pem(b64: str) -> str:
    return base64.b64decode(b64).decode()


def values_for(version: str, *, shared_ca: CaMaterial | None = None, **extra: Any) -> dict[str, Any]:
    """What the pipeline writes for cluster-1 of a 2-cluster mesh, merged into KKP's own values."""
    spec = mesh(ca_mode="shared") if shared_ca is not None else mesh()
    ours = render_mesh_values(profile_for(version), spec.first, spec, shared_ca=shared_ca, peers=[peer(2)])
    kkp = dict(KKP_VALUES)
    if version.startswith("1.13"):
        kkp["kubeProxyReplacement"] = "strict"  # the 1.13 chart knows no "true"
    return deep_merge(deep_merge(kkp, ours), extra)


@functools.cache
def _render(version: str, kvstoremesh: bool | None = None) -> list[dict[str, Any]]:
    assert CHARTS is not None
    extra: dict[str, Any] = {}
    if kvstoremesh is not None:
        extra = {"clustermesh": {"apiserver": {"kvstoremesh": {"enabled": kvstoremesh}}}}
    return render_chart(chart_for(CHARTS, version), values_for(version, **extra))


def only(configs: dict[str, EtcdConfig]) -> EtcdConfig:
    assert list(configs) == ["cluster-2"]
    return configs["cluster-2"]


# ---------------------------------------------------------------------------------------- rendering


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.16.9", "1.19.6"])
def test_kvstoremesh_dials_the_peer_and_trusts_the_peers_ca_from_the_values(version: str) -> None:
    manifests = _render(version)

    dialer = only(peer_etcd_configs(manifests, secret=KVSTOREMESH_SECRET))
    assert dialer.endpoints == ("https://cluster-2.mesh.cilium.io:2379",)
    assert dialer.ca_file == "/var/lib/cilium/clustermesh/cluster-2.etcd-client-ca.crt"
    assert dialer.ca_file_content == pem(CA_2)
    assert (dialer.cert, dialer.key) == (pem(CERT_2), pem(KEY_2))
    assert dialer.read_by == ("Deployment/clustermesh-apiserver:kvstoremesh",)
    # the agents, with KVStoreMesh on (the default from 1.16), talk to their own apiserver only
    agent = only(peer_etcd_configs(manifests))
    assert agent.endpoints == ("https://clustermesh-apiserver.kube-system.svc:2379",)
    assert agent.read_by == ("DaemonSet/cilium:cilium-agent",)
    assert agent.ca_file_content != pem(CA_2)
    # `ips` become a hostAlias of the dialing pods: the name in the endpoint resolves to the peer's LB
    aliases = [
        alias
        for obj in manifests
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "clustermesh-apiserver"
        for alias in obj["spec"]["template"]["spec"].get("hostAliases", [])
    ]
    assert {"ip": "203.0.113.2", "hostnames": ["cluster-2.mesh.cilium.io"]} in aliases


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.16.9", "1.19.6"])
def test_without_kvstoremesh_the_agents_dial_the_peer_with_its_ca(version: str) -> None:
    manifests = _render(version, kvstoremesh=False)

    agent = only(peer_etcd_configs(manifests, secret=AGENT_SECRET))
    assert agent.endpoints == ("https://cluster-2.mesh.cilium.io:2379",)
    assert agent.ca_file_content == pem(CA_2)
    assert agent.read_by == ("DaemonSet/cilium:cilium-agent",)
    with pytest.raises(ChartRenderError, match="no Secret cilium-kvstoremesh"):
        peer_etcd_configs(manifests, secret=KVSTOREMESH_SECRET)


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.16.9", "1.19.6"])
def test_a_string_cluster_id_is_refused_by_the_charts_schema_with_its_message(version: str) -> None:
    assert CHARTS is not None
    values = values_for(version, cluster={"id": "2"})

    with pytest.raises(ChartRenderError) as info:
        render_chart(chart_for(CHARTS, version), values)

    assert "/cluster/id" in info.value.problem and "got string, want integer" in info.value.problem
    assert f"cilium-{version}.tgz" in str(info.value)
    assert isinstance(info.value, ClusterMeshError)


@needs_charts
@needs_engine
def test_113_without_the_shared_ca_key_gives_the_peer_an_empty_ca_file() -> None:
    """The issue's table, row 2: 1.13 reads the peer CA only from `clustermesh.apiserver.tls.ca`."""
    assert CHARTS is not None
    manifests = render_chart(chart_for(CHARTS, "1.13.18"), values_for("1.13.18"))

    agent = only(peer_etcd_configs(manifests))
    assert agent.endpoints == ("https://cluster-2.mesh.cilium.io:2379",)
    assert agent.ca_file == "/var/lib/cilium/clustermesh/cluster-2.etcd-client-ca.crt"
    assert agent.ca_file_content == ""  # the file exists, empty: TLS to the peer cannot verify
    assert agent.cert == pem(CERT_2)

    shared = CaMaterial(cert=SHARED_CA_CERT, key=SHARED_CA_KEY)  # type: ignore[arg-type]
    fixed = render_chart(chart_for(CHARTS, "1.13.18"), values_for("1.13.18", shared_ca=shared))
    assert only(peer_etcd_configs(fixed)).ca_file_content == pem(SHARED_CA_CERT)


@needs_charts
@needs_engine
def test_a_failing_template_is_helms_own_message() -> None:
    assert CHARTS is not None
    values = values_for("1.13.18", kubeProxyReplacement="true")

    with pytest.raises(ChartRenderError, match="kubeproxyReplacement must be explicitly set"):
        render_chart(chart_for(CHARTS, "1.13.18"), values)


# ------------------------------------------------------------------------------- without the engine


def test_chart_for_picks_the_exact_archive_or_the_lines_latest_patch(tmp_path: Path) -> None:
    for name in ("cilium-1.16.2.tgz", "cilium-1.16.19.tgz", "cilium-1.16.9.tgz", "cilium-1.17.0.tgz"):
        (tmp_path / name).write_bytes(b"")

    assert chart_for(tmp_path, "1.16.9") == tmp_path / "cilium-1.16.9.tgz"
    assert chart_for(tmp_path, "v1.16.2") == tmp_path / "cilium-1.16.2.tgz"
    assert chart_for(tmp_path, "1.16") == tmp_path / "cilium-1.16.19.tgz"  # 19 > 9: numbers, not text
    with pytest.raises(ChartRenderError) as info:
        chart_for(tmp_path, "1.18")
    assert "1.16.2, 1.16.9, 1.16.19, 1.17.0" in str(info.value)


def test_a_missing_engine_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "helm_python", None)  # import now raises ImportError

    with pytest.raises(ChartRenderError, match="uv sync --group charts"):
        render_chart(tmp_path / "cilium-1.16.9.tgz", {})


def test_a_rendered_secret_alone_is_read_by_its_key_names() -> None:
    """Without a workload in the render, file names are the Secret's keys (the agent's projection)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    config = (
        "endpoints:\n- https://cluster-3.mesh.cilium.io:2379\n"
        "trusted-ca-file: /var/lib/cilium/clustermesh/cluster-3.etcd-client-ca.crt\n"
        "key-file: /var/lib/cilium/clustermesh/cluster-3.etcd-client.key\n"
        "cert-file: /var/lib/cilium/clustermesh/cluster-3.etcd-client.crt\n"
    )
    secret = {
        "kind": "Secret",
        "metadata": {"name": AGENT_SECRET},
        "data": {
            "cluster-3": b64(config),
            "cluster-3.etcd-client-ca.crt": b64("CA"),
            "cluster-3.etcd-client.key": None,
            "cluster-3.etcd-client.crt": b64("CRT"),
        },
    }

    cfg = peer_etcd_configs([secret])["cluster-3"]
    assert (cfg.ca_file_content, cfg.cert, cfg.key) == ("CA", "CRT", "")
    assert "CRT" not in repr(cfg)
    secret["data"]["cluster-3"] = b64("just text")  # type: ignore[index]
    with pytest.raises(ChartRenderError, match="not an etcd config"):
        peer_etcd_configs([secret])
