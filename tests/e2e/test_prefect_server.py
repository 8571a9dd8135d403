"""The project as an operator runs it: ``prefect server`` (SQLite and PostgreSQL), ``prefect deploy --all``,
a process worker, blocks from ``clustermesh blocks register``, runs triggered through the API.

Judging checks read the sandbox with the official ``kubernetes`` client and Prefect through its API;
tests run in file order on one session stack (the setup test meshes the clusters the nightly checks).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from kubernetes import client

from tests.conftest import kube_client
from tests.e2e.conftest import MESH, Deployed, wait_for

# one xdist worker runs every e2e test: they share one server, worker and sandbox per database
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")
FLOWS = {
    "mesh-setup": "cluster-mesh-setup",
    "mesh-nightly-verification": "nightly-mesh-verification",
    "mesh-failover-drill": "failover-drill",
    "mesh-create-clusters": "mesh-create-clusters",
    "mesh-remove-cluster": "mesh-remove-cluster",
    "mesh-renew-certificates": "mesh-renew-certificates",
    "mesh-rotate-ca": "mesh-rotate-ca",
    "mesh-upgrade-prepare": "mesh-upgrade-prepare",
}


def _cilium_installs(deployed: Deployed) -> dict[str, dict[str, Any]]:
    """Every sandbox cluster's ``cilium`` ApplicationInstallation, read with the official client."""
    out: dict[str, dict[str, Any]] = {}
    for name, path in deployed.sandbox.kubeconfigs.items():
        api = kube_client(path)
        try:
            out[name] = dict(client.CustomObjectsApi(api).get_namespaced_custom_object(*AI))
        finally:
            api.close()
    return out


