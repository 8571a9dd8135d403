"""Per-line Cilium facts: the matrix of reference/cilium.md §1, pinned line by line."""

from __future__ import annotations

import pickle
from dataclasses import fields

import pytest

from clustermesh.cilium.profiles import (
    MCS_API_ENABLED_PATH,
    MCS_API_SUPPORT_PATH,
    PROFILES,
    REMOVED_IN_1_20,
    SUPPORTED_LINES,
    parse_cilium_version,
    profile_for,
)
from clustermesh.errors import ClusterMeshError, UnsupportedVersionError

LINES = ["1.13", "1.14", "1.15", "1.16", "1.17", "1.18", "1.19", "1.20"]


def test_every_line_from_1_13_to_1_20_has_a_profile() -> None:
    assert list(SUPPORTED_LINES) == LINES
    assert all(PROFILES[line].line == line for line in LINES)
    assert [profile.minor for profile in PROFILES.values()] == list(range(13, 21))


def _thresholds(minor: int) -> dict[str, object]:
    """The version comparisons the table of rows replaced, kept here to prove every row says the same."""
    return {
        "line": f"1.{minor}",
        "agent_cli": "cilium" if minor <= 14 else "cilium-dbg",
        "ca_placement": ("clustermesh", "apiserver", "tls", "ca") if minor == 13 else ("tls", "ca"),
        "supports_per_peer_ca_cert": minor >= 14,
        "default_ca_mode": "shared" if minor == 13 else "per-peer",
        "ca_secret_names": {
            13: ("clustermesh-apiserver-ca-cert", "cilium-ca"),
            14: ("cilium-ca", "clustermesh-apiserver-ca-cert"),
        }.get(minor, ("cilium-ca",)),
        "peer_tls_required": minor == 13,
        "certgen_is_helm_hook": 14 <= minor <= 18,
        "safe_tls_method_under_kkp": "helm" if 14 <= minor <= 18 else "cronJob",
        "old_ca_key_rejected_from_patch": {13: None, 14: None, 15: 8, 16: 2}.get(minor, 0),
        "old_ca_key_ignored": minor in (15, 16),
        "annotation_prefixes_read": ("io.cilium/",) if minor == 13 else ("io.cilium/", "service.cilium.io/"),
        "none_affinity_drops_remote": minor >= 18,
        "preferred_marker_reliable": minor < 18,
        "health_layout": (
            "probe-time"
            if minor <= 16
            else "cluster-health-table"
            if minor == 17
            else "cluster-health-table-probe-interval"
        ),
        "service_list_has_protocol": minor >= 17,
        "status_header": "clusters ready" if minor <= 15 else "remote clusters ready",
        "max_connected_clusters_options": (255,) if minor <= 14 else (255, 511),
        "name_format_enforced": minor >= 16,
        "kvstoremesh_default": minor >= 16,
        "clusters_map_accepted": minor >= 19,
        "per_entry_certs_deprecated": minor >= 19,
        "auth_mode_default": None if minor == 13 else "migration" if minor >= 19 else "legacy",
        "cache_ttl_supported": minor >= 19,
        "policy_default_local_cluster": minor >= 19,
        "global_namespaces": minor >= 20,
        "removed_value_paths": REMOVED_IN_1_20 if minor >= 20 else (),
        "cert_validity_days": 365 if minor >= 20 else 1095,
        "mcs_api_values_path": (None if minor <= 16 else MCS_API_SUPPORT_PATH if minor <= 18 else MCS_API_ENABLED_PATH),
        "mcs_api_coredns_auto": minor >= 19,
        "server_extra_names_path": (
            ("clustermesh", "apiserver", "tls", "auto", "server")
            if minor >= 20
            else ("clustermesh", "apiserver", "tls", "server")
        ),
        "unverified": {
            19: ("health layout", "status header", "none-affinity bug"),
            20: ("health layout", "status header", "none-affinity bug", "service list ID column"),
        }.get(minor, ()),
    }


