"""MeshSpec: every mistake is caught before any cluster is contacted, named by field, value and fix."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import ClusterMeshError, SpecError
from clustermesh.spec import ClusterSpec, MeshSpec, from_data, load_spec

KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\nusers:\n- user: {token: s3cr3t-t0ken}\n"


def cluster(name: str, cid: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "id": cid, "kubeconfig": {"path": f"/kc/{name}"}, **extra}


def spec_data(*clusters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"clusters": list(clusters) or [cluster("cluster-1", 1), cluster("cluster-2", 2)], **extra}


def problems(data: dict[str, Any]) -> dict[str, str]:
    """field path → the problem's full text."""
    with pytest.raises(SpecError) as info:
        from_data(data)
    return {p.field: str(p) for p in info.value.problems}


def test_minimal_spec_gets_the_guides_defaults() -> None:
    spec = from_data(spec_data())
    assert spec.name == "mesh"
    assert spec.cilium.service_type == "LoadBalancer"
    assert spec.cilium.tls_method == "auto"
    assert spec.cilium.ca_mode == "auto"
    assert spec.cilium.max_connected_clusters == 255
    assert spec.timeouts.install == 900 and spec.timeouts.poll_interval == 2
    assert spec.drill.image == "nginx:1.16.1" and spec.drill.replicas == 2 and spec.drill.affinity == "local"
    assert spec.notify.slack is None


def test_first_plays_cluster_1_and_others_are_the_rest_in_order() -> None:
    spec = from_data(spec_data(cluster("a", 1), cluster("b", 2), cluster("c", 3)))
    assert spec.first.name == "a"
    assert [c.name for c in spec.others] == ["b", "c"]
    assert spec.cluster("c").id == 3
    with pytest.raises(KeyError, match="known"):
        spec.cluster("zzz")


def test_duplicate_ids_are_rejected_with_field_and_fix() -> None:
    found = problems(spec_data(cluster("a", 1), cluster("b", 2), cluster("c", 2)))
    text = found["clusters[2].id"]
    assert "clusters[1] and clusters[2] both use id 2" in text
    assert "(got: 2)" in text
    assert "give each cluster its own id in 1..255" in text


def test_duplicate_names_are_rejected_with_both_positions() -> None:
    found = problems(spec_data(cluster("a", 1), cluster("a", 2)))
    assert "clusters[0] and clusters[1] both use 'a'" in found["clusters[1].name"]


@pytest.mark.parametrize("name", ["default", "Cluster-1", "-a", "a-", "a_b", "a" * 33, "", "clüster"])
def test_names_breaking_the_cilium_rule_are_rejected(name: str) -> None:
    found = problems(spec_data(cluster(name, 1), cluster("b", 2)))
    assert "clusters[0].name" in found


@pytest.mark.parametrize("name", ["a", "a1", "cluster-1", "1", "a" * 32, "x--y"])
def test_names_following_the_cilium_rule_are_accepted(name: str) -> None:
    assert from_data(spec_data(cluster(name, 1), cluster("other", 2))).first.name == name


@pytest.mark.parametrize("cid", [0, -1, 512])
def test_ids_outside_1_to_511_are_rejected(cid: int) -> None:
    found = problems(spec_data(cluster("a", cid), cluster("b", 2)))
    assert "clusters[0].id" in found


def test_ids_above_255_need_max_connected_clusters_511() -> None:
    found = problems(spec_data(cluster("a", 300), cluster("b", 2)))
    assert "max_connected_clusters 255" in found["clusters[0].id"]
    assert "511" in found["clusters[0].id"]
    spec = from_data(spec_data(cluster("a", 300), cluster("b", 2), cilium={"max_connected_clusters": 511}))
    assert spec.first.id == 300


def test_511_clusters_are_refused_on_lines_before_1_15() -> None:
    data = spec_data(cilium={"max_connected_clusters": 511, "version": "1.14"})
    assert "cilium.max_connected_clusters" in problems(data)
    assert from_data(spec_data(cilium={"max_connected_clusters": 511, "version": "1.15.3"}))


def test_max_connected_clusters_accepts_only_255_or_511() -> None:
    found = problems(spec_data(cilium={"max_connected_clusters": 300}))
    assert "255" in found["cilium.max_connected_clusters"] and "511" in found["cilium.max_connected_clusters"]


def test_fewer_than_two_clusters_is_not_a_mesh() -> None:
    found = problems({"clusters": [cluster("a", 1)]})
    assert "list 2..255 clusters" in found["clusters"]


def test_overlapping_pod_cidrs_between_clusters_are_rejected() -> None:
    data = spec_data(
        cluster("a", 1, pod_cidrs=["172.25.0.0/16"]),
        cluster("b", 2, pod_cidrs=["10.0.0.0/8", "172.25.128.0/17"]),
    )
    text = problems(data)["clusters[1].pod_cidrs[1]"]
    assert "overlaps clusters[0].pod_cidrs[0] (172.25.0.0/16)" in text
    assert "spec.clusterNetwork.pods.cidrBlocks" in text


