"""The renewal's pure logic: whether a peer's copy is current, which copies a renewal replaces, which copies a
values write keeps, and how the plan reads (fingerprints, never PEM)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from pydantic import SecretStr

from clustermesh.lifecycle.renew import ClusterRenewal, RenewPlan, plan_copies
from clustermesh.steps.cert_copies import copy_problem, keep_current_copies, trusted_cas
from clustermesh.values import PeerEntry
from tests.domain.test_verify import Pair, issue, make_ca

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def tls(leaf: Pair, ca: Pair | None = None) -> dict[str, str]:
    out = {"cert": leaf.cert_b64, "key": leaf.key_b64}
    if ca is not None:
        out["caCert"] = ca.cert_b64
    return out


def installation(entries: list[dict[str, Any]]) -> dict[str, Any]:
    values = {"clustermesh": {"config": {"enabled": True, "clusters": entries}}}
    return {
        "metadata": {"name": "cilium", "namespace": "kube-system"},
        "spec": {"valuesBlock": yaml.safe_dump(values)},
    }


def renewal(name: str, ca: Pair, newest: Pair, *, due: bool = False) -> ClusterRenewal:
    from clustermesh.certs import fingerprint

    prints = {"clustermesh-apiserver-remote-cert": fingerprint(newest.cert_b64)}
    return ClusterRenewal(name, "cronJob", 20, due, "test", prints, ca.cert_b64, NOW)


def test_a_copy_is_current_when_trusted_matching_and_far_from_expiry() -> None:
    ca = make_ca()
    leaf = issue(ca, "remote")
    assert copy_problem(tls(leaf), [ca.cert], now=NOW, warn_days=30) is None
    near = copy_problem(tls(leaf), [ca.cert], now=NOW + timedelta(days=1080), warn_days=30)
    assert near is not None and "under warn_days 30" in near
    gone = copy_problem(tls(leaf), [ca.cert], now=NOW + timedelta(days=2000), warn_days=30)
    assert gone is not None and "expired" in gone
    assert "not issued by a CA" in str(copy_problem(tls(leaf), [make_ca().cert], now=NOW, warn_days=30))
    other = issue(ca, "remote")
    mixed = {"cert": leaf.cert_b64, "key": other.key_b64}
    assert copy_problem(mixed, [ca.cert], now=NOW, warn_days=30) == "tls.key does not belong to tls.cert"


def test_a_ca_bundle_trusts_every_ca_in_it() -> None:
    old, new = make_ca("old"), make_ca("new")
    bundle = base64.b64encode(base64.b64decode(old.cert_b64) + base64.b64decode(new.cert_b64)).decode()
    found = trusted_cas(bundle)
    assert [c.subject.rfc4514_string() for c in found] == ["CN=old", "CN=new"]
    assert copy_problem(tls(issue(old, "remote")), found, now=NOW, warn_days=30) is None


def test_a_renewal_replaces_copies_of_due_clusters_and_stale_ones_and_keeps_current_ones() -> None:
    ca1, ca2, ca3 = make_ca("c1"), make_ca("c2"), make_ca("c3")
    old1, new1 = issue(ca1, "remote"), issue(ca1, "remote")
    old2, new2 = issue(ca2, "remote"), issue(ca2, "remote")
    expiring3 = issue(ca3, "remote", start=NOW - timedelta(days=1090), days=1095)
    new3 = issue(ca3, "remote")
    installations = {
        "holder": installation(
            [
                {"name": "c1", "tls": tls(old1, ca1)},  # c1 is due: replaced
                {"name": "c2", "tls": tls(old2, ca2)},  # c2 re-issued since, the copy still current: kept
                {"name": "c3", "tls": tls(expiring3, ca3)},  # 4 days left: replaced
                {"name": "hand-made", "tls": tls(old2, ca2)},  # not a member: never touched
            ]
        )
    }
    clusters = {
        "c1": renewal("c1", ca1, new1, due=True),
        "c2": renewal("c2", ca2, new2),
        "c3": renewal("c3", ca3, new3),
    }
    copies = plan_copies(installations, clusters, 30)
    assert [(c.holder, c.of) for c in copies] == [("holder", "c1"), ("holder", "c3")]
    assert copies[0].new == "the re-issued certificate"
    assert "under warn_days 30" in copies[1].why
    plan = RenewPlan("m", list(clusters.values()), copies)
    text = plan.render_text() + plan.render_markdown()
    assert "holder: its copy of c3's remote certificate sha256:" in text
    assert "BEGIN" not in text and old1.cert_b64[:40] not in text and old1.key_b64[:40] not in text
    assert plan.holders == ["holder"] and plan.due == ["c1"]
    quiet = RenewPlan("m", [renewal("c2", ca2, new2)], [])
    assert not quiet.changing and "nothing to write" in quiet.render_text()


def test_a_values_write_keeps_a_current_copy_unless_told_to_replace_it() -> None:
    ca = make_ca()
    held, newest = issue(ca, "remote"), issue(ca, "remote")
    current = yaml.safe_load(installation([{"name": "c2", "tls": tls(held, ca)}])["spec"]["valuesBlock"])
    peer = PeerEntry(
        name="c2", ips=["10.0.0.1"], cert=newest.cert_b64, key=SecretStr(newest.key_b64), ca_cert=ca.cert_b64
    )
    [kept] = keep_current_copies(current, [peer], warn_days=30, now=NOW)
    assert kept.cert == held.cert_b64 and kept.key.get_secret_value() == held.key_b64
    [replaced] = keep_current_copies(current, [peer], replace={"c2"}, warn_days=30, now=NOW)
    assert replaced.cert == newest.cert_b64
    [expiring] = keep_current_copies(current, [peer], warn_days=30, now=NOW + timedelta(days=1080))
    assert expiring.cert == newest.cert_b64
    rotated = peer.model_copy(update={"ca_cert": make_ca().cert_b64})  # a new CA: the old copy is not trusted
    [new_ca] = keep_current_copies(current, [rotated], warn_days=30, now=NOW)
    assert new_ca.cert == newest.cert_b64
    shared = peer.model_copy(update={"ca_cert": None})  # shared CA mode: copies are not judged, always the newest
    assert keep_current_copies(current, [shared], warn_days=30, now=NOW)[0].cert == newest.cert_b64


def test_certmanager_and_unknown_methods_are_refused_naming_what_to_do() -> None:
    from clustermesh.lifecycle.reissue import reissue_refusal

    assert reissue_refusal("c1", "cronJob") is None and reissue_refusal("c1", "helm") is None
    certmanager = reissue_refusal("c1", "certmanager")
    assert certmanager is not None
    assert "method is certmanager" in str(certmanager) and "cmctl renew" in str(certmanager)
    assert "nothing was written" in str(certmanager)
    other = reissue_refusal("c1", "provided")
    assert other is not None and "'provided'" in str(other) and "helm or cronJob" in str(other)


def test_a_plan_with_an_unreadable_member_or_a_refused_method_is_refused_before_any_write() -> None:
    ca = make_ca()
    fine = renewal("c1", ca, issue(ca, "remote"), due=True)
    assert RenewPlan("m", [fine], []).refusal() is None
    unreadable = RenewPlan("m", [fine], [], unreadable={"c2": "connection refused"})
    refused = unreadable.refusal()
    assert refused is not None and "c2" in str(refused) and "needs every member" in str(refused)
    assert "nothing was written" in str(refused)
    certmanager = ClusterRenewal("c3", "certmanager", 3, True, "test")
    assert "cmctl renew" in str(RenewPlan("m", [fine, certmanager], []).refusal())
    not_due = ClusterRenewal("c3", "certmanager", 300, False, "test")
    assert RenewPlan("m", [fine, not_due], []).refusal() is None
