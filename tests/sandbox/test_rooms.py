"""The sandbox's rooms: the version table replaces string comparisons, and the chart is one Renderer."""

from __future__ import annotations

from typing import Any

from sandbox import chart, versions
from sandbox.render import BuiltinRenderer, Renderer
from sandbox.resources import builtin_types
from sandbox.store import Store
from sandbox.world import CILIUM_PATCH, World


def test_the_table_keeps_each_lines_facts() -> None:
    assert CILIUM_PATCH["1.16"] == "1.16.9"
    assert chart.LINES == ("1.13", "1.14", "1.15", "1.16", "1.17", "1.18", "1.19", "1.20")
    assert versions.facts("1.13.8").legacy_tunnel_key and not versions.facts("1.14.0").legacy_tunnel_key
    assert not versions.facts("1.14.16").kvstoremesh_host_aliases and versions.facts("1.15.0").kvstoremesh_host_aliases
    assert versions.facts("v1.19.4").kvstoremesh_local_cert and not versions.facts((1, 15, 16)).kvstoremesh_local_cert
    assert versions.affinity_none_drops_remote((1, 18, 10)) and not versions.affinity_none_drops_remote((1, 18, 9))
    assert not versions.affinity_none_drops_remote((1, 19, 0))


def test_versions_compare_as_numbers_not_strings() -> None:
    """ "1.9" sorts after "1.15" as a string; as a parsed version it is older."""
    assert versions.parse("1.9") < versions.parse("1.15")
    assert versions.parse_lenient("v1.18.10-rc1") == (1, 18, 10)


def test_the_world_renders_through_the_renderer_it_is_given() -> None:
    seen: list[str] = []

    class Recording:
        def render(self, version: str, values: dict[str, Any]) -> chart.Rendered:
            seen.append(version)
            return BuiltinRenderer().render(version, values)

    assert isinstance(Recording(), Renderer)
    world = World(time_scale=0.0, renderer=Recording())
    store = Store()
    store.register(builtin_types())
    world.add_cluster(store, index=1, cilium_version="1.16")
    assert seen == ["1.16.9"]