def test_disjoint_ipv4_and_ipv6_pod_cidrs_are_accepted() -> None:
    spec = from_data(
        spec_data(
            cluster("a", 1, pod_cidrs=["172.25.0.0/16", "fd00:25::/64"]),
            cluster("b", 2, pod_cidrs=["172.26.0.0/16", "fd00:26::/64"]),
        )
    )
    assert [str(c) for c in spec.others[0].pod_cidrs] == ["172.26.0.0/16", "fd00:26::/64"]


@pytest.mark.parametrize("cidr", ["172.25.0.1/16", "not-a-cidr", "300.0.0.0/8"])
def test_invalid_pod_cidrs_are_rejected(cidr: str) -> None:
    assert "clusters[0].pod_cidrs[0]" in problems(spec_data(cluster("a", 1, pod_cidrs=[cidr]), cluster("b", 2)))


def test_kubeconfig_needs_exactly_one_source() -> None:
    both = cluster("a", 1, kubeconfig={"path": "/x", "env": "KC"})
    none: dict[str, Any] = cluster("b", 2, kubeconfig={})
    found = problems(spec_data(both, none))
    assert "exactly one of path, secret_block, env" in found["clusters[0].kubeconfig"]
    assert "(set: none)" in found["clusters[1].kubeconfig"]


def test_kubeconfig_context_only_goes_with_path() -> None:
    found = problems(spec_data(cluster("a", 1, kubeconfig={"env": "KC", "context": "x"}), cluster("b", 2)))
    assert "context is only used with path" in found["clusters[0].kubeconfig"]


@pytest.mark.parametrize("field", ["path", "secret_block", "env"])
def test_inline_kubeconfig_text_is_rejected_without_echoing_it(field: str) -> None:
    data = spec_data(cluster("a", 1, kubeconfig={field: KUBECONFIG_TEXT}), cluster("b", 2))
    with pytest.raises(SpecError) as info:
        from_data(data)
    message = str(info.value)
    assert f"clusters[0].kubeconfig.{field}" in message
    assert "looks like kubeconfig" in message
    assert "s3cr3t" not in message and "apiVersion" not in message


def test_validation_error_from_the_model_itself_hides_input() -> None:
    """The Prefect form validates the model directly; its error text must not carry a kubeconfig either."""
    data = spec_data(cluster("a", 1, kubeconfig={"path": KUBECONFIG_TEXT}), cluster("b", 2))
    with pytest.raises(ValidationError) as info:
        MeshSpec.model_validate(data)
    assert "s3cr3t" not in str(info.value)


def test_unknown_fields_are_typos_listed_with_allowed_names_and_value_hidden() -> None:
    data = spec_data(
        cluster("a", 1, kubeconfig={"path": "/x", "text": "token: abc"}),
        cluster("b", 2),
        cilium={"verison": "1.16"},
    )
    found = problems(data)
    assert "allowed here: context, env, path, secret_block" in found["clusters[0].kubeconfig.text"]
    assert "abc" not in found["clusters[0].kubeconfig.text"]
    assert "allowed here: ca_mode" in found["cilium.verison"]


def test_env_references_must_be_variable_names() -> None:
    found = problems(spec_data(cluster("a", 1, kubeconfig={"env": "$HOME/kc"}), cluster("b", 2)))
    assert "variable's NAME" in found["clusters[0].kubeconfig.env"]


def test_secret_block_references_must_be_block_slugs() -> None:
    found = problems(spec_data(cluster("a", 1, kubeconfig={"secret_block": "My Block"}), cluster("b", 2)))
    assert "clusters[0].kubeconfig.secret_block" in found


@pytest.mark.parametrize(
    "slack",
    [
        {"channel": "#mesh", "token_env": "xoxb-1234-abcd"},
        {"channel": "#mesh", "webhook_env": "https://hooks.slack.com/services/T/B/X"},
        {"channel": "#mesh", "token_block": "xoxb-1234"},
    ],
)
def test_slack_tokens_are_refused_inline_without_echo(slack: dict[str, str]) -> None:
    with pytest.raises(SpecError) as info:
        from_data(spec_data(notify={"slack": slack}))
    assert "xoxb" not in str(info.value) and "hooks.slack.com" not in str(info.value)
    assert "not a reference" in str(info.value)


def test_slack_defaults_to_the_bot_token_env_var() -> None:
    spec = from_data(spec_data(notify={"slack": {"channel": "#mesh"}, "prefect_ui_url": "https://p.example"}))
    assert spec.notify.slack is not None and spec.notify.slack.token_env == "SLACK_BOT_TOKEN"


