"""MCS-API (Multi-Cluster Services) per Cilium line: the profile's facts proven with the real charts, the key the
setup writes, and the spec refusing it where a line has none.

``values.yaml`` is read for the keys each line has; the chart is rendered (Helm's engine) with the values the
setup writes to show what they turn on: cilium-config ``clustermesh-enable-mcs-api`` and the
clustermesh-apiserver's ``--clustermesh-enable-mcs-api``. Both skip, saying why, where ``../shared/charts`` or
the engine are missing.
"""

from __future__ import annotations

from typing import Any

import pytest

from clustermesh.cilium import profile_for
from clustermesh.cilium.mcs import MCS_API_CONFIG_KEY, mcs_api_enabled_in_config, mcs_api_values
from clustermesh.cilium.profiles import MCS_API_ENABLED_PATH, MCS_API_SUPPORT_PATH
from clustermesh.errors import SpecError, ValuesError
from clustermesh.values import deep_merge, value_at
from tests.domain.test_profiles_119_120 import (
    ONE_PER_LINE,
    chart_values,
    named,
    needs_charts,
    needs_engine,
    ours,
    render,
)
from tests.domain.test_values import mesh

APISERVER_FLAG = "--clustermesh-enable-mcs-api"


def _with_mcs(version: str) -> dict[str, Any]:
    """The values the setup writes with ``cilium.mcs_api: true``, in a new KKP cluster's values."""
    return deep_merge(ours(version), mcs_api_values(profile_for(version), enabled=True, cluster="cluster-1"))


