"""The cluster-loss drill (issue 15, section 1) as a flow and a command, on 1.19 sandbox meshes.

One member's ``kube-system/clustermesh-apiserver`` is scaled to 0; the others must keep its backends
(``clustermesh.cacheTTL`` unset) or withdraw them after the TTL (set), traffic must be answered, and once
the apiserver is back every member reconnects. Afterwards the replica count is back and no record is
left; a CLI killed (SIGKILL) while the apiserver is at 0 is undone by the next drill. Replica counts,
annotations and the agents' ``cilium-dbg status`` are read with the official ``kubernetes`` client; the
TTL is compared on the sandbox's own clock (its record of when each agent lost, withdrew and resynced a
peer), never on wall time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from clustermesh.drill import DrillResult
from flows.failover_drill import failover_drill
from tests.flows.conftest import AI, Kube, mesh_spec, write_edited_yaml
from tests.helpers import ROOT, build_mesh, run_cli, wait_until

APISERVER = "clustermesh-apiserver"
RECORD = "clustermesh.io/drill-original-replicas"
TTL_SECONDS = 30
WAIT = 150.0  # generous bound on every wait below (2 cores shared): a test fails with what it saw


def apiserver(k: Kube) -> tuple[int, str | None]:
    """spec.replicas of the clustermesh-apiserver Deployment and the drill's record on it."""
    d = k8s.AppsV1Api(k.api).read_namespaced_deployment(APISERVER, "kube-system")
    return int(d.spec.replicas), (d.metadata.annotations or {}).get(RECORD)


def peers_ready(k: Kube) -> dict[str, bool]:
    """Per remote cluster, whether every agent of the cluster reports it ready (``cilium-dbg status -o json``)."""
    seen: dict[str, bool] = {}
    for pod in k.agent_pods():
        status = json.loads(k.exec(pod, ["cilium-dbg", "status", "-o", "json"]))
        for peer in (status.get("cluster-mesh") or {}).get("clusters") or []:
            seen[peer["name"]] = seen.get(peer["name"], True) and peer.get("ready") is True
    return seen


def set_cache_ttl(k: Kube, ttl: str) -> None:
    """What a user does: ``clustermesh.cacheTTL`` added to the cilium ApplicationInstallation's values."""
    ai = k.ai()
    spec = ai["spec"]
    if isinstance(spec.get("valuesBlock"), str) and spec["valuesBlock"].strip():
        values = yaml.safe_load(spec["valuesBlock"]) or {}
        values.setdefault("clustermesh", {})["cacheTTL"] = ttl
        spec["valuesBlock"] = yaml.safe_dump(values, sort_keys=False)
    else:
        spec.setdefault("values", {}).setdefault("clustermesh", {})["cacheTTL"] = ttl
    k.custom.replace_namespaced_custom_object(*AI, ai)


def cache_ttl_in_config(k: Kube) -> str | None:
    data = k.core.read_namespaced_config_map("cilium-config", "kube-system").data or {}
    return data.get("clustermesh-cache-ttl")


def loss_mesh(sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]) -> tuple[Any, Any]:
    """A 2-cluster 1.19 mesh built with the guide's steps; the drill watches a lost member for 2 s."""
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    spec, clients, _facts = build_mesh(sb, 60)
    for c in clients.values():
        c.close()
    return sb, kubes(sb)


def with_loss_seconds(sb: Any, seconds: float) -> Any:
    spec = mesh_spec(sb)
    return spec.model_copy(update={"drill": spec.drill.model_copy(update={"loss_seconds": seconds})})


