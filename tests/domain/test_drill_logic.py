"""The drill's decisions without a cluster: backend placement by pod CIDR, the gates, and its rollbacks.

A small in-memory fake plays the clusters (duck-typed like ``ClusterClient``); agents answer in the
1.13 text layout or the 1.18 JSON layout, where every listed backend is marked preferred.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from clustermesh.checks import Finding
from clustermesh.cilium import parse_service_list
from clustermesh.cilium.profiles import profile_for
from clustermesh.drill import (
    BACKEND,
    ORIGINAL_REPLICAS_ANNOTATION,
    AgentView,
    Drill,
    DrillPhase,
    DrillResult,
    classify_backends,
    drill_gate,
    drill_manifests,
    failover_problems,
    find_frontend,
    run_drill,
    steady_problems,
)
from clustermesh.errors import ConflictError, DrillError, KubeApiError, TransientKubeError
from clustermesh.kube import ExecOutput
from clustermesh.spec import MeshSpec, from_data
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step8_health import HealthCell, HealthMatrix
from tests.conftest import find_shared

CIDRS = {"cluster-1": ["172.25.0.0/16"], "cluster-2": ["172.26.0.0/16"]}
FRONTEND = "10.240.27.208:80"
NS = "clustermesh-drill"


def fixture_text(name: str) -> str:
    shared = find_shared()
    if shared is None:
        pytest.skip("shared/fixtures not found beside the checkout")
    return (shared / "fixtures" / "cilium" / name).read_text()


def view_of(text: str, cluster: str = "cluster-1", cidrs: Mapping[str, Sequence[str]] = CIDRS) -> AgentView:
    service = find_frontend(parse_service_list(text), FRONTEND)
    assert service is not None
    backends = classify_backends(service, cluster=cluster, agent="cilium-a", pod_cidrs=cidrs)
    return AgentView(cluster=cluster, agent="cilium-a", node="n", frontend=FRONTEND, listed=True, backends=backends)


LOCAL = {"172.25.0.160", "172.25.0.12"}
REMOTE = {"cluster-2": {"172.26.0.31", "172.26.0.196"}}


def json_118(preferred_only: bool) -> str:
    """The guide's service as 1.18 prints it: every listed backend preferred, hidden ones not listed."""
    entry = json.loads(fixture_text("service-list-1.16-affinity.json"))[0]
    backends = entry["spec"]["backend-addresses"]
    if preferred_only:
        backends = [b for b in backends if b.get("preferred")]
    for b in backends:
        b["preferred"] = True
        b["protocol"] = "TCP"
    entry["spec"]["backend-addresses"] = backends
    entry["spec"]["frontend-address"]["protocol"] = "TCP"
    entry["status"]["realized"] = copy.deepcopy(entry["spec"])
    return json.dumps([entry], indent=2)


# ---------------------------------------------------------------------------------------------
# Placement by pod CIDR


def test_113_text_local_backends_are_the_ones_in_the_own_pod_cidr() -> None:
    view = view_of(fixture_text("service-list-1.13-affinity.txt"))
    placed = {b.ip: (b.cluster, b.local, b.preferred) for b in view.backends}
    assert placed == {
        "172.25.0.160": ("cluster-1", True, True),
        "172.25.0.12": ("cluster-1", True, True),
        "172.26.0.31": ("cluster-2", False, False),
        "172.26.0.196": ("cluster-2", False, False),
    }
    # The same listing seen from cluster-2's side flips local and remote.
    assert {b.ip for b in view_of(fixture_text("service-list-1.13-affinity.txt"), "cluster-2").backends if b.local} == {
        "172.26.0.31",
        "172.26.0.196",
    }


def test_118_json_marks_every_backend_preferred_but_remote_ones_stay_remote() -> None:
    view = view_of(json_118(preferred_only=False))
    assert all(b.preferred for b in view.backends)
    assert {b.ip for b in view.backends if not b.local} == REMOTE["cluster-2"]
    assert {b.cluster for b in view.backends if not b.local} == {"cluster-2"}


def test_an_ip_in_no_clusters_cidr_is_neither_local_nor_placed() -> None:
    view = view_of(fixture_text("service-list-1.13-affinity.txt"), cidrs={"cluster-1": ["172.25.0.0/16"]})
    stray = [b for b in view.backends if b.ip.startswith("172.26.")]
    assert stray and all(b.cluster is None and not b.local for b in stray)


