"""Hostile input: every entry point answers with a result or its own error, never a crash, hang or blow-up.

Covers what the property tests in tests/domain lack: arbitrarily deep or huge data, near-valid specs with
one field broken, YAML tricks (duplicate keys, alias bombs, recursive anchors, huge integers), raw bytes
as spec files, hostile ``valuesBlock`` text and hostile current values under the merge, random bytes as
certificates, and byte-level damage to the real Cilium fixtures. Nothing here asserts time: a hang
would show as a test that never ends, and memory is checked with tracemalloc where a bomb could explode.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clustermesh.certs import check_pair, load_cert, load_private_key
from clustermesh.cilium import parse_health, parse_service_list
from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import CertificateError, CiliumOutputError, SpecError, ValuesError
from clustermesh.spec import MeshSpec, from_data, load_spec
from clustermesh.values import (
    CLUSTERS_PATH,
    KKP_OWNED_PATHS,
    OUR_ROOTS,
    PeerEntry,
    ValuesChange,
    dump_values,
    plan_change,
    read_values,
    render_mesh_values,
)
from tests.domain.test_certs import key_pem, make_ca, make_leaf, pem
from tests.domain.test_cilium_output_properties import assert_consistent_health, assert_consistent_services

# Moderate counts: CI has two cores; no deadline (timing is never what these tests pin down).
SOME = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FEW = settings(SOME, max_examples=20)
MAX_PROBLEM_CHARS = 1200  # a problem line names field, value (cut), fix: hostile input must not inflate it
BOMB_PEAK_BYTES = 64 * 1024 * 1024


# ------------------------------------------------------------------------------------------- helpers


def valid_spec_data() -> dict[str, Any]:
    return {
        "name": "mesh",
        "clusters": [
            {"name": "cluster-1", "id": 1, "kubeconfig": {"path": "/k/1"}, "pod_cidrs": ["172.25.0.0/16"]},
            {"name": "cluster-2", "id": 2, "kubeconfig": {"env": "KUBECONFIG_2"}, "pod_cidrs": ["172.26.0.0/16"]},
        ],
        "cilium": {"version": "1.16", "service_type": "LoadBalancer", "tls_method": "auto", "ca_mode": "auto"},
        "timeouts": {"install": 900, "load_balancer": 300, "poll_interval": 2},
        "drill": {"namespace": "mesh-drill", "replicas": 2, "port": 80},
        "notify": {"slack": {"channel": "#mesh", "token_env": "SLACK_BOT_TOKEN"}},
    }


def leaf_paths(node: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in leaf_paths(v, (*prefix, k))] or [prefix]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in leaf_paths(v, (*prefix, i))] or [prefix]
    return [prefix]


VALID_LEAVES = leaf_paths(valid_spec_data())


def dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def set_path(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def nested(depth: int, kind: str) -> Any:
    node: Any = "leaf"
    for _ in range(depth):
        node = [node] if kind == "list" else {"k": node}
    return node


def spec_outcome(fn: Callable[[], MeshSpec]) -> MeshSpec | SpecError:
    """The call's result or its SpecError; anything else propagates and fails the test."""
    try:
        return fn()
    except SpecError as exc:
        assert exc.problems
        text = str(exc)  # building the message must not fail either
        assert all(len(str(p)) <= MAX_PROBLEM_CHARS for p in exc.problems), text[:2000]
        return exc


def bomb_yaml(levels: int, width: int, anchor_key: str = "lol") -> tuple[str, str]:
    """Billion laughs: anchors ``l0..l<levels>``, each a list of ``width`` aliases of the one before."""
    lines = [f"{anchor_key}0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"{anchor_key}{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n", f"*l{levels}"


def under_peak_memory(fn: Callable[[], Any]) -> Any:
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOMB_PEAK_BYTES, f"peak memory {peak / 1e6:.0f} MB"
    return result


huge_ints = st.builds(lambda digits, sign: sign * 10**digits, st.integers(60, 6000), st.sampled_from([1, -1]))
long_texts = st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.integers(200, 50_000))
unicode_texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
deep_values = st.builds(nested, st.integers(50, 3000), st.sampled_from(["list", "dict"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    unicode_texts,
    long_texts,
    st.binary(max_size=20),
)
hostile_values = st.one_of(
    scalars,
    deep_values,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.one_of(unicode_texts, st.integers()), scalars, max_size=5),
)
any_keys = st.one_of(
    st.sampled_from(sorted({str(p) for path in VALID_LEAVES for p in path if isinstance(p, str)})),
    unicode_texts,
    st.integers(-5, 5),
    huge_ints,
)
nested_data = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_keys, kids, max_size=4), max_leaves=40
)


