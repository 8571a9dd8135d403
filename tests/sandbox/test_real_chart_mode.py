"""The sandbox in real-chart mode (``sandbox up --charts DIR``): KKP installs the real Cilium chart.

Each cluster's ``cilium`` ApplicationInstallation is rendered by Helm's engine with the chart of that exact
version from ../shared/charts; what it renders (the mesh Secrets, hostAliases) is what the simulated agents
dial with, and Helm's own refusal is KKP's install failure. Values are written by hand here, as the setup
flow writes them, and judged by the agents' connections (``sandbox.mesh.connection``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from sandbox import pki
from sandbox.chart import ChartError
from sandbox.mesh import ClusterState, connection
from sandbox.real_chart import ChartRenderer
from sandbox.server import Sandbox, SandboxError
from sandbox.store import Store
from sandbox.versions import default_kkp_for_line
from sandbox.world import World, deep_merge
from tests.conftest import find_shared
from tests.sandbox.test_world import ai, applied, edit_values, failed, idle, new_world, run, secret, wait_for

pytest.importorskip("helm_python", reason="Helm's engine (the optional `charts` dependency group) is not installed")

SHARED = find_shared()
CHARTS = None if SHARED is None else SHARED / "charts"
pytestmark = pytest.mark.skipif(
    CHARTS is None or not any(CHARTS.glob("cilium-*.tgz")), reason="shared/charts (Cilium's chart archives) not found"
)
NS = "kube-system"
TLS_METHOD = {"1.13": "cronJob", "1.16": "helm", "1.19": "cronJob"}  # what the setup flow picks per line


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def real_world(n: int, line: str) -> World:
    assert CHARTS is not None
    return new_world(n, cilium_version=line, kkp_version=default_kkp_for_line()[line], charts=CHARTS)


def enable_values(index: int, line: str, ca: pki.KeyPair | None) -> dict[str, Any]:
    """The guide's step 2/4 snippet for ``cluster-<index>``, with the shared CA where the line reads it."""
    values: dict[str, Any] = {
        "cluster": {"name": f"cluster-{index}", "id": index},
        "clustermesh": {
            "useAPIServer": True,
            "config": {"enabled": True},
            "apiserver": {"tls": {"auto": {"method": TLS_METHOD[line]}}, "service": {"type": "LoadBalancer"}},
        },
    }
    if ca is not None:
        given = {"ca": {"cert": b64(ca.cert_pem), "key": b64(ca.key_pem)}}
        placement = {"clustermesh": {"apiserver": {"tls": given}}} if line == "1.13" else {"tls": given}
        values = deep_merge(values, placement)
    return values


def lb_ip(store: Store) -> str | None:
    svc = store.try_get("v1/services", NS, "clustermesh-apiserver")
    ingress = (svc or {}).get("status", {}).get("loadBalancer", {}).get("ingress") or []
    return str(ingress[0]["ip"]) if ingress else None


def all_applied(world: World) -> bool:
    return all(applied(c.store) for c in world.clusters)


async def enable_all(world: World, line: str, ca: pki.KeyPair | None) -> None:
    for c in world.clusters:
        edit_values(c.store, enable_values(c.index, line, ca))
    await wait_for(lambda: all_applied(world) and all(lb_ip(c.store) for c in world.clusters), what="mesh enabled")
    await idle(world)


def entry(peer: Any, **where: Any) -> dict[str, Any]:
    """One clusters[] entry for ``peer`` with its remote certificate, as the setup flow writes it."""
    remote = secret(peer.store, "clustermesh-apiserver-remote-cert")
    assert remote is not None, f"{peer.name} has no clustermesh-apiserver-remote-cert"
    return {"name": peer.name, "port": 2379, **where, "tls": {"cert": remote["tls.crt"], "key": remote["tls.key"]}}


async def point_at_peers(world: World, make_entry: Any) -> None:
    for c in world.clusters:
        peers = [make_entry(p) for p in world.clusters if p is not c]
        edit_values(c.store, {"clustermesh": {"config": {"clusters": peers}}})
    await wait_for(lambda: all_applied(world), what="peers applied")
    await idle(world)


def links(world: World) -> dict[tuple[str, str], tuple[bool, str]]:
    states = [ClusterState(c.name, c.store) for c in world.clusters]
    out = {}
    for a in world.clusters:
        for b in world.clusters:
            if a is not b:
                conn = connection(states, None, a.name, b.name)
                out[(a.name, b.name)] = (conn.ok, conn.reason)
    return out


