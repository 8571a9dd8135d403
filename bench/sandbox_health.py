"""What one ``cilium-health status -o json`` exec costs the sandbox in a big mesh (CPU on its event loop).

Run: ``uv run python bench/sandbox_health.py [--clusters 16] [--nodes 50] [--execs 200] [--profile FILE]``.

The world is built in this process (no HTTP, no pipeline): N simulated clusters of ``--nodes`` nodes on
Cilium 1.16, meshed the way the guide does it for N clusters (one shared CA, every cluster pointed at
every other through its clustermesh-apiserver's LoadBalancer address), with the controllers run until
idle. Then ``--execs`` agent execs go through ``sandbox.mesh.exec_command`` exactly as the sandbox's exec
handler calls it, round-robin over the agents of every cluster. Prints the set-up time, the size of
one answer, and the CPU time per exec (mean, best round of 25, the garbage collector's share, and the
wall time) for:

- ``cilium-health status -o json`` (what the nightly verification runs in every agent),
- ``cilium-health status`` (text), ``cilium service list -o json`` and ``cilium status -o json``;

with ``--profile FILE`` the health execs also run under cProfile, written to FILE. The sandbox's HTTP
and websocket layers are not in these figures (``bench/sandbox_api.py`` measures exec round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox import pki  # noqa: E402
from sandbox.mesh import ClusterState, MeshFaults, exec_command  # noqa: E402
from sandbox.resources import builtin_types  # noqa: E402
from sandbox.server import DEFAULT_KKP_FOR_LINE  # noqa: E402
from sandbox.store import Obj, Store  # noqa: E402
from sandbox.world import AI_KEY, World, deep_merge  # noqa: E402

NS = "kube-system"
ROUND = 25  # execs per timed round: the best round shows the cost with the least noise from other processes
COMMANDS = {
    "cilium-health status -o json": ["cilium-health", "status", "-o", "json"],
    "cilium-health status": ["cilium-health", "status"],
    "cilium service list -o json": ["cilium", "service", "list", "-o", "json"],
    "cilium status -o json": ["cilium", "status", "-o", "json"],
}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def edit_values(store: Store, snippet: dict[str, Any]) -> None:
    """``kubectl edit appinstall cilium``: deep-merge a snippet into the values, in the field KKP uses."""
    ai = store.get(AI_KEY, NS, "cilium")
    block = ai["spec"].get("valuesBlock") or ""
    if block.strip():
        ai["spec"]["valuesBlock"] = yaml.safe_dump(deep_merge(yaml.safe_load(block) or {}, snippet))
    else:
        ai["spec"]["values"] = deep_merge(ai["spec"].get("values") or {}, snippet)
    store.replace(AI_KEY, NS, "cilium", ai)


async def idle(world: World) -> None:
    """Until no reconcile is queued and no timer is pending (time scale 0: timers fire when idle)."""
    while any(c.scheduled for c in world.clusters) or any(t.pending for _, _, t in world.clock._heap):
        await asyncio.sleep(0)


def lb_ip(store: Store) -> str:
    svc = store.get("v1/services", NS, "clustermesh-apiserver")
    return str(svc["status"]["loadBalancer"]["ingress"][0]["ip"])


async def meshed_world(clusters: int, nodes: int) -> World:
    """N clusters on Cilium 1.16, all connected to each other (shared CA, LoadBalancer endpoints)."""
    world = World(cilium_version="1.16", kkp_version=DEFAULT_KKP_FOR_LINE["1.16"], time_scale=0.0)
    for i in range(1, clusters + 1):
        store = Store()
        store.register(builtin_types())
        world.add_cluster(store, index=i, nodes=nodes)
    world.start(asyncio.get_running_loop())
    await idle(world)
    ca = pki.make_ca("Cilium CA")
    for c in world.clusters:
        edit_values(
            c.store,
            {
                "cluster": {"name": c.name, "id": c.index},
                "tls": {"ca": {"cert": b64(ca.cert_pem), "key": b64(ca.key_pem)}},
                "clustermesh": {
                    "useAPIServer": True,
                    "config": {"enabled": True},
                    "apiserver": {"tls": {"auto": {"method": "helm"}}, "service": {"type": "LoadBalancer"}},
                },
            },
        )
    await idle(world)
    addresses = {c.name: lb_ip(c.store) for c in world.clusters}
    for c in world.clusters:
        peers = [
            {"name": name, "address": "", "port": 2379, "ips": [ip]} for name, ip in addresses.items() if name != c.name
        ]
        edit_values(c.store, {"clustermesh": {"config": {"enabled": True, "clusters": peers}}})
    await idle(world)
    return world


class GcTimer:
    """Wall time spent in the garbage collector while it is registered (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start


def agent_pods(store: Store) -> list[Obj]:
    return [p for p in store.list("v1/pods", NS) if p["metadata"].get("labels", {}).get("k8s-app") == "cilium"]


def measure(
    label: str, run: Callable[[str, str], bytes], order: list[tuple[str, str]], gc_time: GcTimer, profile: Path | None
) -> None:
    """CPU and wall time per exec of one command over ``order``, in rounds of ROUND execs; prints one line."""
    profiler = cProfile.Profile() if profile else None
    rounds: list[float] = []  # CPU ms per exec, per round of ROUND execs
    gc_time.total = 0.0
    wall = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for first in range(0, len(order), ROUND):
        batch = order[first : first + ROUND]
        cpu = time.process_time()
        for cluster, pod in batch:
            run(cluster, pod)
        rounds.append((time.process_time() - cpu) / len(batch) * 1000)
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    per_wall = (time.perf_counter() - wall) / len(order) * 1000
    mean = sum(rounds) / len(rounds)
    print(
        f"{label:<30} CPU {mean:6.1f} ms per exec (best round {min(rounds):.1f}, in the garbage "
        f"collector {gc_time.total / len(order) * 1000:.1f}), wall {per_wall:.1f} ms; {len(order)} execs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--execs", type=int, default=200, help="execs per command")
    parser.add_argument("--profile", type=Path, help="write a cProfile file of the health execs here")
    args = parser.parse_args()

    async def body() -> None:
        start = time.perf_counter()
        world = await meshed_world(args.clusters, args.nodes)
        print(f"machine: {machine()}")
        print(
            f"world: {args.clusters} clusters x {args.nodes} nodes, Cilium 1.16, meshed in "
            f"{time.perf_counter() - start:.1f} s"
        )
        states = [ClusterState(c.name, c.store) for c in world.clusters]
        faults = MeshFaults()
        pods = {c.name: [p["metadata"]["name"] for p in agent_pods(c.store)] for c in world.clusters}
        # round-robin over the clusters, so that consecutive execs land in different clusters and nodes
        targets = [(name, names[k]) for k in range(args.nodes) for name, names in pods.items() if k < len(names)]
        order = [targets[i % len(targets)] for i in range(args.execs)]

        def one(cluster: str, pod: str, argv: list[str]) -> bytes:
            code, out, err = exec_command(states, faults, cluster, NS, pod, "cilium-agent", argv)
            if code != 0:
                raise SystemExit(f"{' '.join(argv)} in {cluster}/{pod} failed ({code}): {err.decode()}")
            return out

        sample = one(*order[0], COMMANDS["cilium-health status -o json"])
        expected = args.clusters * args.nodes
        listed = sample.count(b'"primary-address"') // 2  # host and health endpoint of every node
        failed = sample.count(b'"status":')  # only failed probes carry a status text
        print(f"one health answer: {len(sample):,} bytes, {listed} of {expected} nodes listed, {failed} failed probes")
        gc_time = GcTimer()
        for label, argv in COMMANDS.items():
            profile = args.profile if label == "cilium-health status -o json" else None
            measure(label, lambda cluster, pod, argv=argv: one(cluster, pod, argv), order, gc_time, profile)
        gc.callbacks.remove(gc_time)
        world.stop()

    asyncio.run(body())


if __name__ == "__main__":
    main()