# ------------------------------------------------------------------------------------------ MeshSpec


@SOME
@given(data=nested_data, where=st.sampled_from([(), *VALID_LEAVES]))
def test_arbitrary_nested_data_anywhere_in_a_spec_validates_or_is_a_spec_error(data: Any, where: tuple) -> None:
    if where:
        spec = valid_spec_data()
        set_path(spec, where, data)
        data = spec
    outcome = spec_outcome(lambda: from_data(data))
    if isinstance(outcome, MeshSpec):
        assert len(outcome.clusters) >= 2


@SOME
@given(where=st.sampled_from(VALID_LEAVES), value=hostile_values)
def test_a_near_valid_spec_with_one_field_broken_is_refused_at_that_field(where: tuple, value: Any) -> None:
    spec = valid_spec_data()
    set_path(spec, where, value)
    outcome = spec_outcome(lambda: from_data(spec))
    if isinstance(outcome, MeshSpec):
        return  # the hostile value happened to be acceptable there (e.g. a unicode-free valid name)
    broken = dotted(where)
    fields = [p.field for p in outcome.problems]
    assert any(f and (broken.startswith(f) or f.startswith(broken)) for f in fields), (broken, fields)
    if isinstance(value, str) and len(value) >= 100:
        assert value[:100] not in str(outcome)  # long input is cut, never echoed whole


@FEW
@given(where=st.sampled_from([(), *VALID_LEAVES]), depth=st.integers(200, 1100), style=st.sampled_from("[{b"))
def test_deeply_nested_yaml_is_a_spec_error(where: tuple, depth: int, style: str) -> None:
    if style == "[":
        deep = "[" * depth + "]" * depth
    elif style == "{":
        deep = "{a: " * depth + "1" + "}" * depth
    else:
        deep = "\n" + "".join(" " * (i + 1) + "a:\n" for i in range(depth))
    if where:
        text = yaml.safe_dump(valid_spec_data(), sort_keys=False)
        key = where[-1] if isinstance(where[-1], str) else "extra"
        text += f"{key}: {deep}\n" if style != "b" else f"{key}:{deep}"
    else:
        text = deep
    outcome = spec_outcome(lambda: MeshSpec.from_yaml(text))
    assert isinstance(outcome, SpecError)


@SOME
@given(digits=st.integers(4300, 20_000), where=st.sampled_from(["clusters[0].id", "timeouts.install", "key"]))
def test_integers_of_thousands_of_digits_are_a_spec_error(digits: int, where: str) -> None:
    number = "9" * digits
    data = valid_spec_data()
    text = yaml.safe_dump(data, sort_keys=False)
    if where == "clusters[0].id":
        text = text.replace("id: 1\n", f"id: {number}\n", 1)
    elif where == "timeouts.install":
        text = text.replace("install: 900", f"install: {number}", 1)
    else:
        text += f"{number}: 1\n"
    outcome = spec_outcome(lambda: MeshSpec.from_yaml(text))
    assert isinstance(outcome, SpecError)
    assert number[:100] not in str(outcome)


def test_infinite_timeouts_are_refused_waits_must_end() -> None:
    data = valid_spec_data()
    data["timeouts"]["install"] = float("inf")
    with pytest.raises(SpecError) as info:
        from_data(data)
    assert [p.field for p in info.value.problems] == ["timeouts.install"]
    with pytest.raises(SpecError):
        MeshSpec.from_yaml(yaml.safe_dump(valid_spec_data()).replace("install: 900", "install: .inf"))


def _key_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if ":" in line and not line.lstrip().startswith("- ")]


VALID_YAML = yaml.safe_dump(valid_spec_data(), sort_keys=False)


@SOME
@given(index=st.sampled_from(_key_lines(VALID_YAML)), value=st.sampled_from(["x", "2", "[]", "{}", "null"]))
def test_a_duplicated_key_anywhere_is_a_spec_error_not_last_wins(index: int, value: str) -> None:
    lines = VALID_YAML.splitlines()
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip())]
    key = line.strip().split(":", 1)[0]
    lines.insert(index, f"{indent}{key}: {value}")  # the duplicate comes first, the original wins otherwise
    outcome = spec_outcome(lambda: MeshSpec.from_yaml("\n".join(lines) + "\n"))
    assert isinstance(outcome, SpecError)
    assert any("duplicate key" in p.message for p in outcome.problems), outcome