def test_the_guides_steady_state_passes_on_113_and_names_missing_remote_backends_otherwise() -> None:
    view = view_of(fixture_text("service-list-1.13-affinity.txt"))
    assert (
        steady_problems([view], cluster="cluster-1", local=LOCAL, remote=REMOTE, affinity="local", marker_reliable=True)
        == []
    )
    more = {"cluster-2": REMOTE["cluster-2"] | {"172.26.0.7"}}
    problems = steady_problems(
        [view], cluster="cluster-1", local=LOCAL, remote=more, affinity="local", marker_reliable=True
    )
    assert len(problems) == 1
    assert "cluster-1/cilium-a lists 4/5 expected backends" in problems[0]
    assert "missing remote backends 172.26.0.7 (cluster-2)" in problems[0]


def test_where_the_marker_is_reliable_it_must_sit_on_the_local_backends() -> None:
    text = fixture_text("service-list-1.13-affinity.txt").replace(
        "172.26.0.31:80 (active)", "172.26.0.31:80 (active) (preferred)"
    )
    problems = steady_problems(
        [view_of(text)], cluster="cluster-1", local=LOCAL, remote=REMOTE, affinity="local", marker_reliable=True
    )
    assert problems == ["cluster-1/cilium-a: (preferred) does not follow affinity local on 172.26.0.31:80"]


def test_on_118_only_the_local_backends_are_listed_and_that_is_the_steady_state() -> None:
    view = view_of(json_118(preferred_only=True))
    assert {b.ip for b in view.backends} == LOCAL
    ok = steady_problems(
        [view], cluster="cluster-1", local=LOCAL, remote=REMOTE, affinity="local", marker_reliable=False
    )
    assert ok == []
    # Judged with the old rules the same listing would look broken: the profile decides, not the marker.
    strict = steady_problems(
        [view], cluster="cluster-1", local=LOCAL, remote=REMOTE, affinity="local", marker_reliable=True
    )
    assert strict and "missing remote backends" in strict[0]


def test_scaled_to_zero_listing_counts_as_failed_over_on_113_and_118() -> None:
    scaled = view_of(fixture_text("service-list-1.13-affinity-local-scaled-to-zero.txt"))
    assert failover_problems([scaled], cluster="cluster-1", remote=REMOTE) == []
    json_scaled = json.loads(json_118(preferred_only=False))
    for part in (json_scaled[0]["spec"], json_scaled[0]["status"]["realized"]):
        part["backend-addresses"] = [b for b in part["backend-addresses"] if b["ip"].startswith("172.26.")]
    view = view_of(json.dumps(json_scaled))
    assert all(b.preferred for b in view.backends)  # 1.18: preferred although remote
    assert failover_problems([view], cluster="cluster-1", remote=REMOTE) == []


def test_failover_is_not_done_while_a_local_backend_is_listed() -> None:
    view = view_of(fixture_text("service-list-1.13-affinity.txt"))
    problems = failover_problems([view], cluster="cluster-1", remote=REMOTE)
    assert problems == [
        "cluster-1/cilium-a still lists local backends 172.25.0.160:80 (local, active, preferred), "
        "172.25.0.12:80 (local, active, preferred)"
    ]


def test_an_unreadable_agent_or_a_missing_frontend_is_never_steady() -> None:
    broken = AgentView(
        cluster="cluster-1", agent="cilium-b", node=None, frontend=FRONTEND, listed=False, backends=[], error="exit 1"
    )
    absent = AgentView(cluster="cluster-1", agent="cilium-c", node=None, frontend=FRONTEND, listed=False, backends=[])
    problems = steady_problems(
        [broken, absent], cluster="cluster-1", local=LOCAL, remote=REMOTE, affinity="local", marker_reliable=True
    )
    assert problems == [
        "cluster-1/cilium-b: could not read the service list: exit 1",
        f"cluster-1/cilium-c does not list the drill Service's frontend {FRONTEND}",
    ]
    assert failover_problems([], cluster="cluster-1", remote=REMOTE) == [
        "cluster-1: no Cilium agent pods found (kube-system, k8s-app=cilium)"
    ]


