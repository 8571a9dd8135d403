"""CA rotation's pure logic: the new CA, the phase read back from ``cilium-ca``, ``clustermesh-ca-next`` and
whether X's values trust both CAs through our ``tls.caBundle``, the bundle written and put back as it was, the
peer entry re-keyed in either values form, what is refused (Cilium 1.13, method, CA mode, a person's own
bundle) and the plan (fingerprints only). Plus the facts the design rests on, checked with the real charts:
with ``tls.caBundle`` the clustermesh-apiserver's etcd trusts the bundle's ConfigMap, which the chart renders
from ``content``; under helm a ca.crt bundle is rendered verbatim into every leaf Secret."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from clustermesh.certs import fingerprint
from clustermesh.errors import ClusterStateError
from clustermesh.lifecycle.ca_bundle import BUNDLE_OWNER, bundle_refusal, is_ours, record_before, restored, with_bundle
from clustermesh.lifecycle.ca_plan import cluster_refusal, plan_rotation
from clustermesh.lifecycle.ca_rotation import (
    CA_SECRET,
    NEXT_SECRET,
    ROTATED_AT,
    ROTATED_TO,
    NewCa,
    b64,
    entry_is_current,
    generate_ca,
    pem_bundle,
    read_ca_state,
    rekeyed,
    split_pem,
)
from clustermesh.steps.membership import MANAGED_PEERS_ANNOTATION
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_values import mesh

NOW = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)
OLD, NEW = generate_ca(NOW), generate_ca(NOW)


def secrets(certs: list[str], key: str, nxt: NewCa | None = None, **annotations: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        CA_SECRET: {
            "metadata": {"resourceVersion": "7", "annotations": annotations},
            "data": {"ca.crt": b64(pem_bundle(certs)), "ca.key": b64(key)},
        }
    }
    if nxt is not None:
        data = {"ca.crt": b64(nxt.cert_pem), "ca.key": b64(nxt.key_pem), "previous.crt": b64(OLD.cert_pem)}
        found[NEXT_SECRET] = {"metadata": {}, "data": data}
    return found


def phase(found: dict[str, Any], now: dt.datetime = NOW, bundle_ours: bool = False) -> str:
    return read_ca_state(found.get, "cluster-2").phase(now, bundle_ours)


def test_the_new_ca_is_like_the_charts_ecdsa_p256_self_signed_for_1095_days() -> None:
    cert = x509.load_pem_x509_certificate(NEW.cert_pem.encode())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 1095
    assert "Cilium CA" in cert.subject.rfc4514_string()
    assert fingerprint(OLD.cert_pem) != fingerprint(NEW.cert_pem)


def test_each_phase_is_read_back_from_the_two_secrets() -> None:
    assert phase(secrets([OLD.cert_pem], OLD.key_pem)) == "start"
    assert phase(secrets([OLD.cert_pem], OLD.key_pem, NEW)) == "stored"
    assert phase(secrets([OLD.cert_pem], OLD.key_pem, NEW), bundle_ours=True) == "trust-both"
    assert phase(secrets([NEW.cert_pem], NEW.key_pem, NEW), bundle_ours=True) == "switched"
    assert phase(secrets([NEW.cert_pem], NEW.key_pem, NEW)) == "drop-old"
    with pytest.raises(ClusterStateError, match="no state of the rotation"):  # cilium-ca never holds a bundle
        phase(secrets([OLD.cert_pem, NEW.cert_pem], OLD.key_pem, NEW), bundle_ours=True)
    state = read_ca_state(secrets([NEW.cert_pem, OLD.cert_pem], NEW.key_pem, NEW).get, "cluster-2")
    assert state.signer == NEW.cert_pem
    assert "PRIVATE" not in repr(state), "a CA key in a repr"


def test_a_finished_rotation_is_done_for_a_day_then_a_new_one_may_start() -> None:
    marker = {ROTATED_TO: fingerprint(NEW.cert_pem), ROTATED_AT: NOW.isoformat()}
    done = secrets([NEW.cert_pem], NEW.key_pem, **marker)
    assert phase(done, NOW + dt.timedelta(hours=23)) == "done"
    assert phase(done, NOW + dt.timedelta(hours=25)) == "start"
    other = {ROTATED_TO: fingerprint(OLD.cert_pem), ROTATED_AT: NOW.isoformat()}
    assert phase(secrets([NEW.cert_pem], NEW.key_pem, **other)) == "start"  # the record is of another CA


def test_a_ca_changed_by_someone_in_the_middle_is_refused_with_the_fix() -> None:
    stranger = generate_ca(NOW)
    with pytest.raises(ClusterStateError, match=f"no state of the rotation.*delete kube-system/{NEXT_SECRET}"):
        phase(secrets([stranger.cert_pem], stranger.key_pem, NEW))
    with pytest.raises(ClusterStateError, match="run the setup first"):
        read_ca_state({}.get, "cluster-2")


def test_split_pem_keeps_the_order_of_a_bundle() -> None:
    assert [fingerprint(c) for c in split_pem(OLD.cert_pem + NEW.cert_pem)] == [
        fingerprint(OLD.cert_pem),
        fingerprint(NEW.cert_pem),
    ]


REMOTE = {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}


@pytest.mark.parametrize("form", ["list", "map"])
def test_the_entry_is_rekeyed_in_either_form_and_the_rest_is_untouched(form: str) -> None:
    entry = {"address": "", "port": 2379, "ips": ["10.0.0.2"], "tls": {"cert": "b2xk", "key": "b2xk", "caCert": "x"}}
    other = {"name": "cluster-3", "ips": ["10.0.0.3"], "tls": {"cert": "Mw==", "key": "Mw==", "caCert": "Mw=="}}
    clusters: Any = (
        [{"name": "cluster-2", **entry}, other]
        if form == "list"
        else {"cluster-2": entry, "cluster-3": {k: v for k, v in other.items() if k != "name"}}
    )
    values = {"clustermesh": {"config": {"enabled": True, "clusters": clusters}}, "hubble": {"on": True}}
    trust = [OLD.cert_pem, NEW.cert_pem]
    out = rekeyed(values, "cluster-2", trust, REMOTE)
    got = out["clustermesh"]["config"]["clusters"]
    new_entry = got[0] if form == "list" else got["cluster-2"]
    assert new_entry["tls"]["cert"] == REMOTE["tls.crt"] and new_entry["tls"]["key"] == REMOTE["tls.key"]
    assert split_pem(base64.b64decode(new_entry["tls"]["caCert"]).decode()) == trust
    assert new_entry["ips"] == ["10.0.0.2"]
    assert (got[1] if form == "list" else got["cluster-3"])["tls"] == other["tls"]
    assert out["hubble"] == {"on": True} and values["clustermesh"]["config"]["clusters"] == clusters  # a copy
    assert entry_is_current(new_entry, trust, REMOTE)
    assert not entry_is_current(new_entry, [NEW.cert_pem], REMOTE)
    assert not entry_is_current(new_entry, trust, {**REMOTE, "tls.crt": "bmV3"})


def ai(version: str = "1.19.6", method: str | None = "cronJob", peers: dict[str, bool] | None = None) -> dict[str, Any]:
    """An installation with entries for ``peers`` (name → managed by the pipeline)."""
    values: dict[str, Any] = {"clustermesh": {"config": {"enabled": True, "clusters": []}}}
    if method is not None:
        values["clustermesh"]["apiserver"] = {"tls": {"auto": {"enabled": True, "method": method}}}
    for name in peers or {}:
        values["clustermesh"]["config"]["clusters"].append({"name": name, "tls": {"caCert": "x"}})
    managed = ",".join(n for n, ours in (peers or {}).items() if ours)
    return {
        "metadata": {"annotations": {MANAGED_PEERS_ANNOTATION: managed}},
        "spec": {"applicationRef": {"version": version}, "values": values},
    }


def test_cilium_1_13_certmanager_provided_certificates_and_a_shared_ca_are_refused_with_the_fix() -> None:
    spec = mesh()
    assert cluster_refusal(spec, "cluster-2", ai()) is None
    assert cluster_refusal(spec, "cluster-2", ai(method=None)) is None  # 1.19's auto: cronJob
    assert cluster_refusal(spec, "cluster-2", ai("1.16.19", "helm")) is None  # a KKP render re-issues
    assert "certmanager" in (cluster_refusal(spec, "cluster-2", ai(method="certmanager")) or "")
    assert "by hand" in (cluster_refusal(spec, "cluster-2", ai("1.19.6", None) | _provided()) or "")
    shared = cluster_refusal(mesh(ca_mode="shared"), "cluster-2", ai()) or ""
    assert shared.startswith("shared CA mode") and "fix:" in shared
    old = cluster_refusal(spec, "cluster-2", ai("1.13.0", "cronJob")) or ""
    assert "no tls.caBundle before 1.14" in old and "fix: upgrade" in old, old


def test_the_bundle_is_ours_only_while_the_rotation_wrote_it_and_goes_back_exactly_as_it_was() -> None:
    trust = (OLD.cert_pem, NEW.cert_pem)
    for before in ({}, {"tls": {"ca": {"cert": "x"}}}, {"tls": {"caBundle": {"enabled": False, "name": "mine"}}}):
        values = {"cluster": {"name": "cluster-2"}, **before}
        assert bundle_refusal(values) is None
        written = with_bundle(values, trust)
        bundle = written["tls"]["caBundle"]
        assert bundle["enabled"] is True and split_pem(bundle["content"]) == list(trust)
        owned = {"metadata": {"annotations": {BUNDLE_OWNER: fingerprint(NEW.cert_pem)}}}
        assert is_ours(owned, written, NEW.cert_pem, trust)
        assert not is_ours({"metadata": {}}, written, NEW.cert_pem, trust)  # not recorded as ours
        assert not is_ours(owned, written, NEW.cert_pem, trust[1:])
        assert restored(written, record_before(values)) == values, before
    theirs = {"tls": {"caBundle": {"enabled": True, "name": "corp-roots"}}}
    why = bundle_refusal(theirs) or ""
    assert "already in use" in why and "ConfigMap corp-roots" in why and "fix:" in why


def _provided() -> dict[str, Any]:
    values = {"clustermesh": {"apiserver": {"tls": {"auto": {"enabled": False}}}}}
    return {"spec": {"applicationRef": {"version": "1.19.6"}, "values": values}}


def test_the_plan_shows_fingerprints_the_peers_and_warns_of_a_hand_added_entry() -> None:
    installations = {
        "cluster-1": ai(peers={"cluster-2": True, "cluster-3": True}),
        "cluster-2": ai(peers={"cluster-1": True, "cluster-3": True}),
        "cluster-3": ai(peers={"cluster-1": True, "cluster-2": False}),
    }
    found = {"cluster-2": secrets([OLD.cert_pem], OLD.key_pem, NEW)}
    plan = plan_rotation(mesh(), "cluster-2", installations.__getitem__, lambda c, s: found[c].get(s))
    text = plan.render_text()
    assert plan.changing == ["cluster-2"] and not plan.refused
    assert f"cluster-2: CA {fingerprint(OLD.cert_pem)}: new CA stored" in text, text
    assert f"new CA (stored, reused): {fingerprint(NEW.cert_pem)}" in text
    assert "cluster-2's values: tls.caBundle trusts old and new" in text
    assert "peers re-keyed (caCert and client certificate for cluster-2): cluster-1\n" in text
    assert "cluster-3: its entry for cluster-2 was added by hand: NOT re-keyed" in text
    assert "BEGIN" not in text + plan.render_markdown()
    with pytest.raises(ClusterStateError, match="--cluster cluster-9 is not a cluster of mesh"):
        plan_rotation(mesh(), "cluster-9", installations.__getitem__, lambda c, s: None)


def test_a_person_s_own_bundle_refuses_the_plan_before_any_write() -> None:
    installations = {
        name: ai(peers={p: True for p in ("cluster-1", "cluster-2", "cluster-3") if p != name})
        for name in ("cluster-1", "cluster-2", "cluster-3")
    }
    installations["cluster-2"]["spec"]["values"]["tls"] = {"caBundle": {"enabled": True, "useSecret": True}}
    found = {"cluster-2": secrets([OLD.cert_pem], OLD.key_pem)}
    plan = plan_rotation(mesh(), "cluster-2", installations.__getitem__, lambda c, s: found[c].get(s))
    assert [p.cluster for p in plan.refused] == ["cluster-2"]
    assert "REFUSED: tls.caBundle is already in use" in plan.render_text() and "Secret cilium-root-ca.crt" in (
        plan.render_text()
    )


@charts_mark("cilium-1.19.6.tgz")
@engine_mark
def test_with_tls_ca_bundle_the_real_chart_makes_the_apiserver_trust_the_bundle_it_renders_from_content() -> None:
    """The design's premise (1.19.6): etcd's server and admin-client ca.crt come from the bundle ConfigMap, the
    chart renders that ConfigMap from ``content``, and the leaf Secrets' ca.crt is no longer projected."""
    from clustermesh.cilium.chart import render_chart

    assert CHARTS_DIR is not None
    content = OLD.cert_pem + NEW.cert_pem
    values = {
        "cluster": {"name": "cluster-1", "id": 1},
        "clustermesh": {"useAPIServer": True, "apiserver": {"tls": {"auto": {"enabled": True, "method": "cronJob"}}}},
        "tls": {"caBundle": {"enabled": True, "content": content}},
    }
    objects = render_chart(Path(CHARTS_DIR) / "cilium-1.19.6.tgz", values)
    deploy = next(
        o for o in objects if o.get("kind") == "Deployment" and o["metadata"]["name"] == "clustermesh-apiserver"
    )
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    for name, leaf in (("etcd-server-secrets", "server-cert"), ("etcd-admin-client", "admin-cert")):
        sources = volumes[name]["projected"]["sources"]
        assert {"key": "ca.crt", "path": "ca.crt"} not in sources[0]["secret"]["items"], name
        assert sources[0]["secret"]["name"] == f"clustermesh-apiserver-{leaf}"
        assert sources[1] == {
            "configMap": {"name": "cilium-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        }
    cm = next(o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == "cilium-root-ca.crt")
    assert split_pem(cm["data"]["ca.crt"]) == [OLD.cert_pem, NEW.cert_pem]


@charts_mark("cilium-1.16.19.tgz")
@engine_mark
def test_the_helm_method_renders_a_ca_bundle_verbatim_into_every_leaf_signed_by_the_first_certificate() -> None:
    """What the sandbox's helm method models: the chart's ``buildCustomCert`` keeps the whole ca.crt (cilium/certgen
    v0.3.1+ does not: it writes only the chain's last certificate; the rotation never puts a bundle in cilium-ca)."""
    from clustermesh.cilium.chart import render_chart

    assert CHARTS_DIR is not None
    values = {
        "cluster": {"name": "cluster-1", "id": 1},
        "clustermesh": {"useAPIServer": True, "apiserver": {"tls": {"auto": {"enabled": True, "method": "helm"}}}},
        "tls": {"ca": {"cert": b64(OLD.cert_pem + NEW.cert_pem), "key": b64(OLD.key_pem)}},
    }
    objects = render_chart(Path(CHARTS_DIR) / "cilium-1.16.19.tgz", values)
    leaves = {
        o["metadata"]["name"]: o["data"]
        for o in objects
        if o.get("kind") == "Secret" and o["metadata"]["name"].startswith("clustermesh-apiserver-")
    }
    assert {"clustermesh-apiserver-server-cert", "clustermesh-apiserver-remote-cert"} <= set(leaves)
    for data in leaves.values():
        bundle = base64.b64decode(data["ca.crt"]).decode()
        assert [fingerprint(c) for c in split_pem(bundle)] == [fingerprint(OLD.cert_pem), fingerprint(NEW.cert_pem)]
        leaf = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(OLD.cert_pem.encode()))  # the signer: first
