"""What the simulated Cilium chart renders and refuses, per version line (reference/cilium.md §1.1)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from sandbox import pki
from sandbox.chart import ChartError, mesh_secret_data, render

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


def test_ca_without_key_is_ignored_and_one_not_base64_or_not_parsed_fails_the_render() -> None:
    assert render("1.16.9", {**mesh(), "tls": {"ca": {"cert": CA_B64["cert"]}}}).ca_source == ""
    not_a_cert = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n").decode()
    with pytest.raises(ChartError, match="error parsing certificate"):
        render("1.16.9", {**mesh(), "tls": {"ca": {"cert": not_a_cert, "key": CA_B64["key"]}}})
    with pytest.raises(ChartError, match="base64"):
        render("1.16.9", {**mesh(), "tls": {"ca": {"cert": "not base64!", "key": "x"}}})


@pytest.mark.parametrize("version", ["1.16.9", "1.19.4", "1.20.0"])
def test_default_name_with_nonzero_id_is_refused_from_116(version: str) -> None:
    with pytest.raises(ChartError, match="cannot use default value"):
        render(version, {"cluster": {"id": 2}})


@pytest.mark.parametrize("version", ["1.13.8", "1.14.16", "1.15.16"])
def test_before_116_the_chart_renders_a_default_name_with_an_id(version: str) -> None:
    """Only the 1.16+ validate.yaml checks it; on older lines the agent refuses at runtime (the datapath)."""
    r = render(version, {"cluster": {"id": 2}})
    assert (r.cluster_name, r.cluster_id) == ("default", 2)


def test_name_format_is_enforced_from_116() -> None:
    bad = mesh(name="Cluster_1")
    assert render("1.15.16", bad).cluster_name == "Cluster_1"
    with pytest.raises(ChartError, match='cluster name "Cluster_1" is invalid'):
        render("1.16.9", bad)
    assert render("1.16.9", {**bad, "upgradeCompatibility": "1.15"}).cluster_name == "Cluster_1"
    with pytest.raises(ChartError):
        render("1.16.9", {**bad, "upgradeCompatibility": "1.16"})
    with pytest.raises(ChartError):  # 1.17+: no upgradeCompatibility bypass any more
        render("1.17.12", {**bad, "upgradeCompatibility": "1.15"})
    with pytest.raises(ChartError):
        render("1.17.12", mesh(name="a" * 33))
    with pytest.raises(ChartError, match="cannot be empty"):
        render("1.20.0", mesh(name=""))


def test_cluster_id_range_is_the_agents_check_and_max_connected_clusters_the_charts() -> None:
    """No chart checks cluster.id's range (the agent refuses to start, as the sandbox's datapath does)."""
    assert render("1.16.9", mesh(cid=256)).cluster_id == 256
    r = render("1.16.9", mesh(cid=400, maxConnectedClusters=511))
    assert (r.cluster_id, r.max_connected_clusters) == (400, 511)
    r14 = render("1.14.16", mesh(cid=400, maxConnectedClusters=511))  # 1.14 has no maxConnectedClusters
    assert (r14.cluster_id, r14.max_connected_clusters) == (400, 255)
    with pytest.raises(ChartError, match="must be 255 or 511"):
        render("1.15.16", mesh(maxConnectedClusters=300))


@pytest.mark.parametrize("version", ["1.16.9", "1.20.0"])
def test_from_116_the_schema_wants_an_integer_cluster_id(version: str) -> None:
    with pytest.raises(ChartError, match="/cluster/id': got string, want integer"):
        render(version, mesh(cid="2"))  # type: ignore[arg-type]
    assert render("1.15.16", mesh(cid="2")).cluster_id == 2  # type: ignore[arg-type]


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
    with pytest.raises(ChartError, match="nil pointer"):  # 1.13 reads `.tls.key` of every entry
        render("1.13.8", values)
    entries[1]["tls"] = {"cert": "Y2VydA==", "key": "a2V5"}
    r13 = render("1.13.8", values)
    assert [e.name for e in r13.clusters] == ["cluster-2", "cluster-3"]
    c2, c3 = r13.clusters
    assert c2.has_tls and c2.ips == ("203.0.113.20",) and c2.port == 2379
    assert c3.has_tls and (c3.cert, c3.key) == ("Y2VydA==", "a2V5") and c3.ca_cert == ""  # 1.13 has no caCert
    assert c3.address == "mesh.example.com"
    assert render("1.14.16", values).clusters[1].ca_cert == "Y2E="


@pytest.mark.parametrize(
    ("version", "hook"),
    [
        ("1.13.8", False),
        ("1.14.16", True),
        ("1.16.9", True),
        ("1.18.10", True),
        ("1.18.12", True),
        ("1.19.0", False),
        ("1.20.0", False),
    ],
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


def test_the_supported_lines_are_the_version_tables() -> None:
    assert render("1.20.0", mesh()).line == "1.20"
    with pytest.raises(ChartError, match=r"not available in the sandbox \(1.13 to 1.20 only\)"):
        render("1.21.0", mesh())
    with pytest.raises(ChartError, match="not available"):
        render("1.12.9", mesh())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


LOCAL_CA = b64("local CA")
REMOTE = {"tls.crt": b64("remote cert"), "tls.key": b64("remote key")}


def secret(version: str, *entries: dict[str, Any], **apiserver: Any) -> dict[str, str]:
    values = mesh(config={"enabled": True, "clusters": list(entries)}, apiserver=apiserver)
    return mesh_secret_data(render(version, values), LOCAL_CA, REMOTE)


def config(data: dict[str, str], peer: str = "cluster-2") -> str:
    return base64.b64decode(data[peer]).decode()


def test_113_trusts_only_the_old_ca_key_and_presents_the_entrys_certificate() -> None:
    """The real 1.13 chart writes `clustermesh.apiserver.tls.ca.cert` as every peer's CA file: empty without it."""
    tls = {"cert": b64("peer cert"), "key": b64("peer key")}
    plain = secret("1.13.18", {"name": "cluster-2", "ips": ["203.0.113.2"], "port": 2379, "tls": tls})
    assert plain["cluster-2.etcd-client-ca.crt"] == ""
    assert plain["cluster-2.etcd-client.crt"] == tls["cert"]
    peer = {"name": "cluster-2", "ips": ["203.0.113.2"], "port": 2379, "tls": tls}
    shared = secret("1.13.18", peer, tls={"ca": CA_B64})
    assert shared["cluster-2.etcd-client-ca.crt"] == CA_B64["cert"]