def _rendered(version: str, values: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(cilium-config's MCS-API value, the clustermesh-apiserver container's args) as the chart renders them."""
    manifests = render(version, values)
    [config] = named(manifests, "ConfigMap", "cilium-config")
    [deployment] = named(manifests, "Deployment", "clustermesh-apiserver")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    [apiserver] = [c for c in containers if c["name"] == "apiserver"]
    return config["data"].get(MCS_API_CONFIG_KEY), list(apiserver.get("args") or [])


@needs_charts
@pytest.mark.parametrize("version", ONE_PER_LINE)
def test_the_charts_mcs_keys_are_the_profiles_facts(version: str) -> None:
    profile = profile_for(version)
    values, _text = chart_values(version)

    if profile.mcs_api_values_path is not None:  # the key exists, off by default
        assert value_at(values, profile.mcs_api_values_path) == (True, False)
    has_old_key = value_at(values, MCS_API_SUPPORT_PATH)[0]
    assert has_old_key is (profile.minor in (16, 17, 18, 19))  # 1.16 partial, deprecated in 1.19, gone in 1.20
    assert value_at(values, MCS_API_ENABLED_PATH)[0] is (profile.minor >= 19)
    assert profile.mcs_api_values_path == {
        17: MCS_API_SUPPORT_PATH,
        18: MCS_API_SUPPORT_PATH,
        19: MCS_API_ENABLED_PATH,
        20: MCS_API_ENABLED_PATH,
    }.get(profile.minor)
    coredns = value_at(values, ("clustermesh", "mcsapi", "corednsAutoConfigure", "enabled"))
    assert coredns == ((True, False) if profile.mcs_api_coredns_auto else (False, None))


@needs_charts
@needs_engine
@pytest.mark.parametrize("version", ["1.17.18", "1.18.12", "1.19.6", "1.20.0"])
def test_the_key_the_setup_writes_turns_mcs_api_on(version: str) -> None:
    config_off, args_off = _rendered(version, ours(version))
    assert (config_off, APISERVER_FLAG in args_off) == ("false", False)
    config, args = _rendered(version, _with_mcs(version))
    assert (config, APISERVER_FLAG in args) == ("true", True)
    assert mcs_api_enabled_in_config({"data": {MCS_API_CONFIG_KEY: config}})


@needs_charts
@needs_engine
def test_1_19_still_reads_the_old_key_and_1_20_ignores_it() -> None:
    old_key = {"clustermesh": {"enableMCSAPISupport": True}}
    config, args = _rendered("1.19.6", deep_merge(ours("1.19.6"), old_key))
    assert (config, APISERVER_FLAG in args) == ("true", True)
    config, args = _rendered("1.20.0", deep_merge(ours("1.20.0"), old_key))
    assert (config, APISERVER_FLAG in args) == ("false", False)  # silently off: the setup writes mcsapi.enabled


@needs_charts
@needs_engine
def test_1_16_has_the_key_but_no_clustermesh_apiserver_support() -> None:
    """Why the profile says no MCS-API on 1.16: the agents' config says yes, the clustermesh-apiserver never hears."""
    values = deep_merge(ours("1.16.19"), {"clustermesh": {"enableMCSAPISupport": True}})
    config, args = _rendered("1.16.19", values)
    assert config == "true"
    assert APISERVER_FLAG not in args


@pytest.mark.parametrize(
    ("line", "written"),
    [
        ("1.17", {"clustermesh": {"enableMCSAPISupport": True}}),
        ("1.18", {"clustermesh": {"enableMCSAPISupport": True}}),
        ("1.19", {"clustermesh": {"mcsapi": {"enabled": True}}}),
        ("1.20", {"clustermesh": {"mcsapi": {"enabled": True}}}),
    ],
)
def test_each_line_gets_its_own_key_and_nothing_when_not_asked(line: str, written: dict[str, Any]) -> None:
    profile = profile_for(line)
    assert mcs_api_values(profile, enabled=True, cluster="cluster-1") == written
    assert mcs_api_values(profile, enabled=False, cluster="cluster-1") == {}


@pytest.mark.parametrize("line", ["1.13", "1.14", "1.15", "1.16"])
def test_a_line_without_mcs_api_is_refused_naming_the_field(line: str) -> None:
    with pytest.raises(ValuesError, match=r"cilium\.mcs_api is true, but Cilium 1\.1\d has no Multi-Cluster"):
        mcs_api_values(profile_for(line), enabled=True, cluster="cluster-2")
    with pytest.raises(SpecError, match=r"cilium\.mcs_api.*no Multi-Cluster Services API"):
        mesh(version=line, mcs_api=True)
    spec = mesh(mcs_api=True)  # no version in the spec: refused once the cluster's line is known (step 1)
    with pytest.raises(SpecError, match=r"cilium\.mcs_api"):
        spec.cilium.resolve(profile_for(line))


def test_a_line_with_mcs_api_accepts_the_spec() -> None:
    spec = mesh(version="1.17", mcs_api=True)
    assert spec.cilium.mcs_api is True
    assert spec.cilium.resolve(profile_for("1.17")).profile.line == "1.17"


def test_the_nightly_warns_when_a_cluster_lost_the_mcs_key_the_spec_asks_for() -> None:
    from tests.domain.test_verify import make_mesh, problems

    mesh = make_mesh("1.17.18", "1.18.12", cilium={"mcs_api": True})  # values written without the MCS key
    found = [f.reason for f in problems(mesh.drift()) if "MCS" in f.reason or "mcsapi" in f.reason]
    assert found == [
        "clustermesh.enableMCSAPISupport is not set, the setup writes True",
        "clustermesh.enableMCSAPISupport is not set, the setup writes True",
    ]
    for name, key in (("cluster-1", MCS_API_SUPPORT_PATH), ("cluster-2", MCS_API_SUPPORT_PATH)):
        written = mcs_api_values(profile_for(mesh[name].cilium), enabled=True, cluster=name)
        mesh[name].set_values(deep_merge(mesh[name].values(), written))
        assert value_at(mesh[name].values(), key) == (True, True)
    assert [f for f in problems(mesh.drift()) if "MCS" in f.reason or "mcsapi" in f.reason] == []


@pytest.mark.parametrize(
    ("version", "asked", "old_key_kept"), [("1.18.12", True, True), ("1.20.0", True, False), ("1.20.0", False, True)]
)
def test_the_setup_removes_the_old_key_where_it_writes_mcsapi_enabled(
    version: str, asked: bool, old_key_kept: bool
) -> None:
    from clustermesh.steps.step2_4_6_mesh_values import plan_mesh_values
    from tests.domain.test_profiles_119_120 import _facts
    from tests.domain.test_values import KKP_VALUES, ai

    left_from_1_18 = deep_merge(KKP_VALUES, {"clustermesh": {"enableMCSAPISupport": True}})
    spec = mesh(version=version, mcs_api=asked)
    change = plan_mesh_values(ai(left_from_1_18), _facts(version), spec.first, spec, peers=[], shared_ca=None)

    assert value_at(change.new_values, MCS_API_SUPPORT_PATH)[0] is old_key_kept
    writes_new_key = version == "1.20.0" and asked
    assert value_at(change.new_values, MCS_API_ENABLED_PATH) == ((True, True) if writes_new_key else (False, None))
