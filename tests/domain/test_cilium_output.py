"""Pins down how Cilium agent output of every version 1.13+ is read, and how bad output is refused."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clustermesh.cilium import (
    Backend,
    HealthStatus,
    Service,
    parse_health,
    parse_service_list,
)
from clustermesh.errors import CiliumOutputError, ClusterMeshError


def _find_fixtures() -> Path | None:
    """CI checks the repo out in a fresh folder with `shared/` beside it: walk up until it shows."""
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "fixtures" / "cilium"
        if candidate.is_dir():
            return candidate
    return None


FIXTURES = _find_fixtures()
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="shared/fixtures/cilium not found above tests/")


def fixture(name: str) -> str:
    assert FIXTURES is not None
    return (FIXTURES / name).read_text(encoding="utf-8")


def by_name(status: HealthStatus) -> dict[str, tuple[bool, list[str]]]:
    return {n.name: (n.reachable, n.failures) for n in status.nodes}


C1 = "cluster-1/f5m2nzcb4z-worker-p7m58g-7f44796457-wv5fq"
C2 = "cluster-2/qqkp9pksmb-worker-cn24gj-5d55cc7b65-tmz9w"
K1 = "kubernetes/ip-172-31-45-174"
K2 = "kubernetes/ip-172-31-38-56"
K2_FAILURES = [
    'host HTTP: Get "http://172.31.38.56:4240/hello": context deadline exceeded '
    "(Client.Timeout exceeded while awaiting headers)",
    "endpoint ICMP: Connection timed out",
    'endpoint HTTP: Get "http://10.0.0.13:4240/hello": context deadline exceeded '
    "(Client.Timeout exceeded while awaiting headers)",
]


# ------------------------------------------------------------------------------------ health fixtures


@needs_fixtures
def test_healthy_113_mesh_lists_both_clusters_reachable_with_local_node_first() -> None:
    status = parse_health(fixture("health-1.13-ok.txt"))

    assert status.timestamp == datetime(2022, 12, 7, 9, 31, 12, tzinfo=UTC)
    assert status.local == C1
    assert [n.name for n in status.nodes] == [C1, C2]
    first, second = status.nodes
    assert (first.cluster, first.node, first.local) == (
        "cluster-1",
        "f5m2nzcb4z-worker-p7m58g-7f44796457-wv5fq",
        True,
    )
    assert (second.cluster, second.local) == ("cluster-2", False)
    assert (first.host_ip, first.endpoint_ip) == ("10.0.0.2", "172.25.0.235")
    assert (second.host_ip, second.endpoint_ip) == ("10.0.0.3", "172.26.0.240")
    assert all(n.reachable and n.failures == [] for n in status.nodes)
    assert status.summary_total is None and status.lists_every_node


@needs_fixtures
def test_115_text_names_each_failing_probe_with_its_error() -> None:
    status = parse_health(fixture("health-1.15-remote-fail.txt"))

    assert status.local == K1
    assert by_name(status) == {K1: (True, []), K2: (False, K2_FAILURES)}
    remote = status.nodes[1]
    assert (remote.cluster, remote.node, remote.host_ip, remote.endpoint_ip) == (
        "kubernetes",
        "ip-172-31-38-56",
        "172.31.38.56",
        "10.0.0.13",
    )


@needs_fixtures
def test_115_json_reads_exactly_like_its_text_twin() -> None:
    from_json = parse_health(fixture("health-1.15-remote-fail.json"))

    assert from_json == parse_health(fixture("health-1.15-remote-fail.txt"))
    assert from_json.timestamp == datetime(2024, 4, 27, 12, 35, 22, tzinfo=UTC)
    assert [n.local for n in from_json.nodes] == [True, False]


@needs_fixtures
def test_117_table_counts_mark_node_with_unreachable_endpoint() -> None:
    status = parse_health(fixture("health-1.17-remote-fail.txt"))

    assert (status.summary_reachable, status.summary_total) == (1, 2)
    assert status.timestamp == datetime(2024, 6, 3, 10, 15, 20, tzinfo=UTC)
    assert status.local == C1
    assert by_name(status) == {C1: (True, []), C2: (False, ["endpoint: 0/1 paths reachable"])}
    assert [n.host_ip for n in status.nodes] == ["10.0.0.2", "10.0.0.3"]
    assert [n.endpoint_ip for n in status.nodes] == [None, None]
    assert status.probe_interval is None and status.lists_every_node


# ---------------------------------------------------------------------------------- health synthetic

SUCCINCT_116 = """\
Cluster health:   1/3 reachable   (2024-06-03T10:15:20Z)
  Name                  IP         Node          Endpoints
  cluster-2/node-b      10.0.0.3   reachable     unreachable
  cluster-2/node-c      10.0.0.4   unknown       reachable
