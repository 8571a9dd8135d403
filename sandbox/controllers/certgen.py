"""Cilium's certgen (or the chart's ``helm`` method): keep or make the CA, (re-)issue the leaf certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509

from sandbox import pki
from sandbox.chart import CaBundle, Rendered
from sandbox.controllers.base import CMS, LEAF_SECRETS, NS, SECRETS, SimCluster, _b64, _unb64
from sandbox.store import Obj
from sandbox.versions import facts as version_facts
from sandbox.versions import parse_lenient
from sandbox.virtual_calendar import Calendar

JOBS, CERTGEN = "batch/v1/jobs", "clustermesh-apiserver-generate-certs"


RENDERED_BUNDLE_LABEL = "sandbox.clustermesh.io/rendered-ca-bundle"


class CaBundleApply:
    """Helm applying ``tls.caBundle.content``: the chart's ConfigMap (or Secret) ``tls.caBundle.name``
    (templates/cilium-ca-bundle-configmap.yaml); one it rendered before and no longer does goes."""

    def _apply_ca_bundle(self, c: SimCluster, r: Rendered) -> None:
        bundle = r.ca_bundle if r.ca_bundle is not None and r.ca_bundle.content else None
        table = None if bundle is None else (CMS if bundle.kind == "ConfigMap" else SECRETS)
        for key in (CMS, SECRETS):
            for obj in c.store.list(key, NS):
                meta = obj.get("metadata") or {}
                if (meta.get("labels") or {}).get(RENDERED_BUNDLE_LABEL) and (
                    bundle is None or key != table or meta.get("name") != bundle.name
                ):
                    c.store.delete(key, NS, str(meta["name"]))
        if bundle is None or table is None:
            return
        content = bundle.content if table == CMS else _b64(bundle.content)
        data = {bundle.key: content}
        if c.store.try_get(table, NS, bundle.name) is None:
            meta = {"name": bundle.name, "namespace": NS, "labels": {RENDERED_BUNDLE_LABEL: "true"}}
            c.store.create(
                table,
                {"metadata": meta, "type": "Opaque", "data": data}
                if table == SECRETS
                else {"metadata": meta, "data": data},
            )
        else:
            c.store.mutate(table, NS, bundle.name, lambda o: o.__setitem__("data", data))


class Certgen(CaBundleApply):
    """Cilium's certgen: the CA and the leaf certificates."""

    calendar: Calendar
    certgen_forced: set[str]  # clusters whose next certgen run re-issues every leaf

    def _schedule_certgen(self, c: SimCluster, then: Callable[[], None] | None = None, *, force: bool = False) -> None:
        """Certgen after ``c.certgen_delay``; ``force``: re-issue every leaf (a certgen Job, a helm render)."""
        if force:
            self.certgen_forced.add(c.name)
        if c.certgen_timer is not None and c.certgen_timer.pending and then is None:
            return
        if c.certgen_timer is not None:
            c.certgen_timer.cancel()

        def run() -> None:
            c.certgen_timer = None
            forced = c.name in self.certgen_forced
            self.certgen_forced.discard(c.name)
            failed = self._certgen(c, force=forced)
            if failed is not None:
                self._fail_certgen_jobs(c, failed)
            elif then is not None:
                then()
            self._kick(c)

        c.certgen_timer = self.clock.after(c.certgen_delay, run)

    def _ca_from_secret(self, c: SimCluster) -> pki.KeyPair | None:
        """The signer of ``cilium-ca``: of the certificates its ca.crt holds, the one matching ca.key."""
        found = self._ca_and_bundle(c)
        return None if found is None else found[0]

    def _ca_and_bundle(self, c: SimCluster) -> tuple[pki.KeyPair, bytes] | None:
        """(the signer, cilium-ca's ca.crt verbatim): of the certificates ca.crt holds, the one matching ca.key
        (the chart's ``helm`` method, ``cilium.ca.setup``: the whole ca.crt is kept as the CA)."""
        sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        if sec is None:
            return None
        data = sec.get("data") or {}
        key, bundle = _unb64(data.get("ca.key", "")), _unb64(data.get("ca.crt", ""))
        signer = next((pem for pem in _pem_blocks(bundle) if pki.matches_key(pem, key)), None)
        return (pki.KeyPair(signer, key), bundle) if signer is not None else None

    def _certgen(self, c: SimCluster, *, force: bool = False) -> str | None:
        """What certgen (or the chart's ``helm`` method) does: keep or make the CA, (re-)issue leaf certs.

        At the World's calendar time; ``force`` re-issues every leaf (real certgen does on each run), else a
        leaf that is valid, issued by the CA in use and covering the addresses is kept. Returns why the run
        failed (nothing written), as certgen's log would say, or None.
        """
        r = c.current
        if r is None or not r.mesh_enabled:
            return None
        now = self.calendar.now()
        issuer = self._issuer(c, r, now)
        if isinstance(issuer, str):
            return issuer
        ca, ca_crt, leaf_ca, chain = issuer
        ca_data = {"ca.crt": _b64(ca_crt), "ca.key": _b64(ca.key_pem)}
        self._put_secret(c, "cilium-ca", ca_data, "Opaque")
        if r.ca_source == "clustermesh.apiserver.tls.ca":
            self._put_secret(c, "clustermesh-apiserver-ca-cert", ca_data, "Opaque")
        lb_ip = self._lb_ip(c)
        for name in LEAF_SECRETS:
            if name.endswith("local-cert") and not (r.kvstoremesh and version_facts(r.version).kvstoremesh_local_cert):
                continue
            spec = _leaf_spec(c, name, lb_ip)
            cur = c.store.try_get(SECRETS, NS, name)
            if cur is not None and not force and _leaf_ok(cur, ca, spec["ips"], now, leaf_ca):
                continue
            kp = pki.issue(
                ca,
                spec["cn"],
                dns_names=spec["dns"],
                ip_addresses=spec["ips"],
                server=spec["server"],
                days=leaf_validity_days(r),
                now=now,
            )
            self._put_tls_secret(c, name, ca, pki.KeyPair(kp.cert_pem + chain, kp.key_pem), leaf_ca)
        return None

    def _issuer(self, c: SimCluster, r: Rendered, now: dt.datetime) -> tuple[pki.KeyPair, bytes, bytes, bytes] | str:
        """(signer, cilium-ca's ca.crt, the leaves' ca.crt, what follows each leaf in tls.crt), or why the run fails.

        The CA given in the values, else ``cilium-ca``, else a new one. The chart's ``helm`` method keeps
        cilium-ca's ca.crt verbatim in every leaf. cilium/certgen (``cronJob``) as its version does
        (``certgen_tag``): before v0.3.1 a ca.crt of more than one certificate fails the run; from v0.3.1 it is
        a chain: the first certificate signs, the last becomes the leaves' ca.crt, the rest follow the leaf.
        """
        if r.ca_cert:
            given = pki.KeyPair(_unb64(r.ca_cert), _unb64(r.ca_key))
            if pki.matches_key(given.cert_pem, given.key_pem):
                return given, given.cert_pem, given.cert_pem, b""
        sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        data = (sec or {}).get("data") or {}
        bundle, key = _unb64(data.get("ca.crt", "")), _unb64(data.get("ca.key", ""))
        certs = _pem_blocks(bundle)
        if r.tls_method == "cronJob" and certs and key:
            tag = certgen_tag(r.version)
            if len(certs) > 1 and _semver(tag) < CHAIN_FROM:
                return f"certgen {tag}: cilium-ca ca.crt: the PEM file should contain only one object"
            if len(certs) > 1:
                return pki.KeyPair(certs[0], key), bundle, certs[-1], b"".join(certs[:-1])
        found = self._ca_and_bundle(c)
        if found is not None:
            return found[0], found[1], found[1], b""
        ca = pki.make_ca("Cilium CA", now=now)
        return ca, ca.cert_pem, ca.cert_pem, b""

    def _fail_certgen_jobs(self, c: SimCluster, why: str) -> None:
        """Every running certgen Job fails with ``why`` (its pod's log), as a failed certgen run leaves it."""
        for job in c.store.list(JOBS, NS):
            if not (job.get("status") or {}).get("active"):
                continue
            meta = job.get("metadata") or {}
            owners = [r.get("name") for r in meta.get("ownerReferences") or []]
            if (meta.get("labels") or {}).get("k8s-app") != CERTGEN and CERTGEN not in owners:
                continue
            failed = {
                "failed": 1,
                "startTime": (job.get("status") or {}).get("startTime"),
                "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": why}],
            }
            c.store.mutate(JOBS, NS, str(meta["name"]), lambda o, f=failed: o.__setitem__("status", f))

    def _put_tls_secret(
        self, c: SimCluster, name: str, ca: pki.KeyPair, kp: pki.KeyPair, bundle: bytes | None = None
    ) -> None:
        """A leaf Secret; its ca.crt is ``bundle`` (cilium-ca's ca.crt verbatim) when given, else the signer."""
        self._put_secret(
            c,
            name,
            {"ca.crt": _b64(bundle or ca.cert_pem), "tls.crt": _b64(kp.cert_pem), "tls.key": _b64(kp.key_pem)},
            "kubernetes.io/tls",
        )


