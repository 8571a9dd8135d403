"""The 1.20 line's agent output, as the pipeline's parsers read it, and the 1.20-looking output they refuse.

The fixtures are reconstructed (``tests/fixtures/cilium/README.md`` says from what): cluster-1's agent in a
two-cluster 1.20.0 mesh whose VXLAN port is blocked, so cluster-2's health endpoints time out while its
hosts answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clustermesh.cilium import HealthStatus, parse_health, parse_service_list
from clustermesh.errors import CiliumOutputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cilium"
LOCAL = ["cluster-1/cluster-1-node-0", "cluster-1/cluster-1-node-1"]
REMOTE = ["cluster-2/cluster-2-node-0", "cluster-2/cluster-2-node-1"]
NGINX_BACKENDS = ["172.25.0.10", "172.25.1.11", "172.26.0.30", "172.26.1.31"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def reachability(status: HealthStatus) -> dict[str, bool]:
    return {n.name: n.reachable for n in status.nodes}


# ------------------------------------------------------------------------------------ cilium-health status


@pytest.mark.parametrize(
    "name", ["health-1.20-remote-fail.txt", "health-1.20-remote-fail-verbose.txt", "health-1.20-remote-fail.json"]
)
def test_every_120_health_layout_shows_the_remote_nodes_unreachable(name: str) -> None:
    status = parse_health(fixture(name))
    assert reachability(status) == {**dict.fromkeys(LOCAL, True), **dict.fromkeys(REMOTE, False)}
    assert status.local == LOCAL[0]
    assert status.probe_interval == "1m0s"


def test_the_120_table_counts_the_paths_and_the_summary() -> None:
    status = parse_health(fixture("health-1.20-remote-fail.txt"))
    assert (status.summary_reachable, status.summary_total) == (2, 4) and status.lists_every_node
    remote = {n.name: n.failures for n in status.nodes if n.cluster == "cluster-2"}
    assert remote == dict.fromkeys(REMOTE, ["endpoint: 0/1 paths reachable"])


@pytest.mark.parametrize("name", ["health-1.20-remote-fail-verbose.txt", "health-1.20-remote-fail.json"])
def test_the_120_detail_names_each_failing_probe_of_the_health_endpoint(name: str) -> None:
    status = parse_health(fixture(name))
    node = next(n for n in status.nodes if n.name == REMOTE[0])
    assert node.host_ip == "10.0.2.10" and node.endpoint_ip == "172.26.0.240"
    assert node.failures == [
        "endpoint ICMP: Connection timed out",
        'endpoint HTTP: Get "http://172.26.0.240:4240/hello": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)",
    ]


def test_the_120_json_carries_last_probed_on_every_probe_and_is_read_past_it() -> None:
    doc = json.loads(fixture("health-1.20-remote-fail.json"))
    probes = [
        node[group]["primary-address"][probe]
        for node in doc["nodes"]
        for group in ("host", "health-endpoint")
        for probe in ("icmp", "http")
    ]
    assert probes and all("lastProbed" in p for p in probes)
    assert doc["probeInterval"] == "1m0s"


def test_a_120_verbose_capture_cut_after_three_blocks_is_refused() -> None:
    text = fixture("health-1.20-remote-fail-verbose.txt")
    cut = text[: text.index(f"  {REMOTE[1]}:")]
    with pytest.raises(CiliumOutputError) as info:
        parse_health(cut)
    assert "3 node blocks but 4 nodes known" in str(info.value)


def test_a_120_summary_with_an_unknown_field_is_an_unknown_layout() -> None:
    text = fixture("health-1.20-remote-fail.txt").replace(
        "(Probe interval: 1m0s)", "(Probe interval: 1m0s)   (Mode: x)"
    )
    with pytest.raises(CiliumOutputError) as info:
        parse_health(text)
    assert info.value.line_no == 1 and "unknown layout" in str(info.value)


# ------------------------------------------------------------------------------------ cilium service list


@pytest.mark.parametrize(
    "name", ["service-list-1.20-affinity.txt", "service-list-1.20-affinity.json", "service-list-noid-affinity.txt"]
)
def test_every_120_service_layout_lists_the_global_service_with_its_remote_backends(name: str) -> None:
    services = parse_service_list(fixture(name))
    nginx = next(s for s in services if s.frontend == "10.240.9.11:80")
    assert [b.ip for b in nginx.backends] == NGINX_BACKENDS
    assert nginx.protocol == "TCP" and nginx.type == "ClusterIP" and not nginx.remote
    assert all(b.preferred for b in nginx.backends)  # cilium#43681: every listed backend, on 1.18 to 1.20


def test_the_id_less_table_reads_as_the_same_services_as_the_table_with_ids() -> None:
    with_ids = parse_service_list(fixture("service-list-1.20-affinity.txt"))
    without = parse_service_list(fixture("service-list-noid-affinity.txt"))
    assert all(s.id is not None for s in with_ids) and all(s.id is None for s in without)

    def content(services: list) -> list[tuple[str, str, list[str]]]:
        return sorted((s.frontend, s.type, [b.address for b in s.backends]) for s in services)

    assert content(with_ids) == content(without)


def test_an_id_less_row_under_a_header_with_ids_is_refused() -> None:
    lines = fixture("service-list-1.20-affinity.txt").splitlines()
    lines[1] = re.sub(r"^1    ", "", lines[1])
    with pytest.raises(CiliumOutputError) as info:
        parse_service_list("\n".join(lines) + "\n")
    assert info.value.line_no == 2 and "unreadable service row" in str(info.value)


def test_frontends_printed_as_ip_port_protocol_ids_are_refused_not_guessed() -> None:
    """cilium#29055 (never merged) printed ``10.0.0.2:80:TCP``; such a table must not read as ``no backends``."""
    text = fixture("service-list-noid-affinity.txt").replace("0.0.0.0:32379/TCP ", "0.0.0.0:32379:TCP ")
    with pytest.raises(CiliumOutputError) as info:
        parse_service_list(text)
    assert info.value.line_no == 2 and "'0.0.0.0:32379:TCP' is not ip:port" in str(info.value)


def test_a_table_with_a_new_column_is_an_unknown_layout() -> None:
    text = fixture("service-list-1.20-affinity.txt").replace("Backend ", "Backend   Zone", 1)
    with pytest.raises(CiliumOutputError) as info:
        parse_service_list(text)
    assert info.value.line_no == 1 and "no table header" in str(info.value)
