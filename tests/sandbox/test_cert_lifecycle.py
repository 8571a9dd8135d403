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
from tests.sandbox.test_upgrades import healthy, links, mesh_world
from tests.sandbox.test_world import issued_by, run, secret, wait_for

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
