"""Values: read what the cluster has, render what the guide adds, merge by name, never touch KKP's keys."""

from __future__ import annotations

import base64
import copy
import pickle
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from clustermesh.certs import fingerprint
from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import ClusterMeshError, KkpOwnedKeyError, SpecError, ValuesError
from clustermesh.spec import MeshSpec, from_data
from clustermesh.values import (
    KKP_OWNED_PATHS,
    CaMaterial,
    PeerEntry,
    deep_merge,
    dump_values,
    legacy_paths_to_remove,
    plan_change,
    read_values,
    redact_values,
    render_mesh_values,
)


def fake_pem_b64(kind: str, seed: str) -> str:
    """Base64 of a PEM block, shaped like a Secret's tls.crt / tls.key (content is irrelevant here)."""
    body = base64.b64encode((seed * 40).encode()).decode()
    return base64.b64encode(f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()).decode()


CERT_2 = fake_pem_b64("CERTIFICATE", "peer-2-cert")
KEY_2 = fake_pem_b64("EC PRIVATE KEY", "peer-2-key")
CA_2 = fake_pem_b64("CERTIFICATE", "peer-2-ca")
CERT_3 = fake_pem_b64("CERTIFICATE", "peer-3-cert")
KEY_3 = fake_pem_b64("EC PRIVATE KEY", "peer-3-key")
CA_3 = fake_pem_b64("CERTIFICATE", "peer-3-ca")
SHARED_CA_CERT = fake_pem_b64("CERTIFICATE", "shared-ca")
SHARED_CA_KEY = fake_pem_b64("RSA PRIVATE KEY", "shared-ca-key")

KKP_VALUES: dict[str, Any] = {
    "cni": {"exclusive": False},
    "ipam": {"operator": {"clusterPoolIPv4MaskSize": 24, "clusterPoolIPv4PodCIDRList": ["172.25.0.0/16"]}},
    "k8sServiceHost": "x7k2pq9wzn.example.com",
    "k8sServicePort": 6443,
    "kubeProxyReplacement": "true",
    "operator": {"replicas": 1, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
    "hubble": {"relay": {"enabled": True}},
}


def mesh(**cilium: Any) -> MeshSpec:
    return from_data(
        {
            "clusters": [
                {"name": "cluster-1", "id": 1, "kubeconfig": {"path": "/k/1"}},
                {"name": "cluster-2", "id": 2, "kubeconfig": {"path": "/k/2"}},
                {"name": "cluster-3", "id": 3, "kubeconfig": {"path": "/k/3"}},
            ],
            "cilium": cilium,
        }
    )


def peer(n: int, **overrides: Any) -> PeerEntry:
    material = {2: (CERT_2, KEY_2, CA_2), 3: (CERT_3, KEY_3, CA_3)}[n]
    fields: dict[str, Any] = {
        "name": f"cluster-{n}",
        "ips": [f"203.0.113.{n}"],
        "cert": material[0],
        "key": material[1],
        "ca_cert": material[2],
    }
    return PeerEntry(**{**fields, **overrides})


def ai(values: dict[str, Any] | None = None, block: str | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"applicationRef": {"name": "cilium", "version": "1.16.9"}, **spec}
    if values is not None:
        body["values"] = values
    if block is not None:
        body["valuesBlock"] = block
    return {"metadata": {"name": "cilium", "namespace": "kube-system"}, "spec": body}


# ---- read_values -------------------------------------------------------------------------------


def test_values_block_is_read_when_set_and_values_is_empty() -> None:
    values, field = read_values(ai(values={}, block=yaml.safe_dump(KKP_VALUES)))
    assert field == "valuesBlock"
    assert values == KKP_VALUES


def test_values_object_is_read_on_old_kkp() -> None:
    values, field = read_values(ai(values=KKP_VALUES))
    assert (values, field) == (KKP_VALUES, "values")
    values["cni"]["exclusive"] = True
    assert KKP_VALUES["cni"]["exclusive"] is False, "read_values must hand back a copy"


@pytest.mark.parametrize(
    ("obj", "field"),
    [(ai(values={}, block=""), "valuesBlock"), (ai(values={}, block="  \n"), "valuesBlock"), (ai(), "values"),
     (ai(values={}), "values"), (ai(block="# only a comment\n"), "valuesBlock")],
)  # fmt: skip
def test_empty_values_count_as_unset(obj: dict[str, Any], field: str) -> None:
    assert read_values(obj) == ({}, field)


def test_both_fields_set_is_an_error_naming_the_object_and_fix() -> None:
    with pytest.raises(ValuesError) as info:
        read_values(ai(values={"a": 1}, block="b: 2\n"))
    assert "ApplicationInstallation kube-system/cilium" in str(info.value)
    assert "both spec.values and spec.valuesBlock" in str(info.value)
    assert "set the other to empty" in str(info.value)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("a: [1\nkey: " + KEY_2 + "\n", "not valid YAML at line"),
        ("- a\n- b\n", "not a mapping"),
        ("42", "not a mapping"),
    ],
)
def test_unreadable_values_block_is_an_error_without_its_content(block: str, problem: str) -> None:
    with pytest.raises(ValuesError) as info:
        read_values(ai(block=block))
    assert problem in str(info.value)
    assert KEY_2 not in str(info.value)
    assert isinstance(info.value, ClusterMeshError)


