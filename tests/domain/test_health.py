"""Pins down how agents' `cilium-health status` answers become a cluster × cluster health matrix."""

from __future__ import annotations

import gc
import json
import pickle
from collections.abc import Sequence
from typing import Any

import pytest

from clustermesh.cilium import HealthStatus, parse_health
from clustermesh.errors import MeshUnhealthyError, TransientKubeError
from clustermesh.kube import ExecOutput
from clustermesh.steps.step8_health import (
    SETTLE,
    AgentHealth,
    ClusterHealth,
    HealthMatrix,
    HealthProgress,
    expected_nodes,
    health_matrix,
    probe_cluster,
    probe_mesh,
    wait_for_mesh_health,
)

OK: dict[str, Any] = {"latency": 1000}
TIMEOUT: dict[str, Any] = {"status": "Connection timed out"}


def http_fail(ip: str) -> dict[str, Any]:
    return {"status": f'Get "http://{ip}:4240/hello": context deadline exceeded'}


def node_json(
    name: str,
    *,
    host_ip: str = "10.0.0.1",
    ep_ip: str = "172.25.0.1",
    host: tuple[dict[str, Any], dict[str, Any]] = (OK, OK),
    endpoint: tuple[dict[str, Any], dict[str, Any]] = (OK, OK),
) -> dict[str, Any]:
    return {
        "name": name,
        "host": {
            "primary-address": {"ip": host_ip, "icmp": host[0], "http": host[1]},
            "secondary-addresses": [],
        },
        "health-endpoint": {
            "primary-address": {"ip": ep_ip, "icmp": endpoint[0], "http": endpoint[1]},
            "secondary-addresses": [],
        },
    }


def status(local: str, *nodes: dict[str, Any]) -> HealthStatus:
    """Build the status through the real parser, so the test agrees with what agents print."""
    text = json.dumps({"local": {"name": local}, "nodes": list(nodes), "timestamp": "2024-06-03T10:15:20Z"})
    return parse_health(text)


def agent(cluster: str, node: str, st: HealthStatus | None, error: str | None = None) -> AgentHealth:
    if st is None:
        return AgentHealth(pod=f"cilium-{node}", node=node, seen=None, error=error)
    return AgentHealth.from_status(f"cilium-{node}", node, st, cluster=cluster)


NODES = {"cluster-1": ["a1", "a2"], "cluster-2": ["b1", "b2"]}


def healthy_view(local_cluster: str, local_node: str) -> HealthStatus:
    names = [f"{c}/{n}" for c, ns in NODES.items() for n in ns]
    local = f"{local_cluster}/{local_node}"
    return status(local, *(node_json(n) for n in names))


def healthy_observed() -> dict[str, ClusterHealth]:
    return {
        c: ClusterHealth(cluster=c, agents=[agent(c, n, healthy_view(c, n)) for n in ns]) for c, ns in NODES.items()
    }


# --------------------------------------------------------------------------------------------- matrix


def test_every_node_reachable_from_every_agent_is_healthy() -> None:
    matrix = health_matrix(healthy_observed(), NODES)
    assert matrix.healthy
    assert matrix.clusters == ["cluster-1", "cluster-2"]
    cell = matrix.cell("cluster-2", "cluster-1")
    assert (cell.reachable, cell.expected, cell.missing, cell.failures) == (2, 2, [], [])
    assert matrix.summary() == "4/4 cells healthy"


def test_remote_nodes_not_listed_are_missing_not_unreachable() -> None:
    observed = healthy_observed()
    only_local = status("cluster-2/b1", node_json("cluster-2/b1"), node_json("cluster-2/b2"))
    observed["cluster-2"] = ClusterHealth(
        cluster="cluster-2",
        agents=[agent("cluster-2", "b1", only_local), agent("cluster-2", "b2", healthy_view("cluster-2", "b2"))],
    )
    matrix = health_matrix(observed, NODES)
    cell = matrix.cell("cluster-2", "cluster-1")
    assert not matrix.healthy
    assert cell.reachable == 0 and cell.missing == ["a1", "a2"] and cell.failures == []
    assert matrix.cell("cluster-2", "cluster-2").healthy
    assert matrix.cell("cluster-1", "cluster-2").healthy
    assert matrix.summary() == "3/4 cells healthy; cluster-2 → cluster-1: 0/2 reachable (2 missing)"


