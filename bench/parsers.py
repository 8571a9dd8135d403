"""How fast and how lean the Cilium output parsers are at the size of a large mesh.

Run: `uv run python bench/parsers.py`. Generates `cilium service list` with 10,000 services and
100,000 backends (1.17 text table and 1.18 JSON) and `cilium-health status -o json` for 5,000 nodes,
then parses each: wall time without tracing, then peak memory under tracemalloc in a separate run
(tracing slows Python down, so the two are not measured together).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clustermesh.cilium import parse_health, parse_service_list  # noqa: E402

SERVICES = 10_000
BACKENDS_PER_SERVICE = 10
NODES = 5_000


def _ip(n: int, first: int) -> str:
    return f"{first}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def service_table() -> str:
    """The 1.17+ table, padded the way Go's tabwriter pads it."""
    rows: list[tuple[str, str, str, str]] = [("ID", "Frontend", "Service Type", "Backend")]
    for s in range(SERVICES):
        for b in range(BACKENDS_PER_SERVICE):
            backend = f"{b + 1} => {_ip(s * BACKENDS_PER_SERVICE + b, 172)}:8080/TCP (active)"
            if b % 2 == 0:
                backend += " (preferred)"
            if b == 0:
                kind = "ClusterIP (Remote)" if s % 7 == 0 else "ClusterIP"
                rows.append((str(s + 1), f"{_ip(s, 10)}:80/TCP", kind, backend))
            else:
                rows.append(("", "", "", backend))
    widths = [max(5, max(len(r[c]) for r in rows) + 3) for c in range(4)]
    return "\n".join("".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows) + "\n"


def service_json() -> str:
    """The 1.18 JSON model, `status.realized` repeating `spec` as the agent prints it."""
    out: list[dict[str, Any]] = []
    for s in range(SERVICES):
        spec = {
            "backend-addresses": [
                {
                    "ip": _ip(s * BACKENDS_PER_SERVICE + b, 172),
                    "nodeName": f"node-{b}",
                    "port": 8080,
                    "preferred": True,
                    "protocol": "TCP",
                    "state": "active",
                    "weight": 100,
                }
                for b in range(BACKENDS_PER_SERVICE)
            ],
            "flags": {
                "name": f"svc-{s}",
                "namespace": "default",
                "type": "ClusterIP",
                "trafficPolicy": "Cluster",
            },
            "frontend-address": {"ip": _ip(s, 10), "port": 80, "protocol": "TCP", "scope": "external"},
            "id": s + 1,
        }
        out.append({"spec": spec, "status": {"realized": spec}})
    return json.dumps(out, indent=2)


def health_json() -> str:
    """`cilium-health status -o json` of a 5,000-node mesh with every tenth node failing."""

    def probe(ok: bool) -> dict[str, Any]:
        return (
            {"latency": 1_234_567, "lastProbed": "2025-07-01T08:00:00Z"} if ok else {"status": "Connection timed out"}
        )

    nodes = []
    for n in range(NODES):
        ok = n % 10 != 0
        address = {"ip": _ip(n, 10), "icmp": probe(True), "http": probe(ok)}
        endpoint = {"ip": _ip(n, 172), "icmp": probe(ok), "http": probe(ok)}
        nodes.append(
            {
                "name": f"cluster-{n % 4 + 1}/node-{n}",
                "host": {"primary-address": address, "secondary-addresses": []},
                "health-endpoint": {"primary-address": endpoint, "secondary-addresses": []},
                "endpoint": endpoint,
            }
        )
    return json.dumps(
        {
            "local": {"name": "cluster-1/node-0"},
            "nodes": nodes,
            "probeInterval": "1m0s",
            "timestamp": "2025-07-01T08:00:00Z",
        },
        indent=2,
    )


def measure(label: str, parse: Callable[[str], object], text: str, describe: Callable[[Any], str]) -> None:
    start = time.perf_counter()
    result = parse(text)
    elapsed = time.perf_counter() - start
    del result
    tracemalloc.start()
    result = parse(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{label:<34} input {len(text) / 2**20:7.1f} MiB   {elapsed:7.3f} s   "
        f"peak {peak / 2**20:7.1f} MiB   {describe(result)}"
    )


def main() -> None:
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"python:  {platform.python_implementation()} {platform.python_version()}")
    cases: list[tuple[str, Callable[[str], object], Callable[[], str], Callable[[Any], str]]] = [
        (
            "service list text (1.17 table)",
            parse_service_list,
            service_table,
            lambda r: f"{len(r)} services, {sum(len(s.backends) for s in r)} backends",
        ),
        (
            "service list JSON (1.18)",
            parse_service_list,
            service_json,
            lambda r: f"{len(r)} services, {sum(len(s.backends) for s in r)} backends",
        ),
        (
            "health JSON (5,000 nodes)",
            parse_health,
            health_json,
            lambda r: f"{len(r.nodes)} nodes, {sum(not n.reachable for n in r.nodes)} unreachable",
        ),
    ]
    for label, parse, generate, describe in cases:
        measure(label, parse, generate(), describe)


if __name__ == "__main__":
    main()