def test_manifests_write_both_annotation_families_and_drop_none_affinity_on_118() -> None:
    spec = make_spec()
    manifests = {m["kind"] + "/" + m["metadata"]["name"]: m for m in drill_manifests(spec.drill, profile_for("1.13"))}
    svc = manifests["Service/clustermesh-drill"]
    assert svc["metadata"]["annotations"] == {
        "io.cilium/global-service": "true",
        "service.cilium.io/global": "true",
        "io.cilium/service-affinity": "local",
        "service.cilium.io/affinity": "local",
    }
    assert svc["spec"]["selector"] == {"app": BACKEND}
    for m in manifests.values():
        assert m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "clustermesh-drill"
    assert manifests[f"Deployment/{BACKEND}"]["spec"]["replicas"] == 2
    none = spec.drill.model_copy(update={"affinity": "none"})
    svc_118 = next(m for m in drill_manifests(none, profile_for("1.18")) if m["kind"] == "Service")
    assert svc_118["metadata"]["annotations"] == {
        "io.cilium/global-service": "true",
        "service.cilium.io/global": "true",
    }


# ---------------------------------------------------------------------------------------------
# A fake mesh for the phases


def make_spec(**drill: Any) -> MeshSpec:
    return from_data(
        {
            "clusters": [
                {"name": "cluster-1", "id": 1, "kubeconfig": {"path": "/kc/1"}},
                {"name": "cluster-2", "id": 2, "kubeconfig": {"path": "/kc/2"}},
            ],
            "timeouts": {"poll_interval": 1},
            "drill": {"timeout": 30, **drill},
        }
    )


def make_facts(name: str, version: str) -> ClusterFacts:
    return ClusterFacts(
        name=name,
        id=int(name[-1]),
        kubernetes_version="1.30",
        cilium_version=version,
        detected_cilium_version=version,
        profile_line=version,
        values_field="values",
        kube_proxy_replacement="false",
        pod_cidrs=CIDRS[name],
        nodes=2,
        current_cluster_name=name,
        current_cluster_id=int(name[-1]),
        mesh_enabled=True,
        peers_configured=[],
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Applied:
    def __init__(self, action: str) -> None:
        self.action = action


class FakeCluster:
    """One cluster: Deployments that become Ready at once, two agents, a client pod that curls."""

    def __init__(self, world: FakeWorld, name: str, prefix: str) -> None:
        self.world = world
        self.name = name
        self.prefix = prefix
        self.deployments: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.conflict_on_patch = False
        self.fail_reads = False
        self.lock = threading.Lock()

    # -- reads
    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail_reads:
            raise TransientKubeError(self.name, "get", f"{namespace}/deployments/{name}", "connection refused")
        with self.lock:
            found = self.deployments.get(name)
            return copy.deepcopy(found) if found else None

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"spec": {"clusterIP": "10.240.27.208"}}

    def replicas(self) -> int:
        d = self.deployments.get(BACKEND)
        return int(d["spec"]["replicas"]) if d else 0

    def backend_ips(self) -> list[str]:
        return [f"{self.prefix}.0.{10 + i}" for i in range(self.replicas())]

    def list_pods(self, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        if label_selector == "k8s-app=cilium":
            return [
                {"metadata": {"name": f"cilium-{n}"}, "spec": {"nodeName": f"node-{n}"}, "status": ready}
                for n in ("a", "b")
            ]
        if label_selector == f"app={BACKEND}":
            return [
                {"metadata": {"name": f"backend-{i}"}, "status": {**ready, "podIP": ip}}
                for i, ip in enumerate(self.backend_ips())
            ]
        return [{"metadata": {"name": "client-0"}, "status": ready}]

    # -- writes
    def create_or_replace(self, manifest: Mapping[str, Any]) -> Applied:
        self.calls.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        if manifest["kind"] != "Deployment":
            return Applied("created")
        name = manifest["metadata"]["name"]
        with self.lock:
            current = self.deployments.get(name)
            if current is not None and current["spec"]["replicas"] == manifest["spec"]["replicas"]:
                return Applied("unchanged")
            obj = copy.deepcopy(dict(manifest))
            obj["metadata"].update({"resourceVersion": "1", "generation": 1, "annotations": {}})
            self.deployments[name] = obj
            self._settle(obj)
        return Applied("created")

    def _settle(self, obj: dict[str, Any]) -> None:
        n = obj["spec"]["replicas"]
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": n,
            "readyReplicas": n,
            "updatedReplicas": n,
        }

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", name, replicas))
        with self.lock:
            obj = self.deployments[name]
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["generation"] += 1
            self._bump(obj)
            self._settle(obj)

    def patch_deployment_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("annotate", name, dict(annotations), resource_version))
        with self.lock:
            obj = self.deployments[name]
            if self.conflict_on_patch or (
                resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]
            ):
                raise ConflictError(
                    self.name, "patch", f"{namespace}/deployments/{name}", "the object has been modified"
                )
            for key, value in annotations.items():
                if value is None:
                    obj["metadata"]["annotations"].pop(key, None)
                else:
                    obj["metadata"]["annotations"][key] = value
            self._bump(obj)
            return copy.deepcopy(obj)

    # -- exec
    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput:
        if container == "cilium-agent":
            return self.world.agent_output(self, list(argv))
        url = argv[-1]
        ok = self.world.answers(self, url)
        return ExecOutput(0 if ok else 28, "200" if ok else "000", "")

    def scaled(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in ("scale", "annotate")]