def test_values_error_pickles_with_its_subclass() -> None:
    error = KkpOwnedKeyError("values overlay", "would change cni", fix="leave it")
    copy_ = pickle.loads(pickle.dumps(error))
    assert type(copy_) is KkpOwnedKeyError and str(copy_) == str(error)


# ---- deep_merge --------------------------------------------------------------------------------


def test_dicts_merge_recursively_and_lists_are_replaced() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    merged = deep_merge(base, {"a": {"y": [3], "z": 2}})
    assert merged == {"a": {"x": 1, "y": [3], "z": 2}, "b": 1}


def test_deep_merge_does_not_mutate_its_inputs() -> None:
    base = {"a": {"x": [1]}, "clustermesh": {"config": {"clusters": [{"name": "p", "port": 1}]}}}
    overlay = {"a": {"x": [2]}, "clustermesh": {"config": {"clusters": [{"name": "p", "port": 2}]}}}
    frozen_base, frozen_overlay = copy.deepcopy(base), copy.deepcopy(overlay)
    merged = deep_merge(base, overlay)
    merged["a"]["x"].append(9)
    merged["clustermesh"]["config"]["clusters"][0]["port"] = 99
    assert (base, overlay) == (frozen_base, frozen_overlay)


def test_clusters_entries_merge_by_name_keeping_unknown_peers() -> None:
    base = {
        "clustermesh": {
            "config": {
                "enabled": True,
                "clusters": [
                    {"name": "cluster-2", "port": 2379, "ips": ["198.51.100.2"], "tls": {"cert": "old"}},
                    {"name": "hand-made", "port": 32379, "ips": ["198.51.100.9"]},
                ],
            }
        }
    }
    overlay = {
        "clustermesh": {
            "config": {
                "clusters": [
                    {"name": "cluster-3", "port": 2379, "ips": ["203.0.113.3"]},
                    {"name": "cluster-2", "port": 2379, "ips": ["203.0.113.2"]},
                ]
            }
        }
    }
    clusters = deep_merge(base, overlay)["clustermesh"]["config"]["clusters"]
    assert [c["name"] for c in clusters] == ["cluster-2", "hand-made", "cluster-3"]
    assert clusters[0] == {"name": "cluster-2", "port": 2379, "ips": ["203.0.113.2"]}, "entry replaced whole"
    assert clusters[1]["ips"] == ["198.51.100.9"]


