"""``failover_drill`` as a flow, on a sandbox mesh built by the real setup flow.

The drill's own logic is covered in tests/integration/test_drill_on_sandbox.py; here: the flow's phases as
Prefect task runs, its table artifact, that a drill which died mid-way is undone by the next flow run, and
that a count a person set since is left alone. Replica counts are read and set with the official
``kubernetes`` client.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from clustermesh.drill import Drill, DrillResult
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec
from clustermesh.steps import step1_prerequisites as prerequisites
from flows.failover_drill import failover_drill
from tests.flows.conftest import Kube, mesh_spec, task_runs_of
from tests.helpers import wait_until

DRILL_NS = "clustermesh-drill"
DRILL_BACKEND = "clustermesh-drill-backend"
RECORD = "clustermesh.io/drill-original-replicas"


def backends(kubes: dict[str, Kube]) -> dict[str, tuple[int, int, str | None]]:
    """Per cluster: spec.replicas, status.readyReplicas and the drill's undo record of the backend Deployment."""
    out = {}
    for name, k in kubes.items():
        d = k8s.AppsV1Api(k.api).read_namespaced_deployment(DRILL_BACKEND, DRILL_NS)
        out[name] = (
            int(d.spec.replicas),
            int(d.status.ready_replicas or 0),
            (d.metadata.annotations or {}).get(RECORD),
        )
    return out