class FakeWorld:
    """Two clusters whose agents list each other's backends while the mesh is connected."""

    def __init__(self, version: str = "1.13") -> None:
        self.version = version
        self.connected = True
        self.stale_local: dict[str, list[str]] = {}
        """Agents of a cluster that keep listing these local backends after a scale-down."""
        self.agent_crash_when_scaled_down: str | None = None
        self.service_failures_while_scaled_down = 0
        """Requests through the service that fail once a cluster has no local backend (a slow failover)."""
        self.clusters = {
            "cluster-1": FakeCluster(self, "cluster-1", "172.25"),
            "cluster-2": FakeCluster(self, "cluster-2", "172.26"),
        }

    def listed(self, cluster: FakeCluster) -> list[tuple[str, bool]]:
        local = cluster.backend_ips() or self.stale_local.get(cluster.name, [])
        remote = (
            [ip for c in self.clusters.values() if c is not cluster for ip in c.backend_ips()] if self.connected else []
        )
        backends = [(ip, True) for ip in local] + [(ip, False) for ip in remote]
        if self.version == "1.18":
            shown = [b for b in backends if b[1]] or backends
            return [(ip, True) for ip, _ in shown]
        return backends

    def agent_output(self, cluster: FakeCluster, argv: list[str]) -> ExecOutput:
        if self.agent_crash_when_scaled_down == cluster.name and cluster.replicas() == 0:
            raise RuntimeError("simulated crash of the drill process")
        backends = self.listed(cluster)
        if self.version == "1.18":
            if "-o" not in argv:
                return ExecOutput(1, "", "text disabled in this fake")
            entry = {
                "spec": {
                    "id": 16,
                    "flags": {"name": "clustermesh-drill", "namespace": NS, "type": "ClusterIP"},
                    "frontend-address": {"ip": "10.240.27.208", "port": 80, "protocol": "TCP", "scope": "external"},
                    "backend-addresses": [
                        {"ip": ip, "port": 80, "protocol": "TCP", "state": "active", "preferred": True}
                        for ip, _ in backends
                    ],
                }
            }
            return ExecOutput(0, json.dumps([entry]), "")
        lines = ["ID   Frontend                Service Type   Backend"]
        if not backends:
            lines.append(f"16   {FRONTEND:<24}ClusterIP      ")
        for i, (ip, preferred) in enumerate(backends, start=1):
            cell = f"{i} => {ip}:80 (active)" + (" (preferred)" if preferred else "")
            lines.append((f"16   {FRONTEND:<24}ClusterIP      " if i == 1 else " " * 44) + cell)
        return ExecOutput(0, "\n".join(lines) + "\n", "")

    def answers(self, cluster: FakeCluster, url: str) -> bool:
        if "clustermesh-drill.svc" in url and not cluster.backend_ips() and self.service_failures_while_scaled_down:
            with cluster.lock:
                if self.service_failures_while_scaled_down > 0:
                    self.service_failures_while_scaled_down -= 1
                    return False
        if "clustermesh-drill.svc" in url:
            return bool(cluster.backend_ips()) or (
                self.connected and any(c.backend_ips() for c in self.clusters.values())
            )
        return self.connected


def drill_env(
    version: str = "1.13", **drill: Any
) -> tuple[FakeWorld, dict[str, FakeCluster], dict[str, ClusterFacts], MeshSpec, Clock]:
    world = FakeWorld(version)
    facts = {name: make_facts(name, version) for name in world.clusters}
    return world, world.clusters, facts, make_spec(**drill), Clock()


