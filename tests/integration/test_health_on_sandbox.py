"""Step 7 and 8 against the sandbox: the matrix and the blocked-path names for what the sandbox injects.

The sandbox answers `cilium-health status` in the format of its Cilium version and computes results
from its own model of the mesh (a parser the pipeline does not share), so agreement here means the
pipeline reads what a real agent would print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from clustermesh.errors import MeshUnhealthyError
from clustermesh.kube.client import ClusterClient, ExecOutput
from clustermesh.steps.step7_reachability import (
    APISERVER_PATH,
    TCP_4240_PATH,
    UDP_8472_PATH,
    blocked_paths,
    firewall_rules,
    list_node_addresses,
)
from clustermesh.steps.step8_health import (
    HealthMatrix,
    health_matrix,
    probe_cluster,
    probe_mesh,
    wait_for_mesh_health,
)
from tests.sandbox.test_guide_by_hand import run_guide

NAMES = ("cluster-1", "cluster-2")
_OPEN: list[ClusterClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def clients_for(sb: Any) -> dict[str, ClusterClient]:
    clients = {
        name: ClusterClient.from_kubeconfig_file(Path(ep.kubeconfig), context=None, cluster_name=name)
        for name, ep in zip(NAMES, sb.endpoints, strict=True)
    }
    _OPEN.extend(clients.values())
    return clients


def meshed(sandbox_factory: Callable[..., Any]) -> tuple[Any, dict[str, ClusterClient]]:
    """The guide by hand on a 2-cluster 1.13 sandbox, then waited for until healthy."""
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        sb = sandbox_factory(**options)
        made.append(sb)
        return sb

    run_guide(factory, leave_out_remote_cert=False)
    clients = clients_for(made[0])
    wait_for_mesh_health(clients, timeout=30, poll_interval=0.1, exec_timeout=10)
    return made[0], clients


def directed(matrix: HealthMatrix) -> set[tuple[str, str, str]]:
    return {(b.src_cluster, b.dst_cluster, b.what) for b in blocked_paths(matrix)}


def test_guide_done_by_hand_gives_a_healthy_matrix(sandbox_factory: Callable[..., Any]) -> None:
    _, clients = meshed(sandbox_factory)
    matrix = probe_mesh(clients, exec_timeout=10)
    assert matrix.healthy, matrix.render_text()
    assert [(c.src, c.dst, c.reachable, c.expected) for c in matrix.cells] == [
        ("cluster-1", "cluster-1", 2, 2),
        ("cluster-1", "cluster-2", 2, 2),
        ("cluster-2", "cluster-1", 2, 2),
        ("cluster-2", "cluster-2", 2, 2),
    ]
    assert blocked_paths(matrix) == []


@pytest.mark.parametrize(
    ("port", "what"),
    [("udp/8472", UDP_8472_PATH), ("tcp/4240", TCP_4240_PATH), ("icmp", "ICMP")],
)
def test_a_blocked_port_is_named_between_the_clusters(
    sandbox_factory: Callable[..., Any], port: str, what: str
) -> None:
    sb, clients = meshed(sandbox_factory)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port=port)
    matrix = probe_mesh(clients, exec_timeout=10)
    assert not matrix.healthy
    assert matrix.cell("cluster-1", "cluster-1").healthy and matrix.cell("cluster-2", "cluster-2").healthy
    found = directed(matrix)
    assert ("cluster-1", "cluster-2", what) in found or ("cluster-2", "cluster-1", what) in found, found
    assert {w for _, _, w in found} == {what}, found


def test_blocking_the_apiserver_port_makes_remote_nodes_missing(sandbox_factory: Callable[..., Any]) -> None:
    sb, clients = meshed(sandbox_factory)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="tcp/2379")
    with pytest.raises(MeshUnhealthyError) as info:
        wait_for_mesh_health(clients, timeout=0.5, poll_interval=0.1, exec_timeout=10)
    assert ("cluster-1", "cluster-2", APISERVER_PATH) in directed(info.value.matrix) or (
        "cluster-2",
        "cluster-1",
        APISERVER_PATH,
    ) in directed(info.value.matrix)


def test_without_a_mesh_remote_nodes_are_missing_and_the_wait_says_what_to_check(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.13")
    clients = clients_for(sb)
    with pytest.raises(MeshUnhealthyError) as info:
        wait_for_mesh_health(clients, timeout=0.3, poll_interval=0.1, exec_timeout=10)
    matrix = info.value.matrix
    assert isinstance(matrix, HealthMatrix)
    assert matrix.cell("cluster-1", "cluster-1").healthy
    cell = matrix.cell("cluster-1", "cluster-2")
    assert (cell.reachable, cell.expected, len(cell.missing)) == (0, 2, 2)
    assert directed(matrix) == {
        ("cluster-1", "cluster-2", APISERVER_PATH),
        ("cluster-2", "cluster-1", APISERVER_PATH),
    }
    message = str(info.value)
    assert "cluster-1 → cluster-2: 0/2 reachable (2 missing)" in message
    for hint in ("UDP 8472", "TCP 4240", "TCP 2379", "troubleshoot clustermesh"):
        assert hint in message


class TextOnly:
    """A client whose agents refuse `-o json`, so the text layout of the sandbox's version is read."""

    def __init__(self, inner: ClusterClient) -> None:
        self.inner = inner

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.inner.list_nodes()

    def list_pods(self, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        return self.inner.list_pods(namespace, label_selector, field_selector)

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput:
        if "-o" in argv:
            return ExecOutput(1, "", "Error: unknown shorthand flag: 'o'\n")
        return self.inner.exec(namespace, pod, container, argv, timeout=timeout)


@pytest.mark.parametrize("version", ["1.17", "1.18"])
def test_table_layout_of_newer_versions_reads_like_json(sandbox_factory: Callable[..., Any], version: str) -> None:
    sb = sandbox_factory(clusters=2, cilium_version=version)
    clients = clients_for(sb)
    by_json = probe_cluster(clients["cluster-1"], "cluster-1", timeout=10)
    by_text = probe_cluster(TextOnly(clients["cluster-1"]), "cluster-1", timeout=10)
    assert len(by_text.agents) == 2 and all(a.error is None for a in by_text.agents)
    for health in (by_json, by_text):
        matrix_nodes = {"cluster-1": sorted(a.node for a in health.agents), "cluster-2": ["x", "y"]}
        matrix = health_matrix({"cluster-1": health}, matrix_nodes)
        assert matrix.cell("cluster-1", "cluster-1").healthy, matrix.render_text()
        assert matrix.cell("cluster-1", "cluster-2").missing == ["x", "y"]
    json_view = {a.pod: a.seen for a in by_json.agents}
    text_view = {a.pod: a.seen for a in by_text.agents}
    assert json_view == text_view
    assert all(seen is not None and len(seen["cluster-1"].reachable) == 2 for seen in json_view.values())


def test_firewall_rules_use_the_sandbox_nodes(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.13")
    clients = clients_for(sb)
    nodes = {name: list_node_addresses(c, name) for name, c in clients.items()}
    assert all(len(a) == 2 and all(n.internal_ip for n in a) for a in nodes.values())
    rules = firewall_rules(nodes, {})
    vxlan = next(r for r in rules if r.port == 8472 and r.src_cluster == "cluster-1")
    assert vxlan.sources == [f"{a.internal_ip}/32" for a in nodes["cluster-1"]]
    assert vxlan.destinations == [f"{a.internal_ip}/32" for a in nodes["cluster-2"]]
