"""Issue 14, Cilium upgrades: values that survive the next line are written before KKP upgrades, and the
mesh stays connected while each cluster is upgraded.

A 2-cluster mesh on 1.19 (3 nodes each), KKP rendering the real charts of ``../shared/charts``, set up by the
real flow. A person then enables MCS-API the 1.19 way (``clustermesh.enableMCSAPISupport``, which 1.20 no
longer reads: after the upgrade the cluster would silently run without it) and leaves
``clustermesh.apiserver.tls.enableSecrets`` (removed in 1.20) in cluster-2's values, next to a key of their own.
``upgrade-check --plan`` lists the fix and writes nothing; the ``mesh-upgrade-prepare`` flow writes values that
work on both lines (``clustermesh.mcsapi.enabled``), keeps the person's key and the managed-peers record, and
the mesh is healthy on 1.19; a rerun writes nothing. Then KKP upgrades one cluster at a time to 1.20.0 under
the connectivity probe (2 Hz on the sandbox clock): each install succeeds, no pair ever drops, and the values
KKP keeps are the ones the real 1.20 chart renders with MCS-API on (as edited, it rendered it off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh.cilium.chart_source import forget_unreachable
from clustermesh.errors import PrerequisiteError
from clustermesh.spec import MeshSpec
from clustermesh.steps.chart_check import check_values
from clustermesh.steps.membership import MANAGED_PEERS_ANNOTATION
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_upgrade import mesh_upgrade_prepare
from sandbox.world import World
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.flows.conftest import AI, Kube, ai_versions, cli, edited_spec
from tests.helpers import wait_until
from tests.probe import SandboxProbe
from tests.sandbox.test_upgrades import healthy, installed, links

CHARTS = CHARTS_DIR
pytestmark = [charts_mark("cilium-1.20.0.tgz"), charts_mark("cilium-1.19.4.tgz"), engine_mark]
TARGET = "1.20.0"


@pytest.fixture(autouse=True)
def _fresh_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CLUSTERMESH_STATE_DIR", str(tmp_path / "state"))
    forget_unreachable()
    yield
    forget_unreachable()


def edit_by_hand(kube: Kube) -> None:
    """What a person writes into cluster-2's values on 1.19: MCS-API the old way, a leftover, a key of their own."""
    ai = kube.ai()
    values = yaml.safe_load(ai["spec"]["valuesBlock"])
    values["clustermesh"]["enableMCSAPISupport"] = True
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["enableSecrets"] = True
    values.setdefault("hubble", {})["enabled"] = True  # theirs: never touched
    ai["spec"]["valuesBlock"] = yaml.safe_dump(values)
    kube.custom.replace_namespaced_custom_object(*AI, ai)
    wait_until("the sandbox's KKP applies the hand edit", kube.applied)


def mcs_api(spec: MeshSpec, version: str, values: dict[str, Any]) -> str:
    """``clustermesh-enable-mcs-api`` in cilium-config as the real chart of ``version`` renders ``values``."""
    manifests = check_values(spec, "cluster-2", version, values) or []
    [config] = [m for m in manifests if m.get("kind") == "ConfigMap" and m["metadata"]["name"] == "cilium-config"]
    return str(config["data"].get("clustermesh-enable-mcs-api"))


def settle(probe: SandboxProbe, seconds: float) -> None:
    """Let ``seconds`` of sandbox time pass (the probe's timer keeps the virtual clock going)."""
    until = probe.seconds + seconds
    wait_until(f"{seconds} sandbox seconds", lambda: probe.seconds >= until, timeout=120)


def upgrade_one_cluster(sb: Any, name: str) -> None:
    """KKP's upgrade of ``name`` to 1.20.0 under the probe: the install succeeds and no pair ever drops."""
    world: World = sb.world
    on_loop = sb._loop.call
    with SandboxProbe(sb) as probe:
        settle(probe, 2)
        sb.upgrade(name, TARGET)
        done = lambda: on_loop(lambda: installed(world, name, TARGET))  # noqa: E731 - read on the loop thread
        wait_until(f"{name} installed on {TARGET}", done, timeout=120)
        settle(probe, 10)
    drops = probe.drops()
    assert drops and all(d.samples == 0 for d in drops.values()), (name, drops)
    assert probe.samples >= 2 * probe.seconds, "the probe samples at least twice a sandbox second"
    assert on_loop(lambda: healthy(world)), on_loop(lambda: links(world))


def test_values_prepared_for_1_20_then_each_cluster_upgrades_without_a_drop(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], cli_env: dict[str, str]
) -> None:
    assert CHARTS is not None
    sb = sandbox_factory(clusters=2, nodes=3, cilium_version="1.19", charts=CHARTS)
    spec = edited_spec(sb, lambda data: data.setdefault("cilium", {}).update(chart={"source": str(CHARTS)}))
    config = str(Path(sb.directory) / "edited.yaml")
    assert cluster_mesh_setup(spec).health.healthy
    k = kubes(sb)
    edit_by_hand(k["cluster-2"])
    assert mcs_api(spec, TARGET, k["cluster-2"].values()) == "false", "as edited, 1.20 would drop MCS-API"
    managed = k["cluster-2"].ai()["metadata"]["annotations"][MANAGED_PEERS_ANNOTATION]
    before = ai_versions(k)

    shown = cli(cli_env, "upgrade-check", "--config", config, "--to", TARGET, "--plan")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    plan = shown.stdout.split("Values for Cilium 1.20.0", 1)[1]
    assert "FIX      clustermesh.enableMCSAPISupport: now clustermesh.mcsapi.enabled: true" in plan, plan
    assert "FIX      clustermesh.apiserver.tls.enableSecrets: removed" in plan, plan
    assert "write cluster-2" in plan and "BLOCKING" not in plan, plan
    assert ai_versions(k) == before, "--plan writes nothing"

    with pytest.raises(PrerequisiteError, match="cluster-7"):
        mesh_upgrade_prepare(spec, TARGET, cluster="cluster-7")
    result = mesh_upgrade_prepare(spec, TARGET)
    assert [(c.cluster, c.written) for c in result.changes] == [("cluster-2", True)], result.describe()
    assert result.blocking == [] and result.status != "FAIL", result.describe()
    values = k["cluster-2"].values()
    assert "enableMCSAPISupport" not in values["clustermesh"] and values["clustermesh"]["mcsapi"] == {"enabled": True}
    assert "enableSecrets" not in values["clustermesh"]["apiserver"].get("tls", {})
    assert values["hubble"]["enabled"] is True, "a person's own key stays"
    assert k["cluster-2"].ai()["metadata"]["annotations"][MANAGED_PEERS_ANNOTATION] == managed
    assert (mcs_api(spec, "1.19.4", values), mcs_api(spec, TARGET, values)) == ("true", "true")
    on_loop = sb._loop.call
    assert on_loop(lambda: healthy(sb.world)), on_loop(lambda: links(sb.world))

    after = ai_versions(k)
    again = mesh_upgrade_prepare(spec, TARGET)
    assert not again.wrote_anything and ai_versions(k) == after, again.describe()

    for name in ("cluster-1", "cluster-2"):  # KKP upgrades one cluster at a time, the same values
        upgrade_one_cluster(sb, name)
    assert k["cluster-2"].values() == values, "KKP's upgrade keeps the values"