def annotation(cluster: FakeCluster) -> str | None:
    return cluster.deployments[BACKEND]["metadata"]["annotations"].get(ORIGINAL_REPLICAS_ANNOTATION)


@pytest.mark.parametrize("version", ["1.13", "1.18"])
def test_a_healthy_fake_mesh_passes_and_every_count_is_back(version: str) -> None:
    world, clients, facts, spec, clock = drill_env(version)
    seen: list[str] = []
    result = run_drill(
        clients,
        facts,
        spec,
        clock=clock,
        sleep=clock.sleep,
        on_phase=lambda p: seen.append(f"{p.name}:{p.cluster}:{p.status}"),
    )
    assert result.status == "passed", result.reason
    assert seen == [
        "recover:None:skipped",
        "workloads:None:passed",
        "baseline:None:passed",
        "failover:cluster-1:passed",
        "restore:cluster-1:passed",
        "failover:cluster-2:passed",
        "restore:cluster-2:passed",
        "rollback:None:passed",
    ]
    assert set(result.failover_seconds) == {"cluster-1", "cluster-2"}
    for cluster in clients.values():
        assert cluster.replicas() == 2 and annotation(cluster) is None
        # the record was written before the scale-down, with the resourceVersion just read
        first_annotate = next(i for i, c in enumerate(cluster.calls) if c[0] == "annotate")
        first_scale = next(i for i, c in enumerate(cluster.calls) if c[0] == "scale")
        assert first_annotate < first_scale
        assert cluster.calls[first_annotate][2] == {ORIGINAL_REPLICAS_ANNOTATION: "2"}
        assert cluster.calls[first_annotate][3] is not None
    failover = next(p for p in result.phases if p.name == "failover")
    assert failover.backends["cluster-1"] and not any(b.local for b in failover.backends["cluster-1"])
    rows = result.table_rows()
    assert rows[3]["phase"] == "failover" and rows[3]["cluster"] == "cluster-1" and rows[3]["failover s"] != ""
    assert result.summary().startswith("failover drill passed: failed over cluster-1 in")


def test_requests_that_fail_during_the_failover_are_counted_and_the_phase_still_passes() -> None:
    world, clients, facts, spec, clock = drill_env()
    drill = Drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    drill.ensure_workloads()
    world.service_failures_while_scaled_down = 3
    phase = drill.failover("cluster-1")
    assert phase.status == "passed", phase.detail
    assert phase.failed_probes == 3  # every failed request, whether the background probe or the final check saw it
    assert phase.probes >= 4
    assert drill.restore("cluster-1").status == "passed"


def test_each_phase_runs_through_run_phase_under_its_name() -> None:
    world, clients, facts, spec, clock = drill_env()
    world.clusters["cluster-1"].create_or_replace(
        {"kind": "Deployment", "metadata": {"name": BACKEND}, "spec": {"replicas": 0}}
    )
    clients["cluster-1"].deployments[BACKEND]["metadata"]["annotations"] = {ORIGINAL_REPLICAS_ANNOTATION: "2"}
    names: list[str] = []

    def run_phase(name: str, call: Callable[[], DrillPhase]) -> DrillPhase:
        names.append(name)
        return call()

    result = run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep, run_phase=run_phase)
    assert names == [
        "recover",
        "workloads",
        "baseline",
        "failover cluster-1",
        "restore cluster-1",
        "failover cluster-2",
        "restore cluster-2",
        "rollback",
    ]
    assert result.status == "passed", result.reason
    assert result.recovered == [
        "restored cluster-1/clustermesh-drill/clustermesh-drill-backend to 2 replicas left at 0 by an earlier drill"
    ]
    assert result.phases[0].status == "passed" and result.phases[0].detail == result.recovered[0]


def test_a_failed_baseline_disrupts_nothing() -> None:
    world, clients, facts, spec, clock = drill_env()
    world.connected = False
    result = run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    assert result.status == "not run"
    assert "nothing disrupted" in result.reason
    assert "missing remote backends 172.26.0.10, 172.26.0.11 (cluster-2)" in result.reason
    assert all(c.scaled() == [] for c in clients.values())
    assert [p.name for p in result.phases] == ["recover", "workloads", "baseline", "rollback"]
    assert result.summary().startswith("failover drill not run: steady state does not hold")


