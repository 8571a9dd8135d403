"""The operator's night, end to end: the real flows on sandboxes, the session's Prefect test server.

With ``timeouts.health`` at 600 s, a nightly that returns at all came back without waiting it out: a
blocked port is a FAIL naming it, with progress lines in the run's log while it waited; a path that
recovers while the wait runs still passes; clusters never set up are one finding; drift is named
before any port. And a peer listed twice with a stale address is planned as a change and repaired.
Values are read and edited with the official ``kubernetes`` client only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from clustermesh.checks import Finding
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec
from clustermesh.steps.plan import plan_setup
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification
from tests.flows.conftest import AI, Kube, mesh_spec, task_runs_of
from tests.helpers import ProgressLines

HEALTH = 600.0
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL")


@pytest.fixture(autouse=True)
def _no_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def progress_lines() -> Iterator[Callable[..., ProgressLines]]:
    attached: list[ProgressLines] = []

    def attach(on_first: Callable[[], None] | None = None) -> ProgressLines:
        handler = ProgressLines(on_first)
        logging.getLogger("prefect").addHandler(handler)
        attached.append(handler)
        return handler

    yield attach
    for handler in attached:
        logging.getLogger("prefect").removeHandler(handler)


def nightly(spec: MeshSpec, *, run_drill: bool = False) -> tuple[Any, Any]:
    """The nightly's final state and its VerificationResult (a FAIL may carry it inside its exception)."""
    state = nightly_mesh_verification(spec, run_drill=run_drill, return_state=True)
    data = state.result(raise_on_failure=False)
    result = getattr(data, "result", data)
    assert hasattr(result, "findings"), f"{state}: {data!r}"
    return state, result


def failures(result: Any) -> list[Finding]:
    return [f for f in result.findings if f.level == "failure"]


def edit_values(kube: Kube, edit: Callable[[dict[str, Any]], None]) -> None:
    """``kubectl edit applicationinstallation cilium`` by hand."""
    custom = k8s.CustomObjectsApi(kube.api)
    ai = custom.get_namespaced_custom_object(*AI)
    assert isinstance(ai, dict)
    field = "valuesBlock" if (ai["spec"].get("valuesBlock") or "").strip() else "values"
    values = yaml.safe_load(ai["spec"][field]) if field == "valuesBlock" else ai["spec"][field]
    edit(values)
    ai["spec"][field] = yaml.safe_dump(values) if field == "valuesBlock" else values
    custom.replace_namespaced_custom_object(*AI, ai)


def peer_entries(kube: Kube) -> list[dict[str, Any]]:
    return list(((kube.values().get("clustermesh") or {}).get("config") or {}).get("clusters") or [])


def apiserver_ips(kube: Kube) -> list[str]:
    svc = kube.core.read_namespaced_service("clustermesh-apiserver", "kube-system")
    return [i.ip for i in svc.status.load_balancer.ingress]


# ------------------------------------------------------------------------------------ a blocked path


def test_a_blocked_vxlan_port_fails_the_nightly_early_naming_it_with_progress_while_it_waited(
    meshed: Callable[..., Any], progress_lines: Callable[..., ProgressLines]
) -> None:
    sb = meshed(clusters=2, nodes=2)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    lines = progress_lines()

    state, result = nightly(mesh_spec(sb, health=HEALTH), run_drill=True)

    assert state.is_failed(), state
    assert result.status == "FAIL"
    vxlan = {(f.subject, f.fix) for f in failures(result) if "UDP 8472" in f.reason}
    assert vxlan == {
        ("cluster-1 → cluster-2", "open UDP 8472 (VXLAN) from the nodes of cluster-1 to cluster-2 (step 7's rules)"),
        ("cluster-2 → cluster-1", "open UDP 8472 (VXLAN) from the nodes of cluster-2 to cluster-1 (step 7's rules)"),
    }
    assert result.drill is not None and result.drill.status == "not run"
    assert len(lines.lines) >= 3, lines.lines
    assert all("waiting for cluster-1 → cluster-2: 0/2 reachable" in line for line in lines.lines), lines.lines
    assert "unchanged for" in lines.lines[1]
    assert "— stopped early: cluster-1 → cluster-2, cluster-2 → cluster-1 failed the same way" in lines.lines[-1]


