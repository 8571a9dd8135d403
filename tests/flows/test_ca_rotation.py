"""CA rotation end to end (issue 14): 3 clusters of 3 nodes, Cilium 1.19 (certgen v0.4.x, which reads a
multi-certificate ca.crt as a chain), per-peer CA mode, certgen's cronJob; and 2 clusters of 1.16 under the
helm method (every KKP render re-issues the leaves, as the real chart's genSignedCert does).

cluster-2's CA is replaced under the continuous probe (no pair of members may drop a sample): the overlap
runs through the chart's ``tls.caBundle``; afterwards every peer's caCert for cluster-2 is the new CA alone,
its leaves are signed by it, its ``tls.caBundle`` is as before (absent), ``clustermesh-ca-next`` is gone, the
mesh is healthy and a rerun writes nothing. Then cluster-3's rotation is stopped right after each write
(``stop_after_writes``) and run again until it ends: it converges and no member ever distrusts another.
Everything is read with the official client.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from typer.testing import CliRunner

from cli.app import app
from clustermesh.errors import StopRequested
from flows.mesh_ca import mesh_rotate_ca
from flows.mesh_setup import cluster_mesh_setup
from tests.flows.conftest import REMOTE_CERT, Kube, ai_versions, health_problems, mesh_spec
from tests.flows.test_managed_peers import SLACK_ENV
from tests.probe import SandboxProbe
from tests.sandbox.test_upgrades import links

Kubes = Callable[[Any], dict[str, Kube]]
ALL = ["cluster-1", "cluster-2", "cluster-3"]
LEAVES = ("clustermesh-apiserver-server-cert", "clustermesh-apiserver-admin-cert", REMOTE_CERT)
NEXT = "clustermesh-ca-next"


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


def pems(b64: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(base64.b64decode(b64))


def ca_certs(kube: Kube) -> list[x509.Certificate]:
    return pems((kube.secret_data("cilium-ca") or {})["ca.crt"])


def peer_tls(kube: Kube, peer: str) -> dict[str, str]:
    entries = kube.values()["clustermesh"]["config"]["clusters"]
    entry = entries[peer] if isinstance(entries, dict) else next(e for e in entries if e.get("name") == peer)
    return dict(entry.get("tls") or {})


def snapshot(k: dict[str, Kube]) -> dict[str, Any]:
    """Every AI's (resourceVersion, generation) and every cluster's CA Secrets' resourceVersions."""
    out: dict[str, Any] = dict(ai_versions(k))
    for name, kube in k.items():
        for secret in ("cilium-ca", NEXT, *LEAVES):
            data = kube.secret_data(secret)
            out[f"{name}/{secret}"] = (
                None
                if data is None
                else kube.core.read_namespaced_secret(secret, "kube-system").metadata.resource_version
            )
    return out


def assert_rotated(k: dict[str, Kube], target: str, old: x509.Certificate) -> None:
    """``target``'s CA is one new certificate; its leaves are signed by it; every peer trusts it alone and holds
    ``target``'s current remote certificate; its values carry no ``tls.caBundle`` (none before); no next CA."""
    kube = k[target]
    assert "caBundle" not in (kube.values().get("tls") or {}), kube.values().get("tls")
    assert "clustermesh.io/ca-bundle-rotation" not in (kube.ai()["metadata"].get("annotations") or {})
    (new,) = ca_certs(kube)
    assert new != old, f"{target}'s CA did not change"
    for leaf in LEAVES:
        data = kube.secret_data(leaf) or {}
        (cert,) = pems(data["tls.crt"])
        cert.verify_directly_issued_by(new)
        assert pems(data["ca.crt"]) == [new], f"{leaf}'s ca.crt is not the new CA alone"
    remote = (kube.secret_data(REMOTE_CERT) or {})["tls.crt"]
    for peer in k:
        if peer == target:
            continue
        tls = peer_tls(k[peer], target)
        assert pems(tls["caCert"]) == [new], f"{peer} does not trust {target}'s new CA alone"
        assert base64.b64decode(tls["cert"]) == base64.b64decode(remote), f"{peer} holds a stale cert of {target}"
    assert kube.secret_data(NEXT) is None


def pair_problems(sb: Any) -> dict[tuple[str, str], str]:
    """Every pair of members that cannot reach the other right now (the probe's verdict, sampled once)."""
    return {pair: why for pair, why in sb._loop.call(lambda: links(sb.world)).items() if why}