"""


def test_succinct_layout_lists_only_unhealthy_nodes_and_says_so() -> None:
    status = parse_health(SUCCINCT_116)

    assert by_name(status) == {
        "cluster-2/node-b": (False, ["endpoint: unreachable"]),
        "cluster-2/node-c": (False, ["host: unknown"]),
    }
    assert (status.summary_reachable, status.summary_total) == (1, 3)
    assert not status.lists_every_node
    assert status.local is None


def test_succinct_summary_alone_means_every_node_reachable() -> None:
    status = parse_health("Cluster health:   3/3 reachable   (2024-06-03T10:15:20Z)\n")

    assert status.nodes == []
    assert (status.summary_reachable, status.summary_total) == (3, 3)
    assert not status.lists_every_node


def test_old_succinct_true_false_columns() -> None:
    text = (
        "Cluster health:\t1/2 reachable\t(2023-01-01T00:00:00Z)\n"
        "  Name\tIP\tReachable\tEndpoints reachable\n"
        "  node-a (localhost)   10.0.0.2   true    true\n"
        "  node-b               10.0.0.3   false   true\n"
    )
    status = parse_health(text)

    assert by_name(status) == {"node-a": (True, []), "node-b": (False, ["host: unreachable"])}
    assert status.local == "node-a"
    assert (status.nodes[0].cluster, status.nodes[0].node) == (None, "node-a")


def test_118_table_reads_probe_interval() -> None:
    text = (
        "Cluster health:      2/2 reachable   (2025-07-01T08:00:00Z)   (Probe interval: 1m47.5s)\n"
        "Name                         IP          Node   Endpoints\n"
        "  cluster-1/node-a (localhost)   10.0.0.2    2/2    1/1\n"
        "  cluster-2/node-b               10.0.0.3    2/2    1/1\n"
    )
    status = parse_health(text)

    assert status.probe_interval == "1m47.5s"
    assert status.timestamp == datetime(2025, 7, 1, 8, tzinfo=UTC)
    assert by_name(status) == {"cluster-1/node-a": (True, []), "cluster-2/node-b": (True, [])}


def test_117_unknown_paths_are_not_reachable() -> None:
    text = (
        "Cluster health:   2/2 reachable   (2024-06-03T10:15:20Z)\n"
        "Name   IP   Node   Endpoints\n"
        "  cluster-1/node-a (localhost)   10.0.0.2   1/1   1/1\n"
        "  cluster-2/node-b   10.0.0.3   0/1 (1 unknown)   1/1\n"
    )
    status = parse_health(text)

    assert by_name(status)["cluster-2/node-b"] == (False, ["host: 0/1 paths reachable (1 unknown)"])


def test_verbose_116_reads_secondary_addresses_and_nil_endpoint() -> None:
    text = (
        "Probe time:   2024-01-01T00:00:00.123456789Z\n"
        "Nodes:\n"
        "  cluster-1/node-a (localhost):\n"
        "    Host connectivity to 10.0.0.2:\n"
        "      ICMP to stack:   OK, RTT=100µs\n"
        "      HTTP to agent:   OK, RTT=200µs\n"
        "      Secondary connectivity to 192.168.0.2:\n"
        "        ICMP to stack:   Connection refused\n"
        "        HTTP to agent:   OK, RTT=1ms\n"
        "    Endpoint connectivity:   nil\n"
        "  cluster-2/node-b:\n"
        "    Host connectivity to 10.0.0.3:\n"
        "      ICMP to stack:   OK, RTT=1ms\n"
        "      HTTP to agent:   OK, RTT=2ms\n"
        "    Endpoint connectivity to 172.26.0.240:\n"
        "      ICMP to stack:   OK, RTT=1ms\n"
        "      HTTP to agent:   OK, RTT=2ms\n"
    )
    status = parse_health(text)

    assert status.timestamp == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert by_name(status) == {
        "cluster-1/node-a": (False, ["host secondary 192.168.0.2 ICMP: Connection refused"]),
        "cluster-2/node-b": (True, []),
    }
    assert status.nodes[0].endpoint_ip is None


# ------------------------------------------------------------------ health: 1.17+ `--verbose` layout
# One agent (cluster-1/node-a) of a 2-cluster mesh, answered by the sandbox's port of Cilium's
# `FormatHealthStatusResponse` (sandbox/cilium_cli.py) without and with `--verbose`: node-b has no
# health endpoint yet, node-c's endpoint probes fail, node-d's host HTTP probe has no result.

TABLE_117 = """\
Cluster health:                  3/4 reachable   (2025-07-01T08:00:00Z)
Name                             IP              Node              Endpoints
  cluster-1/node-a (localhost)   10.0.0.2        1/1               1/1
  cluster-1/node-b               10.0.0.4        1/1               0/0
  cluster-2/node-c               10.0.0.3        1/1               0/1
  cluster-2/node-d               10.0.0.5        0/1 (1 unknown)   1/1