BOMB_PLACES = sorted({*VALID_LEAVES, *(w[:-1] for w in VALID_LEAVES if len(w) > 1)}, key=str)


def bomb_spec_text(levels: int, width: int, place: tuple[str | int, ...]) -> str:
    """A valid spec with one field (a value or a whole section) replaced by the alias of a bomb."""
    anchors, alias = bomb_yaml(levels, width, anchor_key="x_lol")
    data = valid_spec_data()
    set_path(data, place, "@@bomb@@")
    return anchors + yaml.safe_dump(data, sort_keys=False).replace("'@@bomb@@'", alias)


@FEW
@given(levels=st.integers(3, 12), width=st.integers(2, 12), place=st.sampled_from(BOMB_PLACES))
def test_yaml_alias_bombs_in_a_spec_are_refused_without_expanding(levels: int, width: int, place: tuple) -> None:
    text = bomb_spec_text(levels, width, place)
    outcome = under_peak_memory(lambda: spec_outcome(lambda: MeshSpec.from_yaml(text)))
    assert isinstance(outcome, SpecError)  # the anchors themselves are unknown top-level fields


@pytest.mark.parametrize(
    "text",
    [
        "clusters: &a [*a]\n",
        "clusters: &a [{name: x, id: 1, kubeconfig: *a}]\n",
        "name: &a {x: *a}\nclusters: []\n",
        "cilium: &a {version: [*a]}\nclusters: []\n",
        "&a [*a]\n",
    ],
)
def test_recursive_yaml_anchors_are_a_spec_error(text: str) -> None:
    outcome = spec_outcome(lambda: MeshSpec.from_yaml(text))
    assert isinstance(outcome, SpecError)


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("specs")


def _load_bytes(folder: Path, raw: bytes) -> MeshSpec | SpecError:
    path = folder / "mesh.yaml"
    path.write_bytes(raw)
    return spec_outcome(lambda: load_spec(path))


@SOME
@given(raw=st.binary(max_size=600))
def test_load_spec_on_random_bytes_is_a_spec_or_a_spec_error(spec_dir: Path, raw: bytes) -> None:
    _load_bytes(spec_dir, raw)


@SOME
@given(offset=st.integers(0, len(VALID_YAML)), junk=st.binary(min_size=1, max_size=8))
def test_load_spec_on_a_valid_file_with_bytes_spliced_in(spec_dir: Path, offset: int, junk: bytes) -> None:
    raw = VALID_YAML.encode()
    outcome = _load_bytes(spec_dir, raw[:offset] + junk + raw[offset:])
    try:
        (raw[:offset] + junk + raw[offset:]).decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(outcome, SpecError)
        assert any("UTF-8" in p.fix for p in outcome.problems)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "must be a mapping"),
        (b"\n\n   \n", "must be a mapping"),
        (b"\xff\xfe\x00c\x00l", "UTF-8"),
        (b"clusters:\n- name: caf\xe9\n", "UTF-8"),
        ("clusters: []\n".encode("utf-16"), "UTF-8"),
        (b"\x00\x01\x02", "YAML"),
    ],
)
def test_load_spec_on_empty_or_non_utf8_files_names_the_file(tmp_path: Path, raw: bytes, words: str) -> None:
    outcome = _load_bytes(tmp_path, raw)
    assert isinstance(outcome, SpecError)
    assert outcome.source == str(tmp_path / "mesh.yaml")
    assert words in str(outcome)


# -------------------------------------------------------------------------------------------- values


def ai(block: Any = None, values: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"applicationRef": {"name": "cilium", "version": "1.16.9"}}
    if block is not None:
        spec["valuesBlock"] = block
    if values is not None:
        spec["values"] = values
    return {"metadata": {"name": "cilium", "namespace": "kube-system"}, "spec": spec}


CA, CA_KEY = make_ca()
LEAF_2, LEAF_2_KEY = make_leaf(CA, CA_KEY, cn="remote-2")
LEAF_3, LEAF_3_KEY = make_leaf(CA, CA_KEY, cn="remote-3")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PEERS = [
    PeerEntry(
        name=f"cluster-{n}",
        ips=[f"203.0.113.{n}"],
        cert=b64(pem(cert)),
        key=b64(key_pem(key)),
        ca_cert=b64(pem(CA)),
    )
    for n, cert, key in ((2, LEAF_2, LEAF_2_KEY), (3, LEAF_3, LEAF_3_KEY))
]
MESH = from_data(
    {
        "clusters": [{"name": f"cluster-{n}", "id": n, "kubeconfig": {"path": f"/k/{n}"}} for n in (1, 2, 3)],
        "cilium": {"version": "1.16"},
    }
)
OVERLAY = render_mesh_values(profile_for("1.16"), MESH.first, MESH, shared_ca=None, peers=PEERS)
OUR_PEER_NAMES = {"cluster-2", "cluster-3"}