def test_a_node_counts_only_when_every_agent_of_the_source_reaches_it() -> None:
    observed = healthy_observed()
    names = [f"{c}/{n}" for c, ns in NODES.items() for n in ns]
    partial = status(
        "cluster-1/a2",
        *(
            node_json(n, endpoint=(TIMEOUT, http_fail("172.25.0.1"))) if n == "cluster-2/b1" else node_json(n)
            for n in names
        ),
    )
    observed["cluster-1"] = ClusterHealth(
        cluster="cluster-1",
        agents=[agent("cluster-1", "a1", healthy_view("cluster-1", "a1")), agent("cluster-1", "a2", partial)],
    )
    cell = health_matrix(observed, NODES).cell("cluster-1", "cluster-2")
    assert (cell.reachable, cell.missing) == (1, [])
    assert cell.failures[0] == "cluster-1 agent on a2 → cluster-2/b1: endpoint ICMP: Connection timed out"
    assert cell.failing_paths == ["endpoint HTTP", "endpoint ICMP"]
    assert cell.describe() == "cluster-1 → cluster-2: 1/2 reachable (1 failing)"


def test_unprefixed_names_belong_to_a_cluster_named_default() -> None:
    nodes = {"default": ["n1"], "cluster-2": ["b1"]}
    view = status("n1", node_json("n1"), node_json("cluster-2/b1"))
    other = status("cluster-2/b1", node_json("cluster-2/b1"), node_json("n1"))
    observed = {
        "default": ClusterHealth(cluster="default", agents=[agent("default", "n1", view)]),
        "cluster-2": ClusterHealth(cluster="cluster-2", agents=[agent("cluster-2", "b1", other)]),
    }
    matrix = health_matrix(observed, nodes)
    assert matrix.cell("default", "default").reachable == 1
    assert matrix.cell("default", "cluster-2").reachable == 1
    # cluster-2 lists `n1` without prefix: that is not cluster-2's view of "default" (the name is not
    # its own), so the bare name must not be taken for a node of the default cluster from outside.
    assert matrix.cell("cluster-2", "default").missing == ["n1"]


def test_an_agent_error_makes_the_mesh_unhealthy_even_when_the_others_see_everything() -> None:
    observed = healthy_observed()
    observed["cluster-1"] = ClusterHealth(
        cluster="cluster-1",
        agents=[
            agent("cluster-1", "a1", healthy_view("cluster-1", "a1")),
            agent("cluster-1", "a2", None, "exec failed"),
        ],
    )
    matrix = health_matrix(observed, NODES)
    assert all(c.healthy for c in matrix.cells)
    assert not matrix.healthy
    assert matrix.agent_errors == ["cluster-1 agent cilium-a2 on a2: exec failed"]
    assert "agent errors: cluster-1 agent cilium-a2 on a2: exec failed" in matrix.summary()


def test_a_cluster_without_agents_proves_nothing() -> None:
    observed = healthy_observed()
    observed["cluster-2"] = ClusterHealth(cluster="cluster-2", agents=[])
    matrix = health_matrix(observed, NODES)
    cell = matrix.cell("cluster-2", "cluster-1")
    assert (cell.reachable, cell.agents, cell.healthy) == (0, 0, False)
    assert "cluster-2: no cilium agent pods" in matrix.agent_errors[0]
    assert "no agent answered" in matrix.summary()


def test_a_node_without_an_agent_makes_the_mesh_unhealthy() -> None:
    observed = healthy_observed()
    observed["cluster-1"] = ClusterHealth(
        cluster="cluster-1", agents=[agent("cluster-1", "a1", healthy_view("cluster-1", "a1"))]
    )
    matrix = health_matrix(observed, NODES)
    assert all(c.healthy for c in matrix.cells)
    assert matrix.agent_errors == ["cluster-1: no cilium agent on node(s) a2"]
    assert not matrix.healthy


def test_a_cluster_not_probed_at_all_is_reported() -> None:
    observed = healthy_observed()
    del observed["cluster-2"]
    matrix = health_matrix(observed, NODES)
    assert not matrix.healthy
    assert "cluster-2: not probed" in matrix.agent_errors


def test_failures_are_capped_and_distinct() -> None:
    nodes = {"c1": ["x"], "c2": [f"n{i}" for i in range(10)]}
    view = status(
        "c1/x",
        node_json("c1/x"),
        *(node_json(f"c2/n{i}", host=(TIMEOUT, OK)) for i in range(10)),
    )
    observed = {"c1": ClusterHealth(cluster="c1", agents=[agent("c1", "x", view)])}
    cell = health_matrix(observed, nodes).cell("c1", "c2")
    assert cell.reachable == 0
    assert cell.failures == ["c1 agent on x → c2/n0: host ICMP: Connection timed out"]
    assert cell.failing_paths == ["host ICMP"]


