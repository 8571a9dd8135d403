"""The sandbox's 1.20 line: global namespaces decide which global services are shared, and every output
an agent prints parses with the pipeline's parsers.

The mesh tests build two peered clusters object by object (``tests/sandbox/test_mesh.py``'s labs), so
each states exactly which namespace is global where; the last tests exec in a real 1.20 sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from clustermesh.cilium import parse_health, parse_service_list
from sandbox.agentcli.services import _format_service_list
from sandbox.cilium_cli import run_agent_command
from sandbox.cilium_model import AgentSnapshot
from sandbox.mesh import MeshFaults, agent_snapshot
from sandbox.server import DEFAULT_KKP_FOR_LINE, Sandbox
from sandbox.versions import DEFAULT_GLOBAL_NAMESPACE_KEY, LINES, NAMESPACE_GLOBAL_ANNOTATION
from tests.conftest import kube_client
from tests.sandbox.test_mesh import NOW, Lab, nginx_entry, own_ca_pair, world
from tests.sandbox.test_versions import agent_exec

V120 = "1.20.0"
GLOBAL = {"service.cilium.io/global": "true"}


def namespace(lab: Lab, name: str, global_marker: str | None = None) -> None:
    annotations = {} if global_marker is None else {NAMESPACE_GLOBAL_ANNOTATION: global_marker}
    lab.store.create("v1/namespaces", {"metadata": {"name": name, "annotations": annotations}})


def shop_pair(
    version: str = V120, *, markers: tuple[str | None, str | None] = (None, None), default_global: str | None = None
) -> tuple[Lab, Lab]:
    """Two peered clusters, each with namespace ``shop`` (its ``clustermesh.cilium.io/global`` marker from
    ``markers``) holding a global nginx Service with two pods."""
    c1, c2 = own_ca_pair(version)
    for lab, marker, start in ((c1, markers[0], 10), (c2, markers[1], 30)):
        if default_global is not None:
            lab.set_config(**{DEFAULT_GLOBAL_NAMESPACE_KEY: default_global})
        namespace(lab, "shop", marker)
        lab.deploy("nginx", 2, namespace="shop", start=start)
        lab.service("nginx", GLOBAL, namespace="shop")
    return c1, c2


def backend_ips(lab: Lab, labs: tuple[Lab, Lab]) -> list[str]:
    return [b.ip for b in nginx_entry(lab, labs).backends]


LOCAL_1, REMOTE_1 = ["172.25.0.10", "172.25.1.11"], ["172.26.0.30", "172.26.1.31"]


def test_the_120_line_defaults_to_the_shared_chart_and_no_kkp_default() -> None:
    facts = LINES[(1, 20)]
    assert facts.kkp_patch == 0 and facts.default_kkp is None  # no KKP release ships 1.20 as its default
    assert facts.sandbox_kkp == "2.31" == DEFAULT_KKP_FOR_LINE["1.20"]
    assert facts.global_namespaces and not facts.global_services_in_status and facts.cilium_dbg


CHARTS = Path(__file__).resolve().parents[2].parent / "shared" / "charts"


@pytest.mark.skipif(not CHARTS.is_dir(), reason="../shared/charts (the real Cilium charts) is not here")
def test_every_lines_default_patch_is_a_chart_in_shared() -> None:
    """Both sandbox modes (built-in chart, real chart) then run the same version."""
    missing = [f"{a}.{b}.{f.kkp_patch}" for (a, b), f in LINES.items()]
    missing = [v for v in missing if not (CHARTS / f"cilium-{v}.tgz").is_file()]
    assert not missing, f"default patches without a chart in {CHARTS}: {missing}"


def test_in_a_global_namespace_by_default_the_service_is_shared() -> None:
    c1, c2 = shop_pair()  # no marker, cilium-config default (true)
    assert backend_ips(c1, (c1, c2)) == LOCAL_1 + REMOTE_1


@pytest.mark.parametrize("local_marker, remote_marker", [("false", None), (None, "false"), ("false", "false")])
def test_a_non_global_namespace_on_either_side_keeps_the_service_local(
    local_marker: str | None, remote_marker: str | None
) -> None:
    c1, c2 = shop_pair(markers=(local_marker, remote_marker))
    assert backend_ips(c1, (c1, c2)) == LOCAL_1


def test_with_default_global_namespace_false_only_annotated_namespaces_are_global() -> None:
    c1, c2 = shop_pair(default_global="false")
    assert backend_ips(c1, (c1, c2)) == LOCAL_1
    c1, c2 = shop_pair(default_global="false", markers=("true", "true"))
    assert backend_ips(c1, (c1, c2)) == LOCAL_1 + REMOTE_1


def test_before_120_the_namespace_marker_means_nothing() -> None:
    c1, c2 = shop_pair("1.19.4", markers=("false", "false"))
    assert backend_ips(c1, (c1, c2)) == LOCAL_1 + REMOTE_1


def test_a_global_service_in_a_non_global_namespace_is_not_counted_as_shared_by_the_peer() -> None:
    c1, c2 = shop_pair(markers=(None, "false"))
    peer = agent_snapshot(world(c1, c2), None, c1.name, c1.nodes()[0], NOW).peers[0]
    shared_in_global_ns = agent_snapshot(world(*shop_pair()), None, c1.name, c1.nodes()[0], NOW).peers[0]
    assert peer.ready and shared_in_global_ns.ready
    assert shared_in_global_ns.num_services == peer.num_services + 1


# ---- every 1.20 output parses -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot() -> AgentSnapshot:
    c1, c2 = shop_pair()
    return agent_snapshot(world(c1, c2), None, c1.name, c1.nodes()[0], NOW)


def run(snapshot: AgentSnapshot, *argv: str) -> str:
    code, out, err = run_agent_command(snapshot, list(argv))
    assert code == 0, err
    return out


@pytest.mark.parametrize("argv", [(), ("--verbose",), ("-o", "json")])
def test_cilium_health_status_of_120_parses_with_every_node_reachable(snapshot: AgentSnapshot, argv: tuple) -> None:
    status = parse_health(run(snapshot, "cilium-health", "status", *argv))
    names = sorted(n.name for n in status.nodes)
    assert names == [f"cluster-{c}/cluster-{c}-node-{i}" for c in (1, 2) for i in (0, 1)]
    assert all(n.reachable for n in status.nodes), [n.failures for n in status.nodes]
    assert status.local == "cluster-1/cluster-1-node-0"
    assert status.probe_interval is not None  # the 1.18+ layout carries on


@pytest.mark.parametrize("argv", [("--clustermesh-affinity",), ("-o", "json")])
def test_cilium_dbg_service_list_of_120_parses_with_the_remote_backends(snapshot: AgentSnapshot, argv: tuple) -> None:
    services = parse_service_list(run(snapshot, "cilium-dbg", "service", "list", *argv))
    nginx = next(s for s in services if s.frontend.endswith(":80") and s.type == "ClusterIP" and len(s.backends) == 4)
    assert sorted(b.ip for b in nginx.backends) == LOCAL_1 + REMOTE_1
    assert nginx.id is not None and nginx.protocol == "TCP"
    assert all(b.preferred for b in nginx.backends)  # cilium#43681, open on 1.20


def test_cilium_status_of_120_has_no_global_services_count(snapshot: AgentSnapshot) -> None:
    text = run(snapshot, "cilium-dbg", "status")
    mesh = next(line for line in text.splitlines() if line.startswith("ClusterMesh:"))
    assert mesh.split(None, 1)[1] == "1/1 remote clusters ready"
    assert "num-global-services" not in json.loads(run(snapshot, "cilium-dbg", "status", "-o", "json"))["cluster-mesh"]


# ---- a 1.20 sandbox cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_120(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    with Sandbox(
        tmp_path_factory.mktemp("cilium-1.20"), clusters=1, nodes=2, cilium_version="1.20", time_scale=0
    ) as sb:
        kubeconfig = sb.endpoints[0].kubeconfig
        assert kubeconfig is not None
        api = kube_client(kubeconfig)
        try:
            pods = client.CoreV1Api(api).list_namespaced_pod("kube-system", label_selector="k8s-app=cilium").items
        finally:
            api.close()
        yield kubeconfig, pods[0].metadata.name


def test_a_120_sandbox_runs_120_0_and_renders_the_global_namespace_default(sandbox_120: tuple[Path, str]) -> None:
    kubeconfig, _ = sandbox_120
    api = kube_client(kubeconfig)
    try:
        config = client.CoreV1Api(api).read_namespaced_config_map("cilium-config", "kube-system").data
        ai = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium"
        )
    finally:
        api.close()
    assert ai["spec"]["applicationRef"]["version"] == V120
    assert config[DEFAULT_GLOBAL_NAMESPACE_KEY] == "true"


@pytest.mark.parametrize(
    "argv",
    [
        ["cilium-health", "status"],
        ["cilium-health", "status", "--verbose"],
        ["cilium-health", "status", "-o", "json"],
        ["cilium-dbg", "service", "list"],
        ["cilium-dbg", "service", "list", "-o", "json"],
    ],
)
def test_the_120_agents_outputs_parse(sandbox_120: tuple[Path, str], argv: list[str]) -> None:
    kubeconfig, pod = sandbox_120
    code, out, err = agent_exec(kubeconfig, pod, argv)
    assert code == 0, err
    if argv[0] == "cilium-health":
        status = parse_health(out)
        assert len(status.nodes) == 2 and all(n.reachable for n in status.nodes), status
    else:
        services = parse_service_list(out)
        dns = [s for s in services if s.frontend == "10.240.16.10:53"]  # kube-dns, over UDP and TCP
        assert sorted(s.protocol for s in dns) == ["TCP", "UDP"] and all(s.backends for s in dns), services


# ---- the reconstructed 1.20 fixtures are what the sandbox prints ------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cilium"
FIXED_TIME = "2026-08-03T09:41:07Z"  # the probe time printed in the fixtures
RECONSTRUCTED = {
    "health-1.20-remote-fail.txt": ("cilium-health", "status"),
    "health-1.20-remote-fail-verbose.txt": ("cilium-health", "status", "--verbose"),
    "health-1.20-remote-fail.json": ("cilium-health", "status", "-o", "json"),
    "service-list-1.20-affinity.txt": ("cilium-dbg", "service", "list", "--clustermesh-affinity"),
    "service-list-1.20-affinity.json": ("cilium-dbg", "service", "list", "-o", "json"),
}


def reconstructed_outputs() -> dict[str, str]:
    """cluster-1's agent on 1.20.0 in the ``shop`` pair with VXLAN (udp/8472) blocked between the clusters,
    plus the ID-less table of the same services (``service-list-noid-affinity.txt``)."""
    c1, c2 = shop_pair()
    faults = MeshFaults()
    faults.block(c1.name, c2.name, "udp/8472")
    now = NOW.replace(microsecond=0)  # the labs' certificates are valid from now on: print a fixed time instead
    snap = agent_snapshot(world(c1, c2), faults, c1.name, c1.nodes()[0], now)
    out = {name: run(snap, *argv) for name, argv in RECONSTRUCTED.items()}
    out["service-list-noid-affinity.txt"] = _format_service_list(snap.services, (1, 20), True, id_column=False)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {name: text.replace(stamp, FIXED_TIME) for name, text in out.items()}


def test_the_reconstructed_120_fixtures_are_exactly_what_the_sandbox_prints() -> None:
    for name, text in reconstructed_outputs().items():
        assert (FIXTURES / name).read_text(encoding="utf-8") == text, name