"""


VERBOSE_117 = """\
Cluster health:   3/4 reachable   (2025-07-01T08:00:00Z)
Name              IP              Node   Endpoints
  cluster-1/node-a (localhost):
    Host connectivity to 10.0.0.2:
      ICMP to stack:   OK, RTT=585.908µs
      HTTP to agent:   OK, RTT=386.343µs
    Endpoint connectivity to 172.25.0.235:
      ICMP to stack:   OK, RTT=563.934µs
      HTTP to agent:   OK, RTT=684.559µs
  cluster-1/node-b:
    Host connectivity to 10.0.0.4:
      ICMP to stack:         OK, RTT=785.908µs
      HTTP to agent:         OK, RTT=486.343µs
    Endpoint connectivity:   nil
  cluster-2/node-c:
    Host connectivity to 10.0.0.3:
      ICMP to stack:   OK, RTT=1.585908ms
      HTTP to agent:   OK, RTT=2.386343ms
    Endpoint connectivity to 172.26.0.240:
      ICMP to stack:   Connection timed out
      HTTP to agent:   Get "http://172.26.0.240:4240/hello": context deadline exceeded
  cluster-2/node-d:
    Host connectivity to 10.0.0.5:
      ICMP to stack:   OK, RTT=1.585908ms
    Endpoint connectivity to 172.26.1.240:
      ICMP to stack:   OK, RTT=1.563934ms
      HTTP to agent:   OK, RTT=1.684559ms
"""


TABLE_118 = """\
Cluster health:                  3/4 reachable   (2025-07-01T08:00:00Z)   (Probe interval: 1m47.5s)
Name                             IP              Node                     Endpoints
  cluster-1/node-a (localhost)   10.0.0.2        1/1                      1/1
  cluster-1/node-b               10.0.0.4        1/1                      0/0
  cluster-2/node-c               10.0.0.3        1/1                      0/1
  cluster-2/node-d               10.0.0.5        0/1 (1 unknown)          1/1
"""


VERBOSE_118 = """\
Cluster health:   3/4 reachable   (2025-07-01T08:00:00Z)   (Probe interval: 1m47.5s)
Name              IP              Node                     Endpoints
  cluster-1/node-a (localhost):
    Host connectivity to 10.0.0.2:
      ICMP to stack:   OK, RTT=585.908µs   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:   OK, RTT=386.343µs   (Last probed: 2025-07-01T07:59:58Z)
    Endpoint connectivity to 172.25.0.235:
      ICMP to stack:   OK, RTT=563.934µs   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:   OK, RTT=684.559µs   (Last probed: 2025-07-01T07:59:58Z)
  cluster-1/node-b:
    Host connectivity to 10.0.0.4:
      ICMP to stack:         OK, RTT=785.908µs   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:         OK, RTT=486.343µs   (Last probed: 2025-07-01T07:59:58Z)
    Endpoint connectivity:   nil
  cluster-2/node-c:
    Host connectivity to 10.0.0.3:
      ICMP to stack:   OK, RTT=1.585908ms   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:   OK, RTT=2.386343ms   (Last probed: 2025-07-01T07:59:58Z)
    Endpoint connectivity to 172.26.0.240:
      ICMP to stack:   Connection timed out   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:   OK, RTT=3.386343ms     (Last probed: 2025-07-01T07:59:58Z)
  cluster-2/node-d:
    Host connectivity to 10.0.0.5:
      ICMP to stack:   OK, RTT=1.585908ms   (Last probed: 2025-07-01T07:59:58Z)
    Endpoint connectivity to 172.26.1.240:
      ICMP to stack:   OK, RTT=1.563934ms   (Last probed: 2025-07-01T07:59:58Z)
      HTTP to agent:   OK, RTT=1.684559ms   (Last probed: 2025-07-01T07:59:58Z)