def plan_is_sane(current: dict[str, Any]) -> ValuesChange | ValuesError:
    """plan_change on ``current``: a ValuesError, or a plan that keeps everything not ours and every foreign peer."""
    before = copy.deepcopy(current)
    try:
        change = plan_change(current, OVERLAY)
    except ValuesError as exc:
        assert current == before
        return exc
    assert current == before  # the input is never modified
    new = change.new_values
    for path in KKP_OWNED_PATHS:
        assert _get(new, path) == _get(current, path), path
    for key in current:
        if key not in OUR_ROOTS:
            assert key in new and new[key] == current[key], key
    assert (new["cluster"]["name"], new["cluster"]["id"]) == ("cluster-1", 1)
    assert new["clustermesh"]["useAPIServer"] is True
    entries = _get(new, CLUSTERS_PATH)[1]
    assert isinstance(entries, list)
    named = [e.get("name") for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    assert sorted(n for n in named if n in OUR_PEER_NAMES) == sorted(OUR_PEER_NAMES)  # ours, once each
    found, old_entries = _get(current, CLUSTERS_PATH)
    if found and isinstance(old_entries, list):
        foreign = [e for e in old_entries if not (isinstance(e, dict) and _name(e) in OUR_PEER_NAMES)]
        for entry in foreign:  # hand-added peers, unnamed or odd entries: all kept, unknown keys included
            assert sum(1 for e in entries if e == entry) >= sum(1 for e in foreign if e == entry), entry
    diff = "\n".join(change.diff_lines())
    assert PEERS[0].key.get_secret_value() not in diff
    return change


def _name(entry: dict[str, Any]) -> str | None:
    name = entry.get("name")
    return name if isinstance(name, str) else None


def _get(values: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def read_or_refuse(obj: dict[str, Any]) -> dict[str, Any] | ValuesError:
    try:
        values, field = read_values(obj)
    except ValuesError as exc:
        assert "ApplicationInstallation kube-system/cilium" in str(exc)
        return exc
    assert isinstance(values, dict)
    assert field in ("values", "valuesBlock")
    return values


@SOME
@given(block=st.text(max_size=300))
def test_any_values_block_text_is_values_or_a_values_error(block: str) -> None:
    outcome = read_or_refuse(ai(block=block, values={}))
    if isinstance(outcome, dict):
        plan_is_sane(outcome)


yaml_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@SOME
@given(document=yaml_documents)
def test_a_values_block_that_is_a_list_or_scalar_is_refused_and_a_mapping_read(document: Any) -> None:
    outcome = read_or_refuse(ai(block=yaml.safe_dump(document)))
    if isinstance(document, dict) and document:
        assert outcome == document
        plan_is_sane(outcome)
    elif document is not None and document != "" and not isinstance(document, dict):
        assert isinstance(outcome, ValuesError)
        assert "not a mapping" in outcome.problem


@FEW
@given(
    kind=st.sampled_from(["deep-flow", "deep-block", "huge-int", "bomb", "recursive", "huge-text", "nul"]),
    size=st.integers(1, 10),
)
def test_hostile_values_blocks_are_refused_or_read_without_blowing_up(kind: str, size: int) -> None:
    block = {
        "deep-flow": "a: " + "[" * (100 + 100 * size) + "]" * (100 + 100 * size),
        "deep-block": "".join(" " * i + "a:\n" for i in range(100 + 60 * size)),
        "huge-int": f"cluster: {{id: {'7' * (4300 + size * 500)}}}\n",
        "bomb": bomb_yaml(6 + size, 9)[0] + "",
        "recursive": ["a: &a [*a]\n", "a: &a {b: [*a]}\n", "a: &a [{c: *a}]\n"][size % 3],
        "huge-text": "kubeProxyReplacement: 'true'\nnote: " + "x" * (30_000 * size) + "\n",
        "nul": "a: b\x00",
    }[kind]
    read = lambda: read_or_refuse(ai(block=block))  # noqa: E731
    outcome = under_peak_memory(read) if kind in ("bomb", "recursive") else read()
    if kind == "huge-text":
        assert isinstance(outcome, dict)
        assert len(outcome["note"]) == 30_000 * size
        plan_is_sane(outcome)
    else:
        assert isinstance(outcome, ValuesError), kind
        assert "valuesBlock" in outcome.problem
        assert block[:40] not in str(outcome) or len(block) < 5


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (ai(block="{{ not yaml"), "not valid YAML at line 1"),
        (ai(block="- a\n- b\n"), "a list, not a mapping"),
        (ai(block="42"), "a int, not a mapping"),
        (ai(block=["a"]), "not a string"),
        (ai(values=["a"]), "not a mapping"),
        (ai(block="a: 1", values={"b": 2}), "both"),
        ({"metadata": {"name": "cilium", "namespace": "kube-system"}, "spec": "x"}, "has no spec"),
    ],
)
def test_broken_values_name_the_object_and_the_problem(obj: dict[str, Any], words: str) -> None:
    outcome = read_or_refuse(obj)
    assert isinstance(outcome, ValuesError)
    assert words in str(outcome)
    assert outcome.fix


