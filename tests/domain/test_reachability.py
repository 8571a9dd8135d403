"""Pins down the firewall openings a mesh needs and how health failures name the one that is shut."""

from __future__ import annotations

import json
from typing import Any

from clustermesh.cilium import parse_health
from clustermesh.steps.step7_reachability import (
    APISERVER_PATH,
    ICMP_PATH,
    TCP_4240_PATH,
    UDP_8472_PATH,
    FirewallRule,
    NodeAddress,
    blocked_paths,
    firewall_report,
    firewall_rules,
    list_node_addresses,
    rules_table,
)
from clustermesh.steps.step8_health import AgentHealth, ClusterHealth, HealthMatrix, health_matrix

OK: dict[str, Any] = {"latency": 1000}
TIMEOUT: dict[str, Any] = {"status": "Connection timed out"}
HTTP_FAIL: dict[str, Any] = {"status": 'Get "http://10.0.0.3:4240/hello": context deadline exceeded'}


def node_json(name: str, host: tuple[Any, Any] = (OK, OK), endpoint: tuple[Any, Any] = (OK, OK)) -> Any:
    return {
        "name": name,
        "host": {"primary-address": {"ip": "10.0.0.3", "icmp": host[0], "http": host[1]}},
        "health-endpoint": {"primary-address": {"ip": "172.26.0.1", "icmp": endpoint[0], "http": endpoint[1]}},
    }


def matrix_where(
    remote: dict[str, Any] | None,
    *,
    reverse_missing: bool = False,
) -> HealthMatrix:
    """cluster-1 (node a) sees cluster-2's node b as ``remote`` (None: not listed); cluster-2 sees all."""
    c1_nodes = [node_json("cluster-1/a")] + ([remote] if remote is not None else [])
    c2_nodes = [node_json("cluster-2/b")] + ([] if reverse_missing else [node_json("cluster-1/a")])
    c1 = parse_health(json.dumps({"local": {"name": "cluster-1/a"}, "nodes": c1_nodes}))
    c2 = parse_health(json.dumps({"local": {"name": "cluster-2/b"}, "nodes": c2_nodes}))
    observed = {
        "cluster-1": ClusterHealth(
            cluster="cluster-1", agents=[AgentHealth.from_status("p", "a", c1, cluster="cluster-1")]
        ),
        "cluster-2": ClusterHealth(
            cluster="cluster-2", agents=[AgentHealth.from_status("q", "b", c2, cluster="cluster-2")]
        ),
    }
    return health_matrix(observed, {"cluster-1": ["a"], "cluster-2": ["b"]})


def whats(matrix: HealthMatrix) -> list[tuple[str, str, str]]:
    return [(b.src_cluster, b.dst_cluster, b.what) for b in blocked_paths(matrix)]


# ------------------------------------------------------------------------------------- blocked paths


def test_healthy_mesh_has_nothing_blocked() -> None:
    matrix = matrix_where(node_json("cluster-2/b"))
    assert matrix.healthy
    report = firewall_report([], matrix)
    assert report.blocked == [] and report.ok


def test_endpoint_probes_failing_with_host_ok_point_at_vxlan() -> None:
    matrix = matrix_where(node_json("cluster-2/b", endpoint=(TIMEOUT, HTTP_FAIL)))
    (blocked,) = blocked_paths(matrix)
    assert (blocked.src_cluster, blocked.dst_cluster, blocked.what) == (
        "cluster-1",
        "cluster-2",
        UDP_8472_PATH,
    )
    assert blocked.evidence[0] == "cluster-1 agent on a → cluster-2/b: endpoint ICMP: Connection timed out"
    assert not firewall_report([], matrix).ok


def test_host_http_failing_points_at_tcp_4240() -> None:
    assert whats(matrix_where(node_json("cluster-2/b", host=(OK, HTTP_FAIL)))) == [
        ("cluster-1", "cluster-2", TCP_4240_PATH)
    ]


def test_host_icmp_failing_with_http_ok_points_at_icmp() -> None:
    matrix = matrix_where(node_json("cluster-2/b", host=(TIMEOUT, OK)))
    assert whats(matrix) == [("cluster-1", "cluster-2", ICMP_PATH)]
    assert "host ICMP: Connection timed out" in blocked_paths(matrix)[0].evidence[0]


def test_remote_nodes_missing_point_at_the_apiserver_or_configuration() -> None:
    matrix = matrix_where(None)
    (blocked,) = blocked_paths(matrix)
    assert (blocked.src_cluster, blocked.dst_cluster, blocked.what) == (
        "cluster-1",
        "cluster-2",
        APISERVER_PATH,
    )
    assert "TCP 2379" in blocked.what
    assert blocked.evidence == ["agents of cluster-1 do not list 1 node(s) of cluster-2: b"]


def test_every_probe_failing_is_not_blamed_on_one_port() -> None:
    matrix = matrix_where(node_json("cluster-2/b", host=(TIMEOUT, HTTP_FAIL), endpoint=(TIMEOUT, HTTP_FAIL)))
    (blocked,) = blocked_paths(matrix)
    assert "nodes down" in blocked.what


