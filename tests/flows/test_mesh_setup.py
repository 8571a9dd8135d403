"""``cluster_mesh_setup`` on instant sandboxes, per Cilium line: a healthy mesh, checked from the outside.

The flow's own verdict is not enough: each test also asks every agent of every cluster through the
sandbox's ``cilium-health status`` (official client, parsed here) and reads every cluster's values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.mesh_setup import cluster_mesh_setup
from tests.flows.conftest import assert_peers_exactly_once, health_problems, mesh_spec


@pytest.mark.parametrize(
    ("cilium_version", "clusters"),
    [("1.13", 2), ("1.14", 2), ("1.16", 2), ("1.18", 2), ("1.19", 2), ("1.16", 4)],
    ids=["1.13x2", "1.14x2", "1.16x2", "1.18x2", "1.19x2", "1.16x4"],
)
def test_setup_meshes_every_cluster_with_every_other(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Any]], cilium_version: str, clusters: int
) -> None:
    sb = sandbox_factory(clusters=clusters, cilium_version=cilium_version, nodes=2)
    names = [ep.name for ep in sb.endpoints]
    k = kubes(sb)
    assert health_problems(k), "before the setup the independent check must see no mesh"

    result = cluster_mesh_setup(mesh_spec(sb))

    assert result.health.healthy, result.health.render_text()
    assert result.health.clusters == names
    assert all(c.reachable == c.expected == 2 for c in result.health.cells), result.health.summary()
    assert result.firewall.ok, result.firewall.blocked
    assert [f.name for f in result.facts] == names
    assert {f.profile_line for f in result.facts} == {cilium_version}
    assert [e["cluster"] for e in result.endpoints] == names
    # every cluster was written at least once, and step 6 ran once per cluster
    assert {c.cluster for c in result.changes if c.written} == set(names)
    assert sorted(c.cluster for c in result.changes if c.step.startswith("6.")) == sorted(names)

    assert_peers_exactly_once(k)
    assert health_problems(k) == []


def test_a_run_makes_its_files_owner_only_and_gives_the_process_its_umask_back(tmp_path: Path) -> None:
    import os

    from tasks.results import owner_only_files

    previous = os.umask(0o022)
    try:
        with owner_only_files():
            (tmp_path / "during").write_text("x")
        (tmp_path / "after").write_text("x")
        assert (tmp_path / "during").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "after").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)