"""


def summary_of(status: HealthStatus) -> list[tuple[str, bool, bool, str | None]]:
    """What both layouts of one agent state about each node: name, reachable, local, host IP."""
    return [(n.name, n.reachable, n.local, n.host_ip) for n in status.nodes]


VERBOSE_NODES = [
    ("cluster-1/node-a", True, True, "10.0.0.2"),
    ("cluster-1/node-b", True, False, "10.0.0.4"),
    ("cluster-2/node-c", False, False, "10.0.0.3"),
    ("cluster-2/node-d", False, False, "10.0.0.5"),
]


@pytest.mark.parametrize(
    ("table", "verbose"), [(TABLE_117, VERBOSE_117), (TABLE_118, VERBOSE_118)], ids=["1.17", "1.18"]
)
def test_verbose_117_layout_reads_like_the_table_of_the_same_agent(table: str, verbose: str) -> None:
    from_table, from_verbose = parse_health(table), parse_health(verbose)

    assert summary_of(from_verbose) == summary_of(from_table) == VERBOSE_NODES
    for status in (from_table, from_verbose):
        assert (status.summary_reachable, status.summary_total) == (3, 4)
        assert status.local == "cluster-1/node-a" and status.lists_every_node
        assert status.timestamp == datetime(2025, 7, 1, 8, tzinfo=UTC)
    assert from_verbose.probe_interval == from_table.probe_interval
    # only the blocks name the health endpoints and say which probe failed how
    assert [n.endpoint_ip for n in from_table.nodes] == [None] * 4
    assert [n.endpoint_ip for n in from_verbose.nodes] == ["172.25.0.235", None, "172.26.0.240", "172.26.1.240"]


def test_verbose_117_names_each_failing_probe() -> None:
    status = by_name(parse_health(VERBOSE_117))

    assert status["cluster-2/node-c"] == (
        False,
        [
            "endpoint ICMP: Connection timed out",
            'endpoint HTTP: Get "http://172.26.0.240:4240/hello": context deadline exceeded',
        ],
    )
    assert status["cluster-2/node-d"] == (False, ["host HTTP: no result (unknown)"])
    assert status["cluster-1/node-b"] == (True, [])


def test_verbose_118_strips_last_probed_and_reads_probe_interval() -> None:
    status = parse_health(VERBOSE_118)

    assert status.probe_interval == "1m47.5s"
    assert by_name(status)["cluster-2/node-c"] == (False, ["endpoint ICMP: Connection timed out"])


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize("verbose", [VERBOSE_117, VERBOSE_118], ids=["1.17", "1.18"])
def test_every_truncation_of_the_verbose_layout_is_refused_or_reports_no_false_reachable(verbose: str) -> None:
    """Cut after any line: an error, or (cut inside a node's last path) that node is not reachable."""
    lines = _lines(verbose)
    whole = parse_health(verbose)
    for cut in range(1, len(lines)):
        text = "".join(lines[:cut])
        try:
            status = parse_health(text)
        except CiliumOutputError:
            continue
        assert len(status.nodes) == len(whole.nodes), cut
        assert [n.reachable for n in status.nodes] <= [n.reachable for n in whole.nodes], cut
        assert not status.nodes[-1].reachable, cut  # the last node's results are missing


@pytest.mark.parametrize(
    ("cut_after", "problem"),
    [
        ("Node   Endpoints\n", "table header without rows"),
        ("      HTTP to agent:   OK, RTT=684.559µs\n", "1 node blocks but 4 nodes known"),
        ("    Host connectivity to 10.0.0.4:\n      ICMP to stack:         OK, RTT=785.908µs\n", "endpoint line"),
    ],
)
def test_truncated_verbose_layout_is_refused(cut_after: str, problem: str) -> None:
    head = VERBOSE_117[: VERBOSE_117.index(cut_after) + len(cut_after)]

    assert problem in str(raises(parse_health, head))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # blocks without the header: no layout of any version
        ("Cluster health:   1/1 reachable   (2024-01-01T00:00:00Z)\n  a (localhost):\n", "without header"),
        # rows and blocks together: no layout of any version
        (
            "Cluster health:   1/1 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\n"
            "  a (localhost)   10.0.0.2   1/1   1/1\n  a (localhost):\n",
            "after table rows",
        ),
        (
            "Cluster health:   1/1 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\nNodes:\n",
            "`Nodes:` out of place",
        ),
        # the summary says node-a is unreachable, the block shows every probe OK
        (
            "Cluster health:   0/1 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\n"
            "  a (localhost):\n    Host connectivity to 10.0.0.2:\n      ICMP to stack:   OK, RTT=1ms\n"
            "      HTTP to agent:   OK, RTT=1ms\n    Endpoint connectivity:   nil\n",
            "summary 0/1",
        ),
        # the summary says node-a is reachable, its block shows a failed probe
        (
            "Cluster health:   1/1 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\n"
            "  a (localhost):\n    Host connectivity to 10.0.0.2:\n      ICMP to stack:   Connection refused\n"
            "      HTTP to agent:   OK, RTT=1ms\n    Endpoint connectivity:   nil\n",
            "summary 1/1",
        ),
        (
            "Cluster health:   1/1 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\n"
            "  a (localhost):\n    Host connectivity to 10.0.0.2:\n      Route to stack:   OK\n",
            "unknown line",
        ),
    ],
)
def test_unknown_verbose_layouts_are_refused(text: str, problem: str) -> None:
    assert problem in str(raises(parse_health, text))