def test_prefect_ui_url_must_be_http() -> None:
    assert "notify.prefect_ui_url" in problems(spec_data(notify={"prefect_ui_url": "prefect.example"}))


@pytest.mark.parametrize(
    ("timeouts", "field"),
    [
        ({"install": 0}, "timeouts.install"),
        ({"health": -5}, "timeouts.health"),
        ({"api": "x"}, "timeouts.api"),
    ],
)
def test_timeouts_must_be_positive_seconds(timeouts: dict[str, Any], field: str) -> None:
    assert field in problems(spec_data(timeouts=timeouts))


def test_poll_interval_must_be_shorter_than_every_wait() -> None:
    found = problems(spec_data(timeouts={"poll_interval": 400}))
    assert "load_balancer is 300s" in found["timeouts.poll_interval"]
    assert "raise load_balancer or lower poll_interval" in found["timeouts.poll_interval"]


def test_a_wait_shorter_than_the_default_poll_interval_is_blamed_on_the_wait_that_was_set() -> None:
    found = problems(spec_data(timeouts={"install": 1}))
    assert list(found) == ["timeouts.install"], found
    assert "longer than poll_interval (2s)" in found["timeouts.install"]


def test_drill_settings_are_checked() -> None:
    found = problems(spec_data(drill={"replicas": 0, "port": 70000, "affinity": "nearest", "namespace": "Drill"}))
    assert {"drill.replicas", "drill.port", "drill.affinity", "drill.namespace"} <= set(found)
    assert "use one of 'local', 'remote' or 'none'" in found["drill.affinity"]


@pytest.mark.parametrize("version", ["1.12", "1.21.1", "latest"])
def test_unsupported_cilium_version_names_supported_lines(version: str) -> None:
    text = problems(spec_data(cilium={"version": version}))["cilium.version"]
    assert "1.13, 1.14, 1.15, 1.16, 1.17, 1.18, 1.19, 1.20" in text


def test_cilium_1_20_is_accepted() -> None:
    assert from_data(spec_data(cilium={"version": "1.20.0"})).cilium.version == "1.20.0"


def test_cronjob_is_refused_where_it_deadlocks_under_kkp() -> None:
    text = problems(spec_data(cilium={"version": "1.16.9", "tls_method": "cronJob"}))["cilium.tls_method"]
    assert "deadlock" in text and "use tls_method auto or helm" in text
    assert from_data(spec_data(cilium={"version": "1.19", "tls_method": "cronJob"}))


def test_per_peer_ca_is_refused_on_1_13() -> None:
    assert "cilium.ca_mode" in problems(spec_data(cilium={"version": "1.13", "ca_mode": "per-peer"}))


@pytest.mark.parametrize(
    ("line", "tls", "ca"),
    [("1.13", "cronJob", "shared"), ("1.14", "helm", "per-peer"), ("1.18", "helm", "per-peer"),
     ("1.19", "cronJob", "per-peer")],
)  # fmt: skip
def test_auto_settings_resolve_per_profile(line: str, tls: str, ca: str) -> None:
    resolved = from_data(spec_data()).cilium.resolve(profile_for(line))
    assert (resolved.tls_method, resolved.ca_mode) == (tls, ca)


def test_resolving_against_a_detected_version_reports_conflicts_as_spec_errors() -> None:
    spec = from_data(spec_data(cilium={"tls_method": "cronJob", "max_connected_clusters": 511}))
    with pytest.raises(SpecError) as info:
        spec.cilium.resolve(profile_for("1.14.16"))
    fields = {p.field for p in info.value.problems}
    assert fields == {"cilium.tls_method", "cilium.max_connected_clusters"}


def test_missing_fields_say_so() -> None:
    text = problems(spec_data(cluster("a", 1), {"name": "b", "kubeconfig": {"env": "KC"}}))["clusters[1].id"]
    assert text == "clusters[1].id: Field required (got: nothing) — add this field"


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {"clusters": [cluster("Bad", 1), cluster("b", 0)], "cilium": {"service_type": "ClusterIP"}, "x": 1}
    )
    assert {"clusters[0].name", "clusters[1].id", "cilium.service_type", "x"} <= set(found)


def test_problem_lines_follow_field_message_value_fix_shape() -> None:
    with pytest.raises(SpecError) as info:
        from_data(spec_data(cluster("a", 1), cluster("b", 1)))
    line = str(info.value).splitlines()[1]
    assert line.startswith("  - clusters[1].id: cluster IDs must be unique")
    assert "(got: 1) — give each cluster" in line