# U+0085 is left out: its one failure (a lone NEL key) is pinned by the xfail test below instead.
texts = st.text(st.characters(exclude_characters="\x85"), max_size=8)
entry_names = st.one_of(
    st.sampled_from(["cluster-2", "cluster-3", "cluster-9", ""]),
    st.none(),
    st.integers(),
    texts,
    st.lists(texts, max_size=2),
    st.dictionaries(texts, st.integers(), max_size=2),
)
peer_entries = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "name": entry_names,
            "foo": texts,
            "ips": st.lists(texts, max_size=2) | texts,
            "tls": st.none() | st.dictionaries(texts, texts, max_size=2),
        },
    ),
    st.none(),
    texts,
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
    max_leaves=8,
)
clusters_values = st.one_of(json_like, st.lists(peer_entries, max_size=6))
config_values = st.one_of(
    json_like,
    st.fixed_dictionaries({}, optional={"clusters": clusters_values, "enabled": json_like, "other": json_like}),
)
clustermesh_values = st.one_of(
    json_like,
    st.fixed_dictionaries({}, optional={"config": config_values, "useAPIServer": json_like, "x": json_like}),
)
current_values = st.fixed_dictionaries(
    {},
    optional={
        "clustermesh": clustermesh_values,
        "cluster": json_like,
        "tls": json_like,
        "ipam": json_like,
        "kubeProxyReplacement": json_like,
        "operator": json_like,
        "hubble": json_like,
        "extraConfig": json_like,
        "k8sServiceHost": json_like,
        "unrelated": json_like,
    },
)


@SOME
@given(current=current_values)
def test_planning_over_hostile_current_values_never_touches_kkp_keys_or_foreign_peers(current: dict[str, Any]) -> None:
    plan_is_sane(current)


@SOME
@given(current=current_values)
def test_a_plan_over_hostile_values_writes_back_what_it_reads(current: dict[str, Any]) -> None:
    outcome = plan_is_sane(current)
    assume(isinstance(outcome, ValuesChange))
    assert isinstance(outcome, ValuesChange)
    block = dump_values(outcome.new_values, "valuesBlock")
    again = read_or_refuse(ai(block=block))
    assert again == outcome.new_values
    second = plan_change(again, OVERLAY)
    assert not second.changed  # a second run over what was written writes nothing


@pytest.mark.xfail(
    strict=True,
    reason="PyYAML's emitter with allow_unicode=True writes a lone U+0085 (NEL) key unquoted and reads it back "
    "as a space: dump_values would change a value it did not own (narrow; reported, not fixed here)",
)
def test_a_values_key_that_is_a_lone_next_line_character_survives_the_write() -> None:
    values = {"clustermesh": {"useAPIServer": True}, "\x85": None}
    assert read_values(ai(block=dump_values(values, "valuesBlock")))[0] == values


def test_hand_added_peers_with_odd_names_survive_the_merge() -> None:
    odd = [
        {"foo": "bar"},
        {"name": ["not", "hashable"], "ips": ["198.51.100.1"]},
        {"name": {"a": 1}},
        {"name": "cluster-9", "foo": "bar", "ips": ["198.51.100.9"]},
        "just text",
        None,
    ]
    current = {"clustermesh": {"config": {"enabled": True, "clusters": copy.deepcopy(odd)}}, "ipam": {"mode": "x"}}
    change = plan_is_sane(current)
    assert isinstance(change, ValuesChange)
    entries = change.new_values["clustermesh"]["config"]["clusters"]
    assert entries[: len(odd)] == odd
    assert [e["name"] for e in entries[len(odd) :]] == ["cluster-2", "cluster-3"]