def test_missing_probe_result_counts_as_unreachable() -> None:
    text = "Probe time:   2024-01-01T00:00:00Z\nNodes:\n  node-a (localhost):\n    Host connectivity to 10.0.0.2:\n"
    status = parse_health(text)

    assert by_name(status) == {"node-a": (False, ["host ICMP: no result (unknown)", "host HTTP: no result (unknown)"])}


def test_health_json_118_reads_probe_interval_and_unknown_probes() -> None:
    text = """{
  "local": {"name": "cluster-1/node-a"},
  "probeInterval": "1m0s",
  "timestamp": "2025-07-01T08:00:00.5Z",
  "nodes": [
    {"name": "cluster-1/node-a",
     "host": {"primary-address": {"ip": "fd00::2", "icmp": {"latency": 1, "lastProbed": "x"},
                                  "http": {"latency": 2}}, "secondary-addresses": null}},
    {"name": "cluster-2/node-b",
     "host": {"primary-address": {"ip": "10.0.0.3", "icmp": {"latency": 1}, "http": {"latency": 2}},
              "secondary-addresses": [{"ip": "192.168.1.3", "icmp": {"status": "Host unreachable"},
                                       "http": {"latency": 5}}]},
     "health-endpoint": {"primary-address": {"ip": "172.26.0.240", "icmp": {"latency": 1}}}}
  ]
}"""
    status = parse_health(text)

    assert status.probe_interval == "1m0s"
    assert status.local == "cluster-1/node-a"
    assert status.nodes[0].host_ip == "fd00::2" and status.nodes[0].reachable
    assert by_name(status)["cluster-2/node-b"] == (
        False,
        ["host secondary 192.168.1.3 ICMP: Host unreachable", "endpoint HTTP: no result (unknown)"],
    )


def test_health_json_without_host_is_not_reachable() -> None:
    status = parse_health('{"nodes": [{"name": "node-a"}]}')

    assert by_name(status) == {"node-a": (False, ["host: no result (unknown)"])}
    assert status.local is None and status.timestamp is None


# ------------------------------------------------------------------------------------ service fixtures


def backends(service: Service) -> list[tuple[str, str, bool]]:
    return [(b.address, b.state, b.preferred) for b in service.backends]


@needs_fixtures
def test_113_affinity_marks_the_two_local_backends_preferred() -> None:
    services = parse_service_list(fixture("service-list-1.13-affinity.txt"))

    assert len(services) == 1
    svc = services[0]
    assert (svc.id, svc.frontend, svc.protocol, svc.type, svc.remote) == (
        16,
        "10.240.27.208:80",
        None,
        "ClusterIP",
        False,
    )
    assert (svc.name, svc.namespace) == (None, None)
    assert backends(svc) == [
        ("172.25.0.160:80", "active", True),
        ("172.25.0.12:80", "active", True),
        ("172.26.0.31:80", "active", False),
        ("172.26.0.196:80", "active", False),
    ]
    assert svc.backends[0] == Backend(
        address="172.25.0.160:80",
        ip="172.25.0.160",
        port=80,
        protocol=None,
        state="active",
        preferred=True,
        node_name=None,
    )