@pytest.mark.parametrize("minor", range(13, 21))
def test_each_row_agrees_with_the_version_thresholds_it_replaced(minor: int) -> None:
    profile = PROFILES[f"1.{minor}"]
    assert {f.name: getattr(profile, f.name) for f in fields(profile)} == _thresholds(minor)


@pytest.mark.parametrize("line", LINES)
def test_every_patch_of_a_line_gets_its_row_and_a_patch_rule_that_matches(line: str) -> None:
    expected = _thresholds(int(line.split(".")[1]))
    rejected_from = expected["old_ca_key_rejected_from_patch"]
    assert rejected_from is None or isinstance(rejected_from, int)
    for patch in [None, *range(40)]:
        version = line if patch is None else f"{line}.{patch}"
        profile = profile_for(version)
        assert profile is PROFILES[line]
        if rejected_from is None:
            effect = "used"
        elif patch is None or patch >= rejected_from:
            effect = "rejected"
        else:
            effect = "ignored" if expected["old_ca_key_ignored"] else "used"
        assert profile.old_ca_key_effect(patch) == effect, version


@pytest.mark.parametrize("text", ["1.16", "1.16.9", "v1.16.9", " 1.16.9 ", "1.16.0-rc.1", "v1.16.3+build.7"])
def test_profile_for_accepts_line_patch_and_v_prefix(text: str) -> None:
    assert profile_for(text).line == "1.16"


@pytest.mark.parametrize("text", ["1.12.9", "1.21", "2.0", "1", "latest", "", "1.x", "1.16.9.1"])
def test_unsupported_versions_name_the_supported_lines(text: str) -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        profile_for(text)
    assert isinstance(info.value, ClusterMeshError)
    assert "1.13" in str(info.value) and "1.20" in str(info.value)
    assert info.value.supported == tuple(LINES)


def test_unsupported_version_error_survives_pickling() -> None:
    error = UnsupportedVersionError("1.21", tuple(LINES))
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_parse_keeps_patch_or_none() -> None:
    assert parse_cilium_version("v1.15.8") == (1, 15, 8)
    assert parse_cilium_version("1.15").patch is None
    assert str(parse_cilium_version("v1.15.8")) == "1.15.8"


# line, agent_cli, ca_placement, per-peer, default ca mode, safe tls method, ca secrets
MATRIX = [
    ("1.13", "cilium", ("clustermesh", "apiserver", "tls", "ca"), False, "shared", "cronJob",
     ("clustermesh-apiserver-ca-cert", "cilium-ca")),
    ("1.14", "cilium", ("tls", "ca"), True, "per-peer", "helm",
     ("cilium-ca", "clustermesh-apiserver-ca-cert")),
    ("1.15", "cilium-dbg", ("tls", "ca"), True, "per-peer", "helm", ("cilium-ca",)),
    ("1.16", "cilium-dbg", ("tls", "ca"), True, "per-peer", "helm", ("cilium-ca",)),
    ("1.17", "cilium-dbg", ("tls", "ca"), True, "per-peer", "helm", ("cilium-ca",)),
    ("1.18", "cilium-dbg", ("tls", "ca"), True, "per-peer", "helm", ("cilium-ca",)),
    ("1.19", "cilium-dbg", ("tls", "ca"), True, "per-peer", "cronJob", ("cilium-ca",)),
    ("1.20", "cilium-dbg", ("tls", "ca"), True, "per-peer", "cronJob", ("cilium-ca",)),
]  # fmt: skip


@pytest.mark.parametrize(("line", "cli", "placement", "per_peer", "ca_mode", "tls", "secrets"), MATRIX)
def test_profile_matrix_per_line(
    line: str,
    cli: str,
    placement: tuple[str, ...],
    per_peer: bool,
    ca_mode: str,
    tls: str,
    secrets: tuple[str, ...],
) -> None:
    profile = profile_for(line)
    assert profile.agent_cli == cli
    assert profile.ca_placement == placement
    assert profile.supports_per_peer_ca_cert is per_peer
    assert profile.default_ca_mode == ca_mode
    assert profile.safe_tls_method_under_kkp == tls
    assert profile.ca_secret_names == secrets