# ------------------------------------------------------------------------------------------ certificates

LEAF_PEM = pem(LEAF_2)
LEAF_DER = LEAF_2.public_bytes(serialization.Encoding.DER)
KEY_PEM = key_pem(LEAF_2_KEY)


@SOME
@given(raw=st.binary(max_size=2000))
def test_load_cert_on_random_bytes_is_a_certificate_error(raw: bytes) -> None:
    with pytest.raises(CertificateError) as info:
        load_cert(raw, source="Secret kube-system/x tls.crt")
    assert info.value.source == "Secret kube-system/x tls.crt"
    with pytest.raises(CertificateError):
        load_cert(raw.decode("latin-1"), source="text")
    with pytest.raises(CertificateError):
        load_private_key(raw, source="key")


def splice(raw: bytes, edits: list[tuple[float, int, bytes]]) -> bytes:
    """Byte-level damage: at each relative offset delete ``cut`` bytes and insert ``junk``."""
    for where, cut, junk in edits:
        at = int(where * len(raw))
        raw = raw[:at] + junk + raw[at + cut :]
    return raw


byte_edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 4), st.binary(max_size=4)), min_size=1, max_size=4)


@SOME
@given(form=st.sampled_from(["pem", "der", "b64"]), edits=byte_edits)
def test_damaged_certificates_and_keys_load_or_raise_certificate_error(form: str, edits: list) -> None:
    raw = {"pem": LEAF_PEM, "der": LEAF_DER, "b64": b64(LEAF_PEM).encode()}[form]
    damaged = splice(raw, edits)
    try:
        cert = load_cert(damaged)
    except CertificateError:
        pass
    else:
        assert isinstance(cert, x509.Certificate)
    with contextlib.suppress(CertificateError):
        load_private_key(splice(KEY_PEM, edits))
    findings = check_pair(damaged, splice(KEY_PEM, edits), ca_data=splice(pem(CA), edits), source="s")
    assert all(f.source.startswith("s ") for f in findings)
    assert KEY_PEM.decode() not in " ".join(f.message for f in findings)


# ---------------------------------------------------------------------------------------------- parsers


def find_fixtures() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "fixtures" / "cilium"
        if candidate.is_dir():
            return candidate
    return None


FIXTURES = find_fixtures()
FIXTURE_BYTES = (
    {} if FIXTURES is None else {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.name != "README.md"}
)
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="shared/fixtures/cilium not found above tests/")


def header_only_or_empty_json(text: str) -> bool:
    """The only inputs for which "no services" is a true answer (parse_service_list's contract)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].split() in (
        ["ID", "Frontend", "Service", "Type", "Backend"],
        ["Frontend", "Service", "Type", "Backend"],
    ):
        return True
    try:
        return json.loads(text) == []
    except ValueError:
        return False


@needs_fixtures
@SOME
@given(name=st.sampled_from(sorted(FIXTURE_BYTES) or ["-"]), edits=byte_edits)
def test_byte_damaged_fixtures_parse_consistently_or_raise_cilium_output_error(name: str, edits: list) -> None:
    text = splice(FIXTURE_BYTES[name], edits).decode("utf-8", "replace")  # as kube.exec decodes output
    try:
        health = parse_health(text)
    except CiliumOutputError as exc:
        assert exc.command == "cilium-health status"
    else:
        assert_consistent_health(health)
        assert health.nodes or health.summary_total is not None, "empty health answer from non-empty input"
    try:
        services = parse_service_list(text)
    except CiliumOutputError as exc:
        assert exc.command == "cilium service list"
    else:
        assert_consistent_services(services)
        assert services or header_only_or_empty_json(text), "empty service list from non-empty input"


@needs_fixtures
@pytest.mark.parametrize("name", sorted(FIXTURE_BYTES))
def test_every_fixture_with_its_last_row_cut_off_never_reads_as_empty(name: str) -> None:
    text = FIXTURE_BYTES[name].decode()
    lines = text.rstrip("\n").split("\n")
    cut = "\n".join(lines[:-1]) + "\n"
    parse = parse_health if name.startswith("health") else parse_service_list
    try:
        result = parse(cut)
    except CiliumOutputError:
        return
    if name.startswith("health"):
        assert result.nodes or result.summary_total is not None  # type: ignore[union-attr]
    else:
        assert result or header_only_or_empty_json(cut)
