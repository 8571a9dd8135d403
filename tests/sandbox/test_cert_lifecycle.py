"""Issue 14: certificates on the sandbox's calendar, and certgen re-issuing them the ``cronJob`` way.

``World.advance_calendar`` moves the certificates' "now" on: a mesh whose leaves expire loses its links with
the agents' x509 error. A Job made from certgen's CronJob (as ``kubectl create job --from=cronjob/...``
does) re-issues every leaf with the same CA and completes. Each cluster's API sends ``Date`` at calendar time.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from clustermesh.kube import ClusterClient
from sandbox.process import SandboxError, send_calendar
from sandbox.world import World
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.sandbox.test_upgrades import healthy, links, mesh_world
from tests.sandbox.test_world import applied, edit_values, issued_by, run, secret, wait_for

NS = "kube-system"
LEAVES = ("clustermesh-apiserver-server-cert", "clustermesh-apiserver-admin-cert", "clustermesh-apiserver-remote-cert")
CRONJOB = "clustermesh-apiserver-generate-certs"


def cert_of(world: World, cluster: str, name: str, key: str = "tls.crt") -> bytes:
    data = secret(world.cluster(cluster).store, name)
    assert data is not None, f"{cluster} has no Secret {name}"
    return base64.b64decode(data[key])


def not_after(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def test_leaves_last_365_days_on_1_20_and_expire_on_the_calendar_breaking_the_links() -> None:
    async def body() -> None:
        world = await mesh_world(["1.20", "1.20"], "builtin", nodes=1, ca_mode="auto")
        remote = cert_of(world, "cluster-1", "clustermesh-apiserver-remote-cert")
        lifetime = not_after(remote) - x509.load_pem_x509_certificate(remote).not_valid_before_utc
        assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365, minutes=10)  # 1.20's chart default
        world.advance_calendar(300)  # still valid: the mesh stays up
        assert healthy(world), links(world)
        world.advance_calendar(70)
        reasons = links(world)
        assert all("x509: certificate has expired or is not yet valid" in r for r in reasons.values()), reasons
        world.stop()

    run(body)


def test_a_job_from_the_certgen_cronjob_reissues_every_leaf_with_the_same_ca_and_completes() -> None:
    async def body() -> None:
        world = await mesh_world(["1.20", "1.20"], "builtin", nodes=1, ca_mode="auto")
        c = world.cluster("cluster-1")
        cronjob = c.store.try_get("batch/v1/cronjobs", NS, CRONJOB)
        assert cronjob is not None and cronjob["spec"]["schedule"] == "0 0 1 */4 *"  # 1.20's default schedule
        before = {name: cert_of(world, "cluster-1", name) for name in LEAVES}
        ca_before = cert_of(world, "cluster-1", "cilium-ca", "ca.crt")
        world.advance_calendar(200)
        template = cronjob["spec"]["jobTemplate"]
        owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRONJOB, "uid": cronjob["metadata"]["uid"]}
        job: dict[str, Any] = {
            "metadata": {
                "name": "renew-1",
                "namespace": NS,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [owner],
            },
            "spec": template["spec"],
        }
        c.store.create("batch/v1/jobs", job)
        await wait_for(
            lambda: (c.store.get("batch/v1/jobs", NS, "renew-1").get("status") or {}).get("succeeded") == 1,
            what="the Job to complete",
        )
        ca_after = cert_of(world, "cluster-1", "cilium-ca", "ca.crt")
        assert ca_after == ca_before
        for name in LEAVES:
            after = cert_of(world, "cluster-1", name)
            assert after != before[name], name
            assert issued_by(after, ca_before), name
            assert not_after(after) > not_after(before[name]) + dt.timedelta(days=199), name  # issued on the calendar
        assert healthy(world), links(world)  # the peers' old copies: same CA, still valid
        world.stop()

    run(body)


def test_the_api_date_header_follows_the_calendar(sandbox_factory: Any) -> None:
    sb = sandbox_factory(clusters=1, cilium_version="1.20")
    ep = sb.endpoints[0]
    ctx = ssl.create_default_context(cadata=ep.ca.cert_pem.decode())

    def server_date() -> dt.datetime:
        req = urllib.request.Request(ep.url + "/version", headers={"Authorization": f"Bearer {ep.token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            dates = resp.headers.get_all("Date")
        assert dates is not None and len(dates) == 1, dates
        return parsedate_to_datetime(dates[0])

    real = dt.datetime.now(dt.UTC)
    assert abs(server_date() - real) < dt.timedelta(hours=1)
    answer = sb.advance_calendar(400)
    assert answer["offset_days"] == 400
    assert abs(server_date() - (real + dt.timedelta(days=400))) < dt.timedelta(hours=1)
    # what `clustermesh sandbox calendar --dir D --advance-days 35` sends: the control route
    assert send_calendar(Path(sb.directory), 35)["offset_days"] == 435
    assert abs(server_date() - (real + dt.timedelta(days=435))) < dt.timedelta(hours=1)
    with pytest.raises(SandboxError, match="negative"):
        send_calendar(Path(sb.directory), -1)
    # the pipeline's reading of a cluster's clock (its certificate checks judge expiry at it)
    with ClusterClient.from_kubeconfig_file(ep.kubeconfig, context=None, cluster_name=ep.name) as kube:
        assert abs(kube.server_time() - (real + dt.timedelta(days=435))) < dt.timedelta(hours=1)


def _run_certgen_job(world: World, cluster: str, name: str) -> dict[str, Any]:
    """A certgen Job as the chart renders it for the cluster's release (as ``kubectl create job`` would copy
    it; 1.14–1.18 run it as a Helm hook, so none is stored), not yet run; its spec."""
    from sandbox.controllers.certgen_jobs import CERTGEN_LABELS, _job_spec

    c = world.cluster(cluster)
    assert c.current is not None
    spec = _job_spec(c.current)
    meta = {"name": name, "namespace": NS, "labels": dict(CERTGEN_LABELS)}
    c.store.create("batch/v1/jobs", {"metadata": meta, "spec": spec})
    return spec


def _job_status(world: World, cluster: str, name: str) -> dict[str, Any]:
    return world.cluster(cluster).store.get("batch/v1/jobs", NS, name).get("status") or {}


def _put_ca(world: World, cluster: str, certs: list[bytes], key: bytes) -> None:
    world._put_secret(
        world.cluster(cluster),
        "cilium-ca",
        {"ca.crt": base64.b64encode(b"".join(certs)).decode(), "ca.key": base64.b64encode(key).decode()},
        "Opaque",
    )


def test_certgen_from_v0_3_1_reads_a_ca_bundle_as_a_chain_and_cuts_the_peers_off() -> None:
    """What the real cilium/certgen v0.3.1+ (1.19's chart) does with an old+new bundle in cilium-ca: signs with the
    first, writes only the last into the leaves' ca.crt (the rest follows the leaf in tls.crt): the apiserver
    then trusts the new CA alone and every peer's client certificate of the old one is refused."""
    from sandbox import pki

    async def body() -> None:
        world = await mesh_world(["1.19", "1.19"], "builtin", nodes=1, ca_mode="auto")
        c = world.cluster("cluster-1")
        job = next(j for j in c.store.list("batch/v1/jobs", NS) if j["metadata"]["name"].startswith(CRONJOB))
        image = job["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("quay.io/cilium/certgen:v0.4."), image  # 1.19.4's chart: v0.4.3
        old = cert_of(world, "cluster-1", "cilium-ca", "ca.crt")
        old_key = cert_of(world, "cluster-1", "cilium-ca", "ca.key")
        new = pki.make_ca("Cilium CA")
        _put_ca(world, "cluster-1", [old, new.cert_pem], old_key)
        assert _run_certgen_job(world, "cluster-1", "bundle-1") == job["spec"]
        await wait_for(lambda: _job_status(world, "cluster-1", "bundle-1").get("succeeded") == 1, what="the Job")
        for name in LEAVES:
            assert cert_of(world, "cluster-1", name, "ca.crt").strip() == new.cert_pem.strip(), name
            chain = x509.load_pem_x509_certificates(cert_of(world, "cluster-1", name))
            assert len(chain) == 2 and chain[1] == x509.load_pem_x509_certificate(old), name
            chain[0].verify_directly_issued_by(chain[1])  # still signed by the first: the old CA
        reasons = links(world)
        assert reasons[("cluster-2", "cluster-1")] and not reasons[("cluster-1", "cluster-2")], reasons
        world.stop()

    run(body)


def test_certgen_before_v0_3_1_fails_on_a_ca_bundle_and_leaves_the_leaves_alone() -> None:
    """1.16.9's chart runs certgen v0.2.0: more than one certificate in cilium-ca's ca.crt fails the run."""
    from sandbox import pki

    async def body() -> None:
        world = await mesh_world(["1.16"], "builtin", nodes=1, ca_mode="auto")
        c = world.cluster("cluster-1")
        edit_values(c.store, {"clustermesh": {"apiserver": {"tls": {"auto": {"method": "cronJob"}}}}})
        await wait_for(lambda: applied(c.store), what="cronJob applied")
        before = {name: cert_of(world, "cluster-1", name) for name in LEAVES}
        old = cert_of(world, "cluster-1", "cilium-ca", "ca.crt")
        old_key = cert_of(world, "cluster-1", "cilium-ca", "ca.key")
        _put_ca(world, "cluster-1", [old, pki.make_ca("Cilium CA").cert_pem], old_key)
        job = _run_certgen_job(world, "cluster-1", "bundle-1")
        assert job["template"]["spec"]["containers"][0]["image"] == "quay.io/cilium/certgen:v0.2.0"  # 1.16.9's
        await wait_for(lambda: _job_status(world, "cluster-1", "bundle-1").get("failed") == 1, what="the Job to fail")
        (condition,) = _job_status(world, "cluster-1", "bundle-1")["conditions"]
        assert condition["type"] == "Failed" and "the PEM file should contain only one object" in condition["message"]
        assert {name: cert_of(world, "cluster-1", name) for name in LEAVES} == before
        world.stop()

    run(body)


def test_with_tls_ca_bundle_the_apiserver_trusts_the_bundle_the_chart_renders_from_content() -> None:
    """``tls.caBundle.content``: the chart's ConfigMap ``cilium-root-ca.crt``; the apiserver's etcd trusts it (not
    the leaves' ca.crt): a bundle without the peers' CA cuts
    them off, one with it serves them, and turning it off again removes the ConfigMap and trusts the leaves'
    ca.crt."""
    from sandbox import pki

    async def body() -> None:
        world = await mesh_world(["1.19", "1.19"], "builtin", nodes=1, ca_mode="auto")
        c = world.cluster("cluster-1")
        own = cert_of(world, "cluster-1", "cilium-ca", "ca.crt").decode()
        stranger = pki.make_ca("someone else").cert_pem.decode()
        for content, cut_off in ((stranger, True), (stranger + own, False)):
            edit_values(c.store, {"tls": {"caBundle": {"enabled": True, "content": content}}})
            await wait_for(lambda: applied(c.store), what="caBundle applied")
            cm = c.store.get("v1/configmaps", NS, "cilium-root-ca.crt")
            assert cm["data"]["ca.crt"] == content
            deploy = c.store.get("apps/v1/deployments", NS, "clustermesh-apiserver")
            volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
            trust = volumes["etcd-server-secrets"]["projected"]["sources"][1]
            assert trust["configMap"]["name"] == "cilium-root-ca.crt"
            reasons = links(world)
            assert bool(reasons[("cluster-2", "cluster-1")]) is cut_off, reasons
            assert not reasons[("cluster-1", "cluster-2")], reasons
        edit_values(c.store, {"tls": {"caBundle": {"enabled": False}}})
        await wait_for(lambda: applied(c.store), what="caBundle off")
        assert c.store.try_get("v1/configmaps", NS, "cilium-root-ca.crt") is None
        assert healthy(world), links(world)
        world.stop()

    run(body)


@charts_mark("cilium-1.19.6.tgz")
@engine_mark
def test_real_chart_mode_reads_tls_ca_bundle_from_the_render_as_the_built_in_model_does() -> None:
    """``--charts``: the apiserver's trust source and the bundle's content come from the rendered Deployment and
    ConfigMap/Secret; the built-in renderer says the same for the same values."""
    from sandbox import pki
    from sandbox.chart import CaBundle, render
    from sandbox.real_chart import ChartRenderer

    assert CHARTS_DIR is not None
    content = pki.make_ca("a").cert_pem.decode() + pki.make_ca("b").cert_pem.decode()
    base = {
        "cluster": {"name": "cluster-1", "id": 1},
        "clustermesh": {"useAPIServer": True, "apiserver": {"tls": {"auto": {"enabled": True, "method": "cronJob"}}}},
    }
    cases = {
        "content": (
            {"enabled": True, "content": content},
            CaBundle("ConfigMap", "cilium-root-ca.crt", "ca.crt", content),
        ),
        "a person's Secret": (
            {"enabled": True, "useSecret": True, "name": "corp", "key": "roots.pem"},
            CaBundle("Secret", "corp", "roots.pem", ""),
        ),
        "off": ({"enabled": False, "content": content}, None),
    }
    renderer = ChartRenderer(CHARTS_DIR)
    for case, (bundle, want) in cases.items():
        values = {**base, "tls": {"caBundle": bundle}}
        real = renderer.render("1.19.6", values).ca_bundle
        if want is not None and real is not None:
            real = CaBundle(real.kind, real.name, real.key, real.content.strip() + ("\n" if real.content else ""))
        assert real == want, case
        assert render("1.19.6", values).ca_bundle == (
            None if want is None else CaBundle(want.kind, want.name, want.key, bundle.get("content", "") or "")
        ), case