@pytest.mark.parametrize("line", LINES)
def test_cronjob_is_safe_exactly_where_certgen_is_not_a_helm_hook(line: str) -> None:
    profile = profile_for(line)
    assert (profile.safe_tls_method_under_kkp == "cronJob") is (not profile.certgen_is_helm_hook)


@pytest.mark.parametrize(
    ("version", "effect"),
    [
        ("1.13.4", "used"),
        ("1.14.16", "used"),
        ("1.15.7", "ignored"),
        ("1.15.8", "rejected"),
        ("1.15", "rejected"),
        ("1.16.1", "ignored"),
        ("1.16.2", "rejected"),
        ("1.17.0", "rejected"),
        ("1.18.10", "rejected"),
        ("1.19.4", "rejected"),
        ("1.20.0", "rejected"),
    ],
)
def test_old_ca_key_is_rejected_from_1_15_8_and_1_16_2(version: str, effect: str) -> None:
    parsed = parse_cilium_version(version)
    profile = profile_for(version)
    assert profile.old_ca_key_effect(parsed.patch) == effect
    assert profile.old_ca_key_rejected(parsed.patch) is (effect == "rejected")


@pytest.mark.parametrize("line", LINES)
def test_global_annotations_write_both_families_on_every_line(line: str) -> None:
    annotations = profile_for(line).global_annotations()
    assert annotations == {"io.cilium/global-service": "true", "service.cilium.io/global": "true"}


def test_only_1_13_reads_just_the_old_annotation_family() -> None:
    assert profile_for("1.13").annotation_prefixes_read == ("io.cilium/",)
    assert "service.cilium.io/" in profile_for("1.14").annotation_prefixes_read


@pytest.mark.parametrize(("line", "dropped"), [("1.17", False), ("1.18", True), ("1.19", True), ("1.20", True)])
def test_none_affinity_is_deleted_where_it_black_holes_remote_backends(line: str, dropped: bool) -> None:
    annotations = profile_for(line).affinity_annotations("none")
    assert (annotations == {}) is dropped
    assert profile_for(line).affinity_annotations("local") == {
        "io.cilium/service-affinity": "local",
        "service.cilium.io/affinity": "local",
    }


@pytest.mark.parametrize(
    ("line", "preferred", "layout", "protocol", "header", "max_ids"),
    [
        ("1.13", True, "probe-time", False, "clusters ready", 255),
        ("1.14", True, "probe-time", False, "clusters ready", 255),
        ("1.15", True, "probe-time", False, "clusters ready", 511),
        ("1.16", True, "probe-time", False, "remote clusters ready", 511),
        ("1.17", True, "cluster-health-table", True, "remote clusters ready", 511),
        ("1.18", False, "cluster-health-table-probe-interval", True, "remote clusters ready", 511),
        ("1.19", False, "cluster-health-table-probe-interval", True, "remote clusters ready", 511),
        ("1.20", False, "cluster-health-table-probe-interval", True, "remote clusters ready", 511),
    ],
)
def test_output_format_facts_per_line(
    line: str, preferred: bool, layout: str, protocol: bool, header: str, max_ids: int
) -> None:
    profile = profile_for(line)
    assert profile.preferred_marker_reliable is preferred
    assert profile.health_layout == layout
    assert profile.service_list_has_protocol is protocol
    assert profile.status_header == header
    assert profile.max_ids == max_ids
    assert profile.supports_max_connected_clusters(511) is (max_ids == 511)


def test_1_13_needs_tls_on_every_peer_entry() -> None:
    assert profile_for("1.13").peer_tls_required
    assert not profile_for("1.14").peer_tls_required


def test_only_1_19_and_1_20_are_marked_partly_unverified() -> None:
    assert profile_for("1.19").unverified and profile_for("1.20").unverified
    assert all(not profile_for(line).unverified for line in LINES[:-2])


def test_profiles_are_immutable() -> None:
    profile = profile_for("1.16")
    with pytest.raises(AttributeError):
        profile.agent_cli = "cilium"  # type: ignore[misc]