def test_a_path_that_recovers_while_the_nightly_waits_still_passes(
    meshed: Callable[..., Any], progress_lines: Callable[..., ProgressLines]
) -> None:
    sb = meshed(clusters=2, nodes=1)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")

    def recover() -> None:
        sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="udp/8472")

    def recover_soon() -> None:  # the wait has seen the failure: the path comes back 3 s later
        threading.Timer(3, recover).start()

    lines = progress_lines(recover_soon)

    state, result = nightly(mesh_spec(sb, health=HEALTH))

    assert lines.lines, "the nightly never waited on the blocked path"
    assert state.is_completed(), state
    assert result.status == "PASS", [f"{f.subject}: {f.reason}" for f in failures(result)]
    assert result.health is not None and result.health.healthy


# ------------------------------------------------------------------------------------- before setup


def test_a_nightly_before_any_setup_is_one_finding_run_setup_at_once(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16", nodes=1)

    state, result = nightly(mesh_spec(sb, health=HEALTH), run_drill=True)

    assert state.is_failed(), state
    [failure] = failures(result)
    assert failure.reason.startswith("the mesh is not set up: none of cluster-1, cluster-2 has Cluster Mesh enabled")
    assert failure.fix.startswith("run setup (clustermesh setup --config ")
    assert [f.level for f in result.findings].count("warning") == 0
    assert result.health is None and result.drill is None
    ran = set(task_runs_of(state.state_details.flow_run_id))
    assert "Check mesh health" not in " ".join(ran) and "Check drift" not in " ".join(ran), ran


# ------------------------------------------------------------------------------ configuration first


def test_drift_is_named_instead_of_a_port_and_the_nightly_does_not_wait_for_health(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], progress_lines: Callable[..., ProgressLines]
) -> None:
    """The issue's night: a peer entry deleted and a caCert corrupted by hand; every firewall is fine."""
    sb = meshed(clusters=2, nodes=1)
    k = kubes(sb)
    edit_values(k["cluster-1"], lambda v: v["clustermesh"]["config"].update(clusters=[]))

    def corrupt(values: dict[str, Any]) -> None:
        values["clustermesh"]["config"]["clusters"][0]["tls"]["caCert"] = "bm90IGEgY2VydGlmaWNhdGU="

    edit_values(k["cluster-2"], corrupt)
    lines = progress_lines()

    state, result = nightly(mesh_spec(sb, health=HEALTH))

    assert state.is_failed() and result.status == "FAIL"
    found = failures(result)
    assert any(f.subject == "cluster-1" and "missing peer cluster-2" in f.reason for f in found), found
    assert any(f.subject == "cluster-2 → cluster-1" and "tls.caCert" in f.reason for f in found), found
    health = [f for f in found if "explained by the failure above" in f.reason]
    assert {f.subject for f in health} == {"cluster-1 → cluster-2", "cluster-2 → cluster-1"}, found
    text = " ".join(f"{f.reason} {f.fix}" for f in found)
    assert "UDP 8472" not in text and "open " not in text, text
    assert lines.lines == [], "nothing to wait for: the drift explains every unhealthy pair"


# ------------------------------------------------------------------------------ a duplicated peer


def test_a_peer_listed_twice_with_a_stale_address_is_planned_and_repaired_by_the_setup(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = meshed(clusters=2, nodes=1)
    k = kubes(sb)
    spec = mesh_spec(sb)

    def duplicate(values: dict[str, Any]) -> None:
        entries = values["clustermesh"]["config"]["clusters"]
        entries.append({**entries[0], "ips": ["198.51.100.2"]})

    edit_values(k["cluster-1"], duplicate)
    assert [e["name"] for e in peer_entries(k["cluster-1"])] == ["cluster-2", "cluster-2"]

    plan = plan_setup(spec, lambda c: open_cluster(c, request_timeout=10))
    by_cluster = {p.cluster: p for p in plan.clusters}
    assert by_cluster["cluster-1"].changed, plan.render_text()
    assert "-      - 198.51.100.2" in by_cluster["cluster-1"].diff, plan.render_text()
    assert not by_cluster["cluster-2"].changed

    result = cluster_mesh_setup(spec)

    assert result.health.healthy
    [entry] = peer_entries(k["cluster-1"])
    assert entry["name"] == "cluster-2"
    assert entry["ips"] == apiserver_ips(k["cluster-2"])
    assert "198.51.100.2" not in yaml.safe_dump(k["cluster-1"].values())