def etcd_config(store: Store, secret_name: str, peer: str) -> dict[str, Any]:
    data = secret(store, secret_name)
    assert data is not None, f"no Secret {secret_name}"
    parsed = yaml.safe_load(base64.b64decode(data[peer]))
    assert isinstance(parsed, dict)
    return parsed


@pytest.mark.parametrize("line", ["1.13", "1.16", "1.19"])
def test_three_clusters_with_a_shared_ca_connect_with_the_real_chart(line: str) -> None:
    async def body() -> None:
        world = real_world(3, line)
        await enable_all(world, line, pki.make_ca("shared mesh CA"))
        await point_at_peers(world, lambda p: entry(p, address=lb_ip(p.store)))

        assert isinstance(world.renderer, ChartRenderer) and world.renderer.renders >= 9
        result = links(world)
        assert all(ok for ok, _ in result.values()), result
        # what the agents dial with is what the real chart rendered: with KVStoreMesh (1.16+) the agents'
        # Secret points at the local apiserver and cilium-kvstoremesh at the peer's address
        s1, ip2 = world.clusters[0].store, lb_ip(world.clusters[1].store)
        if line == "1.13":
            assert etcd_config(s1, "cilium-clustermesh", "cluster-2")["endpoints"] == [f"https://{ip2}:2379"]
            assert secret(s1, "cilium-kvstoremesh") is None
        else:
            agents = etcd_config(s1, "cilium-clustermesh", "cluster-2")
            assert agents["endpoints"] == ["https://clustermesh-apiserver.kube-system.svc:2379"]
            assert etcd_config(s1, "cilium-kvstoremesh", "cluster-2")["endpoints"] == [f"https://{ip2}:2379"]

    run(body)


def test_113_without_the_shared_ca_in_clustermesh_apiserver_tls_ca_never_connects() -> None:
    async def body() -> None:
        world = real_world(2, "1.13")
        await enable_all(world, "1.13", None)
        await point_at_peers(world, lambda p: entry(p, address=lb_ip(p.store)))

        data = secret(world.clusters[0].store, "cilium-clustermesh")
        assert data is not None and data["cluster-2.etcd-client-ca.crt"] == ""  # the chart copies the CA value
        for (src, dst), (ok, reason) in links(world).items():
            assert not ok, f"{src} → {dst} connected without a CA"
            assert "certificate signed by unknown authority" in reason

    run(body)


def test_a_value_the_schema_refuses_fails_the_installation_with_helms_message() -> None:
    async def body() -> None:
        world = real_world(1, "1.16")
        s = world.clusters[0].store
        edit_values(s, deep_merge(enable_values(1, "1.16", None), {"cluster": {"id": "2"}}))
        ready = await wait_for(lambda: failed(s), what="the installation to fail")
        assert "values don't meet the specifications of the schema" in ready["message"]
        assert "at '/cluster/id': got string, want integer" in ready["message"]
        assert ai(s)["status"]["helmRelease"]["info"]["status"] == "deployed"  # the earlier release stays

    run(body)


@pytest.mark.parametrize("line", ["1.13", "1.16"])
def test_an_entry_with_ips_and_an_address_dials_through_host_aliases(line: str) -> None:
    async def body() -> None:
        world = real_world(2, line)
        await enable_all(world, line, pki.make_ca("shared mesh CA"))
        # the address leads nowhere: only the hostAlias of <name>.mesh.cilium.io to the ip reaches the peer
        await point_at_peers(world, lambda p: entry(p, address="198.51.100.7", ips=[lb_ip(p.store)]))

        s1, ip2 = world.clusters[0].store, lb_ip(world.clusters[1].store)
        config = etcd_config(s1, "cilium-clustermesh" if line == "1.13" else "cilium-kvstoremesh", "cluster-2")
        assert config["endpoints"] == ["https://cluster-2.mesh.cilium.io:2379"]
        agents, apiserver = ("apps/v1/daemonsets", "cilium"), ("apps/v1/deployments", "clustermesh-apiserver")
        kind, name = agents if line == "1.13" else apiserver  # with KVStoreMesh the apiserver dials the peers
        aliases = s1.get(kind, NS, name)["spec"]["template"]["spec"]["hostAliases"]
        assert {"ip": ip2, "hostnames": ["cluster-2.mesh.cilium.io"]} in aliases
        result = links(world)
        assert all(ok for ok, _ in result.values()), result

    run(body)


