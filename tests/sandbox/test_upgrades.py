"""Issue 14: the sandbox's KKP upgrades one cluster's Cilium at a time (a new
``spec.applicationRef.version``, the same values), and a mixed-version mesh stays connected throughout.

Each mesh is set up with the values the setup flow writes (``clustermesh.values.render_mesh_values``, shared
CA, first without and then with the peers' endpoints). A ``tests.probe.ConnectivityProbe`` samples every
member's view of every other member at 2 Hz of the sandbox clock through the sandbox's own datapath verdict
while a cluster is upgraded; its worst drop must be zero samples. Built-in chart always; the real charts of
../shared/charts too when they and Helm's engine are there.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from clustermesh.cilium import profile_for
from clustermesh.values import CaMaterial, PeerEntry, render_mesh_values
from sandbox import pki
from sandbox.mesh import ClusterState, connection
from sandbox.resources import builtin_types
from sandbox.store import Store
from sandbox.versions import NEWEST_KKP
from sandbox.world import World
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_values import mesh
from tests.probe import ConnectivityProbe
from tests.sandbox.test_runner import GROUP, PLURAL, VERSION, cli, sandbox_process  # noqa: F401, F811 - a fixture
from tests.sandbox.test_world import agent_pods, ai, applied, edit_values, failed, run, secret, wait_for

NS = "kube-system"
CHARTS = CHARTS_DIR
REAL = pytest.param("real", marks=[charts_mark(), engine_mark])
MODES = ["builtin", REAL]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def charts_for(mode: str) -> Path | None:
    return CHARTS if mode == "real" else None


def lb_ip(world: World, name: str) -> str | None:
    svc = world.cluster(name).store.try_get("v1/services", NS, "clustermesh-apiserver")
    ingress = (svc or {}).get("status", {}).get("loadBalancer", {}).get("ingress") or []
    return str(ingress[0]["ip"]) if ingress else None


def links(world: World) -> dict[tuple[str, str], str]:
    """Every pair's cluster-level verdict ("" when connected): the mesh is healthy when all are ""."""
    states = [ClusterState(c.name, c.store) for c in world.clusters]
    out = {}
    for a in world.clusters:
        for b in world.clusters:
            if a is not b:
                conn = connection(states, None, a.name, b.name)
                out[(a.name, b.name)] = "" if conn.ok else conn.reason
    return out


def healthy(world: World) -> bool:
    return all(reason == "" for reason in links(world).values())


def installed(world: World, name: str, version: str) -> bool:
    """KKP reports ``version`` deployed and every agent runs its image, ready."""
    store = world.cluster(name).store
    status = ai(store).get("status", {})
    agents = agent_pods(store)
    return (
        applied(store)
        and status.get("applicationVersion", {}).get("version") == version
        and bool(agents)
        and all(p["spec"]["containers"][0]["image"].endswith(f":v{version}") for p in agents)
        and all(p["status"].get("conditions") and p["status"]["conditions"][-1]["status"] == "True" for p in agents)
    )


async def mesh_world(versions: list[str], mode: str, *, nodes: int = 3, ca_mode: str = "shared") -> World:
    """Clusters on ``versions`` meshed as the setup flow leaves them (shared CA unless ``ca_mode`` says
    ``auto``: per peer, what the setup writes by default from 1.14; LoadBalancer endpoints).

    Three nodes each: the chart's agent DaemonSet rolls with ``maxUnavailable: 2``, so with two nodes both
    agents restart together (``test_with_two_nodes_the_upgraded_member_loses_its_peers_while_agents_restart``).
    """
    world = World(time_scale=0.0, kkp_version=NEWEST_KKP, cilium_version=versions[0], charts=charts_for(mode))
    for i, version in enumerate(versions, 1):
        store = Store()
        store.register(builtin_types())
        world.add_cluster(store, index=i, cilium_version=version, nodes=nodes)
    world.start(asyncio.get_running_loop())
    spec = mesh(ca_mode=ca_mode)
    ca = pki.make_ca("shared mesh CA")
    shared = CaMaterial(cert=b64(ca.cert_pem), key=SecretStr(b64(ca.key_pem))) if ca_mode == "shared" else None
    names = [c.name for c in world.clusters]

    def write(name: str, peers: list[PeerEntry]) -> None:
        c = world.cluster(name)
        member = next(m for m in spec.clusters if m.name == name)
        values = render_mesh_values(profile_for(c.cilium_version), member, spec, shared_ca=shared, peers=peers)
        edit_values(c.store, values)

    for name in names:  # step 2: mesh enabled, the apiserver gets its address and certificates
        write(name, [])
    await wait_for(lambda: all(applied(world.cluster(n).store) and lb_ip(world, n) for n in names), what="mesh enabled")
    await wait_for(
        lambda: all(secret(world.cluster(n).store, "clustermesh-apiserver-remote-cert") for n in names),
        what="remote certificates",
    )
    for name in names:  # step 4: every cluster points at the others
        write(name, [peer_entry(world, p) for p in names if p != name])
    await wait_for(lambda: all(applied(world.cluster(n).store) for n in names), what="peers applied")
    await wait_for(lambda: healthy(world), what=f"the mesh to connect: {links(world)}")
    return world


