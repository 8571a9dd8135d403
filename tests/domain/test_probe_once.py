"""Steps 7 and 8 ask every agent once: step 8 starts from the matrix step 7's probe measured."""

from __future__ import annotations

import json
from typing import Any

from clustermesh.kube import ExecOutput
from clustermesh.steps.step7_reachability import UDP_8472_PATH, check_reachability
from clustermesh.steps.step8_health import wait_for_mesh_health
from tests.domain.test_health import JSON_ARGV, NODES, FakeClient, FakeTime, node_json, pod

APISERVERS = {"cluster-1": ("192.0.2.1", 2379), "cluster-2": ("192.0.2.2", 2379)}


def answer(local: str, *, blocked_endpoints_of: str | None = None) -> ExecOutput:
    """An agent's `cilium-health status -o json`: every node of the mesh, endpoints of one cluster failing."""
    nodes = []
    for cluster, names in NODES.items():
        for name in names:
            timeout: dict[str, Any] = {"status": "Connection timed out"}
            endpoint = (timeout, timeout) if cluster == blocked_endpoints_of else ({"latency": 1}, {"latency": 1})
            nodes.append(node_json(f"{cluster}/{name}", endpoint=endpoint))
    return ExecOutput(0, json.dumps({"local": {"name": local}, "nodes": nodes}), "")


def clients(*, blocked_from_1_to_2: bool = False) -> dict[str, FakeClient]:
    out = {}
    for cluster, names in NODES.items():
        blocked = "cluster-2" if blocked_from_1_to_2 and cluster == "cluster-1" else None
        answers: dict[tuple[str, tuple[str, ...]], ExecOutput | Exception] = {
            (f"cilium-{n}", JSON_ARGV): answer(f"{cluster}/{n}", blocked_endpoints_of=blocked) for n in names
        }
        out[cluster] = FakeClient([pod(f"cilium-{n}", n) for n in names], answers, nodes=names)
    return out


def execs(fakes: dict[str, FakeClient]) -> int:
    return sum(len(c.calls) for c in fakes.values())


def test_a_healthy_mesh_is_probed_once_for_steps_7_and_8() -> None:
    fakes = clients()
    report = check_reachability(fakes, APISERVERS, exec_timeout=5)
    measured = report.measured
    assert report.ok and measured is not None and measured.healthy
    assert "measured" not in report.model_dump(), "the setup result reports step 8's matrix, not this one"
    assert execs(fakes) == 4, "step 7 asked each of the 4 agents once"
    t = FakeTime()

    matrix = wait_for_mesh_health(fakes, timeout=60, poll_interval=5, exec_timeout=5, first=measured, sleep=t.sleep)

    assert matrix == measured
    assert execs(fakes) == 4 and t.sleeps == [], "step 8 asked no agent again"


def test_step_8_probes_again_when_step_7_saw_the_mesh_unhealthy() -> None:
    broken = clients(blocked_from_1_to_2=True)
    report = check_reachability(broken, APISERVERS, exec_timeout=5)
    measured = report.measured
    assert measured is not None and not measured.healthy
    assert [(b.src_cluster, b.dst_cluster, b.what) for b in report.blocked] == [
        ("cluster-1", "cluster-2", UDP_8472_PATH)
    ]
    healed = clients()
    t = FakeTime()

    matrix = wait_for_mesh_health(
        healed, timeout=60, poll_interval=5, exec_timeout=5, first=measured, clock=t.clock, sleep=t.sleep
    )

    assert matrix.healthy
    assert t.sleeps == [5], "the first new look waits a poll interval after step 7's"
    assert execs(healed) == 4
