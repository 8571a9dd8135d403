"""The operator's night on the sandbox, without Prefect: a verdict without waiting out the health timeout,
progress while waiting, a flaky path still passing, and the configuration diagnosed before the paths.

The mesh is built by the setup's domain steps; faults come from the sandbox (a port blocked between two
clusters) or from a hand edit with the official client, so the checks judge state they did not produce.
Every wait here has the default 600 s health timeout: a test that returns at all came back early.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from clustermesh.checks import check_drift, check_mesh_health, check_reachability_and_versions, mesh_not_set_up
from clustermesh.errors import MeshUnhealthyError
from clustermesh.kube import ClusterClient
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec, load_spec
from clustermesh.steps.step7_reachability import UDP_8472_PATH, blocked_paths
from clustermesh.steps.step8_health import HealthProgress, wait_for_mesh_health
from tests.conftest import kube_client
from tests.helpers import build_mesh

AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")
HEALTH_TIMEOUT = 600.0


@pytest.fixture
def mesh(sandbox_factory: Callable[..., Any]) -> Iterator[tuple[Any, MeshSpec, dict[str, ClusterClient]]]:
    """A healthy 2-cluster 1.16 mesh set up by the domain steps; the spec's health timeout is 600 s."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    spec, clients, _ = build_mesh(sb, drill_timeout=5)
    spec = spec.model_copy(update={"timeouts": spec.timeouts.model_copy(update={"health": HEALTH_TIMEOUT})})
    try:
        wait_for_mesh_health(clients, timeout=30, poll_interval=0.1, exec_timeout=10)
        yield sb, spec, dict(clients)
    finally:
        for c in clients.values():
            c.close()


def edit_values(sb: Any, cluster: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """``kubectl edit applicationinstallation cilium`` by hand, with the official client."""
    api = kube_client(sb.endpoint(cluster).kubeconfig)
    try:
        custom = k8s.CustomObjectsApi(api)
        ai = custom.get_namespaced_custom_object(*AI)
        assert isinstance(ai, dict)
        field = "valuesBlock" if (ai["spec"].get("valuesBlock") or "").strip() else "values"
        values = yaml.safe_load(ai["spec"][field]) if field == "valuesBlock" else ai["spec"][field]
        edit(values)
        ai["spec"][field] = yaml.safe_dump(values) if field == "valuesBlock" else values
        custom.replace_namespaced_custom_object(*AI, ai)
    finally:
        api.close()


def test_a_blocked_vxlan_port_is_a_verdict_well_before_the_timeout_with_progress_meanwhile(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    sb, spec, clients = mesh
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    reports: list[HealthProgress] = []

    with pytest.raises(MeshUnhealthyError) as info:
        wait_for_mesh_health(
            clients, timeout=HEALTH_TIMEOUT, poll_interval=0.5, exec_timeout=10, progress=reports.append
        )

    assert "stopped early" in str(info.value), str(info.value)
    found = {(b.src_cluster, b.dst_cluster, b.what) for b in blocked_paths(info.value.matrix)}
    assert found == {("cluster-1", "cluster-2", UDP_8472_PATH), ("cluster-2", "cluster-1", UDP_8472_PATH)}
    assert len(reports) >= 3, [r.line() for r in reports]
    assert all("waiting for cluster-1 → cluster-2: 0/2 reachable (2 failing)" in r.line() for r in reports)
    assert reports[-1].verdict is not None and reports[-1].verdict.startswith("stopped early")


def test_a_flaky_path_that_recovers_while_the_wait_runs_still_passes(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    sb, spec, clients = mesh
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    unblocked = threading.Event()

    def recover() -> None:
        sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="udp/8472")

    def seen(report: HealthProgress) -> None:  # the wait has seen the failure: the path recovers 3 s later
        if not unblocked.is_set():
            unblocked.set()
            threading.Timer(3, recover).start()

    matrix = wait_for_mesh_health(clients, timeout=HEALTH_TIMEOUT, poll_interval=0.5, exec_timeout=10, progress=seen)

    assert unblocked.is_set(), "the wait never saw the blocked path"
    assert matrix.healthy, matrix.render_text()


def test_drift_is_named_before_any_port_and_judged_without_waiting(
    mesh: tuple[Any, MeshSpec, dict[str, ClusterClient]],
) -> None:
    """The issue's night: a peer entry deleted and a caCert corrupted by hand, no port blocked."""
    sb, spec, clients = mesh
    edit_values(sb, "cluster-1", lambda v: v["clustermesh"]["config"].update(clusters=[]))

    def corrupt(values: dict[str, Any]) -> None:
        values["clustermesh"]["config"]["clusters"][0]["tls"]["caCert"] = "bm90IGEgY2VydGlmaWNhdGU="

    edit_values(sb, "cluster-2", corrupt)
    facts, findings = check_reachability_and_versions(clients, spec)
    findings += check_drift(clients, facts, spec)
    reports: list[HealthProgress] = []

    matrix, health = check_mesh_health(clients, spec.timeouts, found=findings, progress=reports.append)

    assert not matrix.healthy and reports == [], "judged on the first look: the drift explains every unhealthy pair"
    drift = [f for f in findings if f.level == "failure"]
    assert any("missing peer cluster-2" in f.reason for f in drift), drift
    assert any("tls.caCert" in f.reason for f in drift), drift
    assert [f.subject for f in health] == ["cluster-1 → cluster-2", "cluster-2 → cluster-1"]
    assert all(f.level == "failure" and "explained by the failure above" in f.reason for f in health), health
    text = " ".join(f"{f.reason} {f.fix}" for f in health)
    assert "UDP 8472" not in text and "TCP 2379" not in text and "open " not in text, text


def test_clusters_never_set_up_say_so_at_once(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    spec = load_spec(sb.directory / "mesh.yaml")
    clients = {c.name: open_cluster(c, request_timeout=10) for c in spec.clusters}
    try:
        facts, _ = check_reachability_and_versions(clients, spec)
    finally:
        for c in clients.values():
            c.close()
    finding = mesh_not_set_up(facts)
    assert finding is not None and finding.reason.startswith("the mesh is not set up"), finding
    assert set(facts) == {"cluster-1", "cluster-2"}
