"""Cilium's certgen (or the chart's ``helm`` method): keep or make the CA, (re-)issue the leaf certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509

from sandbox import pki
from sandbox.chart import Rendered
from sandbox.controllers.base import LEAF_SECRETS, NS, SECRETS, SimCluster, _b64, _unb64
from sandbox.store import Obj
from sandbox.versions import facts as version_facts
from sandbox.versions import parse_lenient
from sandbox.virtual_calendar import Calendar


class Certgen:
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
            self._certgen(c, force=forced)
            if then is not None:
                then()
            self._kick(c)

        c.certgen_timer = self.clock.after(c.certgen_delay, run)

    def _ca_from_secret(self, c: SimCluster) -> pki.KeyPair | None:
        """The signer of ``cilium-ca``: of the certificates its ca.crt holds (a bundle during a CA rotation),
        the one matching ca.key, alone (``_ca_bundle`` gives the whole ca.crt)."""
        sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        if sec is None:
            return None
        data = sec.get("data") or {}
        key = _unb64(data.get("ca.key", ""))
        return next(
            (pki.KeyPair(pem, key) for pem in _pem_blocks(_unb64(data.get("ca.crt", ""))) if pki.matches_key(pem, key)),
            None,
        )

    def _ca_bundle(self, c: SimCluster, ca: pki.KeyPair) -> bytes:
        """``cilium-ca``'s ca.crt verbatim when ``ca`` is one of its certificates (every leaf Secret's ca.crt then),
        else ``ca`` alone."""
        sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        bundle = _unb64(((sec or {}).get("data") or {}).get("ca.crt", ""))
        return bundle if ca.cert_pem in _pem_blocks(bundle) else ca.cert_pem

    def _certgen(self, c: SimCluster, *, force: bool = False) -> None:
        """What certgen (or the chart's ``helm`` method) does: keep or make the CA, (re-)issue leaf certs.

        At the World's calendar time; ``force`` re-issues every leaf (real certgen does on each run), else a
        leaf that is valid, issued by the CA in use and covering the addresses is kept.
        """
        r = c.current
        if r is None or not r.mesh_enabled:
            return
        now = self.calendar.now()
        ca: pki.KeyPair | None = None
        if r.ca_cert:
            given = pki.KeyPair(_unb64(r.ca_cert), _unb64(r.ca_key))
            if pki.matches_key(given.cert_pem, given.key_pem):
                ca = given
        if ca is None:
            ca = self._ca_from_secret(c) or pki.make_ca("Cilium CA", now=now)
        bundle = self._ca_bundle(c, ca)
        ca_data = {"ca.crt": _b64(bundle), "ca.key": _b64(ca.key_pem)}
        self._put_secret(c, "cilium-ca", ca_data, "Opaque")
        if r.ca_source == "clustermesh.apiserver.tls.ca":
            self._put_secret(c, "clustermesh-apiserver-ca-cert", ca_data, "Opaque")
        lb_ip = self._lb_ip(c)
        for name in LEAF_SECRETS:
            if name.endswith("local-cert") and not (r.kvstoremesh and version_facts(r.version).kvstoremesh_local_cert):
                continue
            spec = _leaf_spec(c, name, lb_ip)
            cur = c.store.try_get(SECRETS, NS, name)
            if cur is not None and not force and _leaf_ok(cur, ca, spec["ips"], now, bundle):
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
            self._put_tls_secret(c, name, ca, kp, bundle)

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