def peer_entry(world: World, name: str) -> PeerEntry:
    remote = secret(world.cluster(name).store, "clustermesh-apiserver-remote-cert")
    ip = lb_ip(world, name)
    assert remote is not None and ip is not None, name
    return PeerEntry(
        name=name, ips=[ip], cert=remote["tls.crt"], key=SecretStr(remote["tls.key"]), ca_cert=remote.get("ca.crt")
    )


async def settle(probe: ConnectivityProbe, seconds: float) -> None:
    """Let ``seconds`` of sandbox time pass (the probe's own timer keeps the virtual clock going)."""
    until = probe.seconds + seconds
    await wait_for(lambda: probe.seconds >= until, what=f"{seconds} sandbox seconds")


async def upgrade_under_probe(world: World, name: str, to: str) -> ConnectivityProbe:
    probe = ConnectivityProbe(world).start()
    await settle(probe, 5)
    world.upgrade_cilium(name, to)
    await wait_for(lambda: installed(world, name, to), timeout=40, what=f"{name} on {to}")
    await settle(probe, 10)
    probe.stop()
    return probe


def assert_no_drop(probe: ConnectivityProbe, upgraded: str) -> None:
    drops = probe.drops()
    assert drops and all(d.samples == 0 for d in drops.values()), drops
    assert probe.samples >= 2 * probe.seconds, "the probe samples at least twice a sandbox second"
    # the agents of the upgraded cluster really restarted, one node at a time: each node was down a while
    restarted = {k: d for k, d in probe.node_drops().items() if k[0] == upgraded}
    assert restarted and all(d.samples > 0 for d in restarted.values()), restarted
    others = {k: d for k, d in probe.node_drops().items() if k[0] != upgraded}
    assert all(d.samples == 0 for d in others.values()), others


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("versions", "upgraded", "to"),
    [
        (["1.18.12", "1.18.12"], "cluster-1", "1.19.4"),  # → a 1.18 + 1.19 mesh
        (["1.19.4", "1.19.4"], "cluster-2", "1.20.0"),  # → a 1.19 + 1.20 mesh
    ],
    ids=["1.18-to-1.19", "1.19-to-1.20"],
)
def test_one_cluster_upgrades_and_the_mixed_mesh_never_drops(
    mode: str, versions: list[str], upgraded: str, to: str
) -> None:
    async def body() -> None:
        world = await mesh_world(versions, mode)
        values_before = ai(world.cluster(upgraded).store)["spec"]
        probe = await upgrade_under_probe(world, upgraded, to)
        assert_no_drop(probe, upgraded)
        assert healthy(world), links(world)
        spec = ai(world.cluster(upgraded).store)["spec"]
        assert spec["applicationRef"]["version"] == to
        assert (spec.get("valuesBlock"), spec.get("values")) == (
            values_before.get("valuesBlock"),
            values_before.get("values"),
        ), "KKP's upgrade keeps the values"
        world.stop()

    run(body)


@pytest.mark.parametrize("mode", MODES)
def test_a_mesh_of_three_upgrades_one_cluster_at_a_time_from_118_to_120(mode: str) -> None:
    """1.18 → 1.19 → 1.20, cluster by cluster; every step leaves a mixed mesh that never dropped."""

    async def body() -> None:
        world = await mesh_world(["1.18.12"] * 3, mode)
        for to in ("1.19.4", "1.20.0"):
            for c in list(world.clusters):
                probe = await upgrade_under_probe(world, c.name, to)
                assert_no_drop(probe, c.name)
                assert healthy(world), (c.name, to, links(world))
        world.stop()

    run(body)


@pytest.mark.parametrize("mode", MODES)
def test_a_per_peer_mesh_as_the_setup_writes_it_upgrades_118_to_119_one_cluster_at_a_time(mode: str) -> None:
    """The setup's default on 1.18 is per peer (each entry carries the peer's remote certificate and CA) with
    ``tls.auto.method: helm``, which the 1.19 chart renders differently (certgen is no longer a Helm hook); the
    copies of each member's remote certificate its peer holds must stay valid. A 1.18 + 1.19 mesh, then a 1.19
    one, never dropping."""

    async def body() -> None:
        world = await mesh_world(["1.18.12", "1.18.12"], mode, ca_mode="auto")
        for name in ("cluster-1", "cluster-2"):
            probe = await upgrade_under_probe(world, name, "1.19.4")
            assert_no_drop(probe, name)
            assert healthy(world), (name, links(world))
        world.stop()

    run(body)