def test_a_crash_after_the_scale_down_is_still_rolled_back() -> None:
    world, clients, facts, spec, clock = drill_env()
    world.agent_crash_when_scaled_down = "cluster-1"
    phases: list[str] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep, on_phase=lambda p: phases.append(p.name))
    c1 = clients["cluster-1"]
    assert ("scale", BACKEND, 0) in c1.calls
    assert c1.calls[-2:] == [("scale", BACKEND, 2), ("annotate", BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: None}, None)]
    assert c1.replicas() == 2 and annotation(c1) is None
    assert phases[-1] == "rollback"
    assert clients["cluster-2"].scaled() == []


def test_a_failover_that_never_happens_fails_restores_and_spares_the_next_cluster() -> None:
    world, clients, facts, spec, clock = drill_env(timeout=5)
    world.stale_local["cluster-1"] = ["172.25.0.10"]
    result = run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    assert result.status == "failed"
    failover = next(p for p in result.phases if p.name == "failover" and p.cluster == "cluster-1")
    assert failover.status == "failed"
    assert "not seen within 5s" in failover.detail and "still lists local backends 172.25.0.10:80" in failover.detail
    assert failover.failover_seconds is None
    assert next(p for p in result.phases if p.name == "restore").status == "passed"
    skipped = next(p for p in result.phases if p.cluster == "cluster-2")
    assert (skipped.name, skipped.status) == ("failover", "skipped")
    assert clients["cluster-2"].scaled() == []
    assert clients["cluster-1"].replicas() == 2 and annotation(clients["cluster-1"]) is None
    assert result.reason.startswith("failover of cluster-1 failed")


def test_a_conflict_on_the_record_means_the_deployment_is_not_scaled() -> None:
    world, clients, facts, spec, clock = drill_env()
    drill = Drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    assert drill.ensure_workloads().status == "passed"
    clients["cluster-1"].conflict_on_patch = True
    phase = drill.failover("cluster-1")
    assert phase.status == "failed"
    assert "HTTP 409" in phase.detail and "not scaled" in phase.detail
    assert not any(c[0] == "scale" for c in clients["cluster-1"].calls)
    assert drill.restore("cluster-1").status == "skipped"


def test_a_second_failover_refuses_while_a_record_is_left() -> None:
    world, clients, facts, spec, clock = drill_env()
    drill = Drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    drill.ensure_workloads()
    assert drill.failover("cluster-1").status == "passed"
    again = drill.failover("cluster-1")
    assert again.status == "failed" and f"{ORIGINAL_REPLICAS_ANNOTATION}=2" in again.detail
    assert annotation(clients["cluster-1"]) == "2"  # the first record is kept, not overwritten with 0


def test_leftovers_of_a_dead_drill_are_restored_first_and_reported() -> None:
    world, clients, facts, spec, clock = drill_env()
    first = Drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    first.ensure_workloads()
    assert first.failover("cluster-2").status == "passed"
    del first  # the process died before restore
    assert clients["cluster-2"].replicas() == 0 and annotation(clients["cluster-2"]) == "2"
    result = run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep, clusters_to_fail=["cluster-1"])
    assert result.recovered == [
        "restored cluster-2/clustermesh-drill/clustermesh-drill-backend to 2 replicas left at 0 by an earlier drill"
    ]
    assert result.status == "passed"
    assert clients["cluster-2"].replicas() == 2 and annotation(clients["cluster-2"]) is None
    assert "first restored 1 deployment(s)" in result.summary()


def test_the_rollback_goes_on_past_a_cluster_it_cannot_reach() -> None:
    world, clients, facts, spec, clock = drill_env()
    drill = Drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    drill.ensure_workloads()
    drill.failover("cluster-2")
    clients["cluster-1"].fail_reads = True
    phase = drill.restore_all()
    assert phase.status == "failed"
    assert "cluster-1: failed to scale clustermesh-drill/clustermesh-drill-backend back" in phase.detail
    assert "connection refused" in phase.detail
    assert "cluster-2: clustermesh-drill/clustermesh-drill-backend 0 → 2 replicas" in phase.detail
    assert clients["cluster-2"].replicas() == 2 and annotation(clients["cluster-2"]) is None


