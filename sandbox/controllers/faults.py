"""The faults tests and the runner inject: LoadBalancer never assigned, slow certgen, expired
certificates, a rotated CA, a changed pod CIDR; and the sandbox clock the agents' memory of a lost
peer runs on (``sandbox.datapath.remote_cache``: kept until resync, withdrawn after cacheTTL)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
import weakref
from typing import Any

from sandbox import pki
from sandbox.controllers.base import (
    LEAF_SECRETS,
    NODES,
    NS,
    PODS,
    SECRETS,
    SimCluster,
    _b64,
    _get,
    _owner_kind,
    _set_node_cidr,
)
from sandbox.controllers.certgen import _leaf_spec
from sandbox.datapath.remote_cache import CacheBook, CacheEvent, register


class Faults:
    """The faults tests and the runner inject into one cluster."""

    def _register_remote_cache(self, c: SimCluster) -> None:
        """``c``'s agents remember lost peers on this World's clock (one book for all its clusters)."""
        book: CacheBook | None = getattr(self, "_remote_cache_book", None)
        if book is None:
            world = weakref.ref(self)  # the book outlives no World: it must not keep one alive

            def now() -> float:
                w: Any = world()
                return 0.0 if w is None else w.sandbox_seconds()

            def wake(delay: float) -> None:
                w: Any = world()
                if w is not None:
                    w.wake_after(delay)

            book = CacheBook(clock=now, wake=wake)
            self._remote_cache_book = book
        register(c.store, book)

    def sandbox_seconds(self) -> float:
        """The sandbox's clock in simulated seconds: virtual at ``time_scale`` 0, else real time scaled."""
        world: Any = self
        if world.time_scale == 0:
            return float(world.clock.now)
        return time.monotonic() / float(world.time_scale)

    def wake_after(self, delay: float) -> None:
        """Have the controllers look again after ``delay`` simulated seconds (moves a virtual clock that far);
        safe from any thread."""
        world: Any = self
        loop = world.loop
        if loop is None:
            return

        def arm() -> None:
            world.clock.after(delay, lambda: [world._kick(c) for c in world.clusters])

        loop.call_soon_threadsafe(arm)

    def remote_cache_events(self) -> list[CacheEvent]:
        """What the agents did with lost peers so far (lost, withdrawn, resynced), on :meth:`sandbox_seconds`."""
        book: CacheBook | None = getattr(self, "_remote_cache_book", None)
        if book is None:
            return []
        with book.lock:
            return list(book.events)

    def set_lb_never(self, cluster: SimCluster | str | int, on: bool) -> None:
        """LoadBalancer services of this cluster never get an address (while on)."""
        c = self.cluster(cluster)
        c.lb_never = on
        if on:
            for key in [k for k in c.timers if k[0] == "lb"]:
                c.timers.pop(key).cancel()
        self._kick(c)

    def set_certgen_delay(self, cluster: SimCluster | str | int, seconds: float) -> None:
        """How long certgen takes from now on (simulated seconds)."""
        self.cluster(cluster).certgen_delay = float(seconds)

    def expire_certificates(self, cluster: SimCluster | str | int) -> None:
        """Re-issue the existing mesh leaf certs by the current CA with a validity that has already ended."""
        c = self.cluster(cluster)
        ca = self._ca_from_secret(c)
        if ca is None:
            return
        start = self.calendar.now() - dt.timedelta(days=3)  # the World's calendar (advance_calendar)
        for name in LEAF_SECRETS:
            cur = c.store.try_get(SECRETS, NS, name)
            if cur is None:
                continue
            old = _leaf_spec(c, name, self._lb_ip(c))
            kp = pki.issue(
                ca,
                old["cn"],
                dns_names=old["dns"],
                ip_addresses=old["ips"],
                server=old["server"],
                client=True,
                days=1,
                not_before=start,
            )
            self._put_tls_secret(c, name, ca, kp)

    def rotate_ca(self, cluster: SimCluster | str | int) -> None:
        """A new ``cilium-ca`` now; certgen re-issues the leaf certs by it after its delay."""
        c = self.cluster(cluster)
        ca = pki.make_ca("Cilium CA", now=self.calendar.now())
        self._put_secret(c, "cilium-ca", {"ca.crt": _b64(ca.cert_pem), "ca.key": _b64(ca.key_pem)}, "Opaque")
        if c.current is not None and c.current.mesh_enabled:
            self._schedule_certgen(c)

    def set_pod_cidr(self, cluster: SimCluster | str | int, cidr: str) -> None:
        """Change the cluster's pod CIDR (e.g. to make two overlap): nodes, KKP's values, workload IPs."""
        c = self.cluster(cluster)
        c.pod_cidr = str(ipaddress.ip_network(cidr, strict=False))
        for k, node in enumerate(c.nodes):
            slice_, health, host = self._node_slice(c, k)
            try:
                c.store.mutate(NODES, None, node, lambda n, s=slice_, h=health, o=host: _set_node_cidr(n, s, h, o))
            except Exception:  # noqa: BLE001 - the node may have been deleted by a test
                continue
        self._enforce_kkp_keys(c)
        for pod in c.store.list(PODS):
            if _owner_kind(pod) == "Deployment" and not _get(pod, "spec", "hostNetwork"):
                self._delete(c, PODS, pod)  # re-created with addresses from the new slices
        self._kick(c)
