"""Every Cilium line the sandbox imitates (1.13 to 1.20), through the official client, and many clusters."""

from __future__ import annotations

import gc
import json
import re
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream

from sandbox.server import CILIUM_LINES, DEFAULT_KKP_FOR_LINE, Sandbox
from tests.conftest import kube_client

GROUP, VERSION, PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"
ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}:\d+(/TCP|/UDP)?")


def line_tuple(line: str) -> tuple[int, int]:
    major, minor = line.split(".")
    return int(major), int(minor)


def agent_exec(kubeconfig: Any, pod: str, argv: list[str]) -> tuple[int, str, str]:
    """Exec in ``cilium-agent`` with its own ApiClient; (exit code, stdout, stderr)."""
    api = kube_client(kubeconfig)
    try:
        ws = stream(
            client.CoreV1Api(api).connect_get_namespaced_pod_exec,
            pod,
            "kube-system",
            container="cilium-agent",
            command=argv,
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        ws.run_forever(timeout=20)
        out, err = ws.read_stdout() or "", ws.read_stderr() or ""
        code = ws.returncode
        ws.close()
        del ws
        return int(code if code is not None else -1), out, err
    finally:
        api.close()
        # The client's TLS socket is freed only when collected; until then the server keeps the
        # connection and its shutdown waits for it (timeout_graceful_shutdown).
        gc.collect()


@pytest.fixture(scope="module", params=CILIUM_LINES)
def versioned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, str]]:
    """A one-cluster sandbox per Cilium line (read-only tests share it); (line, kubeconfig, agent pod)."""
    line: str = request.param
    with Sandbox(
        tmp_path_factory.mktemp(f"cilium-{line}"), clusters=1, nodes=1, cilium_version=line, time_scale=0
    ) as sb:
        kubeconfig = sb.endpoints[0].kubeconfig
        assert kubeconfig is not None
        api = kube_client(kubeconfig)
        try:
            pods = client.CoreV1Api(api).list_namespaced_pod("kube-system", label_selector="k8s-app=cilium").items
        finally:
            api.close()
        assert pods, "no cilium agent pod"
        yield line, kubeconfig, pods[0].metadata.name


def test_application_installation_matches_the_line_and_kkp_default(versioned: tuple[str, Path, str]) -> None:
    line, kubeconfig, _ = versioned
    api = kube_client(kubeconfig)
    try:
        ai = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium")
    finally:
        api.close()
    spec = ai["spec"]
    assert spec["applicationRef"]["version"].startswith(line + "."), spec["applicationRef"]
    kkp = line_tuple(DEFAULT_KKP_FOR_LINE[line])
    if kkp >= (2, 25):
        assert not spec.get("values"), spec.get("values")
        values = yaml.safe_load(spec["valuesBlock"])
    else:
        assert not spec.get("valuesBlock")
        values = spec["values"]
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"]
    assert ai["status"]["applicationVersion"]["version"] == spec["applicationRef"]["version"]


def test_cilium_health_json_parses(versioned: tuple[str, Path, str]) -> None:
    _, kubeconfig, pod = versioned
    code, out, err = agent_exec(kubeconfig, pod, ["cilium-health", "status", "-o", "json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["local"]["name"]
    assert [n["name"] for n in doc["nodes"]] == [doc["local"]["name"]]  # one node, itself
    assert doc["nodes"][0]["host"]["primary-address"]["ip"]


def test_cilium_dbg_exists_exactly_from_115(versioned: tuple[str, Path, str]) -> None:
    line, kubeconfig, pod = versioned
    code, out, err = agent_exec(kubeconfig, pod, ["cilium-dbg", "status"])
    if line_tuple(line) >= (1, 15):
        assert code == 0, err
        assert out.strip()
    else:
        assert code == 127, (code, out, err)
        assert "cilium-dbg" in err and "not found" in err
    # `cilium` answers on every line (1.15+ keeps it as a link to cilium-dbg)
    code, _, err = agent_exec(kubeconfig, pod, ["cilium", "status"])
    assert code == 0, err


def test_service_list_addresses_carry_the_protocol_exactly_from_117(versioned: tuple[str, Path, str]) -> None:
    line, kubeconfig, pod = versioned
    code, out, err = agent_exec(kubeconfig, pod, ["cilium", "service", "list"])
    assert code == 0, err
    addresses = ADDRESS.findall(out)
    assert addresses, out  # the API server's and coredns' frontends are always there
    if line_tuple(line) >= (1, 17):
        assert all(proto in ("/TCP", "/UDP") for proto in addresses), out
        assert "/TCP" in addresses, out
    else:
        assert not any(addresses), out


def test_a_sandbox_of_16_clusters_answers_on_every_api(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=16, nodes=2, time_scale=0.0)
    assert len(sb.endpoints) == 16
    assert len({ep.port for ep in sb.endpoints}) == 16

    def version(ep: Any) -> dict[str, Any]:
        ctx = ssl.create_default_context(cadata=ep.ca.cert_pem.decode())
        req = urllib.request.Request(ep.url + "/version", headers={"Authorization": f"Bearer {ep.token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
            return json.loads(resp.read())  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(version, sb.endpoints))
    assert all(a.get("gitVersion", "").startswith("v1.") for a in answers), answers
    mesh = yaml.safe_load((sb.directory / "mesh.yaml").read_text())
    assert [c["id"] for c in mesh["clusters"]] == list(range(1, 17))
    assert len({c["pod_cidrs"][0] for c in mesh["clusters"]}) == 16
    # the last cluster is populated like the first: its nodes and agents exist
    api = kube_client(sb.endpoints[-1].kubeconfig)
    try:
        core = client.CoreV1Api(api)
        nodes = json.loads(core.list_node(_preload_content=False).data)["items"]
        assert len(nodes) == 2
        internal = [a["address"] for n in nodes for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        assert all(ip.startswith("10.16.0.") for ip in internal) and len(internal) == 2, internal
        assert len(core.list_namespaced_pod("kube-system", label_selector="k8s-app=cilium").items) == 2
    finally:
        api.close()


def test_the_official_client_reads_nodes(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=1, nodes=1)
    api = kube_client(sb.endpoints[0].kubeconfig)
    try:
        nodes = client.CoreV1Api(api).list_node().items
    finally:
        api.close()
    assert len(nodes) == 1
    assert nodes[0].status.node_info.machine_id