def test_only_the_mesh_peer_list_merges_by_name() -> None:
    base = {"hubble": {"list": [{"name": "a"}]}}
    assert deep_merge(base, {"hubble": {"list": [{"name": "b"}]}}) == {"hubble": {"list": [{"name": "b"}]}}


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c, max_size=3)),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=3), _json, max_size=4),
    st.dictionaries(st.text(max_size=3), _json, max_size=4),
)
def test_merging_is_idempotent_and_overlay_keys_win(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    once = deep_merge(base, overlay)
    assert deep_merge(once, overlay) == once
    for key, value in overlay.items():
        if not isinstance(value, dict):
            assert once[key] == value
    assert set(base) | set(overlay) == set(once)


# ---- render_mesh_values ------------------------------------------------------------------------


def test_first_cluster_gets_the_guides_step_2_snippet_on_1_13() -> None:
    spec = mesh()
    values = render_mesh_values(profile_for("1.13.4"), spec.first, spec, shared_ca=None, peers=[])
    assert values == {
        "cluster": {"name": "cluster-1", "id": 1},
        "clustermesh": {
            "useAPIServer": True,
            "config": {"enabled": True},
            "apiserver": {"service": {"type": "LoadBalancer"}, "tls": {"auto": {"method": "cronJob"}}},
        },
    }


def test_second_cluster_on_1_13_gets_shared_ca_under_the_old_key_and_no_ca_cert() -> None:
    spec = mesh()
    ca = CaMaterial(cert=SHARED_CA_CERT, key=SHARED_CA_KEY)  # type: ignore[arg-type]
    values = render_mesh_values(profile_for("1.13"), spec.others[0], spec, shared_ca=ca, peers=[peer(3)])
    assert values["clustermesh"]["apiserver"]["tls"] == {
        "auto": {"method": "cronJob"},
        "ca": {"cert": SHARED_CA_CERT, "key": SHARED_CA_KEY},
    }
    assert "tls" not in values
    assert values["clustermesh"]["config"]["clusters"] == [
        {
            "name": "cluster-3",
            "address": "",
            "port": 2379,
            "ips": ["203.0.113.3"],
            "tls": {"cert": CERT_3, "key": KEY_3},
        }
    ]


def test_per_peer_mode_on_1_16_adds_ca_cert_and_uses_helm_certgen() -> None:
    spec = mesh()
    values = render_mesh_values(profile_for("1.16.9"), spec.first, spec, shared_ca=None, peers=[peer(2), peer(3)])
    entries = values["clustermesh"]["config"]["clusters"]
    assert [e["tls"] for e in entries] == [
        {"cert": CERT_2, "key": KEY_2, "caCert": CA_2},
        {"cert": CERT_3, "key": KEY_3, "caCert": CA_3},
    ]
    assert values["clustermesh"]["apiserver"]["tls"] == {"auto": {"method": "helm"}}
    assert "maxConnectedClusters" not in values["clustermesh"]


def test_shared_mode_on_1_15_puts_the_ca_at_top_level_tls() -> None:
    spec = mesh(ca_mode="shared")
    ca = CaMaterial(cert=SHARED_CA_CERT, key=SHARED_CA_KEY)  # type: ignore[arg-type]
    values = render_mesh_values(profile_for("1.15.16"), spec.first, spec, shared_ca=ca, peers=[peer(2)])
    assert values["tls"] == {"ca": {"cert": SHARED_CA_CERT, "key": SHARED_CA_KEY}}
    assert "ca" not in values["clustermesh"]["apiserver"]["tls"]
    assert "caCert" not in values["clustermesh"]["config"]["clusters"][0]["tls"]


def test_511_and_nodeport_and_explicit_method_are_rendered() -> None:
    spec = mesh(max_connected_clusters=511, service_type="NodePort", tls_method="certmanager")
    values = render_mesh_values(profile_for("1.17"), spec.first, spec, shared_ca=None, peers=[peer(2, port=32379)])
    assert values["clustermesh"]["maxConnectedClusters"] == 511
    assert values["clustermesh"]["apiserver"]["service"] == {"type": "NodePort"}
    assert values["clustermesh"]["apiserver"]["tls"]["auto"] == {"method": "certmanager"}
    assert values["clustermesh"]["config"]["clusters"][0]["port"] == 32379


def test_rendering_refuses_settings_the_line_cannot_honour() -> None:
    spec = mesh(tls_method="cronJob")
    with pytest.raises(SpecError, match="deadlock"):
        render_mesh_values(profile_for("1.18.10"), spec.first, spec, shared_ca=None, peers=[])


def test_a_cluster_never_lists_itself_or_a_peer_twice() -> None:
    spec = mesh()
    with pytest.raises(ValuesError, match="lists itself"):
        render_mesh_values(profile_for("1.16"), spec.others[0], spec, shared_ca=None, peers=[peer(2)])
    with pytest.raises(ValuesError, match="listed twice: cluster-2"):
        render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2), peer(2)])


def test_per_peer_mode_needs_the_peers_ca_cert() -> None:
    spec = mesh()
    with pytest.raises(ValuesError, match="no caCert"):
        render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2, ca_cert=None)])