@needs_fixtures
def test_113_scaled_to_zero_keeps_only_remote_backends() -> None:
    (svc,) = parse_service_list(fixture("service-list-1.13-affinity-local-scaled-to-zero.txt"))

    assert backends(svc) == [("172.26.0.31:80", "active", False), ("172.26.0.196:80", "active", False)]


@needs_fixtures
def test_117_table_reads_protocols_split_rows_and_remote_preference() -> None:
    services = parse_service_list(fixture("service-list-1.17-affinity.txt"))

    assert [s.id for s in services] == list(range(1, 14))
    assert sum(len(s.backends) for s in services) == 19
    dns = [(s.frontend, s.protocol) for s in services if s.frontend.startswith("10.2.0.10:")]
    assert dns == [("10.2.0.10:53", "UDP"), ("10.2.0.10:53", "TCP"), ("10.2.0.10:9153", "TCP")]
    assert {s.type for s in services} == {"ClusterIP", "NodePort"}
    assert services[7].frontend == "0.0.0.0:32379" and services[7].backends[0].address == "10.0.1.234:2379"
    assert [(b.address, b.protocol, b.preferred) for b in services[12].backends] == [
        ("10.1.1.2:80", "TCP", True),
        ("10.1.1.221:80", "TCP", True),
        ("10.0.1.171:80", "TCP", False),
        ("10.0.1.46:80", "TCP", False),
    ]
    assert services[2].backends[1].protocol == "UDP"


@needs_fixtures
def test_116_json_carries_names_node_names_and_no_protocol() -> None:
    services = parse_service_list(fixture("service-list-1.16-affinity.json"))

    assert [(s.id, s.frontend, s.type, s.protocol) for s in services] == [
        (16, "10.240.27.208:80", "ClusterIP", None),
        (17, "192.0.2.10:80", "LoadBalancer", None),
    ]
    assert all((s.name, s.namespace, s.remote) == ("nginx-deployment", "default", False) for s in services)
    assert [(b.address, b.preferred, b.node_name) for b in services[0].backends] == [
        ("172.25.0.160:80", True, "f5m2nzcb4z-worker-p7m58g-7f44796457-wv5fq"),
        ("172.25.0.12:80", True, "f5m2nzcb4z-worker-p7m58g-7f44796457-x2b9q"),
        ("172.26.0.31:80", False, None),
        ("172.26.0.196:80", False, None),
    ]


@needs_fixtures
def test_116_json_and_113_text_agree_on_the_same_service() -> None:
    (text_svc,) = parse_service_list(fixture("service-list-1.13-affinity.txt"))
    json_svc = parse_service_list(fixture("service-list-1.16-affinity.json"))[0]

    assert backends(text_svc) == backends(json_svc)
    assert (text_svc.id, text_svc.frontend, text_svc.type) == (json_svc.id, json_svc.frontend, json_svc.type)


@needs_fixtures
def test_118_json_keeps_order_and_marks_every_backend_preferred() -> None:
    services = parse_service_list(fixture("service-list-1.18.json"))

    assert [s.id for s in services] == [1, 5, 7, 6, 13, 12, 11, 14]
    assert [(s.frontend, s.protocol) for s in services[1:4]] == [
        ("10.96.0.10:53", "TCP"),
        ("10.96.0.10:53", "UDP"),
        ("10.96.0.10:9153", "TCP"),
    ]
    every = [b for s in services for b in s.backends]
    assert len(every) == 11 and all(b.preferred for b in every)
    api = services[0]
    assert (api.name, api.namespace, api.backends[0].address, api.backends[0].node_name) == (
        "kubernetes",
        "default",
        "91.217.196.189:6443",
        None,
    )
    assert services[1].backends[1].node_name == "k8s-worker-n1"


# ---------------------------------------------------------------------------------- service synthetic


def test_header_only_table_is_the_one_legitimate_empty_result() -> None:
    assert parse_service_list("ID   Frontend   Service Type   Backend   \n") == []
    assert parse_service_list("[]\n") == []