CERTGEN_TAGS: dict[tuple[int, int, int], str] = {
    (1, 13, 0): "v0.1.8", (1, 13, 8): "v0.1.9", (1, 13, 18): "v0.1.11",
    (1, 14, 0): "v0.1.8", (1, 14, 16): "v0.1.15", (1, 14, 19): "v0.1.16",
    (1, 15, 0): "v0.1.9", (1, 15, 7): "v0.1.13", (1, 15, 8): "v0.1.14", (1, 15, 16): "v0.1.17", (1, 15, 19): "v0.1.19",
    (1, 16, 0): "v0.2.0", (1, 16, 19): "v0.3.1",
    (1, 17, 0): "v0.2.1", (1, 17, 12): "v0.3.1", (1, 17, 18): "v0.4.6",
    (1, 18, 0): "v0.2.4", (1, 18, 10): "v0.4.3", (1, 18, 11): "v0.4.5", (1, 18, 12): "v0.4.6",
    (1, 19, 0): "v0.3.2", (1, 19, 4): "v0.4.3", (1, 19, 6): "v0.4.6",
    (1, 20, 0): "v0.4.8",
}  # fmt: skip
"""``certgen.image.tag`` in the values.yaml of each chart in ../shared/charts."""
CHAIN_FROM = (0, 3, 1)
"""cilium/certgen v0.3.1 ("add support for CA certificate chains") reads cilium-ca's ca.crt as a chain."""