def test_a_ca_key_is_never_copied_in_per_peer_mode() -> None:
    spec = mesh()
    ca = CaMaterial(cert=SHARED_CA_CERT, key=SHARED_CA_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValuesError) as info:
        render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=ca, peers=[])
    assert SHARED_CA_KEY not in str(info.value)


def test_key_material_never_prints_from_models() -> None:
    ca = CaMaterial(cert=SHARED_CA_CERT, key=SHARED_CA_KEY)  # type: ignore[arg-type]
    entry = peer(2)
    for text in (repr(ca), str(ca), repr(entry), str(entry)):
        assert SHARED_CA_KEY not in text and KEY_2 not in text and CERT_2 not in text
    assert "cluster-2" in repr(entry)


def test_peer_validation_errors_do_not_echo_input() -> None:
    with pytest.raises(ValueError) as info:
        PeerEntry(name="cluster-2", ips=["not-an-ip " + KEY_2], cert=CERT_2, key=KEY_2)  # type: ignore[list-item,arg-type]
    assert KEY_2 not in str(info.value)


# ---- plan_change -------------------------------------------------------------------------------


def test_first_write_merges_into_full_values_and_keeps_kkp_keys() -> None:
    spec = mesh()
    overlay = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2)])
    change = plan_change(KKP_VALUES, overlay)
    assert change.changed
    for key in KKP_VALUES:
        assert change.new_values[key] == KKP_VALUES[key]
    assert change.new_values["cluster"] == {"name": "cluster-1", "id": 1}


def test_second_run_of_a_finished_setup_writes_nothing() -> None:
    spec = mesh()
    overlay = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2)])
    applied = plan_change(KKP_VALUES, overlay).new_values
    # KKP re-serialises with sorted keys: semantics, not text, decide
    reserialised = yaml.safe_load(yaml.safe_dump(applied, sort_keys=True))
    again = plan_change(reserialised, overlay)
    assert not again.changed
    assert again.diff_lines() == []
    assert str(again) == "no change"


def test_a_managed_peer_listed_twice_with_a_stale_address_is_planned_as_a_change_and_kept_once() -> None:
    spec = mesh()
    overlay = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2)])
    applied = plan_change(KKP_VALUES, overlay).new_values
    entries = applied["clustermesh"]["config"]["clusters"]
    stale = {**copy.deepcopy(entries[0]), "ips": ["198.51.100.2"]}
    hand_made = {"name": "hand-made", "port": 32379, "ips": ["198.51.100.9"]}
    applied["clustermesh"]["config"]["clusters"] = [entries[0], hand_made, stale, copy.deepcopy(hand_made)]

    change = plan_change(applied, overlay)

    assert change.changed, "the plan must not say 'no change' while the stale copy is there"
    assert "-      - 198.51.100.2" in change.diff_lines(), "the diff shows the stale copy going"
    clusters = change.new_values["clustermesh"]["config"]["clusters"]
    assert [c["name"] for c in clusters] == ["cluster-2", "hand-made", "hand-made"], "only managed peers deduplicated"
    assert clusters[0]["ips"] == ["203.0.113.2"]
    assert not plan_change(change.new_values, overlay).changed


def test_the_stale_copy_may_come_first() -> None:
    base = {"clustermesh": {"config": {"clusters": [{"name": "cluster-2", "ips": ["198.51.100.2"]}] * 2}}}
    overlay = {"clustermesh": {"config": {"clusters": [{"name": "cluster-2", "ips": ["203.0.113.2"]}]}}}
    assert deep_merge(base, overlay)["clustermesh"]["config"]["clusters"] == [
        {"name": "cluster-2", "ips": ["203.0.113.2"]}
    ]


def test_bool_and_int_are_different_values() -> None:
    current = {"clustermesh": {"useAPIServer": 1}}
    assert plan_change(current, {"clustermesh": {"useAPIServer": True}}).changed
    assert not plan_change({"cluster": {"id": 2}}, {"cluster": {"id": 2}}).changed


@pytest.mark.parametrize("path", KKP_OWNED_PATHS)
def test_kkp_owned_keys_are_never_overwritten(path: tuple[str, ...]) -> None:
    overlay: Any = "changed"
    for key in reversed(path):
        overlay = {key: overlay}
    frozen = copy.deepcopy(KKP_VALUES)
    with pytest.raises(KkpOwnedKeyError) as info:
        plan_change(KKP_VALUES, overlay)
    assert ".".join(path) in str(info.value)
    assert frozen == KKP_VALUES