def run_loss_drill(spec: Any) -> DrillResult:
    state = failover_drill(spec, scenario="cluster-loss", cluster="cluster-1", return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert isinstance(result, DrillResult)
    return result


def assert_restored(kubes: dict[str, Kube]) -> None:
    """The apiserver back at its count without a record, and every member connected to every other."""
    for name, k in kubes.items():
        assert apiserver(k) == (1, None), name
        ready = peers_ready(k)
        assert ready == {other: True for other in kubes if other != name}, (name, ready)


def events(sb: Any, what: str) -> list[Any]:
    return [e for e in sb.world.remote_cache_events() if e.what == what and e.peer == "cluster-1"]


def test_without_cache_ttl_the_others_keep_the_lost_members_backends_and_traffic_is_answered(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb, k = loss_mesh(sandbox_factory, kubes)
    assert cache_ttl_in_config(k["cluster-2"]) == "0s"  # the 1.19 chart renders the default

    result = run_loss_drill(with_loss_seconds(sb, 2))

    assert result.status == "passed", result.reason
    assert result.scenario == "cluster-loss"
    assert [(p.name, p.cluster, p.status) for p in result.phases] == [
        ("recover", None, "skipped"),
        ("workloads", None, "passed"),
        ("baseline", None, "passed"),
        ("cluster-loss", "cluster-1", "passed"),
        ("reconnect", "cluster-1", "passed"),
        ("rollback", None, "passed"),
    ]
    [loss] = result.losses
    [member] = loss.members
    assert (loss.cluster, member.member, member.cache_ttl_seconds) == ("cluster-1", "cluster-2", 0.0)
    assert member.kept and member.withdrawn_after_s is None and member.backends == 2
    assert member.probes > 0 and member.failed_probes == 0
    assert loss.lost_after_s is not None and loss.reconnected_after_s is not None
    assert "cluster-2 kept cluster-1's 2 backend(s)" in result.summary()
    assert "every member reconnected" in result.summary()
    # the sandbox's own record: cluster-2's agents lost cluster-1, never withdrew it, resynced it
    assert [e.cluster for e in events(sb, "lost")] == ["cluster-2"]
    assert events(sb, "withdrawn") == []
    assert [e.cluster for e in events(sb, "resynced")] == ["cluster-2"]
    assert_restored(k)


def test_with_cache_ttl_the_backends_are_withdrawn_after_the_ttl_and_everything_is_restored(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb, k = loss_mesh(sandbox_factory, kubes)
    for kube in k.values():
        set_cache_ttl(kube, f"{TTL_SECONDS}s")
    wait_until("cacheTTL in cilium-config", lambda: cache_ttl_in_config(k["cluster-2"]) == f"{TTL_SECONDS}s", WAIT)
    wait_until("every member connected again", lambda: all(all(peers_ready(x).values()) for x in k.values()), WAIT)

    result = run_loss_drill(with_loss_seconds(sb, 2))

    assert result.status == "passed", result.reason
    [member] = result.losses[0].members
    assert member.cache_ttl_seconds == TTL_SECONDS
    assert not member.kept and member.withdrawn_after_s is not None  # a figure, on the drill's (wall) clock
    assert member.failed_probes == 0  # cluster-2's own backends answer
    assert "cluster-2 withdrew cluster-1's 2 backend(s)" in result.summary()
    assert f"cacheTTL {TTL_SECONDS}s" in result.summary()
    [lost], [withdrawn], [resynced] = events(sb, "lost"), events(sb, "withdrawn"), events(sb, "resynced")
    # on the sandbox's virtual clock: withdrawn once the TTL had passed since the loss, not before
    assert TTL_SECONDS <= withdrawn.at - lost.at < TTL_SECONDS + 5
    assert resynced.at >= withdrawn.at
    assert_restored(k)


def test_a_drill_killed_while_the_apiserver_is_at_zero_is_undone_by_the_next_one(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], cli_env: dict[str, str]
) -> None:
    sb, k = loss_mesh(sandbox_factory, kubes)
    config = write_edited_yaml(
        Path(sb.directory) / "mesh.yaml", lambda d: d.setdefault("drill", {}).update(loss_seconds=600), "loss.yaml"
    )
    argv = [sys.executable, "-m", "cli.app", "drill", "--config", str(config), "--scenario", "cluster-loss"]
    proc = subprocess.Popen(
        [*argv, "--cluster", "cluster-1"],
        cwd=ROOT,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            "cluster-1's clustermesh-apiserver at 0, recorded", lambda: apiserver(k["cluster-1"]) == (0, "1"), WAIT
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _drop_mesh_limit()
    assert apiserver(k["cluster-1"]) == (0, "1")  # nothing ran after the kill

    rerun = subprocess.run(
        [sys.executable, "-m", "cli.app", "drill", "--config", str(mesh_yaml(sb)), "--scenario", "scale-to-zero"],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=False,
    )

    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "restored cluster-1/kube-system/clustermesh-apiserver to 1 replicas left at 0 by an earlier drill" in (
        rerun.stdout
    )
    assert_restored(k)


def mesh_yaml(sb: Any) -> Path:
    return Path(sb.directory) / "mesh.yaml"


def _drop_mesh_limit() -> None:
    """A killed process keeps its slot of ``mesh-<name>`` until a lease service expires it, which a test server
    does not run (tests/hardening/test_crash_and_race.py): dropped here, the next command creates it again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as prefect, suppress(ObjectNotFound):
        prefect.delete_global_concurrency_limit_by_name("mesh-sandbox")


@pytest.mark.parametrize("bad", ["chaos", "scale-up"])
def test_an_unknown_scenario_in_the_spec_is_refused_naming_it_and_the_choices(bad: str) -> None:
    from clustermesh.errors import SpecError
    from clustermesh.spec import from_data

    clusters = [{"name": n, "id": i, "kubeconfig": {"path": f"/kc/{n}"}} for i, n in ((1, "a"), (2, "b"))]
    with pytest.raises(SpecError) as info:
        from_data({"clusters": clusters, "drill": {"scenarios": ["scale-to-zero", bad]}})
    text = str(info.value)
    assert "drill.scenarios" in text and repr(bad) in text
    assert "scale-to-zero" in text and "cluster-loss" in text
    assert from_data({"clusters": clusters}).drill.scenarios == ["scale-to-zero"]  # the nightly's default


def listed_backends(k: Kube, service: str) -> set[str]:
    """Backend IPs every agent of the cluster lists (``cilium-dbg service list -o json``) for ``service``'s
    ClusterIP: the ones all agents agree on."""
    ip = k.core.read_namespaced_service(service, "clustermesh-drill").spec.cluster_ip
    seen: list[set[str]] = []
    for pod in k.agent_pods():
        entries = json.loads(k.exec(pod, ["cilium-dbg", "service", "list", "-o", "json"]))
        ips = {
            b["ip"]
            for e in entries
            if e["spec"]["frontend-address"]["ip"] == ip
            for b in e["spec"].get("backend-addresses") or []
            if b.get("state") == "active"
        }
        seen.append(ips)
    return set.intersection(*seen) if seen else set()


def backend_ips(k: Kube) -> set[str]:
    pods = k.core.list_namespaced_pod("clustermesh-drill", label_selector="app=clustermesh-drill-backend").items
    return {p.status.pod_ip for p in pods if p.status.pod_ip}


def test_the_spec_can_ask_for_both_scenarios_and_the_sandbox_fault_switch_also_loses_a_member(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    """drill.scenarios [scale-to-zero, cluster-loss]: a run without a scenario (the nightly's way) runs both,
    one artifact each; then TCP 2379 blocked between the members loses cluster-1 as scaling did."""
    sb, k = loss_mesh(sandbox_factory, kubes)
    spec = with_loss_seconds(sb, 1)
    spec = spec.model_copy(
        update={"drill": spec.drill.model_copy(update={"scenarios": ["scale-to-zero", "cluster-loss"]})}
    )

    state = failover_drill(spec, cluster="cluster-1", return_state=True)

    result = state.result()
    assert isinstance(result, DrillResult) and result.status == "passed", result.reason
    names = [p.name for p in result.phases]
    assert "failover" in names and "cluster-loss" in names and "reconnect" in names
    assert result.summary().startswith("failover drill passed") and "| cluster-loss drill passed" in result.summary()
    markdown = artifact(state.state_details.flow_run_id, "sandbox-cluster-loss")
    assert "## Losing cluster-1's mesh control plane" in markdown and "| cluster-2 | 0 s | 2 | yes |" in markdown

    # the fault switch: the agents of cluster-2 can no longer reach cluster-1's apiserver (nor it theirs)
    lost = backend_ips(k["cluster-1"])
    assert lost and lost <= listed_backends(k["cluster-2"], "clustermesh-drill-mesh")
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="tcp/2379")
    wait_until("cluster-2 reports cluster-1 not connected", lambda: peers_ready(k["cluster-2"]) == {"cluster-1": False})
    assert lost <= listed_backends(k["cluster-2"], "clustermesh-drill-mesh")  # kept: no cacheTTL
    sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="tcp/2379")
    wait_until("cluster-2 reconnected", lambda: peers_ready(k["cluster-2"]) == {"cluster-1": True}, WAIT)
    assert [e.what for e in sb.world.remote_cache_events() if e.cluster == "cluster-2"][-2:] == ["lost", "resynced"]


def artifact(flow_run_id: Any, key: str) -> str:
    """The markdown artifact ``key`` of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(found) == 1, found
    assert found[0].type == "markdown"
    return str(found[0].data)


def test_the_command_refuses_an_unknown_scenario_or_cluster_before_touching_anything(
    sandbox_factory: Callable[..., Any], cli_env: dict[str, str]
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    chaos = run_cli(cli_env, "drill", "--config", str(mesh_yaml(sb)), "--scenario", "chaos", timeout=WAIT)
    assert chaos.returncode == 2
    assert "--scenario 'chaos' is not a drill scenario: use scale-to-zero, cluster-loss or mcs" in chaos.stderr
    args = ("drill", "--config", str(mesh_yaml(sb)), "--scenario", "cluster-loss", "--cluster", "x")
    nine = run_cli(cli_env, *args, timeout=WAIT)
    assert nine.returncode == 2
    assert "--cluster 'x' is not a cluster of" in nine.stderr and "cluster-1, cluster-2" in nine.stderr