def _peers(install: dict[str, Any]) -> list[str]:
    spec = install["spec"]
    values = yaml.safe_load(spec["valuesBlock"]) if spec.get("valuesBlock") else spec.get("values") or {}
    return sorted(str(c["name"]) for c in ((values.get("clustermesh") or {}).get("config") or {}).get("clusters") or [])


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def _events(name: str, resource_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        response = prefect.request(
            "POST",
            "/events/filter",
            json={"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50},
        )
    response.raise_for_status()
    return list(response.json()["events"])


def _resume(flow_run_id: Any, approve: bool) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        result = prefect.resume_flow_run(flow_run_id, run_input={"approve": approve, "comment": "e2e"})
    assert result.status.value == "ACCEPT", result


def _run_logs(flow_run_id: Any) -> list[Any]:
    """The run's log records as the UI's Logs tab shows them, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), sort=LogSort.TIMESTAMP_ASC
            )
        )


def _final_logs(flow_run_id: Any) -> list[Any]:
    """The run's logs once the flow process has logged its end (the engine's last record comes after the state)."""

    def ended() -> list[Any] | None:
        logs = _run_logs(flow_run_id)
        done = any("Run ended as intended" in log.message or "Engine execution" in log.message for log in logs)
        return logs if done else None

    logs: list[Any] = wait_for(ended, 60, f"the end of flow run {flow_run_id}'s logs")
    return logs


def _messages_about(deployed: Deployed, flow_run_id: Any) -> list[dict[str, Any]]:
    """Top-level Slack messages (bot or webhook) that name this run."""
    return [
        m
        for m in deployed.slack.messages
        if m.get("thread_ts") is None and str(flow_run_id) in (m.get("text") or "") + yaml.safe_dump(m.get("blocks"))
    ]


# runs that ended FAIL after reporting to Slack, per database: the failure Automation must stay silent on them
_REPORTED_FAILS: dict[str, list[Any]] = {}


def _slack_texts(deployed: Deployed) -> list[str]:
    texts = []
    for message in deployed.slack.messages:
        parts = [message.get("text") or ""]
        parts.extend(yaml.safe_dump(message.get("blocks") or []).splitlines())
        texts.append("\n".join(parts))
    return texts


# ------------------------------------------------------------------------------------------ tests


def test_deploy_all_creates_the_deployments_and_the_nightly_schedule_in_its_time_zone(
    deployed: Deployed,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    with get_client(sync_client=True) as prefect:
        deployments = {
            d.name: d
            for d in prefect.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(FLOWS)))
            )
        }
        assert set(deployments) == set(FLOWS)
        for name, d in deployments.items():
            assert d.work_pool_name == "clustermesh-process", name
            assert "clustermesh" in (d.tags or []), name
        nightly = deployments["mesh-nightly-verification"]
        [schedule] = nightly.schedules
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "Europe/Berlin"
        assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options is not None
        assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert deployments["mesh-setup"].schedules == []
        # the nightly and the drill carry no spec, only the Variable each run reads (blocks register writes it)
        assert nightly.parameters == {"spec_variable": "clustermesh-spec", "run_drill": True}
        assert deployments["mesh-failover-drill"].parameters == {"spec_variable": "clustermesh-spec"}
        assert [c["kubeconfig"] for c in deployed.spec["clusters"]] == [
            {"secret_block": f"kubeconfig-{MESH}-cluster-{i}"} for i in (1, 2)
        ]
        # the setup form: the MeshSpec with titles and enums
        form = deployments["mesh-setup"].parameter_openapi_schema
        assert form["properties"]["spec"]["$ref"] == "#/definitions/MeshSpec"
        assert form["properties"]["require_approval"]["type"] == "boolean"
        cilium = form["definitions"]["CiliumSettings"]["properties"]
        assert cilium["tls_method"]["enum"] == ["auto", "helm", "cronJob", "certmanager"]
        fields = [p for d in form["definitions"].values() for p in d["properties"].values()]
        # every field is titled (a $ref field shows its model's title) and described
        assert all(("title" in p or "$ref" in p) and p.get("description") for p in fields)

        def scheduled() -> list[Any]:
            return list(
                prefect.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["mesh-nightly-verification"])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
                    ),
                )
            )

        runs = wait_for(scheduled, 90, "the scheduler to create the nightly's scheduled runs", interval=2)
    berlin = ZoneInfo("Europe/Berlin")
    starts = sorted(r.expected_start_time for r in runs)
    assert starts[0] > dt.datetime.now(dt.UTC)
    for start in starts:
        local = start.astimezone(berlin)
        assert (local.hour, local.minute) == (2, 0), f"scheduled at {local.isoformat()}, not 02:00 Europe/Berlin"


def test_blocks_register_stores_references_not_secrets(deployed: Deployed) -> None:
    from prefect.blocks.system import Secret

    out = deployed.register_output
    assert deployed.slack.token not in out
    assert deployed.worker_env["CLUSTERMESH_RESULT_KEY"] not in out
    kubeconfig = deployed.sandbox.kubeconfigs["cluster-1"].read_text()
    token = yaml.safe_load(kubeconfig)["users"][0]["user"]["token"]
    assert token not in out and token not in str(deployed.spec)
    stored: Any = Secret.load(f"kubeconfig-{MESH}-cluster-1")
    assert yaml.safe_load(stored.get())["users"][0]["user"]["token"] == token
    assert deployed.spec["notify"]["slack"]["token_block"] == "clustermesh-slack-bot-token"
    # idempotent: a second registration updates, never duplicates
    from prefect.client.orchestration import get_client

    from tests.e2e.conftest import BIN, run

    spec_path = deployed.sandbox.directory / "operator-mesh.yaml"
    run([str(BIN / "clustermesh"), "blocks", "register", "--config", str(spec_path)], deployed.worker_env)
    with get_client(sync_client=True) as prefect:
        assert len(prefect.read_automations_by_name("clustermesh-run-failed-or-crashed")) == 1
        limit = prefect.read_global_concurrency_limit_by_name(f"mesh-{MESH}")
        assert limit.limit == 1


def test_setup_not_approved_is_cancelled_and_writes_nothing(deployed: Deployed) -> None:
    before = {n: i["metadata"]["generation"] for n, i in _cilium_installs(deployed).items()}
    run = deployed.run("mesh-setup", {"spec": deployed.spec, "require_approval": True})
    deployed.wait_state(run.id, {"Paused"})
    plan = _artifacts(run.id)[f"{MESH}-setup-plan"]
    assert "cluster-1" in plan.data and "cluster-2" in plan.data
    _resume(run.id, approve=False)
    final = deployed.wait_state(run.id, {"Cancelled"})
    assert "not approved" in (final.state.message or "")
    after = {n: i["metadata"]["generation"] for n, i in _cilium_installs(deployed).items()}
    assert after == before
    # the Logs tab ends with the reason, not with Prefect's CancelledRun traceback
    logs = _final_logs(run.id)
    loud = [log.message for log in logs if log.level >= 30]
    assert loud and loud[-1].startswith("Plan not approved (e2e): nothing written to mesh"), loud
    assert not [log.message for log in logs if log.level >= 40], "a rejected plan is no error"
    assert not any("Traceback" in log.message for log in logs)


def test_setup_approved_through_the_worker_meshes_the_clusters(deployed: Deployed) -> None:
    run = deployed.run("mesh-setup", {"spec": deployed.spec, "require_approval": True})
    deployed.wait_state(run.id, {"Paused"})
    _resume(run.id, approve=True)
    deployed.wait_state(run.id, {"Completed"}, timeout=300)
    installs = _cilium_installs(deployed)
    assert _peers(installs["cluster-1"]) == ["cluster-2"]
    assert _peers(installs["cluster-2"]) == ["cluster-1"]
    artifacts = _artifacts(run.id)
    assert {f"{MESH}-values-changes", f"{MESH}-health-matrix", f"{MESH}-firewall-rules"} <= set(artifacts)


def test_setup_of_a_converged_mesh_does_not_pause_for_approval(deployed: Deployed) -> None:
    """Nothing to write, nothing to approve: the plan is shown (artifact) and the run goes on."""
    before = {n: i["metadata"]["generation"] for n, i in _cilium_installs(deployed).items()}
    run = deployed.run("mesh-setup", {"spec": deployed.spec, "require_approval": True})
    deployed.wait_state(run.id, {"Completed"}, timeout=300)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        states = [s.name for s in prefect.read_flow_run_states(run.id)]
    assert "Paused" not in states, states
    plan = _artifacts(run.id)[f"{MESH}-setup-plan"]
    assert "nothing to write" in plan.data and "no change" in plan.data
    wait_for(
        lambda: any("Plan: nothing to write" in log.message for log in _run_logs(run.id)),
        30,
        "the run's log line saying the plan had nothing to write",
    )
    assert {n: i["metadata"]["generation"] for n, i in _cilium_installs(deployed).items()} == before


def test_nightly_passes_reports_to_slack_and_emits_events(deployed: Deployed) -> None:
    from prefect.variables import Variable

    run = deployed.run("mesh-nightly-verification")  # the deployment's own parameters: the registered spec
    final = deployed.wait_state(run.id, {"Completed"}, timeout=300)
    assert final.state.message == "verification PASS"
    artifacts = _artifacts(run.id)
    assert artifacts[f"{MESH}-nightly-summary"].description == "PASS"
    assert f"{MESH}-nightly-health-matrix" in artifacts
    link = f"{deployed.server.ui_url}/runs/flow-run/{run.id}"
    assert any("PASS" in t and link in t for t in _slack_texts(deployed)), _slack_texts(deployed)
    assert Variable.get(f"clustermesh-last-verdict-{MESH}") == "PASS"
    verified = wait_for(
        lambda: [
            e
            for e in _events("clustermesh.mesh.verified", f"clustermesh.mesh.{MESH}")
            if e["payload"].get("run_url") == link
        ],
        30,
        "the clustermesh.mesh.verified event",
    )
    assert verified[0]["payload"]["verdict"] == "PASS"


def test_blocks_register_alone_changes_what_the_next_nightly_checks(deployed: Deployed) -> None:
    """The deployment names the Variable; each run reads it: a new registration needs no redeploy."""
    from tests.e2e.conftest import BIN, run

    def drill_figure(flow_run_id: Any) -> str:
        summary = _artifacts(flow_run_id)[f"{MESH}-nightly-summary"].data
        [row] = [line for line in summary.splitlines() if line.startswith("| Failover drill |")]
        return row

    before = deployed.run("mesh-nightly-verification", wait=0)
    deployed.wait_state(before.id, {"Completed"}, timeout=300)
    assert drill_figure(before.id) == "| Failover drill | passed |"

    original = deployed.sandbox.directory / "operator-mesh.yaml"
    changed = deployed.sandbox.directory / "operator-mesh-no-drill.yaml"
    data = yaml.safe_load(original.read_text())
    data["drill"] = {**data.get("drill", {}), "enabled": False}
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    bin_clustermesh = str(BIN / "clustermesh")
    run([bin_clustermesh, "blocks", "register", "--config", str(changed)], deployed.worker_env)
    try:
        after = deployed.run("mesh-nightly-verification", wait=0)  # the same deployment, not redeployed
        final = deployed.wait_state(after.id, {"Completed"}, timeout=300)
    finally:
        run([bin_clustermesh, "blocks", "register", "--config", str(original)], deployed.worker_env)
    assert final.parameters == {"spec_variable": "clustermesh-spec", "run_drill": True}
    assert drill_figure(after.id) == "| Failover drill | skipped |"
    assert any(
        log.message.startswith(f"Spec: mesh {MESH} (2 clusters) from the Prefect Variable clustermesh-spec")
        for log in _run_logs(after.id)
    )


def test_a_deployed_run_without_its_spec_variable_says_what_is_missing(deployed: Deployed) -> None:
    """A deploy before ``blocks register`` works; its runs fail naming the Variable and the command."""
    run = deployed.run("mesh-failover-drill", {"spec_variable": "clustermesh-spec-not-registered"})
    final = deployed.wait_state(run.id, {"Failed"}, timeout=240)
    message = final.state.message or ""
    assert "the Prefect Variable 'clustermesh-spec-not-registered' (parameter spec_variable) does not exist" in message
    assert "clustermesh blocks register --config mesh.yaml" in message


def test_failing_nightly_reports_once_to_slack_logs_its_findings_and_emits_degraded(deployed: Deployed) -> None:
    deployed.sandbox.fault("block-port", "--between", "cluster-1,cluster-2", "--port", "udp/8472")
    try:
        # a broken mesh never gets healthy: wait 10 s for it, not the default 10 minutes
        spec = {**deployed.spec, "timeouts": {**deployed.spec.get("timeouts", {}), "health": 10}}
        run = deployed.run("mesh-nightly-verification", {"spec": spec, "run_drill": False})
        final = deployed.wait_state(run.id, {"ReportedFailure"}, timeout=240)
    finally:
        deployed.sandbox.fault("clear")
    _REPORTED_FAILS.setdefault(deployed.server.database, []).append(run.id)
    assert final.state.type.value == "FAILED", final.state
    assert "FAIL" in (final.state.message or "") and "UDP 8472" in (final.state.message or "")
    link = f"{deployed.server.ui_url}/runs/flow-run/{run.id}"
    # one message: the summary (bot), FAILED, with the run's link; the failure hook did not add one
    [summary] = _messages_about(deployed, run.id)
    assert summary["via"] == "api" and summary["text"].startswith(":red_circle: FAILED"), summary["text"]
    assert link in yaml.safe_dump(summary["blocks"])
    # the Logs tab: the findings, the last error a finding, no engine traceback
    logs = _final_logs(run.id)
    errors = [log.message for log in logs if log.level >= 40]
    assert errors and errors[-1].startswith("FAILURE cluster-") and "UDP 8472" in errors[-1], errors
    assert not any("Traceback" in m or "Engine execution" in m or "TypeError" in m for m in errors), errors
    degraded = wait_for(  # events are stored asynchronously by the server
        lambda: [
            e
            for e in _events("clustermesh.mesh.degraded", f"clustermesh.mesh.{MESH}")
            if e["payload"].get("run_url") == link
        ],
        30,
        "the clustermesh.mesh.degraded event",
    )
    assert degraded[0]["payload"]["previous_verdict"] == "PASS"
    assert degraded[0]["payload"]["verdict"] == "FAIL"
    # the failure Automation stays silent on it: checked after the next test's failure reaches the
    # Automation (events are handled in order), in test_missing_mesh_limit_fails_a_deployed_run_...


def test_missing_mesh_limit_fails_a_deployed_run_and_the_hook_alerts(deployed: Deployed) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        prefect.delete_global_concurrency_limit_by_name(f"mesh-{MESH}")
    try:
        run = deployed.run("mesh-nightly-verification", {"spec": deployed.spec, "run_drill": False})
        final = deployed.wait_state(run.id, {"Failed"}, timeout=300)
    finally:
        with get_client(sync_client=True) as prefect:
            prefect.upsert_global_concurrency_limit_by_name(f"mesh-{MESH}", 1)
    assert "clustermesh blocks register" in (final.state.message or "")
    assert final.state.name == "Failed"
    link = f"{deployed.server.ui_url}/runs/flow-run/{run.id}"
    alerts = [t for t in _slack_texts(deployed) if link in t]
    assert alerts and any("blocks register" in t for t in alerts), _slack_texts(deployed)
    # a run that failed before its summary could not report itself: the crash-safe Automation posts too
    wait_for(
        lambda: [m for m in _messages_about(deployed, run.id) if m.get("via") == "webhook"],
        90,
        "the failure automation's webhook call",
        interval=2,
    )
    # ... and by now it has handled the earlier reported FAIL's events too: still one message each
    reported = _REPORTED_FAILS.get(deployed.server.database, [])
    assert reported, "test_failing_nightly_... ran first on this server"
    for fail in reported:
        about = _messages_about(deployed, fail)
        assert len(about) == 1 and about[0]["via"] == "api", [(m["via"], m["text"][:120]) for m in about]