def test_spec_error_is_a_clustermesh_error_and_pickles() -> None:
    with pytest.raises(SpecError) as info:
        from_data({"clusters": []})
    assert isinstance(info.value, ClusterMeshError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.problems == info.value.problems


def test_load_spec_reads_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "name: prod\nclusters:\n"
        "  - {name: cluster-1, id: 1, kubeconfig: {path: /k/1, context: admin}}\n"
        "  - {name: cluster-2, id: 2, kubeconfig: {secret_block: kc-2}}\n"
        "cilium: {version: v1.16.9}\n"
    )
    spec = load_spec(path)
    assert spec.name == "prod" and spec.first.kubeconfig.context == "admin"
    assert spec.others[0].kubeconfig.describe() == "Prefect Secret block kc-2"
    assert MeshSpec.from_yaml_file(path) == spec


def test_yaml_syntax_errors_give_line_and_column_without_content(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("clusters:\n  - name: a\n    id: [1\n  token: xoxb-secret\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "YAML syntax error at line" in message and "column" in message
    assert str(path) in message
    assert "xoxb" not in message


def test_duplicate_yaml_keys_are_errors_not_silently_last_wins() -> None:
    with pytest.raises(SpecError, match=r"line 3, column \d+: duplicate key"):
        MeshSpec.from_yaml("clusters:\n  - name: a\n    name: b\n")


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="check the path"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text", "42"])
def test_a_spec_that_is_not_a_mapping_is_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        MeshSpec.from_yaml(text)


def test_cluster_spec_is_frozen() -> None:
    spec = from_data(spec_data())
    with pytest.raises(ValidationError):
        spec.first.id = 9
    assert isinstance(spec.first, ClusterSpec)


def test_every_field_has_a_title_and_description_for_the_ui_form() -> None:
    schema = MeshSpec.model_json_schema()
    models = [schema, *schema.get("$defs", {}).values()]
    for model in models:
        for name, prop in model.get("properties", {}).items():
            # a nested model's field is a $ref: the form titles it with the model's own title
            assert prop.get("title") or "$ref" in prop, name
            assert prop.get("description"), name
        assert model.get("title") and model.get("description") or model is schema


# ---- property: any input either validates or fails with our own error types -------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=True), st.text(max_size=40)
)
_keys = st.sampled_from(
    ["name", "id", "clusters", "kubeconfig", "path", "env", "secret_block", "context", "pod_cidrs", "cilium",
     "version", "tls_method", "ca_mode", "max_connected_clusters", "timeouts", "install", "poll_interval",
     "drill", "notify", "slack", "channel", "x"]
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)),
    max_leaves=20,
)
_cluster_like = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["a", "b", "default", "c-1"]), st.text(max_size=8)),
        "id": st.one_of(st.integers(-2, 600), _scalars),
        "kubeconfig": st.one_of(
            st.fixed_dictionaries({"path": st.text(max_size=20)}),
            st.dictionaries(_keys, _scalars, max_size=3),
        ),
    },
    optional={"pod_cidrs": st.lists(st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "fd00::/64", "x"]), max_size=3)},
)
_spec_like = st.one_of(
    st.dictionaries(_keys, _values, max_size=6),
    st.fixed_dictionaries(
        {"clusters": st.lists(_cluster_like, max_size=4)},
        optional={
            "cilium": st.dictionaries(_keys, _values, max_size=3),
            "timeouts": st.dictionaries(_keys, _scalars, max_size=3),
            "name": _scalars,
        },
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_spec_like)
def test_any_input_validates_or_raises_spec_or_validation_error(data: dict[str, Any]) -> None:
    direct_ok = True
    try:
        MeshSpec.model_validate(data)
    except ValidationError:
        direct_ok = False
    try:
        spec = from_data(data)
    except SpecError as exc:
        assert not direct_ok or not isinstance(data, dict)
        assert exc.problems
        for problem in exc.problems:
            assert problem.message
    else:
        assert direct_ok
        assert len(spec.clusters) >= 2
        assert len({c.id for c in spec.clusters}) == len(spec.clusters)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_any_yaml_text_validates_or_raises_spec_error(text: str) -> None:
    try:
        spec = MeshSpec.from_yaml(text)
    except SpecError as exc:
        assert exc.problems
    else:
        assert len(spec.clusters) >= 2


def test_a_poll_interval_and_a_wait_both_set_and_in_conflict_are_named_together() -> None:
    found = problems(spec_data(timeouts={"health": 5, "poll_interval": 5}))
    assert list(found) == ["timeouts"], found
    assert "health is 5s" in found["timeouts"] and "poll_interval (5s)" in found["timeouts"]


def test_drill_one_at_a_time_false_is_refused_not_ignored() -> None:
    found = problems(spec_data(drill={"one_at_a_time": False}))
    assert list(found) == ["drill.one_at_a_time"], found
    assert "not supported" in found["drill.one_at_a_time"]
    assert "remove drill.one_at_a_time or set it to true" in found["drill.one_at_a_time"]
