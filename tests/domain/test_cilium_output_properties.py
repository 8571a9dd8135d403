"""Properties of the Cilium output parsers: garbage is refused cleanly, generated tables read back exactly."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustermesh.cilium import (
    Backend,
    HealthStatus,
    Service,
    parse_health,
    parse_service_list,
)
from clustermesh.errors import CiliumOutputError

# Moderate counts: CI has two cores; no deadline, since timing is not what these tests pin down.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _find_fixtures() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "fixtures" / "cilium"
        if candidate.is_dir():
            return candidate
    return None


FIXTURES = _find_fixtures()
FIXTURE_TEXTS: dict[str, str] = (
    {}
    if FIXTURES is None
    else {p.name: p.read_text(encoding="utf-8") for p in sorted(FIXTURES.iterdir()) if p.name != "README.md"}
)
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="shared/fixtures/cilium not found above tests/")


# ----------------------------------------------------------------------------------- consistency


def _is_ip(text: str | None) -> bool:
    if text is None:
        return True
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def assert_consistent_health(status: HealthStatus) -> None:
    names = [n.name for n in status.nodes]
    assert len(names) == len(set(names))
    local_nodes = [n.name for n in status.nodes if n.local]
    assert len(local_nodes) <= 1
    if local_nodes:
        assert status.local == local_nodes[0]
    for node in status.nodes:
        assert node.name and "(localhost)" not in node.name
        assert node.reachable == (not node.failures)
        assert node.name == (node.node if node.cluster is None else f"{node.cluster}/{node.node}")
        assert _is_ip(node.host_ip) and _is_ip(node.endpoint_ip)
    if status.summary_total is not None:
        assert status.summary_reachable is not None
        assert status.summary_reachable <= status.summary_total
        assert len(status.nodes) <= status.summary_total


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def assert_consistent_services(services: list[Service]) -> None:
    for svc in services:
        assert "/" not in svc.frontend and "(Remote)" not in svc.type
        for be in svc.backends:
            assert 0 <= be.port <= 65535 and _is_ip(be.ip)
            assert be.address == _host_port(be.ip, be.port)


def parse_or_refuse(text: str) -> None:
    """Each parser either returns a consistent result or raises CiliumOutputError, nothing else."""
    with contextlib.suppress(CiliumOutputError):
        assert_consistent_health(parse_health(text))
    with contextlib.suppress(CiliumOutputError):
        assert_consistent_services(parse_service_list(text))


# -------------------------------------------------------------------------------------- fuzzing

FORMAT_WORDS = [
    "Probe time:",
    "Nodes:",
    "Cluster health:",
    "reachable",
    "(localhost)",
    "Host connectivity to",
    "Endpoint connectivity to",
    "Secondary connectivity to",
    "ICMP to stack:",
    "HTTP to agent:",
    "OK, RTT=1ms",
    "(Last probed: x)",
    "(Probe interval: 1m)",
    "ID",
    "Frontend",
    "Service Type",
    "Backend",
    "=>",
    "(active)",
    "(preferred)",
    "(Remote)",
    "10.0.0.1:80",
    "[fd00::1]:80/TCP",
    "1/2",
    "(1 unknown)",
    "{",
    "}",
    "[",
    "]",
    '"nodes"',
    ":",
    "  ",
    "\t",
    "\n",
    "0",
    "16",
]


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_is_parsed_or_refused(text: str) -> None:
    parse_or_refuse(text)


@FUZZ
@given(st.lists(st.sampled_from(FORMAT_WORDS) | st.text(max_size=6), max_size=60).map(" ".join))
def test_text_made_of_format_words_is_parsed_or_refused(text: str) -> None:
    parse_or_refuse(text)


def _mutate(lines: list[str], data: st.DataObject) -> list[str]:
    lines = list(lines)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        kind = data.draw(st.sampled_from(["delete", "duplicate", "swap", "truncate", "flip"]), label="kind")
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = data.draw(st.integers(0, len(lines) - 1), label="other")
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "truncate":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])), label="cut")]
        elif lines[i]:
            k = data.draw(st.integers(0, len(lines[i]) - 1), label="pos")
            char = data.draw(st.characters(codec="utf-8"), label="char")
            lines[i] = lines[i][:k] + char + lines[i][k + 1 :]
    return lines


@needs_fixtures
@FUZZ
@given(name=st.sampled_from(sorted(FIXTURE_TEXTS) or ["-"]), data=st.data())
def test_mutated_fixtures_are_parsed_consistently_or_refused(name: str, data: st.DataObject) -> None:
    lines = _mutate(FIXTURE_TEXTS[name].split("\n"), data)
    parse_or_refuse("\n".join(lines))


@needs_fixtures
@FUZZ
@given(name=st.sampled_from(sorted(FIXTURE_TEXTS) or ["-"]), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_fixtures_are_parsed_consistently_or_refused(name: str, cut: float) -> None:
    text = FIXTURE_TEXTS[name]
    parse_or_refuse(text[: int(len(text) * cut)])


@needs_fixtures
@pytest.mark.parametrize("name", sorted(n for n in FIXTURE_TEXTS if n.endswith(".json")))
def test_every_proper_prefix_of_json_fixtures_is_refused(name: str) -> None:
    text = FIXTURE_TEXTS[name].rstrip()
    parse = parse_health if name.startswith("health") else parse_service_list
    for end in range(1, len(text), 7):
        with pytest.raises(CiliumOutputError):
            parse(text[:end])


# ----------------------------------------------------------------------------- service round trip

ips = st.ip_addresses().map(str)
ports = st.integers(0, 65535)
backends = st.builds(
    lambda ip, port, proto, state, preferred: Backend(
        address=_host_port(ip, port),
        ip=ip,
        port=port,
        protocol=proto,
        state=state,
        preferred=preferred,
        node_name=None,
    ),
    ips,
    ports,
    st.sampled_from(["TCP", "UDP"]),
    st.sampled_from(["active", "terminating", "quarantined", "maintenance"]),
    st.booleans(),
)


@st.composite
def service_lists(draw: st.DrawFn) -> list[Service]:
    count = draw(st.integers(0, 8))
    ids = draw(st.lists(st.integers(1, 65535), min_size=count, max_size=count, unique=True))
    services = []
    for service_id in ids:
        ip, port, proto = draw(ips), draw(ports), draw(st.sampled_from(["TCP", "UDP"]))
        services.append(
            Service(
                id=service_id,
                frontend=_host_port(ip, port),
                protocol=proto,
                type=draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalIPs", "HostPort"])),
                remote=draw(st.booleans()),
                name=None,
                namespace=None,
                backends=draw(st.lists(backends, max_size=5)),
            )
        )
    return services


def _tabwriter(rows: list[list[str]]) -> list[str]:
    """Go text/tabwriter as cilium uses it (minwidth 5, padding 3, every cell tab-terminated)."""
    widths = [max(5, max(len(r[c]) for r in rows) + 3) for c in range(len(rows[0]))]
    return ["".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def render_table(services: list[Service], with_protocol: bool) -> list[str]:
    rows = [["ID", "Frontend", "Service Type", "Backend"]]
    for svc in services:
        suffix = f"/{svc.protocol}" if with_protocol else ""
        cells = []
        for n, be in enumerate(svc.backends, start=1):
            be_suffix = f"/{be.protocol}" if with_protocol else ""
            preferred = " (preferred)" if be.preferred else ""
            cells.append(f"{n} => {be.address}{be_suffix} ({be.state}){preferred}")
        kind = svc.type + (" (Remote)" if svc.remote else "")
        rows.append([str(svc.id), svc.frontend + suffix, kind, cells[0] if cells else ""])
        rows.extend(["", "", "", cell] for cell in cells[1:])
    return _tabwriter(rows)


def without_protocols(services: list[Service]) -> list[Service]:
    return [
        s.model_copy(
            update={
                "protocol": None,
                "backends": [b.model_copy(update={"protocol": None}) for b in s.backends],
            }
        )
        for s in services
    ]


@ROUND_TRIP
@given(services=service_lists(), strip=st.booleans())
def test_113_table_reads_back_the_generated_services(services: list[Service], strip: bool) -> None:
    lines = render_table(services, with_protocol=False)
    text = "\n".join(line.rstrip() if strip else line for line in lines) + "\n"

    assert parse_service_list(text) == without_protocols(services)


@ROUND_TRIP
@given(services=service_lists())
def test_117_table_reads_back_the_generated_services(services: list[Service]) -> None:
    text = "\n".join(render_table(services, with_protocol=True)) + "\n"

    assert parse_service_list(text) == services


def render_service_json(services: list[Service]) -> str:
    out: list[dict[str, Any]] = []
    for svc in services:
        ip, _, port = svc.frontend.rpartition(":")
        spec = {
            "id": svc.id,
            "flags": {"type": svc.type, **({"cluster": "cluster-9"} if svc.remote else {})},
            "frontend-address": {"ip": ip.strip("[]"), "port": int(port), "protocol": svc.protocol},
            "backend-addresses": [
                {"ip": b.ip, "port": b.port, "protocol": b.protocol, "state": b.state}
                | ({"preferred": True} if b.preferred else {})
                for b in svc.backends
            ],
        }
        out.append({"spec": spec, "status": {"realized": spec}})
    return json.dumps(out, indent=2)


@ROUND_TRIP
@given(services=service_lists())
def test_json_and_117_table_of_the_same_services_agree(services: list[Service]) -> None:
    from_json = parse_service_list(render_service_json(services))

    assert from_json == services == parse_service_list("\n".join(render_table(services, with_protocol=True)))


# ------------------------------------------------------------------------------ health round trip

RESULTS = ["OK", "Connection timed out", 'Get "http://10.0.0.9:4240/hello": context deadline exceeded']
node_names = st.from_regex(r"(cluster-[1-9]/)?node-[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def health_nodes(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(node_names, min_size=1, max_size=6, unique=True))
    return [
        {
            "name": name,
            "host_ip": draw(ips),
            "endpoint_ip": draw(st.none() | ips),
            "results": [draw(st.sampled_from(RESULTS)) for _ in range(4)],
        }
        for name in names
    ]


def _probe_json(result: str) -> dict[str, Any]:
    return {"latency": 1000} if result == "OK" else {"status": result}


def render_health_json(nodes: list[dict[str, Any]]) -> str:
    out = []
    for node in nodes:
        r = node["results"]
        entry: dict[str, Any] = {
            "name": node["name"],
            "host": {
                "primary-address": {
                    "ip": node["host_ip"],
                    "icmp": _probe_json(r[0]),
                    "http": _probe_json(r[1]),
                },
                "secondary-addresses": [],
            },
        }
        if node["endpoint_ip"] is not None:
            entry["health-endpoint"] = {
                "primary-address": {
                    "ip": node["endpoint_ip"],
                    "icmp": _probe_json(r[2]),
                    "http": _probe_json(r[3]),
                }
            }
        out.append(entry)
    return json.dumps({"local": {"name": nodes[0]["name"]}, "nodes": out, "timestamp": "2024-01-01T00:00:00Z"})


def render_health_text(nodes: list[dict[str, Any]], last_probed: bool) -> str:
    def probe(label: str, result: str) -> str:
        shown = "OK, RTT=1.5ms" if result == "OK" else result
        tail = "   (Last probed: 2024-01-01T00:00:00Z)" if last_probed else ""
        return f"      {label}:   {shown}{tail}"

    lines = ["Probe time:   2024-01-01T00:00:00Z", "Nodes:"]
    for i, node in enumerate(nodes):
        r = node["results"]
        lines.append(f"  {node['name']}{' (localhost)' if i == 0 else ''}:")
        lines += [
            f"    Host connectivity to {node['host_ip']}:",
            probe("ICMP to stack", r[0]),
            probe("HTTP to agent", r[1]),
        ]
        if node["endpoint_ip"] is not None:
            lines.append(f"    Endpoint connectivity to {node['endpoint_ip']}:")
            lines += [probe("ICMP to stack", r[2]), probe("HTTP to agent", r[3])]
    return "\n".join(lines) + "\n"


def expected_failures(node: dict[str, Any]) -> list[str]:
    labels = ["host ICMP", "host HTTP"] + (["endpoint ICMP", "endpoint HTTP"] if node["endpoint_ip"] else [])
    return [f"{label}: {result}" for label, result in zip(labels, node["results"], strict=False) if result != "OK"]


@ROUND_TRIP
@given(nodes=health_nodes(), last_probed=st.booleans())
def test_health_json_and_detail_text_read_back_the_generated_nodes(
    nodes: list[dict[str, Any]], last_probed: bool
) -> None:
    from_json = parse_health(render_health_json(nodes))
    from_text = parse_health(render_health_text(nodes, last_probed))

    assert from_json == from_text
    assert from_text.local == nodes[0]["name"]
    assert [(n.name, n.host_ip, n.endpoint_ip) for n in from_text.nodes] == [
        (n["name"], n["host_ip"], n["endpoint_ip"]) for n in nodes
    ]
    assert [n.failures for n in from_text.nodes] == [expected_failures(n) for n in nodes]
    assert [n.reachable for n in from_text.nodes] == [not expected_failures(n) for n in nodes]
