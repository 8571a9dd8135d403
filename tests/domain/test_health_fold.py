"""Pins down that folding each agent's answer as it arrives changes nothing the matrix says.

The probe keeps only ``NodesSeen`` per agent (not the parsed ``HealthStatus``), so that 16 clusters of
50 nodes do not hold 640,000 parsed nodes at once. The reference below is the matrix's rule read
straight off full answers; every cell must come out the same either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh.cilium import HealthNode, HealthStatus
from clustermesh.kube import ExecOutput
from clustermesh.steps.step8_health import (
    MAX_FAILURES_PER_CELL,
    AgentHealth,
    ClusterHealth,
    HealthCell,
    NodesSeen,
    health_matrix,
    nodes_seen,
    probe_cluster,
)
from tests.domain.test_health import JSON_ARGV, TIMEOUT, FakeClient, node_json, pod


def health_node(name: str, failures: Sequence[str]) -> HealthNode:
    cluster, sep, bare = name.partition("/")
    return HealthNode(
        name=name,
        cluster=cluster if sep else None,
        node=bare if sep else name,
        reachable=not failures,
        local=False,
        host_ip=None,
        endpoint_ip=None,
        failures=list(failures),
    )


def answer(*nodes: tuple[str, Sequence[str]]) -> HealthStatus:
    return HealthStatus(nodes=[health_node(name, failures) for name, failures in nodes], timestamp=None, local=None)


# ---------------------------------------------------------------------------------------------- fold


def test_an_answer_folds_into_what_the_agent_sees_of_each_cluster() -> None:
    seen = nodes_seen(
        answer(
            ("c1/a", []),
            ("b", ["host ICMP: Connection timed out"]),  # bare: the agent's own cluster
            ("c2/z", ["endpoint HTTP: refused"]),
            ("c2/y", []),
        ),
        "c1",
    )
    assert seen == {
        "c1": NodesSeen(reachable=frozenset({"a"}), failing=(("b", ("host ICMP: Connection timed out",)),)),
        "c2": NodesSeen(reachable=frozenset({"y"}), failing=(("z", ("endpoint HTTP: refused",)),)),
    }


def test_a_node_listed_twice_counts_as_its_last_listing() -> None:
    first_bad = nodes_seen(answer(("c1/a", ["host ICMP: x"]), ("a", [])), "c1")
    first_good = nodes_seen(answer(("a", []), ("c1/a", ["host ICMP: x"])), "c1")
    assert first_bad["c1"] == NodesSeen(reachable=frozenset({"a"}), failing=())
    assert first_good["c1"] == NodesSeen(reachable=frozenset(), failing=(("a", ("host ICMP: x",)),))


def test_agents_that_see_the_same_thing_share_one_view() -> None:
    answer_json = json.dumps(
        {"nodes": [node_json("c1/a"), node_json("c1/b"), node_json("c2/x", host=(TIMEOUT, TIMEOUT))]}
    )
    names = ["a", "b", "c"]
    client = FakeClient(
        [pod(f"cilium-{n}", n) for n in names],
        {(f"cilium-{n}", JSON_ARGV): ExecOutput(0, answer_json, "") for n in names},
    )
    agents = probe_cluster(client, "c1", timeout=5).agents
    views = [a.seen for a in agents]
    assert all(v is not None for v in views)
    first = views[0]
    assert first is not None and first["c1"].reachable == {"a", "b"}
    for other in views[1:]:
        assert other is not None
        assert other["c1"] is first["c1"] and other["c2"] is first["c2"]


# ------------------------------------------------------------------------------- same cells as before


def reference_cell(
    src: str, dst: str, agents: list[tuple[str, HealthStatus | None]], dst_nodes: Sequence[str]
) -> HealthCell:
    """The matrix's rule over full answers: every agent's listing of ``dst``, node by node."""
    answered = [(node, status) for node, status in agents if status is not None]
    views = []
    for node, status in answered:
        listed = {n.node: n for n in status.nodes if n.cluster == dst or (n.cluster is None and dst == src)}
        views.append((node, listed))
    reachable, missing, failures, seen, paths = 0, [], [], set(), set()
    for name in dst_nodes:
        ok = bool(views)
        for agent_node, listed in views:
            entry = listed.get(name)
            if entry is None:
                ok = False
                if name not in missing:
                    missing.append(name)
                continue
            if not entry.reachable:
                ok = False
                for failure in entry.failures:
                    label = failure.split(":", 1)[0].strip().split()
                    secondary = len(label) == 4 and label[1] == "secondary"
                    paths.add(f"{label[0]} {label[3]}" if secondary else " ".join(label))
                    if failure not in seen and len(failures) < MAX_FAILURES_PER_CELL:
                        seen.add(failure)
                        failures.append(f"{src} agent on {agent_node} → {dst}/{name}: {failure}")
        reachable += ok
    return HealthCell(
        src=src,
        dst=dst,
        reachable=reachable,
        expected=len(dst_nodes),
        agents=len(answered),
        failures=failures,
        failing_paths=sorted(paths),
        missing=missing,
    )


CLUSTERS = ["c1", "c2", "default"]
NODE_NAMES = ["a", "b", "c", "d"]
FAILURES = [
    "host ICMP: Connection timed out",
    "host HTTP: context deadline exceeded",
    "endpoint ICMP: Connection timed out",
    "endpoint HTTP: no result (unknown)",
    "host secondary 10.0.0.9 ICMP: Connection timed out",
    "host",
]
listed_names = st.one_of(
    st.sampled_from(NODE_NAMES),
    st.builds("{}/{}".format, st.sampled_from(CLUSTERS), st.sampled_from(NODE_NAMES)),
)
listings = st.lists(st.tuples(listed_names, st.lists(st.sampled_from(FAILURES), max_size=3)), max_size=10)
agents_of_a_cluster = st.lists(st.one_of(st.none(), listings.map(lambda nodes: answer(*nodes))), max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    observed=st.fixed_dictionaries({c: agents_of_a_cluster for c in CLUSTERS}),
    expected=st.fixed_dictionaries({c: st.lists(st.sampled_from(NODE_NAMES), max_size=5) for c in CLUSTERS}),
)
def test_folded_answers_give_the_cells_full_answers_give(
    observed: dict[str, list[HealthStatus | None]], expected: dict[str, list[str]]
) -> None:
    health = {
        cluster: ClusterHealth(
            cluster=cluster,
            agents=[
                AgentHealth.from_status(f"p{i}", f"n{i}", status, cluster=cluster)
                if status is not None
                else AgentHealth(pod=f"p{i}", node=f"n{i}", seen=None, error="exec failed")
                for i, status in enumerate(statuses)
            ],
        )
        for cluster, statuses in observed.items()
    }
    matrix = health_matrix(health, expected)
    for cell in matrix.cells:
        agents = [(f"n{i}", status) for i, status in enumerate(observed[cell.src])]
        assert cell == reference_cell(cell.src, cell.dst, agents, expected[cell.dst])
