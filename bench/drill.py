"""How fast the failover drill notices a failover, and how long a whole drill takes.

Run: ``uv run python bench/drill.py [--time-scale 0.05] [--repeat 3]``. Prints the machine, then:

- detection latency: for each failover, the time from the scale-to-zero call until the sandbox itself
  (its own model of what every agent of the cluster lists, evaluated on the sandbox's loop after every
  store change) has no local backend left for the drill Service, against the ``failover_seconds`` the
  drill reports; the difference is what the drill adds (its polling and the exec round trips). The
  sandbox runs with ``--time-scale`` so its controllers' delays are not zero;
- wall time of a whole drill (recover, workloads, baseline, failover and restore of every cluster,
  rollback) on an instant sandbox (time scale 0), for 2 and 3 clusters.

The mesh is built with the setup's domain steps (no Prefect) in the order the setup flow runs them.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clustermesh.drill import BACKEND, SERVICE, DrillResult, run_drill  # noqa: E402
from clustermesh.kube.client import ClusterClient  # noqa: E402
from sandbox.mesh import ClusterState, service_entries  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402
from tests.helpers import build_mesh  # noqa: E402  (the mesh of tests/integration/test_drill_on_sandbox.py)

SERVICES_KEY = "v1/services"


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (load average {load}), "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


# ----------------------------------------------------------------------- the sandbox's own truth


class Truth:
    """Watches one sandbox cluster's store; records when its agents first list no local drill backend.

    Evaluated on the sandbox's loop thread, scheduled right after each store change (``call_soon``, so
    a controller's reconcile has finished), with the sandbox's own model (``service_entries``): no exec,
    no polling, so the time is the sandbox's propagation alone.
    """

    def __init__(self, sb: Sandbox, cluster: str, namespace: str, port: int) -> None:
        assert sb.world is not None and sb._loop is not None
        self.sb = sb
        self.cluster = cluster
        self.namespace = namespace
        self.port = port
        self.sim = sb.world.cluster(cluster)
        self.network = ipaddress.ip_network(str(self.sim.pod_cidr))
        self.done = threading.Event()
        self.at: float | None = None
        self._pending = False

    def _only_remote(self) -> bool:
        assert self.sb.world is not None
        svc = self.sim.store.try_get(SERVICES_KEY, self.namespace, SERVICE)
        cluster_ip = ((svc or {}).get("spec") or {}).get("clusterIP")
        if not cluster_ip:
            return False
        states = [ClusterState(c.name, c.store) for c in self.sb.world.clusters]
        for node in self.sim.nodes:
            entries = service_entries(states, self.sb.mesh_faults, self.cluster, node)
            entry = next(
                (
                    e
                    for e in entries
                    if e.frontend_ip == cluster_ip and e.frontend_port == self.port and e.protocol == "TCP"
                ),
                None,
            )
            if entry is None:
                return False
            active = [b for b in entry.backends if b.state == "active"]
            local = [b for b in entry.backends if ipaddress.ip_address(b.ip) in self.network]
            if local or not active:
                return False
        return True

    def _check(self) -> None:
        self._pending = False
        if self.done.is_set():
            return
        if self._only_remote():
            self.at = time.monotonic()
            self.done.set()
            self.sb._loop.call(self._detach)  # type: ignore[union-attr]

    def _on_change(self, event: str, rt: Any, obj: Any) -> None:
        if not self._pending and not self.done.is_set():
            self._pending = True
            assert self.sb._loop is not None
            self.sb._loop.loop.call_soon(self._check)

    def _attach(self) -> None:
        self.sim.store.add_listener(self._on_change)

    def _detach(self) -> None:
        self.sim.store.remove_listener(self._on_change)

    def arm(self) -> None:
        """Start watching (before the scale call)."""
        assert self.sb._loop is not None
        self.sb._loop.call(self._attach)

    def disarm(self) -> None:
        assert self.sb._loop is not None
        self.sb._loop.call(self._detach)


class TimedClient:
    """A drill client that notes when the backend Deployment is scaled to zero and arms the truth watch."""

    def __init__(
        self, inner: ClusterClient, sb: Sandbox, cluster: str, port: int, scaled: list[tuple[str, float, Truth]]
    ) -> None:
        self._inner = inner
        self._sb = sb
        self._cluster = cluster
        self._port = port
        self._scaled = scaled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        if name == BACKEND and replicas == 0:
            truth = Truth(self._sb, self._cluster, namespace, self._port)
            truth.arm()
            start = time.monotonic()
            self._inner.scale_deployment(namespace, name, replicas)
            self._scaled.append((self._cluster, start, truth))
            return
        self._inner.scale_deployment(namespace, name, replicas)


# ---------------------------------------------------------------------------------- measurements


def detection(time_scale: float, repeat: int, clusters: int, version: str) -> list[tuple[str, float, float]]:
    """(cluster, sandbox propagation s, drill-reported failover s) for every failover of ``repeat`` drills."""
    samples: list[tuple[str, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp,
        Sandbox(Path(tmp), clusters=clusters, cilium_version=version, time_scale=time_scale) as sb,
    ):
        spec, clients, facts = build_mesh(sb, drill_timeout=120)
        try:
            for _ in range(repeat):
                scaled: list[tuple[str, float, Truth]] = []
                timed: Mapping[str, Any] = {
                    name: TimedClient(c, sb, name, spec.drill.port, scaled) for name, c in clients.items()
                }
                result = run_drill(timed, facts, spec)
                if result.status != "passed":
                    raise SystemExit(f"drill did not pass: {result.summary()}")
                for cluster, start, truth in scaled:
                    if not truth.done.wait(5):
                        truth.disarm()
                        raise SystemExit(f"the sandbox never showed {cluster} failed over")
                    assert truth.at is not None
                    samples.append((cluster, truth.at - start, result.failover_seconds[cluster]))
        finally:
            for c in clients.values():
                c.close()
    return samples


def wall_time(clusters: int, version: str, repeat: int) -> list[tuple[float, DrillResult]]:
    out: list[tuple[float, DrillResult]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp,
        Sandbox(Path(tmp), clusters=clusters, cilium_version=version, time_scale=0) as sb,
    ):
        spec, clients, facts = build_mesh(sb, drill_timeout=60)
        try:
            for _ in range(repeat):
                start = time.perf_counter()
                result = run_drill(clients, facts, spec)
                out.append((time.perf_counter() - start, result))
                if result.status != "passed":
                    raise SystemExit(f"drill did not pass: {result.summary()}")
        finally:
            for c in clients.values():
                c.close()
    return out


def _ms(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0] * 1000:.0f} ms"
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, min {min(values) * 1000:.0f}, "
        f"max {max(values) * 1000:.0f} (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--time-scale", type=float, default=0.05, help="sandbox delays for the latency part")
    parser.add_argument("--repeat", type=int, default=3, help="drills per measurement")
    parser.add_argument("--cilium-version", default="1.16")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"Cilium {args.cilium_version} sandbox; drill polls every 0.2 s (the sandbox mesh.yaml's poll_interval)")
    print()
    print(f"failover detection, 2 clusters, time scale {args.time_scale}, {args.repeat} drills:")
    samples = detection(args.time_scale, args.repeat, 2, args.cilium_version)
    print(f"  {'cluster':<10} {'sandbox propagation':>20} {'drill reported':>15} {'drill adds':>11}")
    for cluster, truth, reported in samples:
        added = (reported - truth) * 1000
        print(f"  {cluster:<10} {truth * 1000:>17.1f} ms {reported * 1000:>12.0f} ms {added:>8.0f} ms")
    print(f"  sandbox propagation: {_ms([s[1] for s in samples])}")
    print(f"  drill reported:      {_ms([s[2] for s in samples])}")
    print(f"  detection latency beyond the sandbox's propagation: {_ms([s[2] - s[1] for s in samples])}")
    print()
    print(f"whole drill on an instant sandbox (time scale 0), {args.repeat} drills each:")
    for clusters in (2, 3):
        runs = wall_time(clusters, args.cilium_version, args.repeat)
        phases = len(runs[0][1].phases)
        print(f"  {clusters} clusters: {_ms([t for t, _ in runs])} per drill ({phases} phases)")


if __name__ == "__main__":
    main()
