"""Cilium 1.19 and 1.20: each profile fact about the chart proven with the real charts, and what the
pipeline does with it (the clusters map, deprecated per-entry certificates, authMode, cacheTTL, keys
1.20 removed, certificate lifetime, where the server's extra names go).

Facts about a chart are read from its ``values.yaml`` or proven by rendering it with Helm's engine;
both skip, saying why, where the archives (``../shared/charts``) or the engine are missing.
"""

from __future__ import annotations

import copy
import functools
import tarfile
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from clustermesh.checks.drift import check_drift
from clustermesh.checks.findings import Finding
from clustermesh.cilium import profile_for
from clustermesh.cilium.chart import KVSTOREMESH_SECRET, chart_for, peer_etcd_configs, render_chart
from clustermesh.cilium.profiles import REMOVED_IN_1_20
from clustermesh.errors import ChartRenderError
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step3_5_endpoints import uses_shared_ca
from clustermesh.values import (
    CLUSTERS_PATH,
    CaMaterial,
    clusters_form,
    configured_peers,
    deep_merge,
    peer_entries,
    plan_change,
    removed_keys_present,
    render_mesh_values,
    value_at,
)
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_values import CA_2, CERT_2, KEY_2, KKP_VALUES, mesh, peer
from tests.domain.test_verify import Mesh, make_ca, make_mesh, problems

CHARTS = CHARTS_DIR
needs_charts = charts_mark()
needs_engine = engine_mark

NEW_LINES = ["1.19.0", "1.19.6", "1.20.0"]
ONE_PER_LINE = ["1.13.18", "1.14.19", "1.15.19", "1.16.19", "1.17.18", "1.18.12", *NEW_LINES]
DEPRECATED_ENTRY_CERTS = "(deprecated) base64 encoded PEM values for the cluster client certificate"
# KKP creates clusters with hubble's certificates made by certgen (reference/kkp.md §2)
KKP_DEFAULTS = deep_merge(KKP_VALUES, {"hubble": {"tls": {"auto": {"method": "cronJob"}}}})


@functools.cache
def chart_values(version: str) -> tuple[dict[str, Any], str]:
    """(parsed, text) of the chart's own values.yaml."""
    assert CHARTS is not None
    with tarfile.open(chart_for(CHARTS, version)) as archive:
        member = archive.extractfile("cilium/values.yaml")
        assert member is not None
        text = member.read().decode()
    parsed = yaml.safe_load(text)
    assert isinstance(parsed, dict)
    return parsed, text


def overlay(version: str, *, ca_mode: str = "auto", shared_ca: CaMaterial | None = None) -> dict[str, Any]:
    """What the pipeline writes for cluster-1 with peer cluster-2."""
    spec = mesh(ca_mode=ca_mode)
    return render_mesh_values(profile_for(version), spec.first, spec, shared_ca=shared_ca, peers=[peer(2)])


def ours(version: str, *, ca_mode: str = "auto", shared_ca: CaMaterial | None = None) -> dict[str, Any]:
    """That, merged into a new KKP cluster's values."""
    return deep_merge(KKP_DEFAULTS, overlay(version, ca_mode=ca_mode, shared_ca=shared_ca))