def test_at_most_five_distinct_failures_are_kept_but_every_failing_probe_is_named() -> None:
    nodes = {"c1": ["x"], "c2": [f"n{i}" for i in range(8)]}
    view = status(
        "c1/x",
        node_json("c1/x"),
        *(node_json(f"c2/n{i}", host_ip=f"10.0.1.{i}", host=(OK, http_fail(f"10.0.1.{i}"))) for i in range(7)),
        node_json("c2/n7", endpoint=(TIMEOUT, OK)),
    )
    observed = {"c1": ClusterHealth(cluster="c1", agents=[agent("c1", "x", view)])}
    cell = health_matrix(observed, nodes).cell("c1", "c2")
    assert len(cell.failures) == 5 and cell.failures[4].startswith("c1 agent on x → c2/n4: host HTTP")
    assert cell.failing_paths == ["endpoint ICMP", "host HTTP"]


def test_table_rows_and_text_show_each_cell() -> None:
    observed = healthy_observed()
    only_local = status("cluster-2/b1", node_json("cluster-2/b1"), node_json("cluster-2/b2"))
    observed["cluster-2"] = ClusterHealth(cluster="cluster-2", agents=[agent("cluster-2", "b1", only_local)])
    matrix = health_matrix(observed, NODES)
    assert matrix.table_rows() == [
        {"from \\ to": "cluster-1", "cluster-1": "2/2 ✓", "cluster-2": "2/2 ✓"},
        {"from \\ to": "cluster-2", "cluster-1": "0/2 ✗", "cluster-2": "2/2 ✓"},
    ]
    assert matrix.table_rows(ascii_only=True)[1]["cluster-1"] == "0/2 FAIL"
    text = matrix.render_text()
    assert "cluster-2 → cluster-1: not listed: a1, a2" in text
    assert text.splitlines()[2].split() == ["cluster-2", "0/2", "FAIL", "2/2", "OK"]


def test_matrix_survives_pickling_inside_the_timeout_error() -> None:
    matrix = health_matrix(healthy_observed(), NODES)
    err = MeshUnhealthyError("x", "y", timeout=1, check="z", matrix=matrix)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back.matrix, HealthMatrix) and back.matrix == matrix and str(back) == str(err)


# ------------------------------------------------------------------------------------------- probing


