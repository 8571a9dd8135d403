"""The MCS-API drill (issue 15, section 2) on 1.17, 1.19 and 1.20 sandbox meshes, each built by the real setup flow
with ``cilium.mcs_api: true``.

The setup writes the line's key (``clustermesh.enableMCSAPISupport`` on 1.17, ``clustermesh.mcsapi.enabled`` from
1.19) and the chart turns cilium-config's ``clustermesh-enable-mcs-api`` on; the drill exports its Service, sees
the ServiceImport in every member with every member's backends, fails over through the ServiceImport's address
and ``clusterset.local`` one member at a time and restores. What the test judges is read with the official
``kubernetes`` client (ServiceExport/ServiceImport objects, the agents' ``cilium-dbg service list``, a curl of the
``clusterset.local`` name from the drill's client pod), never through the pipeline's parsers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.stream import stream

from clustermesh.drill import DrillResult
from flows.failover_drill import failover_drill
from flows.mesh_setup import cluster_mesh_setup
from tests.flows.conftest import Kube, edited_spec

NS = "clustermesh-drill"
SERVICE = "clustermesh-drill"
MCS = ("multicluster.x-k8s.io", "v1alpha1", NS)
RECORD = "clustermesh.io/drill-original-replicas"
KEY_PER_LINE = {
    "1.17": {"enableMCSAPISupport": True},
    "1.19": {"mcsapi": {"enabled": True}},
    "1.20": {"mcsapi": {"enabled": True}},
}


def with_mcs(data: dict[str, Any]) -> None:
    data.setdefault("cilium", {})["mcs_api"] = True
    data.setdefault("drill", {})["timeout"] = 120


def written_clustermesh_values(k: Kube) -> dict[str, Any]:
    spec = k.ai()["spec"]
    values = yaml.safe_load(spec["valuesBlock"]) if spec.get("valuesBlock") else spec.get("values") or {}
    return dict(values.get("clustermesh") or {})


def service_import(k: Kube) -> dict[str, Any]:
    return dict(k.custom.get_namespaced_custom_object(*MCS, "serviceimports", SERVICE))


def listed_backends(k: Kube, frontend_ip: str) -> set[str]:
    """Backend IPs every agent of the cluster lists for ``frontend_ip`` (``cilium-dbg service list -o json``)."""
    agreed: set[str] | None = None
    for pod in k.agent_pods():
        seen: set[str] = set()
        for svc in json.loads(k.exec(pod, ["cilium-dbg", "service", "list", "-o", "json"])):
            spec = svc.get("spec") or {}
            if (spec.get("frontend-address") or {}).get("ip") == frontend_ip:
                seen |= {str(b.get("ip")) for b in spec.get("backend-addresses") or []}
        agreed = seen if agreed is None else agreed & seen
    return agreed or set()


def backend_ips(k: Kube) -> set[str]:
    pods = k.core.list_namespaced_pod(NS, label_selector="app=clustermesh-drill-backend").items
    return {p.status.pod_ip for p in pods if p.status.pod_ip}


def curl_clusterset(k: Kube) -> str:
    """The HTTP code of ``<svc>.<ns>.svc.clusterset.local`` from the drill's client pod."""
    pods = k.core.list_namespaced_pod(NS, label_selector="app=clustermesh-drill-client").items
    url = f"http://{SERVICE}.{NS}.svc.clusterset.local:80/"
    own = k8s.CoreV1Api(Kube(k.kubeconfig).api)
    return str(
        stream(
            own.connect_get_namespaced_pod_exec,
            pods[0].metadata.name,
            NS,
            container="client",
            command=["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            stderr=False,
            stdin=False,
            stdout=True,
            tty=False,
        )
    ).strip()


@pytest.mark.parametrize("version", ["1.17", "1.19", "1.20"])
def test_the_mcs_drill_fails_over_through_the_exported_service_and_back(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], version: str
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version=version)
    spec = edited_spec(sb, with_mcs)
    setup = cluster_mesh_setup(spec)
    assert setup.health.healthy, setup.health.render_text()
    k = kubes(sb)
    for name, kube in k.items():
        assert written_clustermesh_values(kube).items() >= KEY_PER_LINE[version].items(), name
        config = kube.core.read_namespaced_config_map("cilium-config", "kube-system").data
        assert config["clustermesh-enable-mcs-api"] == "true", name

    # 1.19: no scenario asked, so the spec's (scale-to-zero) and then mcs, added because cilium.mcs_api is true
    result = failover_drill(spec, scenario=None if version == "1.19" else "mcs")
    assert isinstance(result, DrillResult)

    assert result.status == "passed", result.summary()
    if version == "1.19":
        assert result.scenario == "scale-to-zero"
        assert [line.split(":")[0] for line in result.also] == ["MCS-API drill passed"]
    else:
        assert result.scenario == "mcs"
        assert result.summary().startswith("MCS-API drill passed: failed over cluster-1 in")
    mcs_phases = [(p.name, p.cluster, p.status) for p in result.phases][-6:]
    assert mcs_phases == [
        ("mcs-export", None, "passed"),
        ("failover", "cluster-1", "passed"),
        ("restore", "cluster-1", "passed"),
        ("failover", "cluster-2", "passed"),
        ("restore", "cluster-2", "passed"),
        ("rollback", None, "passed"),
    ]
    assert "clusterset.local" in result.phases[-6].detail
    assert all(p.failover_seconds is not None and p.probes > 0 for p in result.phases[-5:] if p.name == "failover")

    everyone = set().union(*(backend_ips(kube) for kube in k.values()))
    assert len(everyone) == 4  # 2 backends per member, back after the drill
    for name, kube in k.items():
        assert kube.custom.get_namespaced_custom_object(*MCS, "serviceexports", SERVICE)["metadata"]["name"] == SERVICE
        imported = service_import(kube)
        assert sorted(c["cluster"] for c in imported["status"]["clusters"]) == ["cluster-1", "cluster-2"], name
        [address] = imported["spec"]["ips"]
        assert listed_backends(kube, address) == everyone, name  # every member's endpoints behind the import
        assert curl_clusterset(kube) == "200", name
        backend = k8s.AppsV1Api(kube.api).read_namespaced_deployment("clustermesh-drill-backend", NS)
        assert (backend.spec.replicas, (backend.metadata.annotations or {}).get(RECORD)) == (2, None), name


