"""The failover drill against the sandbox: the guide's last section, on several Cilium lines.

The mesh is built with the setup's domain steps in the guide's order (no Prefect), then the drill runs
against agents that answer `cilium service list` in the format of their version, computed by the
sandbox's own model (which shares no code with the pipeline).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from clustermesh.cilium.profiles import profile_for
from clustermesh.drill import (
    AGENT_CONTAINER,
    AGENT_LABEL,
    AGENT_NAMESPACE,
    BACKEND,
    ORIGINAL_REPLICAS_ANNOTATION,
    Drill,
    run_drill,
)
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from tests.helpers import build_mesh


@dataclass
class Mesh:
    sandbox: Any
    spec: MeshSpec
    clients: dict[str, ClusterClient]
    facts: dict[str, ClusterFacts]

    def replicas(self) -> dict[str, tuple[int, str | None, int]]:
        """Per cluster: replicas, the drill record, generation of the backend Deployment."""
        out = {}
        for name, client in self.clients.items():
            d = client.get_deployment(self.spec.drill.namespace, BACKEND)
            assert d is not None
            annotations = d["metadata"].get("annotations") or {}
            out[name] = (
                int(d["spec"]["replicas"]),
                annotations.get(ORIGINAL_REPLICAS_ANNOTATION),
                int(d["metadata"]["generation"]),
            )
        return out


@pytest.fixture
def mesh_factory(sandbox_factory: Callable[..., Any]) -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(version: str, clusters: int = 2, drill_timeout: float = 30) -> Mesh:
        sb = sandbox_factory(clusters=clusters, cilium_version=version)
        mesh = Mesh(sb, *build_mesh(sb, drill_timeout))
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        for client in mesh.clients.values():
            client.close()


def agent_texts(mesh: Mesh, cluster: str) -> list[str]:
    """`cilium service list --clustermesh-affinity` of every agent of ``cluster``, as the guide runs it."""
    client = mesh.clients[cluster]
    cli = profile_for(mesh.facts[cluster].cilium_version).agent_cli
    texts = []
    for pod in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL):
        out = client.exec(
            AGENT_NAMESPACE,
            pod["metadata"]["name"],
            AGENT_CONTAINER,
            [cli, "service", "list", "--clustermesh-affinity"],
            timeout=10,
        )
        assert out.ok, out.stderr
        texts.append(out.stdout)
    assert texts
    return texts


def drill_rows(text: str, frontend: str) -> list[str]:
    """The backend cells of the row for ``frontend`` and its continuation lines."""
    rows: list[str] = []
    inside = False
    for line in text.splitlines()[1:]:
        if line and not line[0].isspace():
            inside = line.split()[1].split("/")[0] == frontend
            if inside:
                rows.append(line.split(None, 3)[3].strip())
        elif inside and line.strip():
            rows.append(line.strip())
    return rows


@pytest.mark.parametrize(
    ("version", "clusters"),
    [("1.13", 2), ("1.16", 2), ("1.18", 2), ("1.16", 3)],
    ids=["1.13-2", "1.16-2", "1.18-2", "1.16-3"],
)
def test_the_drill_fails_every_cluster_over_and_back(
    mesh_factory: Callable[..., Mesh], version: str, clusters: int
) -> None:
    mesh = mesh_factory(version, clusters)
    names = list(mesh.clients)
    phases: list[str] = []
    result = run_drill(mesh.clients, mesh.facts, mesh.spec, on_phase=lambda p: phases.append(f"{p.name}:{p.status}"))
    assert result.status == "passed", result.reason
    assert phases == [
        "recover:skipped",
        "workloads:passed",
        "baseline:passed",
        *(step for _ in names for step in ("failover:passed", "restore:passed")),
        "rollback:passed",
    ]
    assert set(result.failover_seconds) == set(names)
    replicas = mesh.replicas()
    assert {n: r[:2] for n, r in replicas.items()} == dict.fromkeys(names, (2, None))
    marker_reliable = profile_for(version).preferred_marker_reliable
    for phase in result.phases:
        if phase.name != "failover":
            continue
        seen = phase.backends[phase.cluster or ""]
        # Every agent of the failed cluster saw the remote backends of every other cluster, none of its own.
        agents = {b.agent for b in seen}
        assert len(agents) == 2
        assert not any(b.local for b in seen)
        assert {b.cluster for b in seen} == set(names) - {phase.cluster}
        assert len(seen) == 2 * 2 * (clusters - 1)
        # 1.18 marks them preferred although remote; the drill judged them by CIDR regardless.
        assert all(b.preferred for b in seen) == (not marker_reliable)
    baseline = next(p for p in result.phases if p.name == "baseline")
    listed = baseline.backends["cluster-1"]
    if marker_reliable:
        assert sorted(b.local for b in listed) == sorted([True] * 4 + [False] * 4 * (clusters - 1))
        assert all(b.preferred == b.local for b in listed)
    else:  # 1.18: only the preferred (local) backends are listed while any is active
        assert listed and all(b.local and b.preferred for b in listed)


def test_a_drill_killed_after_the_scale_down_is_undone_by_the_next_one(mesh_factory: Callable[..., Mesh]) -> None:
    mesh = mesh_factory("1.16")
    killed = Drill(mesh.clients, mesh.facts, mesh.spec)
    assert killed.ensure_workloads().status == "passed"
    assert killed.baseline().status == "passed"
    assert killed.failover("cluster-1").status == "passed"
    del killed  # no restore, no rollback: the process died here
    assert mesh.replicas()["cluster-1"][:2] == (0, "2")

    restored = Drill(mesh.clients, mesh.facts, mesh.spec).recover_unfinished()
    assert restored == [
        "restored cluster-1/clustermesh-drill/clustermesh-drill-backend to 2 replicas left at 0 by an earlier drill"
    ]
    assert {n: r[:2] for n, r in mesh.replicas().items()} == {"cluster-1": (2, None), "cluster-2": (2, None)}
    ready = mesh.clients["cluster-1"].get_deployment(mesh.spec.drill.namespace, BACKEND)
    assert ready is not None and ready["status"]["readyReplicas"] == 2
    # and a full drill afterwards finds nothing left to recover
    assert run_drill(mesh.clients, mesh.facts, mesh.spec).recovered == []


@pytest.mark.parametrize("port", ["tcp/2379", "udp/8472"])
def test_a_broken_mesh_is_not_drilled_and_nothing_is_scaled(mesh_factory: Callable[..., Mesh], port: str) -> None:
    mesh = mesh_factory("1.13", drill_timeout=1.5)
    assert Drill(mesh.clients, mesh.facts, mesh.spec).ensure_workloads().status == "passed"
    before = mesh.replicas()
    mesh.sandbox.fault("block-port", a="cluster-1", b="cluster-2", port=port)

    result = run_drill(mesh.clients, mesh.facts, mesh.spec)

    assert result.status == "not run"
    assert "steady state does not hold, nothing disrupted" in result.reason
    assert "remote backends" in result.reason
    if port == "tcp/2379":  # no control plane: the agents never learn the remote backends
        assert "missing remote backends" in result.reason
    else:  # listed, but the VXLAN path to them is blocked
        assert "remote backends of cluster-2 unreachable" in result.reason
    assert mesh.replicas() == before  # same replicas, no record, not even a new generation
    assert [p.name for p in result.phases] == ["recover", "workloads", "baseline", "rollback"]


def test_the_guides_observation_after_scaling_cluster_1_to_zero_on_113(mesh_factory: Callable[..., Mesh]) -> None:
    mesh = mesh_factory("1.13")
    drill = Drill(mesh.clients, mesh.facts, mesh.spec)
    assert drill.ensure_workloads().status == "passed"
    assert drill.baseline().status == "passed"
    svc = mesh.clients["cluster-1"].get_service(mesh.spec.drill.namespace, "clustermesh-drill")
    assert svc is not None
    frontend = f"{svc['spec']['clusterIP']}:{mesh.spec.drill.port}"
    backend = re.compile(r"^\d+ => (172\.2[56]\.\d+\.\d+):80 \(active\)( \(preferred\))?$")

    for text in agent_texts(mesh, "cluster-1"):  # before: local preferred, remote not
        rows = [backend.fullmatch(r) for r in drill_rows(text, frontend)]
        assert len(rows) == 4 and all(rows)
        assert all(bool(m.group(2)) == m.group(1).startswith("172.25.") for m in rows if m)

    try:
        assert drill.failover("cluster-1").status == "passed"
        for text in agent_texts(mesh, "cluster-1"):  # after: only the remote (172.26.x), none preferred
            rows = drill_rows(text, frontend)
            assert len(rows) == 2, text
            assert [r.split(" => ")[0] for r in rows] == ["1", "2"]
            for row in rows:
                m = backend.fullmatch(row)
                assert m is not None and m.group(1).startswith("172.26.") and m.group(2) is None, row
    finally:
        assert drill.restore("cluster-1").status == "passed"
    assert mesh.replicas()["cluster-1"][:2] == (2, None)