@pytest.mark.parametrize("version", ["1.14.16", "1.16.9", "1.20.0"])
def test_a_ca_cert_counts_only_with_the_entrys_cert_and_key(version: str) -> None:
    only_ca = secret(version, {"name": "cluster-2", "ips": ["203.0.113.2"], "port": 2379, "tls": {"caCert": "Y2E="}})
    assert only_ca["cluster-2.etcd-client-ca.crt"] == LOCAL_CA
    assert only_ca["cluster-2.etcd-client.crt"] == REMOTE["tls.crt"]
    full = {"cert": "Y2VydA==", "key": "a2V5", "caCert": "Y2E="}
    with_cert = secret(version, {"name": "cluster-2", "ips": ["203.0.113.2"], "port": 2379, "tls": full})
    assert (with_cert["cluster-2.etcd-client-ca.crt"], with_cert["cluster-2.etcd-client.crt"]) == ("Y2E=", "Y2VydA==")


def test_ips_win_over_address_and_an_entry_needs_one_of_them() -> None:
    both = secret("1.16.9", {"name": "cluster-2", "address": "m.example.com", "ips": ["203.0.113.2"], "port": 2379})
    assert "- https://cluster-2.mesh.cilium.io:2379\n" in config(both)
    address = secret("1.16.9", {"name": "cluster-2", "address": "m.example.com", "port": 2379})
    assert "- https://m.example.com:2379\n" in config(address)
    no_port = secret("1.16.9", {"name": "cluster-2", "address": "m.example.com"})
    assert "- https://m.example.com:<no value>\n" in config(no_port)  # Helm's own text: nothing dials that
    with pytest.raises(ChartError, match="missing clustermesh.apiserver.config.clusters.address"):
        secret("1.16.9", {"name": "cluster-2", "port": 2379})


def test_119_takes_clusters_as_a_map_and_skips_disabled_entries() -> None:
    as_map = {"cluster-2": {"ips": ["203.0.113.2"], "port": 2379}, "cluster-3": {"address": "c3", "enabled": False}}
    r = render("1.19.4", mesh(config={"enabled": True, "clusters": as_map}))
    assert [e.name for e in r.clusters] == ["cluster-2"]
    with pytest.raises(ChartError, match="want array"):
        render("1.18.10", mesh(config={"enabled": True, "clusters": as_map}))
    listed = [{"name": "cluster-2", "ips": ["203.0.113.2"], "port": 2379, "enabled": False}]
    assert render("1.20.0", mesh(config={"enabled": True, "clusters": listed})).clusters == ()
    assert [e.name for e in render("1.18.10", mesh(config={"enabled": True, "clusters": listed})).clusters] == [
        "cluster-2"
    ]


@pytest.mark.parametrize(("version", "rendered"), [("1.13.8", False), ("1.14.16", False), ("1.15.16", True)])
def test_the_mesh_secret_without_use_api_server(version: str, rendered: bool) -> None:
    values = {"cluster": {"name": "cluster-1", "id": 1}, "clustermesh": {"config": {"enabled": True}}}
    assert render(version, values).config_enabled is rendered


@pytest.mark.parametrize(
    ("version", "value", "config"),
    [("1.13.8", None, "disabled"), ("1.16.9", None, "false"), ("1.16.9", True, "true"), ("1.20.0", "true", "true")],
)
def test_kube_proxy_replacement_reaches_cilium_config(version: str, value: Any, config: str) -> None:
    """Values the line's chart does not know are not refused (a known difference of the conformance suite)."""
    values = {} if value is None else {"kubeProxyReplacement": value}
    assert render(version, values).kube_proxy_replacement == config