def test_with_two_nodes_the_upgraded_member_loses_its_peers_while_agents_restart() -> None:
    """Cilium's DaemonSet ``updateStrategy.rollingUpdate.maxUnavailable`` is 2: on a two-node cluster both
    agents restart at once, and for that restart (20 s here) the upgraded member sees no peer. The peers
    keep seeing it (its clustermesh-apiserver surges with ``maxUnavailable: 0``)."""

    async def body() -> None:
        world = await mesh_world(["1.19.4", "1.19.4"], "builtin", nodes=2)
        probe = await upgrade_under_probe(world, "cluster-2", "1.20.0")
        drops = probe.drops()
        assert drops[("cluster-1", "cluster-2")].samples == 0, drops
        lost = drops[("cluster-2", "cluster-1")]
        assert lost.samples >= 2 * 19 and "not ready (restarting)" in lost.reason, lost
        assert healthy(world), links(world)
        world.stop()

    run(body)


def test_the_probe_sees_a_drop_when_a_member_loses_its_peers() -> None:
    """The probe can fail: a CA replaced with no trust overlap (the fault ``rotate_ca``: a new ``cilium-ca``,
    certgen re-issues by it) leaves the member's agents unable to verify their peer until its values change.
    The agents do not restart for it (they reload the mesh Secret's files), so the drop is the TLS error."""

    async def body() -> None:
        world = await mesh_world(["1.19.4", "1.19.4"], "builtin")
        probe = ConnectivityProbe(world).start()
        await settle(probe, 2)
        world.rotate_ca("cluster-2")
        await settle(probe, 30)
        probe.stop()
        drops = probe.drops()
        assert probe.worst() == drops[("cluster-2", "cluster-1")], drops
        cut = drops[("cluster-2", "cluster-1")]
        assert cut.samples >= 2 * 19 and cut.seconds >= 19, drops
        assert "x509: certificate signed by unknown authority" in cut.reason, drops
        assert drops[("cluster-1", "cluster-2")].samples == 0, drops
        world.stop()

    run(body)


def test_an_upgrade_to_a_line_that_refuses_the_values_fails_as_kkps_install_and_the_mesh_stays() -> None:
    """1.13's ``clustermesh.apiserver.tls.ca`` is a render error on 1.17+: the upgrade fails, nothing rolls."""

    async def body() -> None:
        world = await mesh_world(["1.13.8", "1.13.8"], "builtin")
        probe = ConnectivityProbe(world).start()
        await settle(probe, 2)
        world.upgrade_cilium("cluster-1", "1.17.18")
        store = world.cluster("cluster-1").store
        reason = await wait_for(lambda: failed(store), what="the installation to fail")
        await settle(probe, 10)
        probe.stop()
        assert "clustermesh.apiserver.tls.ca" in reason["message"], reason
        assert all(p["spec"]["containers"][0]["image"].endswith(":v1.13.8") for p in agent_pods(store))
        assert probe.worst().samples == 0, probe.drops()
        assert healthy(world), links(world)
        world.stop()

    run(body)


# ---- `clustermesh sandbox upgrade` against a running sandbox --------------------------------------------


def test_the_cli_upgrades_one_cluster_of_a_running_sandbox_and_refuses_what_it_cannot(
    sandbox_process: Any,  # noqa: F811 - the fixture imported from test_runner
) -> None:
    running = sandbox_process("--clusters", "2", "--cilium-version", "1.19")
    d = str(running.directory)
    done = cli("sandbox", "upgrade", "--dir", d, "--cluster", "cluster-1", "--to", "1.20.0")
    assert done.returncode == 0, done.stderr
    assert "cluster-1: cilium ApplicationInstallation set to 1.20.0 (was 1.19.4)" in done.stdout

    def state(name: str) -> tuple[str, str, list[str]]:
        with running.client(name) as http:
            obj = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/kube-system/{PLURAL}/cilium").json()
            pods = http.get("/api/v1/namespaces/kube-system/pods", params={"labelSelector": "k8s-app=cilium"}).json()
        ready = obj.get("status", {}).get("conditions", {}).get("Ready", {}).get("status", "")
        images = sorted(p["spec"]["containers"][0]["image"] for p in pods["items"])
        return obj["status"]["applicationVersion"]["version"], ready, images

    deadline = time.monotonic() + 30
    while state("cluster-1")[:2] != ("1.20.0", "True") and time.monotonic() < deadline:
        time.sleep(0.1)
    version, ready, images = state("cluster-1")
    assert (version, ready) == ("1.20.0", "True")
    assert images and all(i.endswith(":v1.20.0") for i in images), images
    assert state("cluster-2")[0] == "1.19.4"  # one cluster at a time

    unknown = cli("sandbox", "upgrade", "--dir", d, "--cluster", "cluster-1", "--to", "1.99")
    assert unknown.returncode != 0 and "1.99" in unknown.stderr and "1.13" in unknown.stderr, unknown.stderr
    nobody = cli("sandbox", "upgrade", "--dir", d, "--cluster", "cluster-9", "--to", "1.20")
    assert nobody.returncode != 0 and "cluster-9" in nobody.stderr, nobody.stderr