def render(version: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    assert CHARTS is not None
    return render_chart(chart_for(CHARTS, version), values)


def named(manifests: list[dict[str, Any]], kind: str, prefix: str) -> list[dict[str, Any]]:
    return [o for o in manifests if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]


def shared_ca() -> CaMaterial:
    ca = make_ca("shared mesh CA")
    return CaMaterial(cert=ca.cert_b64, key=SecretStr(ca.key_b64))


# ------------------------------------------------------------------- chart defaults = profile facts


@needs_charts
@pytest.mark.parametrize("version", ONE_PER_LINE)
def test_the_charts_defaults_are_the_profiles_facts(version: str) -> None:
    profile = profile_for(version)
    values, text = chart_values(version)
    apiserver_tls = values["clustermesh"]["apiserver"]["tls"]

    assert apiserver_tls.get("authMode") == profile.auth_mode_default
    assert ("cacheTTL" in values["clustermesh"]) is profile.cache_ttl_supported
    assert values["clustermesh"].get("policyDefaultLocalCluster", False) is profile.policy_default_local_cluster
    assert ("defaultGlobalNamespace" in values["clustermesh"]) is profile.global_namespaces
    assert apiserver_tls["auto"]["certValidityDuration"] == profile.cert_validity_days
    assert value_at(values, (*profile.server_extra_names_path, "extraDnsNames")) == (True, [])
    assert (DEPRECATED_ENTRY_CERTS in text) is profile.per_entry_certs_deprecated
    if profile.minor >= 19:  # the keys exist up to 1.19 and are gone from 1.20's values.yaml
        for path in REMOVED_IN_1_20:
            assert value_at(values, path)[0] is (path not in profile.removed_value_paths), (version, path)
    assert profile.removed_value_paths == (REMOVED_IN_1_20 if profile.minor >= 20 else ())


# --------------------------------------------------------------------------------- the clusters map


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", NEW_LINES)
def test_clusters_as_a_map_stay_a_map_and_render_like_the_list(version: str) -> None:
    stale = {"address": "", "port": 2379, "ips": ["198.51.100.9"], "tls": {"cert": "old", "key": "old"}}
    current = copy.deepcopy(KKP_DEFAULTS)
    current["clustermesh"] = {
        "config": {"clusters": {"cluster-2": stale, "cluster-9": {"ips": ["198.51.100.99"], "enabled": False}}}
    }

    change = plan_change(current, overlay(version))

    clusters = change.new_values["clustermesh"]["config"]["clusters"]
    assert list(clusters) == ["cluster-2", "cluster-9"]  # the form and the order the cluster had
    assert "name" not in clusters["cluster-2"] and clusters["cluster-2"]["ips"] == ["203.0.113.2"]
    assert clusters["cluster-9"] == {"ips": ["198.51.100.99"], "enabled": False}  # not ours: untouched
    as_map = peer_etcd_configs(render(version, change.new_values), secret=KVSTOREMESH_SECRET)
    as_list = peer_etcd_configs(render(version, ours(version)), secret=KVSTOREMESH_SECRET)
    assert list(as_map) == ["cluster-2"]  # enabled: false leaves cluster-9 out
    assert as_map == as_list
    assert as_map["cluster-2"].ca_file_content is not None


@needs_charts
@needs_engine
def test_a_map_before_1_19_is_refused_by_the_charts_schema() -> None:
    values = deep_merge(ours("1.18.12"), {})
    values["clustermesh"]["config"]["clusters"] = {"cluster-2": {"address": "", "port": 2379, "ips": ["203.0.113.2"]}}

    with pytest.raises(ChartRenderError, match="got object, want array"):
        render("1.18.12", values)
    assert not profile_for("1.18.12").clusters_map_accepted


# --------------------------------------------------------------------- per-entry certificates, CA mode


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_entries_without_certs_use_the_local_remote_certificate_and_the_shared_ca(version: str) -> None:
    ca = shared_ca()
    values = ours(version, ca_mode="shared", shared_ca=ca)
    [entry] = values["clustermesh"]["config"]["clusters"]
    assert "tls" not in entry  # shared CA on 1.19+: the deprecated per-entry certificates are not written

    manifests = render(version, values)

    config = peer_etcd_configs(manifests, secret=KVSTOREMESH_SECRET)["cluster-2"]
    assert config.ca_file == "/var/lib/cilium/clustermesh/common-etcd-client-ca.crt"
    assert config.cert_file == "/var/lib/cilium/clustermesh/common-etcd-client.crt"
    assert config.cert is None  # from clustermesh-apiserver-remote-cert, which certgen makes at runtime
    [cilium_ca] = named(manifests, "Secret", "cilium-ca")
    assert cilium_ca["data"]["ca.crt"] == ca.cert  # issued by the CA every member shares


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_a_ca_cert_without_cert_and_key_is_not_used(version: str) -> None:
    values = ours(version)
    values["clustermesh"]["config"]["clusters"][0]["tls"] = {"caCert": CA_2}

    config = peer_etcd_configs(render(version, values), secret=KVSTOREMESH_SECRET)["cluster-2"]

    assert config.ca_file == "/var/lib/cilium/clustermesh/common-etcd-client-ca.crt"


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_auto_stays_per_peer_because_tls_ca_makes_the_release_own_cilium_ca(version: str) -> None:
    """Under KKP certgen has made ``cilium-ca`` before the mesh: a release that renders it cannot adopt it."""
    profile = profile_for(version)
    assert mesh().cilium.resolve(profile).ca_mode == "per-peer"
    assert mesh().cilium.resolve(profile).tls_method == "cronJob"

    per_peer = render(version, ours(version))
    shared = render(version, ours(version, ca_mode="shared", shared_ca=shared_ca()))

    assert named(per_peer, "Secret", "cilium-ca") == []  # certgen's own Secret stays certgen's
    assert len(named(shared, "Secret", "cilium-ca")) == 1  # Helm would have to take it over


def _facts(version: str, name: str = "cluster-1") -> ClusterFacts:
    return ClusterFacts(
        name=name,
        id=int(name.rsplit("-", 1)[1]),
        kubernetes_version="v1.31.0",
        cilium_version=version,
        detected_cilium_version=version,
        profile_line=profile_for(version).line,
        values_field="valuesBlock",
        kube_proxy_replacement="true",
        pod_cidrs=["172.25.0.0/16"],
        nodes=1,
        current_cluster_name=None,
        current_cluster_id=None,
        mesh_enabled=False,
        peers_configured=[],
    )


@pytest.mark.parametrize(("version", "shared"), [("1.13.18", True), ("1.18.12", False), ("1.19.6", False)])
def test_a_new_mesh_shares_a_ca_only_where_auto_or_the_spec_says_so(version: str, shared: bool) -> None:
    assert uses_shared_ca(mesh(), _facts(version)) is shared
    assert uses_shared_ca(mesh(ca_mode="shared"), _facts("1.20.0"))


@pytest.mark.parametrize(("version", "has_tls"), [("1.14.19", True), ("1.18.12", True), ("1.19.0", False)])
def test_shared_ca_entries_carry_certs_only_before_1_19(version: str, has_tls: bool) -> None:
    values = ours(version, ca_mode="shared", shared_ca=shared_ca())
    [entry] = values["clustermesh"]["config"]["clusters"]
    assert ("tls" in entry) is has_tls
    if has_tls:
        assert set(entry["tls"]) == {"cert", "key"}


@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_per_peer_entries_keep_the_peers_certificate_and_ca(version: str) -> None:
    [entry] = ours(version)["clustermesh"]["config"]["clusters"]
    assert entry["tls"] == {"cert": CERT_2, "key": KEY_2, "caCert": CA_2}


# ------------------------------------------------------------------------ authMode and its ConfigMap


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_the_remote_users_configmap_comes_from_the_chart_with_the_values_we_write(version: str) -> None:
    manifests = render(version, ours(version))

    [users] = named(manifests, "ConfigMap", "clustermesh-remote-users")
    assert yaml.safe_load(users["data"]["users.yaml"]) == {"users": [{"name": "remote-cluster-2", "role": "remote"}]}
    [deployment] = named(manifests, "Deployment", "clustermesh-apiserver")
    mounted = [v.get("configMap", {}).get("name") for v in deployment["spec"]["template"]["spec"]["volumes"]]
    assert "clustermesh-remote-users" in mounted

    # only config.enabled false, which the pipeline never writes, leaves it to be created by hand
    by_hand = deep_merge(ours(version), {"clustermesh": {"config": {"enabled": False}}})
    assert named(render(version, by_hand), "ConfigMap", "clustermesh-remote-users") == []


@needs_charts
@needs_engine
def test_legacy_auth_on_1_18_needs_no_users_configmap() -> None:
    manifests = render("1.18.12", ours("1.18.12"))
    assert profile_for("1.18.12").auth_mode_default == "legacy"
    assert named(manifests, "ConfigMap", "clustermesh-remote-users") == []


# ------------------------------------------------------------------- cacheTTL, lifetime, extra names


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_cache_ttl_reaches_the_agents_config(version: str) -> None:
    values = deep_merge(ours(version), {"clustermesh": {"cacheTTL": "5m"}})
    [config] = named(render(version, values), "ConfigMap", "cilium-config")
    assert config["data"]["clustermesh-cache-ttl"] == "5m"


def _certgen_server_cert(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [job] = named(manifests, "Job", "clustermesh-apiserver-generate-certs")
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    certs = yaml.safe_load(env["CILIUM_CERTGEN_CONFIG"])["certs"]
    return next(c for c in certs if c["name"] == "clustermesh-apiserver-server-cert")


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.19.6", "1.20.0"])
def test_certgen_gets_the_lines_lifetime_and_the_extra_names_where_the_profile_puts_them(version: str) -> None:
    profile = profile_for(version)
    names = {"extraDnsNames": ["mesh.example.org"], "extraIpAddresses": ["192.0.2.7"]}
    values = deep_merge(ours(version), _nest(profile.server_extra_names_path, names))

    server = _certgen_server_cert(render(version, values))

    assert server["validity"] == f"{profile.cert_validity_days * 24}h"
    assert "mesh.example.org" in server["hosts"] and "192.0.2.7" in server["hosts"]


@needs_charts
@needs_engine
def test_1_20_still_reads_the_old_extra_names_location_as_a_fallback() -> None:
    old_place = profile_for("1.19.6").server_extra_names_path
    values = deep_merge(ours("1.20.0"), _nest(old_place, {"extraDnsNames": ["a.b"]}))
    assert "a.b" in _certgen_server_cert(render("1.20.0", values))["hosts"]


def _nest(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
    node: Any = leaf
    for key in reversed(path):
        node = {key: node}
    return dict(node)


# ------------------------------------------------------------------------------- 1.20's removed keys


LEFTOVERS = {
    "clustermesh": {
        "enableMCSAPISupport": True,
        "apiserver": {
            "tls": {
                "enableSecrets": False,
                "server": {"cert": "c2VydmVy", "key": "a2V5"},
                "admin": {"cert": "YWRtaW4=", "key": ""},
            }
        },
    }
}


@needs_charts
@needs_engine
def test_1_20_renders_exactly_the_same_with_the_removed_keys_set() -> None:
    plain = render("1.20.0", ours("1.20.0"))
    assert render("1.20.0", ours("1.20.0")) == plain  # deterministic: no certificates minted in the render

    assert render("1.20.0", deep_merge(ours("1.20.0"), LEFTOVERS)) == plain


@needs_charts
@needs_engine
def test_1_20_refuses_certs_in_values_once_auto_generation_is_off() -> None:
    values = deep_merge(ours("1.20.0"), LEFTOVERS)
    values["clustermesh"]["apiserver"]["tls"]["auto"]["enabled"] = False
    with pytest.raises(ChartRenderError, match="has been removed"):
        render("1.20.0", values)


@pytest.mark.parametrize("version", ["1.20.0", "1.19.6"])
def test_what_we_write_never_holds_a_removed_key(version: str) -> None:
    for values in (ours(version), ours(version, ca_mode="shared", shared_ca=shared_ca())):
        assert all(not value_at(values, path)[0] for path in REMOVED_IN_1_20)


def test_leftovers_are_named_only_where_the_line_removed_them_and_only_when_set() -> None:
    values = deep_merge(KKP_VALUES, LEFTOVERS)
    found = removed_keys_present(profile_for("1.20.0"), values)
    assert [".".join(p) for p in found] == [
        "clustermesh.apiserver.tls.server.cert",
        "clustermesh.apiserver.tls.server.key",
        "clustermesh.apiserver.tls.admin.cert",  # admin.key is "": nothing to report
        "clustermesh.apiserver.tls.enableSecrets",  # false is a value the user meant
        "clustermesh.enableMCSAPISupport",
    ]
    assert removed_keys_present(profile_for("1.19.6"), values) == []


# ---------------------------------------------------------------------- reading both forms, and drift


def test_both_forms_read_the_same_peers() -> None:
    as_list = {"clustermesh": {"config": {"clusters": [{"name": "a", "ips": ["1"]}, {"name": "b", "enabled": False}]}}}
    as_map = {"clustermesh": {"config": {"clusters": {"a": {"ips": ["1"]}, "b": {"enabled": False}}}}}

    assert (clusters_form(as_list), clusters_form(as_map), clusters_form({})) == ("list", "map", None)
    assert peer_entries(as_list) == peer_entries(as_map)
    assert configured_peers(as_list) == configured_peers(as_map) == ["a"]


def test_a_list_stays_a_list_when_merged() -> None:
    current = {"clustermesh": {"config": {"clusters": [{"name": "cluster-9", "ips": ["198.51.100.99"]}]}}}
    new = plan_change(current, {"clustermesh": {"config": {"clusters": [{"name": "cluster-2", "ips": ["x"]}]}}})
    assert value_at(new.new_values, CLUSTERS_PATH)[1] == [
        {"name": "cluster-9", "ips": ["198.51.100.99"]},
        {"name": "cluster-2", "ips": ["x"]},
    ]


def _to_map_form(values: dict[str, Any]) -> None:
    entries = values["clustermesh"]["config"]["clusters"]
    values["clustermesh"]["config"]["clusters"] = {e.pop("name"): e for e in entries}


def drift(mesh_: Mesh) -> list[Finding]:
    """The drift check alone, with facts as step 1 would give them (step 1 is tested on its own)."""
    facts = {name: _facts(cluster.cilium, name) for name, cluster in mesh_.clusters.items()}
    return check_drift(mesh_.clusters, facts, mesh_.spec)


def _warnings_and_failures(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.reason) for f in problems(findings)]


def test_a_mesh_written_as_a_map_on_1_19_has_no_drift() -> None:
    mesh_ = make_mesh("1.19.6", "1.19.6")
    for name in ("cluster-1", "cluster-2"):
        values = mesh_[name].values()
        _to_map_form(values)
        mesh_[name].set_values(values)

    assert _warnings_and_failures(drift(mesh_)) == []


def test_a_map_on_1_18_and_a_disabled_peer_on_1_19_are_failures() -> None:
    old = make_mesh("1.18.12", "1.18.12")
    values = old["cluster-1"].values()
    _to_map_form(values)
    old["cluster-1"].set_values(values)
    [failure] = problems(drift(old))
    assert "is a map keyed by name, which Cilium 1.18 does not read" in failure.reason

    new = make_mesh("1.19.6", "1.19.6")
    values = new["cluster-1"].values()
    values["clustermesh"]["config"]["clusters"][0]["enabled"] = False
    new["cluster-1"].set_values(values)
    [failure] = problems(drift(new))
    assert failure.reason == "peer cluster-2 is disabled in clustermesh.config.clusters (enabled: false)"


def test_removed_keys_left_on_1_20_are_one_warning_each_with_the_key_and_the_fix() -> None:
    mesh_ = make_mesh("1.20.0", "1.20.0")
    assert _warnings_and_failures(drift(mesh_)) == []
    values = deep_merge(mesh_["cluster-2"].values(), LEFTOVERS)
    mesh_["cluster-2"].set_values(values)

    found = problems(drift(mesh_))

    assert {f.level for f in found} == {"warning"} and {f.subject for f in found} == {"cluster-2"}
    reasons = {f.reason.split(" is set")[0]: f for f in found}
    assert set(reasons) == {
        "clustermesh.apiserver.tls.server.cert",
        "clustermesh.apiserver.tls.server.key",
        "clustermesh.apiserver.tls.admin.cert",
        "clustermesh.apiserver.tls.enableSecrets",
        "clustermesh.enableMCSAPISupport",
    }
    assert all("no longer reads (silently ignored)" in f.reason and "1.20.0" in f.reason for f in found)
    assert "clustermesh.mcsapi.enabled" in reasons["clustermesh.enableMCSAPISupport"].fix
    assert "clustermesh-apiserver-server-cert" in reasons["clustermesh.apiserver.tls.server.cert"].fix


def test_a_shared_ca_mesh_on_1_19_is_judged_without_per_entry_certs() -> None:
    mesh_ = make_mesh("1.19.6", "1.19.6", cilium={"ca_mode": "shared"})
    # the test mesh writes entries with the old shape (tls.cert/key): drift says they are deprecated
    stale = {f.subject: f for f in problems(drift(mesh_))}
    assert set(stale) == {"cluster-1 → cluster-2", "cluster-2 → cluster-1"}
    assert all(f.level == "warning" and "deprecated from Cilium 1.19" in f.reason for f in stale.values())

    for name in ("cluster-1", "cluster-2"):
        values = mesh_[name].values()
        for entry in values["clustermesh"]["config"]["clusters"]:
            del entry["tls"]
        mesh_[name].set_values(values)
    findings = drift(mesh_)
    assert _warnings_and_failures(findings) == []
    assert any("remote certificate the local one (shared CA)" in f.reason for f in findings)


def test_step1_reads_the_peers_of_a_map_form_clusters_list() -> None:
    """Step 1's ``peers_configured`` (which decides 'fresh mesh or rerun') reads both forms, skipping disabled."""
    from clustermesh.steps.step1_prerequisites import _configured_peers

    as_map = {"clustermesh": {"config": {"clusters": {"cluster-2": {"port": 2379}, "old": {"enabled": False}}}}}
    as_list = {"clustermesh": {"config": {"clusters": [{"name": "cluster-2", "port": 2379}]}}}
    assert _configured_peers(as_map) == ["cluster-2"]
    assert _configured_peers(as_list) == ["cluster-2"]