def test_an_unknown_cluster_to_fail_is_refused_before_anything_is_touched() -> None:
    world, clients, facts, spec, clock = drill_env()
    with pytest.raises(DrillError, match="'cluster-9': is not a cluster of this mesh"):
        run_drill(clients, facts, spec, clusters_to_fail=["cluster-9"], clock=clock, sleep=clock.sleep)
    assert all(c.calls == [] for c in clients.values())


def test_agents_that_cannot_be_read_fail_the_baseline_with_their_error() -> None:
    world, clients, facts, spec, clock = drill_env(timeout=3)

    def refuse(namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput:
        if container == "cilium-agent":
            raise KubeApiError("cluster-1", "exec", f"kube-system/pods/{pod}/exec", "forbidden", status=403)
        return ExecOutput(0, "200", "")

    clients["cluster-1"].exec = refuse  # type: ignore[method-assign]
    result = run_drill(clients, facts, spec, clock=clock, sleep=clock.sleep)
    assert result.status == "not run"
    assert "cluster-1/cilium-a: could not read the service list" in result.reason
    assert "service list --clustermesh-affinity`: forbidden" in result.reason
    assert all(c.scaled() == [] for c in clients.values())


# ---------------------------------------------------------------------------------------------
# The gate: whether the drill may start, from what the other checks found


def health_matrix(reachable: int = 2) -> HealthMatrix:
    names = ["cluster-1", "cluster-2"]
    cells = [
        HealthCell(
            src=src, dst=dst, reachable=reachable, expected=2, agents=2, failures=[], failing_paths=[], missing=[]
        )
        for src in names
        for dst in names
    ]
    return HealthMatrix(clusters=names, cells=cells, agent_errors=[])


def all_facts() -> dict[str, ClusterFacts]:
    return {name: make_facts(name, "1.16.5") for name in ("cluster-1", "cluster-2")}


def test_the_gate_lets_a_healthy_mesh_with_every_clusters_facts_through() -> None:
    ok = [
        Finding(level="ok", subject="cluster-1", reason="fine"),
        Finding(level="warning", subject="mesh", reason="skew"),
    ]
    assert drill_gate(make_spec(), all_facts(), prerequisites=ok, health=health_matrix()) is None
    assert drill_gate(make_spec(), all_facts()) is None  # no health matrix: the drill's own baseline judges


def test_the_gate_names_the_clusters_whose_prerequisites_failed() -> None:
    findings = [
        Finding(level="ok", subject="cluster-1", reason="fine"),
        Finding(level="failure", subject="cluster-2", reason="unreachable", fix="check the kubeconfig"),
    ]
    result = drill_gate(make_spec(), {"cluster-1": all_facts()["cluster-1"]}, prerequisites=findings)
    assert result == DrillResult(
        status="not run",
        reason="prerequisites failed for cluster-2: nothing disrupted",
        phases=[],
        recovered=[],
        failover_seconds={},
        failed_probes=0,
    )
    assert result.summary() == "failover drill not run: prerequisites failed for cluster-2: nothing disrupted"


def test_the_gate_refuses_a_cluster_without_facts() -> None:
    result = drill_gate(make_spec(), {"cluster-1": all_facts()["cluster-1"]}, health=health_matrix())
    assert result is not None and result.status == "not run"
    assert result.reason == "not every cluster passed its prerequisites: nothing disrupted"
    assert result.phases == [] and result.probes == 0


def test_the_gate_refuses_an_unhealthy_mesh_and_says_what_the_matrix_saw() -> None:
    matrix = health_matrix(reachable=1)
    result = drill_gate(make_spec(), all_facts(), health=matrix)
    assert result is not None and result.status == "not run"
    assert result.reason == f"the mesh is not healthy ({matrix.summary()}): nothing disrupted"
    assert "cluster-1 → cluster-2: 1/2 reachable" in result.reason


def test_the_gate_reports_failed_prerequisites_before_missing_facts_or_health() -> None:
    failed = [Finding(level="failure", subject="cluster-1", reason="pod CIDRs overlap")]
    result = drill_gate(make_spec(), {}, prerequisites=failed, health=health_matrix(reachable=0))
    assert result is not None and result.reason == "prerequisites failed for cluster-1: nothing disrupted"
    result = drill_gate(make_spec(), {}, health=health_matrix(reachable=0))
    assert result is not None and result.reason == "not every cluster passed its prerequisites: nothing disrupted"