def table_artifact(flow_run_id: Any, key: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(found) == 1, found
    assert found[0].type == "table"
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def run_drill_flow(spec: Any) -> tuple[Any, DrillResult]:
    state = failover_drill(spec, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert isinstance(result, DrillResult)
    return state, result


def test_the_drill_flow_passes_on_two_clusters_and_reports_every_phase_as_a_task_and_a_table(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = meshed(clusters=2, cilium_version="1.16", nodes=2)
    k = kubes(sb)

    state, result = run_drill_flow(mesh_spec(sb))

    assert result.status == "passed", result.reason
    assert result.recovered == []
    assert set(result.failover_seconds) == {"cluster-1", "cluster-2"}
    assert result.failed_probes == 0 and result.probes > 0
    # back where it started: 2 Ready replicas each, no undo record left
    assert backends(k) == {"cluster-1": (2, 2, None), "cluster-2": (2, 2, None)}

    flow_run = state.state_details.flow_run_id
    tasks = task_runs_of(flow_run)
    expected = [
        "drill: recover",
        "drill: workloads",
        "drill: baseline",
        "drill: failover cluster-1",
        "drill: restore cluster-1",
        "drill: failover cluster-2",
        "drill: restore cluster-2",
        "drill: rollback",
    ]
    assert set(expected) <= set(tasks), sorted(tasks)
    assert all(tasks[name].state.is_completed() for name in expected)

    rows = table_artifact(flow_run, "sandbox-failover-drill")
    assert [(r["phase"], r["cluster"], r["status"]) for r in rows] == [
        ("recover", "all", "skipped"),
        ("workloads", "all", "passed"),
        ("baseline", "all", "passed"),
        ("failover", "cluster-1", "passed"),
        ("restore", "cluster-1", "passed"),
        ("failover", "cluster-2", "passed"),
        ("restore", "cluster-2", "passed"),
        ("rollback", "all", "passed"),
    ]
    failover_rows = [r for r in rows if r["phase"] == "failover"]
    assert all(float(r["failover s"]) >= 0 for r in failover_rows)


def kill_a_drill_after_scaling_cluster_1_down(spec: MeshSpec) -> None:
    """A drill that fails cluster-1 over and "dies" there: no restore, no rollback."""
    clients = {c.name: open_cluster(c, request_timeout=spec.timeouts.api) for c in spec.clusters}
    try:
        facts = {c.name: prerequisites.check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        killed = Drill(clients, facts, spec)
        assert killed.ensure_workloads().status == "passed"
        assert killed.baseline().status == "passed"
        assert killed.failover("cluster-1").status == "passed"
    finally:
        for c in clients.values():
            c.close()


def test_a_drill_that_died_after_the_scale_down_is_restored_first_by_the_next_flow_run(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = meshed(clusters=2, cilium_version="1.16", nodes=1)
    k = kubes(sb)
    spec = mesh_spec(sb)
    kill_a_drill_after_scaling_cluster_1_down(spec)
    left = backends(k)
    assert left["cluster-1"] == (0, 0, "2"), left
    assert left["cluster-2"] == (2, 2, None), left

    _, result = run_drill_flow(spec)

    assert len(result.recovered) == 1, result.recovered
    assert "cluster-1" in result.recovered[0] and "to 2 replicas left at 0" in result.recovered[0]
    assert result.phases[0].name == "recover" and result.phases[0].status == "passed"
    assert "first restored 1 deployment(s)" in result.summary()
    assert result.status == "passed", result.reason
    assert backends(k) == {"cluster-1": (2, 2, None), "cluster-2": (2, 2, None)}


def test_a_count_a_person_set_after_a_drill_died_is_left_alone_by_the_next_drill(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    """Killed at 0 replicas; a person then brought the service back by hand, with 3 replicas instead of 2."""
    sb = meshed(clusters=2, cilium_version="1.16", nodes=1)
    k = kubes(sb)
    spec = mesh_spec(sb)
    kill_a_drill_after_scaling_cluster_1_down(spec)
    apps = k8s.AppsV1Api(k["cluster-1"].api)
    apps.patch_namespaced_deployment_scale(DRILL_BACKEND, DRILL_NS, {"spec": {"replicas": 3}})  # kubectl scale
    wait_until("3 Ready replicas in cluster-1", lambda: backends(k)["cluster-1"] == (3, 3, "2"), timeout=60)

    _, result = run_drill_flow(spec)

    assert result.recovered == [], result.recovered  # nothing "restored", nobody blamed
    [kept] = result.left_alone
    assert kept.startswith("left cluster-1/clustermesh-drill/clustermesh-drill-backend at 3 replicas: someone"), kept
    assert "not restored, record dropped" in kept
    assert result.phases[0].name == "recover" and result.phases[0].detail == kept
    workloads = result.phases[1]
    assert workloads.name == "workloads" and "kept clustermesh-drill-backend at the 3 replicas someone set" in (
        workloads.detail
    ), workloads.detail
    assert result.status == "passed", result.reason
    assert "left 1 deployment(s) at the count someone set" in result.summary()
    # the drill failed cluster-1 over from the person's 3 and brought back 3; the record is gone
    assert backends(k) == {"cluster-1": (3, 3, None), "cluster-2": (2, 2, None)}
    failover = next(p for p in result.phases if p.name == "failover" and p.cluster == "cluster-1")
    assert "scaled clustermesh-drill/clustermesh-drill-backend from 3 to 0" in failover.detail, failover.detail


def test_a_drill_started_on_its_own_waits_for_the_mesh_lock_and_the_nightly_drill_does_not_wait_for_itself(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    from flows.locking import mesh_lock_name
    from flows.mesh_verify import VerificationResult, nightly_mesh_verification

    sb = meshed(clusters=2, cilium_version="1.16", nodes=1)
    k = kubes(sb)
    spec = mesh_spec(sb)
    limit = mesh_lock_name(spec)
    with get_client(sync_client=True) as prefect, contextlib.suppress(ObjectAlreadyExists):
        # a CLI command of this session may have created it already (it does for every mesh it runs)
        prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    try:
        drills: list[Any] = []
        drill = threading.Thread(target=lambda: drills.append(failover_drill(spec, return_state=True)), daemon=True)
        with concurrency(limit, occupy=1, timeout_seconds=30, strict=True):  # "a setup is running"
            drill.start()
            drill.join(timeout=4)
            assert drill.is_alive() and drills == [], drills
            # nothing touched while the mesh was held: the drill's namespace does not exist yet
            for name, kube in k.items():
                found = [n.metadata.name for n in k8s.CoreV1Api(kube.api).list_namespace().items]
                assert DRILL_NS not in found, (name, found)
        drill.join(timeout=120)
        assert not drill.is_alive(), "the drill did not start within 120 s of the mesh being released"
        assert drills[0].is_completed(), drills[0]
        assert drills[0].result().status == "passed", drills[0].result().reason

        # the nightly holds the same limit and runs the drill as its subflow: that must not wait for itself
        nightlies: list[Any] = []
        nightly = threading.Thread(
            target=lambda: nightlies.append(nightly_mesh_verification(spec, run_drill=True, return_state=True)),
            daemon=True,
        )
        nightly.start()
        nightly.join(timeout=180)
        assert not nightly.is_alive(), "the nightly with its drill did not finish within 180 s (waiting for itself?)"
        result = nightlies[0].result()
        assert isinstance(result, VerificationResult)
        assert result.drill is not None and result.drill.status == "passed", result.describe()
    finally:
        with get_client(sync_client=True) as prefect:
            prefect.delete_global_concurrency_limit_by_name(limit)