def test_replacing_a_parent_of_a_kkp_key_is_refused() -> None:
    with pytest.raises(KkpOwnedKeyError, match="operator.securityContext"):
        plan_change(KKP_VALUES, {"operator": "none"})


def test_overlay_may_only_write_our_top_level_keys() -> None:
    with pytest.raises(KkpOwnedKeyError, match="hubble"):
        plan_change(KKP_VALUES, {"hubble": {"relay": {"enabled": False}}})


def test_diff_never_shows_key_material() -> None:
    spec = mesh()
    current = deep_merge(
        KKP_VALUES,
        render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2)]),
    )
    overlay = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2), peer(3)])
    change = plan_change(current, overlay)
    text = "\n".join(change.diff_lines())
    for secret in (KEY_2, KEY_3, CERT_2, CERT_3, CA_3):
        assert secret not in text
    assert f"<{fingerprint(KEY_3)}>" in text
    assert "+      name: cluster-3" in change.diff_lines()
    assert any(line.startswith("+") and "203.0.113.3" in line for line in change.diff_lines())
    assert KEY_3 not in repr(change)
    assert KEY_3 in "\n".join(change.diff_lines(redact=False))


def test_diff_changes_when_a_key_rotates_but_shows_only_fingerprints() -> None:
    spec = mesh()
    old = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2)])
    rotated_key = fake_pem_b64("EC PRIVATE KEY", "rotated")
    new = render_mesh_values(profile_for("1.16"), spec.first, spec, shared_ca=None, peers=[peer(2, key=rotated_key)])
    lines = plan_change(old, new).diff_lines()
    assert f"-        key: <{fingerprint(KEY_2)}>" in lines
    assert f"+        key: <{fingerprint(rotated_key)}>" in lines


def test_redaction_catches_pem_anywhere_and_hides_tokens() -> None:
    pem = "-----BEGIN X-----\nabc\n-----END X-----"
    redacted = redact_values({"extra": {"blob": KEY_2, "pem": pem}, "slackToken": "xoxb-1", "n": 3})
    assert redacted == {
        "extra": {"blob": f"<{fingerprint(KEY_2)}>", "pem": f"<{fingerprint(pem)}>"},
        "slackToken": "<hidden>",
        "n": 3,
    }


def test_legacy_ca_key_is_removed_only_where_the_chart_ignores_or_refuses_it() -> None:
    current = deep_merge(KKP_VALUES, {"clustermesh": {"apiserver": {"tls": {"ca": {"cert": "c", "key": "k"}}}}})
    path = ("clustermesh", "apiserver", "tls", "ca")
    assert legacy_paths_to_remove(profile_for("1.13"), current, 4) == []
    assert legacy_paths_to_remove(profile_for("1.14"), current, 16) == []
    assert legacy_paths_to_remove(profile_for("1.15"), current, 7) == [path]
    assert legacy_paths_to_remove(profile_for("1.16"), current, 9) == [path]
    assert legacy_paths_to_remove(profile_for("1.16"), KKP_VALUES, 9) == []
    change = plan_change(current, {}, remove=[path])
    assert change.changed and change.removed == (path,)
    assert change.new_values["clustermesh"]["apiserver"]["tls"] == {}


def test_removing_kkp_keys_is_refused() -> None:
    with pytest.raises(KkpOwnedKeyError):
        plan_change(KKP_VALUES, {}, remove=[("ipam", "operator")])
    with pytest.raises(KkpOwnedKeyError):
        plan_change(KKP_VALUES, {}, remove=[("hubble",)])


# ---- dump_values -------------------------------------------------------------------------------


def test_values_block_is_written_as_sorted_yaml_that_reads_back_equal() -> None:
    text = dump_values(KKP_VALUES, "valuesBlock")
    assert isinstance(text, str)
    top_level = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top_level == sorted(top_level)
    assert yaml.safe_load(text) == KKP_VALUES
    assert read_values(ai(values={}, block=text)) == (KKP_VALUES, "valuesBlock")


def test_values_object_is_written_as_a_copy() -> None:
    written = dump_values(KKP_VALUES, "values")
    assert written == KKP_VALUES and written is not KKP_VALUES
    written["cni"]["exclusive"] = True
    assert KKP_VALUES["cni"]["exclusive"] is False
