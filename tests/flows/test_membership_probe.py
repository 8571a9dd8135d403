"""Membership under the continuous probe (issue 14): cluster-3 joins a running mesh of cluster-1 and cluster-2,
is deleted and created again under its name (``World.recreate_cluster``: new LoadBalancer address, new CA and
certificates) and updated everywhere by the next setup, then leaves; Cilium 1.19, 3 nodes per cluster (the
DaemonSet's ``maxUnavailable`` keeps a node up while the agents roll for a new peer's hostAliases).

A ``tests.probe.SandboxProbe`` samples every member's view of every other member at 2 Hz of the sandbox
clock while the real flows run; the pair that stays (cluster-1 and cluster-2) must never drop a sample.
Values writes are counted by the ApplicationInstallation's ``metadata.generation`` (the API server bumps it
on every spec change, and only then), read with the official client.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from flows.mesh_remove import mesh_remove_cluster
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification, verification_result
from tests.flows.conftest import REMOTE_CERT, Kube, edited_spec, health_problems, mesh_spec
from tests.flows.test_managed_peers import SLACK_ENV, without_cluster_3
from tests.helpers import wait_until
from tests.probe import SandboxProbe

Kubes = Callable[[Any], dict[str, Kube]]
STAYERS = ["cluster-1", "cluster-2"]
ALL = [*STAYERS, "cluster-3"]


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


def generations(kubes: dict[str, Kube]) -> dict[str, int]:
    return {name: k.ai_version()[1] for name, k in kubes.items()}


def entry_for(kube: Kube, peer: str) -> dict[str, Any]:
    """``peer``'s entry in this cluster's ``clustermesh.config.clusters`` (list or map form)."""
    entries = kube.values()["clustermesh"]["config"]["clusters"]
    if isinstance(entries, dict):
        return dict(entries[peer], name=peer)
    found = [e for e in entries if e.get("name") == peer]
    assert len(found) == 1, f"{peer} appears {len(found)} times in {kube.kubeconfig}: {entries}"
    return dict(found[0])


def lb_address(kube: Kube) -> str:
    svc = kube.core.read_namespaced_service("clustermesh-apiserver", "kube-system")
    return str(svc.status.load_balancer.ingress[0].ip)


def own_ca(kube: Kube) -> str:
    data = kube.secret_data("cilium-ca") or {}
    return base64.b64decode(data["ca.crt"]).decode()


def own_remote_cert(kube: Kube) -> str:
    data = kube.secret_data(REMOTE_CERT) or {}
    return base64.b64decode(data["tls.crt"]).decode()


def decoded(text: str) -> str:
    """A certificate as the values hold it: PEM, or base64 of PEM."""
    return text if "BEGIN" in text else base64.b64decode(text).decode()


def assert_points_at(kube: Kube, peer: Kube, name: str) -> None:
    """``kube``'s entry for ``name`` holds ``peer``'s LoadBalancer address and its CA (per-peer mode)."""
    entry = entry_for(kube, name)
    assert lb_address(peer) in (entry.get("ips") or []) or entry.get("address") == lb_address(peer), entry
    ca = ((entry.get("tls") or {}).get("caCert")) or ""
    assert ca and decoded(ca).strip() == own_ca(peer).strip(), f"{name}'s CA in its peer's values is not its own"


def assert_client_cert_of(kube: Kube, peer: Kube, name: str) -> None:
    """``kube``'s entry for ``name`` carries ``peer``'s remote certificate (the client certificate its dialer
    presents to ``peer``, issued by ``peer``'s CA)."""
    cert = ((entry_for(kube, name).get("tls") or {}).get("cert")) or ""
    assert cert and decoded(cert).strip() == own_remote_cert(peer).strip(), f"{name}'s client cert is not current"


def nightly_does_not_fail(sb: Any) -> None:
    state = nightly_mesh_verification(mesh_spec(sb), run_drill=False, return_state=True)
    verdict = verification_result(state)
    assert verdict is not None and verdict.status != "FAIL", verdict.describe() if verdict else state


def join_cluster_3(sb: Any, k: dict[str, Kube]) -> None:
    """cluster-3 enters the spec of a running 2-cluster mesh; setup connects it under the probe."""
    before = generations(k)
    with SandboxProbe(sb, ALL) as probe:
        joined = cluster_mesh_setup(mesh_spec(sb))
    assert probe.samples > 10, f"the probe sampled {probe.samples} times over {probe.seconds} s"
    assert probe.worst(STAYERS).samples == 0, probe.drops()
    after = generations(k)
    writes = {name: after[name] - before[name] for name in ALL}
    assert writes == {"cluster-1": 1, "cluster-2": 1, "cluster-3": 2}, writes  # cluster-3: step 4, then step 6
    assert joined.health.healthy, joined.health.render_text()
    for name in ALL:
        assert sorted(k[name].peer_names()) == [n for n in ALL if n != name]
    for stayer in STAYERS:
        assert_points_at(k[stayer], k["cluster-3"], "cluster-3")
        assert_points_at(k["cluster-3"], k[stayer], stayer)
    assert health_problems(k) == []
    nightly_does_not_fail(sb)


def recreate_cluster_3(sb: Any, k: dict[str, Kube]) -> None:
    """cluster-3 is deleted and created again under its name (new address, new CA); the next setup updates
    the stayers, one write each, and their pair never drops."""
    k3 = k["cluster-3"]
    old = (lb_address(k3), own_ca(k3), own_remote_cert(k3))
    sb._loop.call(sb.world.recreate_cluster, "cluster-3")
    wait_until("cluster-3 back as new (KKP applied its defaults)", lambda: k3.applied() and k3.peer_names() == [])
    assert k3.secret_data("cilium-ca") is None
    before = generations(k)
    with SandboxProbe(sb, STAYERS) as probe:
        again = cluster_mesh_setup(mesh_spec(sb))
    assert probe.worst(STAYERS).samples == 0, probe.drops()
    after = generations(k)
    assert [after[n] - before[n] for n in STAYERS] == [1, 1], (before, after)
    assert again.health.healthy, again.health.render_text()
    new = (lb_address(k3), own_ca(k3), own_remote_cert(k3))
    assert [a != b for a, b in zip(old, new, strict=True)] == [True, True, True], "cluster-3 did not come back new"
    for stayer in STAYERS:
        assert_points_at(k[stayer], k3, "cluster-3")
        assert_client_cert_of(k[stayer], k3, "cluster-3")
        assert_points_at(k3, k[stayer], stayer)
    assert health_problems(k) == []
    nightly_does_not_fail(sb)


def test_join_recreate_and_leave_under_the_probe_touch_each_member_once_and_never_drop_the_stayers(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=3, cilium_version="1.19", nodes=3)
    k = kubes(sb)
    first = cluster_mesh_setup(edited_spec(sb, without_cluster_3, name="two.yaml"))
    assert first.health.healthy, first.health.render_text()
    assert k["cluster-1"].peer_names() == ["cluster-2"]

    join_cluster_3(sb, k)
    recreate_cluster_3(sb, k)

    # leave: cluster-3 goes again; the stayers' pair never drops
    with SandboxProbe(sb, STAYERS) as probe:
        left = mesh_remove_cluster(mesh_spec(sb), "cluster-3")
    assert probe.samples > 0
    assert probe.worst(STAYERS).samples == 0, probe.drops()
    assert left.wrote_anything and left.status in ("PASS", "WARN"), left.describe()
    assert (k["cluster-1"].peer_names(), k["cluster-2"].peer_names()) == (["cluster-2"], ["cluster-1"])
