"""Load: the real setup flow, then the nightly verification (no drill), on 16 sandbox clusters × 50 nodes.

800 agents, each answering ``cilium-health status -o json`` with every node of the mesh (800): the nightly
reads 640,000 node entries. The sandbox runs in its own process (``clustermesh sandbox up``), as clusters
do, so its CPU is not the pipeline's; figures for 2–16 clusters come from ``bench/scale.py``, not from here.
A smaller mesh (16 × 3) checks the same on every run of the module before the large one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clustermesh.spec import load_spec
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification
from tests.helpers import sandbox_process

# a temporary Prefect server for this module, with PREFECT_HOME and result storage in a temp dir (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("module_prefect_server", "no_result_key")


def setup_then_verify(directory: Path, clusters: int, nodes: int) -> VerificationResult:
    """A healthy mesh from the real setup flow, then one nightly verification without the drill."""
    options = ("--clusters", str(clusters), "--nodes", str(nodes), "--cilium-version", "1.16")
    with sandbox_process(directory, *options, env=os.environ):
        spec = load_spec(directory / "mesh.yaml")
        names = [c.name for c in spec.clusters]
        assert len(names) == clusters

        setup = cluster_mesh_setup(spec)

        assert setup.health.healthy, setup.health.summary()
        state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert isinstance(result, VerificationResult)
    assert result.status == "PASS", result.describe()
    matrix = result.health
    assert matrix is not None and matrix.healthy, matrix
    assert matrix.clusters == names
    assert len(matrix.cells) == clusters * clusters
    incomplete = [c.describe() for c in matrix.cells if not (c.reachable == c.expected == nodes and c.agents == nodes)]
    assert incomplete == [], incomplete[:5]
    assert not [f for f in result.findings if f.level != "ok"], result.describe()
    print(f"\n{clusters} clusters × {nodes} nodes: {result.status}, {matrix.summary()}")
    return result


def test_nightly_verification_of_16_clusters_reports_pass_with_the_full_matrix(tmp_path: Path) -> None:
    setup_then_verify(tmp_path / "sandbox", clusters=16, nodes=3)


@pytest.mark.timeout(900)
def test_nightly_verification_of_16_clusters_with_50_nodes_each_reports_pass_with_50_of_50_everywhere(
    tmp_path: Path,
) -> None:
    setup_then_verify(tmp_path / "sandbox", clusters=16, nodes=50)