def certgen_tag(version: str) -> str:
    """The certgen image tag the chart of ``version`` runs: its own, else the nearest earlier one of its line."""
    ver = parse_lenient(version)
    line = sorted(v for v in CERTGEN_TAGS if v[:2] == ver[:2])
    if not line:
        return CERTGEN_TAGS[max(CERTGEN_TAGS)] if ver > max(CERTGEN_TAGS) else CERTGEN_TAGS[min(CERTGEN_TAGS)]
    return CERTGEN_TAGS[max((v for v in line if v <= ver), default=line[0])]


def _semver(tag: str) -> tuple[int, ...]:
    return tuple(int(p) for p in tag.lstrip("v").split(".")[:3])


def trust_volume(volume: str, secret: str, bundle: CaBundle | None) -> Obj:
    """An etcd volume of the clustermesh-apiserver as the chart renders it: ``secret``'s tls.crt/tls.key with
    its ca.crt, or, with ``tls.caBundle``, ca.crt from the bundle's ConfigMap/Secret."""
    leaf: Obj = {
        "name": secret,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    if bundle is None:
        leaf["items"].append({"key": "ca.crt", "path": "ca.crt"})
        return {"name": volume, "projected": {"defaultMode": 0o400, "sources": [{"secret": leaf}]}}
    kind = "secret" if bundle.kind == "Secret" else "configMap"
    trust = {kind: {"name": bundle.name, "items": [{"key": bundle.key, "path": "ca.crt"}]}}
    return {"name": volume, "projected": {"defaultMode": 0o400, "sources": [{"secret": leaf}, trust]}}


LEAF_DAYS_BEFORE_1_20, LEAF_DAYS_FROM_1_20 = 1095, 365
"""``clustermesh.apiserver.tls.auto.certValidityDuration`` in the real charts' values.yaml: 1095 up to 1.19,
365 from 1.20."""


def leaf_validity_days(r: Rendered) -> int:
    """The leaf certificates' lifetime: the values' ``certValidityDuration``, else the line's chart default."""
    auto = (((r.values.get("clustermesh") or {}).get("apiserver") or {}).get("tls") or {}).get("auto") or {}
    given = auto.get("certValidityDuration") if isinstance(auto, dict) else None
    if isinstance(given, int | float) and given > 0:
        return int(given)
    return LEAF_DAYS_FROM_1_20 if parse_lenient(r.version) >= (1, 20, 0) else LEAF_DAYS_BEFORE_1_20


def _leaf_spec(c: SimCluster, name: str, lb_ip: str | None) -> dict[str, Any]:
    """Common name, SANs and usage of each certgen leaf certificate."""
    cluster_name = c.current.cluster_name if c.current else "default"
    if name.endswith("server-cert"):
        ips = ("127.0.0.1", lb_ip) if lb_ip else ("127.0.0.1",)
        dns = ("clustermesh-apiserver.cilium.io", "*.mesh.cilium.io", "clustermesh-apiserver.kube-system.svc")
        return {"cn": "clustermesh-apiserver.cilium.io", "dns": dns, "ips": ips, "server": True}
    if name.endswith("admin-cert"):
        cn = "root" if version_facts(c.cilium_version).admin_cn_root else f"admin-{cluster_name}"
        return {"cn": cn, "dns": ("localhost",), "ips": (), "server": False}
    if name.endswith("remote-cert"):
        return {"cn": "remote", "dns": (), "ips": (), "server": False}
    return {"cn": f"local-{cluster_name}", "dns": (), "ips": (), "server": False}


def _issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """``pki.issued_by`` that also survives its bad-signature path (it names ``x509.InvalidSignature``)."""
    try:
        return pki.issued_by(cert_pem, ca_pem)
    except AttributeError:
        return False


def _pem_blocks(bundle: bytes) -> list[bytes]:
    """Each certificate of a PEM bundle, as its own block (one trailing newline), in order."""
    end = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + end + b"\n" for part in bundle.split(end) if b"-----BEGIN CERTIFICATE-----" in part]


def _leaf_ok(
    secret: Obj, ca: pki.KeyPair, need_ips: tuple[str, ...], now: dt.datetime | None = None, bundle: bytes | None = None
) -> bool:
    """Certgen keeps a leaf that is valid (at ``now``), issued by the CA in use and covers the wanted addresses."""
    data = secret.get("data") or {}
    cert = _unb64(data.get("tls.crt", ""))
    if not (_issued_by(cert, ca.cert_pem) and pki.valid_now(cert, now)):
        return False
    if _unb64(data.get("ca.crt", "")) != (bundle or ca.cert_pem):
        return False
    if need_ips:
        try:
            san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
            have = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
        except Exception:  # noqa: BLE001
            return False
        if not set(need_ips) <= have:
            return False
    return True