def test_remote_type_empty_backend_and_ipv6_rows() -> None:
    text = (
        "ID   Frontend              Service Type         Backend                                \t\n"
        "21   10.240.0.9:443/TCP    ClusterIP (Remote)   1 => 172.26.0.9:8443/TCP (terminating)   \n"
        "22   10.240.0.10:80/TCP    NodePort                                                     \n"
        "23   [fd00::10]:80/TCP     ClusterIP            1 => [fd00:0:0::1]:8080/TCP (active)    \n"
        "                                                3 => [fd00::2]:8080/TCP (quarantined) (preferred)\n"
    )
    remote, empty, v6 = parse_service_list(text)

    assert (remote.type, remote.remote, remote.protocol) == ("ClusterIP", True, "TCP")
    assert backends(remote) == [("172.26.0.9:8443", "terminating", False)]
    assert (empty.id, empty.type, empty.backends) == (22, "NodePort", [])
    assert v6.frontend == "[fd00::10]:80"
    assert [(b.address, b.ip, b.port, b.state, b.preferred) for b in v6.backends] == [
        ("[fd00::1]:8080", "fd00::1", 8080, "active", False),
        ("[fd00::2]:8080", "fd00::2", 8080, "quarantined", True),
    ]


def test_trailing_padding_does_not_change_the_result() -> None:
    padded = (
        "ID   Frontend        Service Type   Backend     \n"
        "5    10.0.0.1:80     ClusterIP      1 => 10.1.0.1:80 (active)   \n"
    )
    stripped = "\n".join(line.rstrip() for line in padded.splitlines())

    assert parse_service_list(padded) == parse_service_list(stripped)


def test_120_table_without_id_column() -> None:
    text = (
        "Frontend           Service Type   Backend   \n"
        "10.0.0.1:80/TCP    ClusterIP      1 => 10.1.0.1:80/TCP (active)   \n"
    )
    (svc,) = parse_service_list(text)

    assert (svc.id, svc.frontend, svc.protocol) == (None, "10.0.0.1:80", "TCP")


def test_json_cluster_flag_means_remote_and_realized_state_wins() -> None:
    text = """[{"spec": {"id": 3, "flags": {"type": "ClusterIP", "cluster": "cluster-2"},
                 "frontend-address": {"ip": "10.0.0.1", "port": 80}, "backend-addresses": []},
       "status": {"realized": {"id": 3, "frontend-address": {"ip": "10.0.0.1", "port": 80},
                               "backend-addresses": [{"ip": "10.1.0.1", "port": 80}]}}}]"""
    (svc,) = parse_service_list(text)

    assert svc.remote is True
    assert [(b.address, b.state, b.preferred) for b in svc.backends] == [("10.1.0.1:80", "active", False)]


# ----------------------------------------------------------------------------------------- errors


def raises(parse: object, text: str) -> CiliumOutputError:
    assert callable(parse)
    with pytest.raises(CiliumOutputError) as info:
        parse(text)
    return info.value


@pytest.mark.parametrize("text", ["", "   \n\n\t\n"])
@pytest.mark.parametrize("parse", [parse_health, parse_service_list])
def test_empty_output_is_an_error_not_an_empty_result(parse: object, text: str) -> None:
    err = raises(parse, text)

    assert "empty output" in str(err)
    assert isinstance(err, ClusterMeshError)


def test_header_less_service_table_is_refused_naming_the_line() -> None:
    err = raises(parse_service_list, "16   10.240.27.208:80   ClusterIP   1 => 172.25.0.160:80 (active)\n")

    assert err.command == "cilium service list" and err.line_no == 1
    assert "10.240.27.208:80" in (err.line or "")
    assert "expected `ID  Frontend  Service Type  Backend`" in str(err)


def test_unknown_health_layout_is_refused() -> None:
    err = raises(parse_health, "Error: cannot connect to cilium-health socket\n")

    assert err.command == "cilium-health status" and err.line_no == 1
    assert "unknown layout" in str(err)