@pytest.mark.parametrize(("line", "deadlocks"), [("1.16", True), ("1.19", False)])
def test_certgen_as_a_helm_hook_is_read_from_the_real_chart(line: str, deadlocks: bool) -> None:
    """1.14-1.18 render the cronJob's first certgen Job as a post-install hook: ``--wait`` never sees it run."""

    async def body() -> None:
        world = real_world(1, line)
        s = world.clusters[0].store
        values = enable_values(1, line, None)
        values["clustermesh"]["apiserver"]["tls"]["auto"]["method"] = "cronJob"
        edit_values(s, values)
        if deadlocks:
            ready = await wait_for(lambda: failed(s), what="the Helm timeout")
            assert "context deadline exceeded" in ready["message"]
            assert secret(s, "clustermesh-apiserver-admin-cert") is None
        else:
            await wait_for(lambda: applied(s) and ai(s)["metadata"]["generation"] > 1, what="applied")
            assert secret(s, "clustermesh-apiserver-admin-cert") is not None

    run(body)


def test_the_sandbox_server_runs_the_real_charts_and_refuses_a_folder_without_the_version(
    sandbox_factory: Any, tmp_path: Any
) -> None:
    assert CHARTS is not None
    sb = sandbox_factory(clusters=2, cilium_version="1.19", charts=CHARTS)
    assert isinstance(sb.world.renderer, ChartRenderer) and sb.world.renderer.renders == 2
    assert json.loads((sb.directory / "sandbox.json").read_text())["charts"] == str(CHARTS.resolve())

    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "cilium-1.16.0.tgz").write_bytes(b"")
    with pytest.raises(SandboxError) as err:
        Sandbox(tmp_path / "run", cilium_version="1.16", charts=tmp_path / "charts")
    assert str(tmp_path / "charts") in str(err.value) and "versions there: 1.16.0" in str(err.value)
    assert "cilium-1.16.9.tgz" in str(err.value)


# ---- the renderer on its own -----------------------------------------------------------------------


def test_a_missing_version_names_the_folder_and_the_versions_there() -> None:
    assert CHARTS is not None
    with pytest.raises(ChartError) as err:
        ChartRenderer(CHARTS).render("1.16.5", {})
    assert str(CHARTS) in err.value.message and "1.16.9" in err.value.message and "1.16.5" in err.value.message


@pytest.mark.parametrize(
    ("version", "placement", "honoured"),
    [
        ("1.13.8", "clustermesh.apiserver.tls.ca", "clustermesh.apiserver.tls.ca"),
        # 1.13.8 signs with tls.ca as a fallback (its agents still trust only clustermesh.apiserver.tls.ca)
        ("1.13.8", "tls.ca", "tls.ca"),
        ("1.16.9", "tls.ca", "tls.ca"),
        ("1.15.7", "clustermesh.apiserver.tls.ca", ""),  # ignored by 1.15.0-1.15.7
    ],
)
def test_the_chart_decides_which_ca_key_it_honours(version: str, placement: str, honoured: str) -> None:
    assert CHARTS is not None
    ca = pki.make_ca("given")
    given: dict[str, Any] = {"cert": b64(ca.cert_pem), "key": b64(ca.key_pem)}
    for key in reversed(placement.split(".")):
        given = {key: given}
    values = deep_merge(
        enable_values(1, "1.16", None), {"kubeProxyReplacement": "strict" if version < "1.14" else "true"}
    )
    r = ChartRenderer(CHARTS).render(version, deep_merge(values, given))
    assert r.ca_source == honoured
    assert r.ca_cert == (b64(ca.cert_pem) if honoured else "")


def test_renders_are_cached_per_version_and_values() -> None:
    assert CHARTS is not None
    renderer = ChartRenderer(CHARTS)
    values = {"cluster": {"name": "cluster-1", "id": 1}, "kubeProxyReplacement": "true"}
    first = renderer.render("1.16.9", values)
    assert renderer.render("1.16.9", dict(values)) is first
    assert renderer.renders == 1
    renderer.render("1.16.9", deep_merge(values, {"cluster": {"id": 2}}))
    assert renderer.renders == 2
    with pytest.raises(ChartError):
        renderer.render("1.16.9", deep_merge(values, {"cluster": {"id": "2"}}))
    with pytest.raises(ChartError):  # a refusal is cached too, and raised again
        renderer.render("1.16.9", deep_merge(values, {"cluster": {"id": "2"}}))
    assert renderer.renders == 3