def rotate_until_done(sb: Any, spec: Any, cluster: str) -> tuple[Any, int]:
    """``mesh_rotate_ca`` stopped right after each write and run again until it ends, every pair checked at
    each stop (the state a crash leaves); (its result, the stops)."""
    stops = 0
    while True:
        try:
            return mesh_rotate_ca(spec, cluster, stop_after_writes=1), stops
        except StopRequested as stopped:
            stops += 1
            assert stops < 40, "the rotation does not converge"
            assert pair_problems(sb) == {}, f"after stop {stops} ({stopped}): {pair_problems(sb)}"


def test_ca_rotation_under_the_probe_never_drops_a_pair_reruns_write_nothing_and_a_stopped_one_converges(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=3, cilium_version="1.19", nodes=3)
    k = kubes(sb)
    spec = mesh_spec(sb)
    assert cluster_mesh_setup(spec).health.healthy
    (old2,) = ca_certs(k["cluster-2"])
    (old3,) = ca_certs(k["cluster-3"])

    # --plan: fingerprints only, nothing written; without a terminal nothing is asked nor written
    mesh_yaml = str(Path(sb.directory) / "mesh.yaml")
    before = snapshot(k)
    shown = CliRunner().invoke(app, ["ca", "rotate", "--config", mesh_yaml, "--cluster", "cluster-2", "--plan"])
    assert shown.exit_code == 0, shown.output
    assert "cluster-2: CA sha256:" in shown.output and "not started" in shown.output, shown.output
    assert "peers re-keyed (caCert and client certificate for cluster-2): cluster-1, cluster-3" in shown.output
    assert "BEGIN" not in shown.output and "PRIVATE" not in shown.output, shown.output
    refused = CliRunner().invoke(app, ["ca", "rotate", "--config", mesh_yaml, "--cluster", "cluster-2"])
    assert refused.exit_code == 2 and "pass --yes" in refused.output, refused.output
    assert snapshot(k) == before

    with SandboxProbe(sb, ALL) as probe:
        result = mesh_rotate_ca(spec, "cluster-2")
        assert result.wrote_anything and result.status in ("PASS", "WARN"), result.describe()
        assert_rotated(k, "cluster-2", old2)
        before = snapshot(k)
        again = mesh_rotate_ca(spec, "cluster-2")
        assert not again.wrote_anything, again.describe()
        assert snapshot(k) == before
    assert probe.samples > 10, f"the probe sampled {probe.samples} times over {probe.seconds} s"
    assert probe.worst(ALL).samples == 0, probe.drops()
    assert "BEGIN" not in result.describe()

    # crash-resume: cluster-3's rotation stopped right after each write, then run again, until it ends (no
    # probe: it samples twice a second of a clock that runs free between the runs; each stop is checked)
    resumed, stops = rotate_until_done(sb, spec, "cluster-3")
    assert stops >= 10, f"only {stops} stops: not every phase was written"  # next CA, 2 bundle writes, 6 peers…
    assert resumed.status in ("PASS", "WARN"), resumed.describe()
    assert_rotated(k, "cluster-3", old3)
    assert_rotated(k, "cluster-2", old2)  # untouched by cluster-3's rotation
    assert health_problems(k) == []


def test_under_the_helm_method_every_render_reissues_and_the_rotation_still_never_drops_a_pair(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16", helm_reissues_on_render=True)
    k = kubes(sb)
    spec = mesh_spec(sb)
    assert cluster_mesh_setup(spec).health.healthy
    assert k["cluster-1"].values()["clustermesh"]["apiserver"]["tls"]["auto"]["method"] == "helm"
    (old,) = ca_certs(k["cluster-1"])
    with SandboxProbe(sb, ALL[:2]) as probe:
        result = mesh_rotate_ca(spec, "cluster-1")
    assert probe.samples > 10, f"the probe sampled {probe.samples} times over {probe.seconds} s"
    assert probe.worst(ALL[:2]).samples == 0, probe.drops()
    assert result.wrote_anything and result.status in ("PASS", "WARN"), result.describe()
    assert any("tls.caBundle trusts" in w for c in result.clusters for w in c.writes), result.describe()
    assert_rotated(k, "cluster-1", old)
    before = snapshot(k)
    again = mesh_rotate_ca(spec, "cluster-1")
    assert not again.wrote_anything, again.describe()
    assert snapshot(k) == before
    assert health_problems(k) == []