def test_vxlan_failure_mentions_a_missing_return_connection() -> None:
    matrix = matrix_where(node_json("cluster-2/b", endpoint=(TIMEOUT, HTTP_FAIL)), reverse_missing=True)
    assert whats(matrix) == [
        ("cluster-1", "cluster-2", UDP_8472_PATH),
        ("cluster-2", "cluster-1", APISERVER_PATH),
    ]
    vxlan = blocked_paths(matrix)[0]
    assert any("not connected back" in e for e in vxlan.evidence)


def test_table_layout_without_probe_detail_names_both_host_ports() -> None:
    text = """Cluster health:   1/2 reachable   (2024-06-03T10:15:20Z)
Name                    IP          Node   Endpoints
  cluster-1/a (localhost)   10.0.0.2    1/1    1/1
  cluster-2/b               10.0.0.3    0/1    1/1
"""
    c1 = parse_health(text)
    observed = {
        "cluster-1": ClusterHealth(
            cluster="cluster-1", agents=[AgentHealth.from_status("p", "a", c1, cluster="cluster-1")]
        )
    }
    matrix = health_matrix(observed, {"cluster-1": ["a"], "cluster-2": ["b"]})
    assert ("cluster-1", "cluster-2", "TCP 4240 or ICMP") in whats(matrix)


# -------------------------------------------------------------------------------------- firewall rules


def addresses(cluster: str, *ips: str | None) -> list[NodeAddress]:
    return [NodeAddress(cluster=cluster, node=f"{cluster}-n{i}", internal_ip=ip) for i, ip in enumerate(ips)]


def test_rules_cover_every_direction_and_port_between_distinct_clusters() -> None:
    nodes = {
        "c1": addresses("c1", "10.0.0.1", "10.0.0.2"),
        "c2": addresses("c2", "10.1.0.1"),
        "c3": addresses("c3", "fd00::1", None),
    }
    rules = firewall_rules(nodes, {"c1": ("192.0.2.10", 2379), "c2": ("192.0.2.20", 32379)})
    keys = {(r.src_cluster, r.dst_cluster, r.protocol, r.port) for r in rules}
    for src in nodes:
        for dst in nodes:
            if src != dst:
                assert {(src, dst, "udp", 8472), (src, dst, "tcp", 4240), (src, dst, "icmp", None)} <= keys
    assert not any(r.src_cluster == r.dst_cluster for r in rules)
    assert ("c2", "c1", "tcp", 2379) in keys and ("c1", "c2", "tcp", 32379) in keys
    assert not any(r.dst_cluster == "c3" and r.port in (2379, 32379) for r in rules)  # no apiserver known
    vxlan = next(r for r in rules if (r.src_cluster, r.dst_cluster, r.port) == ("c3", "c1", 8472))
    assert vxlan.sources == ["fd00::1/128"]  # the node without an address is left out
    assert vxlan.destinations == ["10.0.0.1/32", "10.0.0.2/32"]
    api = next(r for r in rules if (r.src_cluster, r.dst_cluster, r.port) == ("c1", "c2", 32379))
    assert api.destinations == ["192.0.2.20/32"] and api.sources == ["10.0.0.1/32", "10.0.0.2/32"]
    assert len(rules) == 6 * 3 + 4


def test_an_apiserver_hostname_is_kept_as_a_name() -> None:
    rules = firewall_rules(
        {"a": addresses("a", "10.0.0.1"), "b": addresses("b", "10.0.0.2")}, {"b": ("lb.example.com", 2379)}
    )
    assert [r.destinations for r in rules if r.port == 2379] == [["lb.example.com"]]


def test_rules_table_has_one_readable_row_per_rule() -> None:
    rule = FirewallRule(
        src_cluster="a",
        dst_cluster="b",
        protocol="icmp",
        port=None,
        purpose="echo",
        sources=["10.0.0.1/32"],
        destinations=["10.0.0.2/32", "10.0.0.3/32"],
    )
    assert rules_table([rule]) == [
        {
            "from": "a",
            "to": "b",
            "protocol": "ICMP",
            "port": "echo",
            "sources": "10.0.0.1/32",
            "destinations": "10.0.0.2/32, 10.0.0.3/32",
            "purpose": "echo",
        }
    ]


class NodesOnly:
    def list_nodes(self) -> list[dict[str, Any]]:
        return [
            {"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "Hostname", "address": "n2"}]}},
            {
                "metadata": {"name": "n1"},
                "status": {
                    "addresses": [
                        {"type": "ExternalIP", "address": "203.0.113.1"},
                        {"type": "InternalIP", "address": "10.0.0.1"},
                    ]
                },
            },
        ]


def test_node_addresses_use_the_internal_ip() -> None:
    assert list_node_addresses(NodesOnly(), "c1") == [
        NodeAddress(cluster="c1", node="n1", internal_ip="10.0.0.1"),
        NodeAddress(cluster="c1", node="n2", internal_ip=None),
    ]
