"""What the simulated Cilium chart renders and refuses, per version line (reference/cilium.md §1.1)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from sandbox import pki
from sandbox.chart import ChartError, render

CA = pki.make_ca("test-ca")
CA_B64 = {"cert": base64.b64encode(CA.cert_pem).decode(), "key": base64.b64encode(CA.key_pem).decode()}
HELM_ERROR = re.compile(r"^execution error at \(cilium/templates/[\w/.-]+:\d+:\d+\): ")


def mesh(name: str = "cluster-1", cid: int = 1, **clustermesh: Any) -> dict[str, Any]:
    return {"cluster": {"name": name, "id": cid}, "clustermesh": {"useAPIServer": True, **clustermesh}}


def test_defaults_are_the_charts_defaults() -> None:
    r = render("1.16.9", {})
    assert (r.cluster_name, r.cluster_id, r.mesh_enabled) == ("default", 0, False)
    assert (r.service_type, r.node_port, r.max_connected_clusters) == ("NodePort", 32379, 255)
    assert r.tls_method == "helm" and not r.certgen_is_hook


@pytest.mark.parametrize(("version", "kvstoremesh"), [("1.13.8", False), ("1.15.16", False), ("1.16.9", True)])
def test_kvstoremesh_default_follows_the_version(version: str, kvstoremesh: bool) -> None:
    assert render(version, mesh()).kvstoremesh is kvstoremesh


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("1.15.7", False),
        ("1.15.8", True),
        ("1.16.1", False),
        ("1.16.2", True),
        ("1.16.9", True),
        ("1.17.12", True),
        ("1.19.4", True),
    ],
)
def test_old_ca_key_is_ignored_or_refused_on_115_and_later(version: str, refused: bool) -> None:
    values = mesh(apiserver={"tls": {"ca": CA_B64}})
    if refused:
        with pytest.raises(ChartError) as err:
            render(version, values)
        assert HELM_ERROR.match(err.value.message)
        assert "cilium/templates/validate.yaml" in err.value.message
    else:
        r = render(version, values)
        assert r.ca_cert == "" and r.ca_source == ""


def test_ca_key_per_version() -> None:
    old = mesh(apiserver={"tls": {"ca": CA_B64}})
    new = {**mesh(), "tls": {"ca": CA_B64}}
    assert render("1.13.8", old).ca_source == "clustermesh.apiserver.tls.ca"
    assert render("1.13.8", new).ca_source == ""  # 1.13 knows only the clustermesh key
    assert render("1.14.16", old).ca_source == "clustermesh.apiserver.tls.ca"
    assert render("1.14.16", new).ca_source == "tls.ca"
    r = render("1.18.10", new)
    assert (r.ca_source, r.ca_cert, r.ca_key) == ("tls.ca", CA_B64["cert"], CA_B64["key"])


def test_ca_without_key_or_not_base64_fails_the_render() -> None:
    with pytest.raises(ChartError, match="missing tls.ca.key"):
        render("1.16.9", {**mesh(), "tls": {"ca": {"cert": CA_B64["cert"]}}})
    with pytest.raises(ChartError, match="base64"):
        render("1.16.9", {**mesh(), "tls": {"ca": {"cert": "not base64!", "key": "x"}}})


@pytest.mark.parametrize("version", ["1.13.8", "1.16.9", "1.19.4"])
def test_default_name_with_nonzero_id_is_refused(version: str) -> None:
    with pytest.raises(ChartError, match="cannot use default value"):
        render(version, {"cluster": {"id": 2}})


def test_name_format_is_enforced_from_116() -> None:
    bad = mesh(name="Cluster_1")
    assert render("1.15.16", bad).cluster_name == "Cluster_1"
    with pytest.raises(ChartError, match='cluster name "Cluster_1" is invalid'):
        render("1.16.9", bad)
    assert render("1.16.9", {**bad, "upgradeCompatibility": "1.15"}).cluster_name == "Cluster_1"
    with pytest.raises(ChartError):
        render("1.17.12", mesh(name="a" * 33))


def test_cluster_id_range_and_max_connected_clusters() -> None:
    with pytest.raises(ChartError, match="range 1 to 255"):
        render("1.16.9", mesh(cid=256))
    r = render("1.16.9", mesh(cid=400, maxConnectedClusters=511))
    assert (r.cluster_id, r.max_connected_clusters) == (400, 511)
    with pytest.raises(ChartError, match="255"):  # 1.14 has no maxConnectedClusters: fixed 255
        render("1.14.16", mesh(cid=400, maxConnectedClusters=511))
    with pytest.raises(ChartError, match="must be 255 or 511"):
        render("1.15.16", mesh(maxConnectedClusters=300))


def test_clusters_entries_skip_self_and_keep_tls_verbatim() -> None:
    entries = [
        {"name": "cluster-1", "ips": ["203.0.113.10"]},
        {"name": "cluster-2", "address": "", "port": 2379, "ips": ["203.0.113.20"]},
        {
            "name": "cluster-3",
            "address": "mesh.example.com",
            "tls": {"cert": "Y2VydA==", "key": "a2V5", "caCert": "Y2E="},
        },
    ]
    values = mesh(config={"enabled": True, "clusters": entries})
    r13 = render("1.13.8", values)
    assert [e.name for e in r13.clusters] == ["cluster-2", "cluster-3"]
    c2, c3 = r13.clusters
    assert not c2.has_tls and c2.ips == ("203.0.113.20",) and c2.port == 2379
    assert c3.has_tls and (c3.cert, c3.key) == ("Y2VydA==", "a2V5") and c3.ca_cert == ""  # 1.13 has no caCert
    assert c3.address == "mesh.example.com"
    assert render("1.14.16", values).clusters[1].ca_cert == "Y2E="


@pytest.mark.parametrize(
    ("version", "hook"),
    [("1.13.8", False), ("1.14.16", True), ("1.16.9", True), ("1.18.10", True), ("1.19.4", False)],
)
def test_cronjob_certgen_is_a_helm_hook_on_114_to_118(version: str, hook: bool) -> None:
    assert render(version, mesh(apiserver={"tls": {"auto": {"method": "cronJob"}}})).certgen_is_hook is hook
    assert render(version, mesh(apiserver={"tls": {"auto": {"method": "helm"}}})).certgen_is_hook is False


def test_service_type_and_certmanager_need_valid_values() -> None:
    r = render("1.16.9", mesh(apiserver={"service": {"type": "LoadBalancer"}}))
    assert r.service_type == "LoadBalancer"
    with pytest.raises(ChartError, match="Unsupported value"):
        render("1.16.9", mesh(apiserver={"service": {"type": "Elastic"}}))
    with pytest.raises(ChartError, match="certManagerIssuerRef"):
        render("1.16.9", mesh(apiserver={"tls": {"auto": {"method": "certmanager"}}}))
