"""The simulated world behind each sandbox cluster: KKP's application controller, Cilium's chart,
certgen, a LoadBalancer provider, the Deployment/DaemonSet/Endpoints controllers and the agents.

Everything happens on the sandbox's asyncio loop. Store listeners only *kick* a per-cluster reconcile
(``call_soon``, coalesced); delayed work goes through ``_Clock``: real ``call_later`` scaled by
``time_scale``, or, when ``time_scale`` is 0, a virtual clock that fires timers in due order only once
all reactive work has settled (so a 600 s Helm timeout still comes after a 30 s certgen).

Addressing (cluster index ``i``, node ``k`` counted from 0):

- nodes: ``10.<i>.0.<k+2>`` in ``10.<i>.0.0/24``; pod CIDR ``172.<24+i>.0.0/16`` unless given, node
  ``k`` owns the ``/24`` slice number ``k`` (``spec.podCIDR``); health/cilium_host IPs are annotated
  on the Node (``network.cilium.io/ipv4-health-ip``, ``network.cilium.io/ipv4-cilium-host``);
- services: ClusterIPs from ``10.240.16.0/20`` (``kubernetes`` .1, ``kube-dns`` .10), nodePorts
  30000–32767 (``clustermesh-apiserver`` 32379);
- LoadBalancer pool ``203.0.113.<10*i>`` … ``203.0.113.<10*i+9>`` for clusters 1–24, then
  ``198.18.<i>.10`` … ``198.18.<i>.19`` (both documentation/benchmark ranges).
- Pod CIDRs ``172.<24+i>.0.0/16`` for clusters 1–7 (the guide's 172.25 and 172.26), then
  ``10.<100+i>.0.0/16``, so that every default stays in a private range and none overlap.

One module per controller, as kube-controller-manager is split (``sandbox/controllers/``): ``kkp``
(KKP's application controller), ``helm_apply``, ``certgen``, ``agents`` (and kvstoremesh),
``workloads``, ``services``, ``faults``, ``clock``, ``upgrades`` (a new Cilium version, KKP's way),
``recreate`` (a cluster deleted and created again under its name), plus ``bootstrap`` (a fresh cluster) and ``base``
(the shared cluster state). ``World`` only wires them: one reconcile per cluster, the timers, the
listeners. The chart is rendered through a ``sandbox.render.Renderer``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.controllers.agents import Agents
from sandbox.controllers.base import (  # noqa: F401 - re-exported: tests, bench and the server import them from here
    AI_KEY,
    ALNUM,
    CILIUM_PATCH,
    NS,
    SimCluster,
    _kkp,
    _rand,
    concrete_version,
    deep_merge,
    default_pod_cidr,
    lb_pool,
)
from sandbox.controllers.bootstrap import Bootstrap
from sandbox.controllers.certgen import Certgen
from sandbox.controllers.certgen_jobs import CertgenJobs
from sandbox.controllers.clock import _Clock
from sandbox.controllers.faults import Faults
from sandbox.controllers.helm_apply import HelmApply
from sandbox.controllers.kkp import KkpApplications
from sandbox.controllers.mcs import McsApi
from sandbox.controllers.recreate import Recreate
from sandbox.controllers.services import Services
from sandbox.controllers.upgrades import Upgrades
from sandbox.controllers.workloads import Workloads
from sandbox.render import Renderer, renderer_for
from sandbox.store import Obj, Store
from sandbox.virtual_calendar import Calendar
from sandbox.virtual_calendar import register as register_calendar

log = logging.getLogger(__name__)

__all__ = ["AI_KEY", "CILIUM_PATCH", "NS", "SimCluster", "World", "concrete_version", "deep_merge"]


class World(
    Faults,
    Bootstrap,
    KkpApplications,
    HelmApply,
    Certgen,
    CertgenJobs,
    Agents,
    Workloads,
    Services,
    McsApi,
    Upgrades,
    Recreate,
):
    """All simulated clusters and their controllers; the fault methods are what tests and the runner call."""

    def __init__(
        self,
        *,
        cilium_version: str = "1.13.8",
        kkp_version: str = "2.22",
        time_scale: float = 1.0,
        seed: int = 0,
        renderer: Renderer | None = None,
        charts: Path | str | None = None,
        helm_reissues_on_render: bool = True,
    ) -> None:
        """``helm_reissues_on_render``: with ``tls.auto.method: helm`` every KKP render re-issues the leaf
        certificates, as the real chart's ``genSignedCert`` does (off: a valid leaf is kept)."""
        if renderer is not None and charts is not None:
            raise ValueError("pass renderer or charts, not both")
        self.renderer: Renderer = renderer or renderer_for(charts)  # charts: the real charts in that folder
        self.cilium_version = concrete_version(cilium_version)
        self.kkp_version = kkp_version
        self.kkp = _kkp(kkp_version)
        self.time_scale = time_scale
        self.seed = seed
        self.clusters: list[SimCluster] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clock = _Clock(time_scale, busy=lambda: any(c.scheduled for c in self.clusters))
        self.calendar = Calendar()  # certificates' "now": real UTC time + an offset (advance_calendar)
        self.certgen_forced: set[str] = set()
        self.helm_reissues_on_render = helm_reissues_on_render

    def add_cluster(
        self,
        store: Store,
        *,
        index: int,
        nodes: int = 2,
        pod_cidr: str | None = None,
        cilium_version: str | None = None,
    ) -> SimCluster:
        """Bootstrap ``cluster-<index>`` into ``store`` as KKP leaves a fresh user cluster with Cilium."""
        rng = random.Random(f"{self.seed}:{index}")
        kkp_id = _rand(rng, 10, ALNUM)
        c = SimCluster(
            name=f"cluster-{index}",
            index=index,
            store=store,
            pod_cidr=pod_cidr or default_pod_cidr(index),
            node_cidr=f"10.{index}.0.0/24",
            cilium_version=concrete_version(cilium_version or self.cilium_version),
            lb_pool=lb_pool(index),
            kkp_id=kkp_id,
            api_host=f"{kkp_id}.europe-west3-c.kkp.example.com",
            rng=rng,
        )
        self.clusters.append(c)
        register_calendar(store, self.calendar)
        self._register_remote_cache(c)
        self._bootstrap(c, nodes)
        store.add_listener(lambda _ev, _rt, _obj, c=c: self._kick(c))
        if self.loop is not None:
            self._kick(c)
        return c

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach to the running loop; from now on controllers react to changes."""
        self.loop = loop or asyncio.get_running_loop()
        self.clock.attach(self.loop)
        for c in self.clusters:
            self._kick(c)

    def stop(self) -> None:
        """Cancel every pending timer; the stores stay as they are."""
        for c in self.clusters:
            for t in (c.install_timer, c.certgen_timer, c.agents_timer, *c.timers.values()):
                if t is not None:
                    t.cancel()
            if c.job and c.job.timeout:
                c.job.timeout.cancel()
        self.clock.stop()
        self.loop = None

    def advance_calendar(self, days: float) -> float:
        """Move the certificates' calendar on by ``days``; returns the total offset. Expired certificates then
        break the links that rely on them, and certgen re-issues on its next run."""
        offset = self.calendar.advance(days)
        for c in self.clusters:
            self._kick(c)
        return offset

    def cluster(self, ref: SimCluster | str | int) -> SimCluster:
        """A cluster by object, name (``cluster-2``) or index."""
        for c in self.clusters:
            if c is ref or c.name == ref or c.index == ref:
                return c
        raise KeyError(f"no simulated cluster {ref!r}")

    def _kick(self, c: SimCluster) -> None:
        if self.loop is None or c.scheduled:
            return
        c.scheduled = True
        self.loop.call_soon(self._run, c)

    def _run(self, c: SimCluster) -> None:
        c.scheduled = False
        try:
            self._reconcile(c)
        except Exception:  # noqa: BLE001 - keep the loop alive; the next change retries
            log.exception("reconcile of %s failed", c.name)

    def _after(self, c: SimCluster, key: Any, delay: float, fn: Callable[[], None], *, replace: bool = False) -> None:
        """One timer per key: kept when already pending (or replaced), dropped once fired."""
        old = c.timers.get(key)
        if old is not None and old.pending:
            if not replace:
                return
            old.cancel()

        def fire() -> None:
            if c.timers.get(key) is timer:
                del c.timers[key]
            fn()
            self._kick(c)

        timer = self.clock.after(delay, fire)
        c.timers[key] = timer

    def _reconcile(self, c: SimCluster) -> None:
        self._reconcile_services(c)
        self._reconcile_kkp(c)
        self._reconcile_mesh_secret(c)
        self._reconcile_certgen_jobs(c)
        self._reconcile_agents(c)
        self._reconcile_workloads(c)
        self._reconcile_endpoints(c)
        self._reconcile_mcs(c)
        self._check_install(c)

    def _delete(self, c: SimCluster, key: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if c.store.try_get(key, meta.get("namespace"), meta["name"]) is not None:
            c.store.delete(key, meta.get("namespace"), meta["name"])