class FakeClient:
    """Duck-typed cluster client: pods, nodes and scripted exec answers per (pod, argv)."""

    def __init__(
        self,
        pods: list[dict[str, Any]],
        answers: dict[tuple[str, tuple[str, ...]], ExecOutput | Exception],
        nodes: Sequence[str] = (),
    ) -> None:
        self.pods = pods
        self.answers = answers
        self.nodes = list(nodes)
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    def list_nodes(self) -> list[dict[str, Any]]:
        return [{"metadata": {"name": n}} for n in self.nodes]

    def list_pods(self, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        assert (namespace, label_selector) == ("kube-system", "k8s-app=cilium")
        return self.pods

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput:
        self.calls.append((pod, container, tuple(argv)))
        answer = self.answers.get((pod, tuple(argv)), ExecOutput(1, "", "unknown command"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def pod(name: str, node: str, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2024-06-03T10:15:20Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


JSON_ARGV = ("cilium-health", "status", "-o", "json")
TEXT_ARGV = ("cilium-health", "status")
HEALTH_JSON = json.dumps({"local": {"name": "c1/a"}, "nodes": [node_json("c1/a")]})
HEALTH_TEXT = """Probe time:   2024-06-03T10:15:20Z
Nodes:
  c1/b (localhost):
    Host connectivity to 10.0.0.2:
      ICMP to stack:   OK, RTT=585.908µs
      HTTP to agent:   OK, RTT=386.343µs
    Endpoint connectivity to 172.25.0.235:
      ICMP to stack:   OK, RTT=563.934µs
      HTTP to agent:   OK, RTT=684.559µs
"""


def test_probe_uses_json_and_falls_back_to_text_when_json_is_refused() -> None:
    client = FakeClient(
        [pod("cilium-a", "a"), pod("cilium-b", "b")],
        {
            ("cilium-a", JSON_ARGV): ExecOutput(0, HEALTH_JSON, ""),
            ("cilium-b", JSON_ARGV): ExecOutput(1, "", "unknown flag: --output"),
            ("cilium-b", TEXT_ARGV): ExecOutput(0, HEALTH_TEXT, ""),
        },
    )
    health = probe_cluster(client, "c1", timeout=5)
    assert [(a.pod, a.node, a.error) for a in health.agents] == [
        ("cilium-a", "a", None),
        ("cilium-b", "b", None),
    ]
    assert [sorted(a.seen["c1"].reachable) if a.seen else None for a in health.agents] == [["a"], ["b"]]
    assert all(container == "cilium-agent" for _, container, _ in client.calls)
    assert ("cilium-a", "cilium-agent", TEXT_ARGV) not in client.calls


def test_probe_records_exec_failures_and_unreadable_output_per_agent() -> None:
    client = FakeClient(
        [pod("cilium-a", "a"), pod("cilium-b", "b")],
        {
            ("cilium-a", JSON_ARGV): TransientKubeError("c1", "exec", "pods/cilium-a/exec", "timed out"),
            ("cilium-a", TEXT_ARGV): TransientKubeError("c1", "exec", "pods/cilium-a/exec", "timed out"),
            ("cilium-b", JSON_ARGV): ExecOutput(0, '{"nodes": [', ""),
            ("cilium-b", TEXT_ARGV): ExecOutput(0, "garbage\n", ""),
        },
    )
    health = probe_cluster(client, "c1", timeout=5)
    errors = {a.pod: a.error or "" for a in health.agents}
    assert all(a.seen is None for a in health.agents)
    assert "`cilium-health status -o json` failed" in errors["cilium-a"] and "timed out" in errors["cilium-a"]
    assert "`cilium-health status` failed" in errors["cilium-a"]
    assert "`cilium-health status -o json` output unreadable" in errors["cilium-b"]
    assert "`cilium-health status` output unreadable" in errors["cilium-b"]


def test_probe_skips_terminating_agents_and_records_pending_ones() -> None:
    client = FakeClient(
        [pod("old", "a", deleting=True), pod("new", "a", phase="Pending"), pod("cilium-b", "b")],
        {("cilium-b", JSON_ARGV): ExecOutput(0, HEALTH_JSON, "")},
    )
    health = probe_cluster(client, "c1", timeout=5)
    assert [(a.pod, a.error) for a in health.agents] == [
        ("new", "agent pod is Pending, not Running"),
        ("cilium-b", None),
    ]
    assert {p for p, _, _ in client.calls} == {"cilium-b"}


@pytest.mark.parametrize("enabled", [True, False])
def test_probing_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    client = FakeClient(
        [pod("cilium-a", "a"), pod("cilium-b", "b")],
        {
            ("cilium-a", JSON_ARGV): ExecOutput(0, HEALTH_JSON, ""),
            ("cilium-b", JSON_ARGV): ExecOutput(0, '{"nodes": [', ""),  # unreadable: parsing raises
            ("cilium-b", TEXT_ARGV): ExecOutput(0, "garbage\n", ""),
        },
    )
    was_enabled = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        health = probe_cluster(client, "c1", timeout=5)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()
    assert [a.error is None for a in health.agents] == [True, False]


def test_expected_nodes_are_the_sorted_node_names() -> None:
    assert expected_nodes(FakeClient([], {}, nodes=["n2", "n1"])) == ["n1", "n2"]


class BrokenClient(FakeClient):
    def list_pods(self, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        raise TransientKubeError("c2", "list", "kube-system/pods", "connection refused")


def test_probe_mesh_turns_an_unreachable_api_into_a_cluster_error() -> None:
    good = FakeClient([pod("cilium-a", "a")], {("cilium-a", JSON_ARGV): ExecOutput(0, HEALTH_JSON, "")}, ["a"])
    matrix = probe_mesh({"c1": good, "c2": BrokenClient([], {}, ["b"])}, exec_timeout=5)
    assert matrix.clusters == ["c1", "c2"]
    assert matrix.cell("c1", "c1").healthy
    assert not matrix.healthy
    assert any(e.startswith("c2: ") and "connection refused" in e for e in matrix.agent_errors)


# ------------------------------------------------------------------------------------------- waiting


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def unhealthy_matrix() -> HealthMatrix:
    observed = healthy_observed()
    observed["cluster-2"] = ClusterHealth(
        cluster="cluster-2",
        agents=[agent("cluster-2", "b1", status("cluster-2/b1", node_json("cluster-2/b1"), node_json("cluster-2/b2")))],
    )
    return health_matrix(observed, NODES)


def test_waiting_returns_the_first_healthy_matrix() -> None:
    looks = iter([unhealthy_matrix(), unhealthy_matrix(), health_matrix(healthy_observed(), NODES)])
    t = FakeTime()
    matrix = wait_for_mesh_health(
        {},
        timeout=60,
        poll_interval=5,
        exec_timeout=5,
        clock=t.clock,
        sleep=t.sleep,
        probe=lambda: next(looks),
    )
    assert matrix.healthy
    assert t.sleeps == [5, 5]


def test_timeout_says_what_was_expected_seen_and_what_to_check() -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait_for_mesh_health(
            {},
            timeout=12,
            poll_interval=5,
            exec_timeout=5,
            clock=t.clock,
            sleep=t.sleep,
            probe=unhealthy_matrix,
        )
    err = info.value
    message = str(err)
    assert t.sleeps == [5, 5, 2]
    assert "every node of every cluster reachable from every agent of every cluster" in message
    assert "cluster-2 → cluster-1: 0/2 reachable (2 missing)" in message
    for hint in ("UDP 8472", "TCP 4240", "ICMP", "TCP 2379", "clustermesh-apiserver", "certificate"):
        assert hint in message
    assert "cilium-dbg troubleshoot clustermesh" in message
    assert err.matrix == unhealthy_matrix()


# ------------------------------------------------------------------------------- an early verdict


def view_at(
    local_cluster: str, local_node: str, at: int | None, *, failing: str = "endpoint", partial: bool = False
) -> HealthStatus:
    """A full answer probed at second ``at`` (None: no probe time), failing ``failing`` to the other cluster.

    ``failing`` is ``endpoint`` (what a shut UDP 8472 shows), ``host`` (TCP 4240) or ``""`` (healthy);
    ``partial`` fails only the other cluster's first node.
    """
    nodes = []
    for cluster, names in NODES.items():
        for name in names:
            fails = bool(failing) and cluster != local_cluster and (not partial or name == names[0])
            bad = (TIMEOUT, http_fail("10.0.0.9"))
            nodes.append(
                node_json(
                    f"{cluster}/{name}",
                    host=bad if fails and failing == "host" else (OK, OK),
                    endpoint=bad if fails and failing == "endpoint" else (OK, OK),
                )
            )
    doc: dict[str, Any] = {"local": {"name": f"{local_cluster}/{local_node}"}, "nodes": nodes}
    if at is not None:
        doc["timestamp"] = f"2024-06-03T10:{at // 60:02d}:{at % 60:02d}Z"
    return parse_health(json.dumps(doc))


def mesh_at(at: int | None, **failure: Any) -> HealthMatrix:
    """The 2 × 2 mesh as every agent answers at second ``at`` (see ``view_at``)."""
    observed = {
        c: ClusterHealth(cluster=c, agents=[agent(c, n, view_at(c, n, at, **failure)) for n in ns])
        for c, ns in NODES.items()
    }
    return health_matrix(observed, NODES)


def wait(t: FakeTime, look: Any, *, timeout: float = 600, progress: Any = None, **options: Any) -> HealthMatrix:
    return wait_for_mesh_health(
        {},
        timeout=timeout,
        poll_interval=2,
        exec_timeout=5,
        clock=t.clock,
        sleep=t.sleep,
        probe=look,
        progress=progress,
        **options,
    )


def test_a_port_shut_between_two_clusters_is_a_verdict_once_it_held_the_settle_time_with_fresh_probes() -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait(t, lambda: mesh_at(int(t.now)))
    assert t.now == SETTLE.settle == 30, "the verdict came once the failure held 30 s, not after 600 s"
    message = str(info.value)
    assert message.startswith("mesh not healthy after 30s")
    assert "stopped early: cluster-1 → cluster-2, cluster-2 → cluster-1 failed the same way" in message
    assert "every agent probed again meanwhile" in message
    matrix = info.value.matrix
    assert matrix.cell("cluster-1", "cluster-2").failing_paths == ["endpoint HTTP", "endpoint ICMP"]


def test_answers_that_were_not_probed_again_never_end_the_wait_early() -> None:
    """An agent serves its last probe round until the next: the same round seen again proves nothing."""
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait(t, lambda: mesh_at(0), timeout=120)
    assert t.now == 120
    assert "stopped early" not in str(info.value)
    assert str(info.value).startswith("mesh not healthy after 120s")


def test_answers_without_a_probe_time_need_a_whole_cilium_probe_round() -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait(t, lambda: mesh_at(None))
    assert t.now == SETTLE.probe_interval == 60
    assert "over 60 s, a Cilium probe round" in str(info.value)


@pytest.mark.parametrize(
    ("what", "look"),
    [
        ("one node of the pair still reachable", lambda now: mesh_at(now, partial=True)),
        ("remote nodes not listed yet", lambda now: unhealthy_matrix()),
    ],
)
def test_partial_or_still_connecting_failures_wait_out_the_timeout(what: str, look: Any) -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait(t, lambda: look(int(t.now)), timeout=100)
    assert t.now == 100, what
    assert "stopped early" not in str(info.value)


def test_a_failure_that_changes_starts_the_settle_time_again() -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError) as info:
        wait(t, lambda: mesh_at(int(t.now), failing="endpoint" if t.now < 20 else "host"))
    assert t.now == 50, "20 s of one failure, then 30 s of the other"
    assert info.value.matrix.cell("cluster-1", "cluster-2").failing_paths == ["host HTTP", "host ICMP"]


def test_a_flaky_path_that_recovers_within_the_settle_time_passes() -> None:
    t = FakeTime()
    matrix = wait(t, lambda: mesh_at(int(t.now), failing="endpoint" if t.now < 8 else ""))
    assert matrix.healthy and t.now == 8


def test_without_a_settle_rule_the_wait_runs_to_its_timeout() -> None:
    t = FakeTime()
    with pytest.raises(MeshUnhealthyError):
        wait(t, lambda: mesh_at(int(t.now)), timeout=90, settle=None)
    assert t.now == 90


def test_progress_says_what_is_missing_every_few_seconds_and_the_verdict_last() -> None:
    t = FakeTime()
    reports: list[HealthProgress] = []
    with pytest.raises(MeshUnhealthyError):
        wait(t, lambda: mesh_at(int(t.now)), progress=reports.append)
    assert [r.elapsed for r in reports] == [0, 6, 12, 18, 24, 30], "every 5 s or more while nothing changes"
    first, last = reports[0].line(), reports[-1].line()
    assert first.startswith("mesh health after 0 s of 600 s (look 1): 2/4 cells healthy; waiting for ")
    assert "cluster-1 → cluster-2: 0/2 reachable (2 failing) [endpoint HTTP, endpoint ICMP]" in first
    assert "unchanged for 0 s: a verdict once it has held 30 s and every agent has probed again" in first
    assert reports[2].looks == 7 and "unchanged for 12 s" in reports[2].line()
    assert last.startswith("mesh health after 30 s of 600 s (look 16)")
    assert "— stopped early: cluster-1 → cluster-2, cluster-2 → cluster-1 failed the same way" in last


def test_progress_reports_a_change_at_once() -> None:
    t = FakeTime()
    reports: list[HealthProgress] = []

    def look() -> HealthMatrix:
        return mesh_at(int(t.now), failing="endpoint" if t.now < 8 else "host" if t.now < 10 else "")

    matrix = wait(t, look, progress=reports.append)
    assert matrix.healthy
    assert [r.elapsed for r in reports] == [0, 6, 8], "the switch to host probes at 8 s is reported then"
    assert "[host HTTP, host ICMP]" in reports[-1].line()


def not_connected_to_cluster_1() -> HealthMatrix:
    """Both agents of cluster-2 answer and list nothing of cluster-1; everything else is healthy."""
    observed = healthy_observed()
    observed["cluster-2"] = ClusterHealth(
        cluster="cluster-2",
        agents=[
            agent("cluster-2", n, status(f"cluster-2/{n}", node_json("cluster-2/b1"), node_json("cluster-2/b2")))
            for n in NODES["cluster-2"]
        ],
    )
    return health_matrix(observed, NODES)


def test_cells_explained_elsewhere_are_not_waited_for() -> None:
    t = FakeTime()
    broken = not_connected_to_cluster_1()
    assert [(c.src, c.dst) for c in broken.cells if not c.healthy] == [("cluster-2", "cluster-1")]
    matrix = wait(t, lambda: broken, known_broken=frozenset({("cluster-2", "cluster-1")}))
    assert matrix is broken and t.sleeps == [], "judged on the first look"
    with pytest.raises(MeshUnhealthyError):  # not explained: nodes missing are waited for, to the timeout
        wait(t, lambda: broken, timeout=4)
    assert t.now == 4
