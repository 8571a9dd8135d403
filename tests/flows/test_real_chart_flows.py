"""The whole pipeline against sandboxes whose KKP installs the real Cilium chart (real-chart mode).

For each line the issue names (1.13, 1.16, 1.19, 1.20), three clusters whose ``cilium`` installations are
rendered by Helm's engine with ``cilium-<version>.tgz`` from ``../shared/charts``: the simulated agents then
dial with what the real chart rendered (Secrets, hostAliases), so a value the chart handles differently from
the built-in renderer shows up as a mesh that does not connect. The pipeline's own chart check reads the same
folder (``cilium.chart.source``). Judged by the pipeline's own results: the setup's health matrix, the
nightly's verdict, the drill's phases, and a last nightly (no drill) after everything.

The rest of issue 13 lives elsewhere: a values key the real chart refuses is refused before any write in
tests/flows/test_render_before_write.py; 1.13 values without the shared CA never connecting, at the
sandbox level (values written by hand), in tests/sandbox/test_real_chart_mode.py. At the flow level the
pipeline cannot be made to write such values: the spec refuses ``ca_mode: per-peer`` on 1.13 before any
write, which the last test here shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clustermesh.errors import SpecError
from flows.failover_drill import failover_drill
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from sandbox.real_chart import ChartRenderer
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.flows.conftest import ai_versions, edited_spec

CHARTS = CHARTS_DIR
LINES = ("1.13", "1.16", "1.19", "1.20")
pytestmark = [charts_mark(), engine_mark]


def real_chart_sandbox(sandbox_factory: Callable[..., Any], line: str) -> Any:
    """Three clusters of one Cilium line, one node each, KKP rendering the real chart of that line."""
    return sandbox_factory(clusters=3, nodes=1, cilium_version=line, charts=CHARTS)


def spec_with_charts(sb: Any, **cilium: Any) -> Any:
    """The sandbox's ``mesh.yaml`` with the pipeline's chart check reading the same folder (plus ``cilium``)."""

    def edit(data: dict[str, Any]) -> None:
        data.setdefault("cilium", {}).update(chart={"source": str(CHARTS)}, **cilium)

    return edited_spec(sb, edit)


def nightly(spec: Any, *, run_drill: bool) -> VerificationResult:
    state = nightly_mesh_verification(spec, run_drill=run_drill, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), f"{state}: {state.result(raise_on_failure=False)!r}"
    return result


def drill_phases(result: Any) -> list[tuple[str, str | None, str]]:
    return [(p.name, p.cluster, p.status) for p in result.phases]


@pytest.mark.parametrize("line", LINES)
def test_three_clusters_are_set_up_verified_and_drilled_with_the_real_chart(
    sandbox_factory: Callable[..., Any], line: str
) -> None:
    sb = real_chart_sandbox(sandbox_factory, line)
    spec = spec_with_charts(sb)
    names = ["cluster-1", "cluster-2", "cluster-3"]

    setup = cluster_mesh_setup(spec)
    assert setup.health.healthy, setup.health.render_text()
    assert sorted(setup.health.clusters) == names
    assert len(setup.health.cells) == 9  # every cluster × every cluster, each one healthy
    assert {c.cluster for c in setup.changes if c.written and c.step.startswith("6.")} == set(names), setup.describe()
    assert all(c.applied for c in setup.changes if c.written), setup.describe()
    # KKP rendered the real chart for every write (at least the initial install and steps 2/4/6 per cluster)
    assert sb.world is not None and isinstance(sb.world.renderer, ChartRenderer)
    assert sb.world.renderer.renders >= 3 * 3

    night = nightly(spec, run_drill=True)
    assert night.status == "PASS", night.describe()
    assert night.health is not None and night.health.healthy, night.describe()
    assert night.drill is not None and night.drill.status == "passed", night.drill

    state = failover_drill(spec, return_state=True)
    assert state.is_completed(), state
    drill = state.result()
    assert drill.status == "passed", drill.reason
    assert drill.failed_probes == 0 and drill.probes > 0
    assert set(drill.failover_seconds) == set(names)
    assert ("rollback", None, "passed") in drill_phases(drill)

    after = nightly(spec, run_drill=False)  # the mesh is whole after the drills: the pipeline says so
    assert after.status == "PASS", after.describe()
    assert after.health is not None and after.health.healthy and len(after.health.cells) == 9
    assert [f for f in after.findings if f.level != "ok"] == [], after.describe()
    again = cluster_mesh_setup(spec)  # and a setup run again finds every value already in place
    assert not again.wrote_anything, again.describe()
    assert again.health.healthy, again.health.render_text()


def test_113_per_peer_values_without_the_shared_ca_are_refused_before_any_write(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Any]]
) -> None:
    """1.13 has no ``clusters[].tls.caCert``: without the shared CA no peer would ever be trusted (the sandbox
    test shows it with the real chart), so the setup refuses ``ca_mode: per-peer`` once it knows the line."""
    sb = real_chart_sandbox(sandbox_factory, "1.13")
    before = ai_versions(kubes(sb))

    with pytest.raises(SpecError) as refused:
        cluster_mesh_setup(spec_with_charts(sb, ca_mode="per-peer"))

    message = str(refused.value)
    assert "cilium.ca_mode" in message and "per-peer" in message, message
    assert "use ca_mode auto or shared" in message, message
    assert ai_versions(kubes(sb)) == before  # nothing written anywhere