def test_a_line_without_mcs_api_is_refused_naming_the_field_before_anything_is_written(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    before = {name: kube.ai()["metadata"]["generation"] for name, kube in k.items()}

    state = cluster_mesh_setup(edited_spec(sb, with_mcs), return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception, match=r"cilium\.mcs_api.*Cilium 1\.16 has no Multi-Cluster Services API"):
        state.result()
    assert {name: kube.ai()["metadata"]["generation"] for name, kube in k.items()} == before


def test_the_mcs_drill_does_not_run_where_mcs_api_is_off_and_names_the_field(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    from clustermesh.drill import run_drill
    from tests.helpers import build_mesh

    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    spec, clients, facts = build_mesh(sb, 60)  # the guide's steps without cilium.mcs_api
    try:
        result = run_drill(clients, facts, spec, scenario="mcs")
    finally:
        for c in clients.values():
            c.close()

    assert result.status == "not run"
    assert "MCS-API is off in cluster-1 (cilium-config clustermesh-enable-mcs-api: false)" in result.reason
    assert "set cilium.mcs_api: true in the spec and run the setup" in result.reason
    assert [p.name for p in result.phases] == ["recover", "workloads", "baseline", "rollback"]
    for name, kube in kubes(sb).items():
        exports = kube.custom.list_namespaced_custom_object(*MCS, "serviceexports")["items"]
        assert exports == [], name  # nothing exported, nothing scaled
        backend = k8s.AppsV1Api(kube.api).read_namespaced_deployment("clustermesh-drill-backend", NS)
        assert (backend.spec.replicas, (backend.metadata.annotations or {}).get(RECORD)) == (2, None), name