def test_service_table_errors_name_line_number_and_cut_long_lines() -> None:
    long_line = "17   10.0.0.1:80   ClusterIP   1 => nonsense (active)" + " x" * 200
    err = raises(parse_service_list, "ID   Frontend   Service Type   Backend\n" + long_line + "\n")

    assert err.line_no == 2
    assert err.line is not None and len(err.line) == 120 and err.line.endswith("…")
    assert "line 2" in str(err)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ID Frontend Service Type Backend\n   1 => 10.0.0.1:80 (active)\n", "backend before any service"),
        (
            "ID Frontend Service Type Backend\n1 10.0.0.1:80 ClusterIP 2 => 10.0.0.2:80 (active)\n"
            "   2 => 10.0.0.3:80 (active)\n",
            "backend 2 after backend 2",
        ),
        ("ID Frontend Service Type Backend\n1 10.0.0.1:99999 ClusterIP\n", "is not ip:port"),
        (
            "ID Frontend Service Type Backend\n1 10.0.0.1:80 ClusterIP 1 => 300.0.0.2:80 (active)\n",
            "is not ip:port",
        ),
        ("ID Frontend Service Type Backend\n1 10.0.0.1:80\n", "unreadable service row"),
    ],
)
def test_broken_service_rows_are_refused(text: str, problem: str) -> None:
    assert problem in str(raises(parse_service_list, text))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Probe time:   yesterday\nNodes:\n", "unreadable time"),
        ("Probe time:   2024-01-01T00:00:00Z\nNodes:\n", "no node blocks"),
        ("Cluster health:   1/2 reachable   (2024-01-01T00:00:00Z)\n", "none listed"),
        (
            "Cluster health:   1/2 reachable   (2024-01-01T00:00:00Z)\nName IP Node Endpoints\n",
            "without rows",
        ),
        ("Cluster health:   3/2 reachable   (2024-01-01T00:00:00Z)\n", "more nodes reachable"),
        (
            "Cluster health:   1/2 reachable   (2024-01-01T00:00:00Z)\n  node-a   10.0.0.1   1/1   1/1\n",
            "unknown line",
        ),
        ("Probe time:   2024-01-01T00:00:00Z\nNodes:\n  a:\n  a:\n", "two blocks"),
        (
            "Probe time:   2024-01-01T00:00:00Z\nNodes:\n  a (localhost):\n  b (localhost):\n",
            "two nodes marked",
        ),
        ("Nodes:\n  a:\n    Host connectivity to banana:\n", "not an IP"),
        ("Nodes:\n  a:\n      ICMP to stack:   OK, RTT=1ms\n", "outside a path"),
    ],
)
def test_broken_health_text_is_refused(text: str, problem: str) -> None:
    assert problem in str(raises(parse_health, text))


def test_truncated_json_is_refused_with_its_line() -> None:
    text = '[\n  {"spec": {"id": 1,\n'
    err = raises(parse_service_list, text)

    assert err.line_no == 3
    assert "truncated JSON" in str(err)


@pytest.mark.parametrize(
    ("parse", "text", "where"),
    [
        (parse_service_list, '[{"spec": {"id": 1}}]', "[0].spec.frontend-address"),
        (
            parse_service_list,
            '[{"spec": {"id": "1", "flags": {"type": "ClusterIP"}, '
            '"frontend-address": {"ip": "10.0.0.1", "port": 80}}}]',
            "[0].spec.id",
        ),
        (
            parse_service_list,
            '[{"spec": {"flags": {"type": "ClusterIP"}, "frontend-address": '
            '{"ip": "10.0.0.1", "port": 80}, "backend-addresses": [{"ip": "10.0.0.2", "port": true}]}}]',
            "[0].spec.backend-addresses[0].port",
        ),
        (parse_health, '{"nodes": []}', "nodes"),
        (parse_health, '{"local": {"name": "a"}}', "top level"),
        (
            parse_health,
            '{"nodes": [{"name": "a", "host": {"primary-address": {"ip": 5}}}]}',
            "nodes[0].host.primary-address.ip",
        ),
    ],
)
def test_json_of_the_wrong_shape_names_the_json_path(parse: object, text: str, where: str) -> None:
    err = raises(parse, text)

    assert err.json_path == where
    assert where in str(err)


def test_json_array_fed_to_health_and_object_fed_to_services_are_refused() -> None:
    assert "unknown layout" in str(raises(parse_health, "[]"))
    assert "no table header" in str(raises(parse_service_list, '{"nodes": []}'))


def test_deeply_nested_json_is_a_parse_error_not_a_crash() -> None:
    err = raises(parse_service_list, "[" * 100_000)

    assert "JSON" in str(err)


def test_error_survives_pickling_with_all_details() -> None:
    err = raises(parse_service_list, "ID Frontend Service Type Backend\nbogus\n")
    copy = pickle.loads(pickle.dumps(err))

    assert isinstance(copy, CiliumOutputError)
    assert (copy.command, copy.line_no, copy.line, str(copy)) == (
        err.command,
        err.line_no,
        err.line,
        str(err),
    )
