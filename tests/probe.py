"""A continuous connectivity probe for an in-process sandbox ``World`` (time_scale 0).

Every ``period`` seconds of the sandbox's virtual clock (0.5 s: 2 Hz) it asks the sandbox's own datapath
verdict (``sandbox.mesh.connection``, node by node) whether each member's agents are connected to each
other member, and records per pair the worst run of consecutive failed samples and its length in sandbox
seconds. A member sees a peer when at least one of its ready agents is connected to it (a DaemonSet
rolling update restarts some agents while the others keep the member connected); ``node_drops`` keeps
the same record per (member, node, peer) for the agents that restarted.

The sampler is a timer on the world's clock, so it sees each settled state between events; while it
runs the clock is never idle (wait for conditions, not for ``idle``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.mesh import ClusterState, connection
from sandbox.world import World

Pair = tuple[str, str]


@dataclass
class Drop:
    """The worst run of consecutive failed samples of one pair (0 when it never failed)."""

    samples: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass
class _Run:
    worst: Drop = field(default_factory=Drop)
    down: int = 0
    since: float = 0.0

    def record(self, ok: bool, now: float, reason: str) -> None:
        if ok:
            self.down = 0
            return
        if self.down == 0:
            self.since = now
        self.down += 1
        if self.down > self.worst.samples:
            self.worst = Drop(self.down, now - self.since, reason)


class ConnectivityProbe:
    """Samples every (member, member) connection of ``world`` at ``1 / period`` Hz of the sandbox clock."""

    def __init__(self, world: World, members: list[str] | None = None, *, period: float = 0.5) -> None:
        assert world.time_scale == 0, "the probe runs on the virtual clock (time_scale 0)"
        self.world = world
        self.members = members or [c.name for c in world.clusters]
        self.period = period
        self.samples = 0
        self.started_at = 0.0
        self._pairs: dict[Pair, _Run] = {}
        self._nodes: dict[tuple[str, str, str], _Run] = {}
        self._running = False
        self._last_key: tuple[Any, ...] | None = None
        self._last: dict[Pair, dict[str, Any]] = {}

    def start(self) -> ConnectivityProbe:
        self._running = True
        self.started_at = self.world.clock.now
        self.sample()
        return self

    def stop(self) -> None:
        self._running = False

    @property
    def seconds(self) -> float:
        """Sandbox seconds covered so far."""
        return self.world.clock.now - self.started_at

    def sample(self) -> None:
        if not self._running:
            return
        now = self.world.clock.now
        # The verdicts are a function of the clusters' stores (and the certificates' calendar): while no store
        # changed since the last sample, the last verdicts are recorded again instead of recomputed. A probe that
        # samples a racing virtual clock would otherwise hold the GIL from the flow it is measuring.
        key = (tuple(c.store.resource_version for c in self.world.clusters), repr(vars(self.world.calendar)))
        if key != self._last_key:
            self._last_key, self._last = key, self._verdicts()
        for (a, b), verdicts in self._last.items():
            for n, v in verdicts.items():
                self._nodes.setdefault((a, n, b), _Run()).record(v.ok, now, v.reason)
            ok = any(v.ok for v in verdicts.values())
            reason = "; ".join(f"{n}: {v.reason}" for n, v in verdicts.items() if not v.ok)
            self._pairs.setdefault((a, b), _Run()).record(ok, now, reason)
        self.samples += 1
        self.world.clock.after(self.period, self.sample)

    def _verdicts(self) -> dict[Pair, dict[str, Any]]:
        """Per (member, peer), per node of the member: the sandbox datapath's verdict on that agent's connection."""
        states = [ClusterState(c.name, c.store) for c in self.world.clusters]
        out: dict[Pair, dict[str, Any]] = {}
        for a in self.members:
            nodes = [n["metadata"]["name"] for n in self.world.cluster(a).store.list("v1/nodes")]
            for b in self.members:
                if a != b:
                    out[(a, b)] = {n: connection(states, None, a, b, node=n) for n in nodes}
        return out

    def drops(self) -> dict[Pair, Drop]:
        """Per (member, peer): the worst consecutive drop seen."""
        return {k: r.worst for k, r in self._pairs.items()}

    def node_drops(self) -> dict[tuple[str, str, str], Drop]:
        """Per (member, node, peer): the worst consecutive drop of that node's agent."""
        return {k: r.worst for k, r in self._nodes.items()}

    def worst(self, members: list[str] | None = None) -> Drop:
        """The worst drop among pairs whose both ends are in ``members`` (default: all)."""
        keep = set(members or self.members)
        found = [d for (a, b), d in self.drops().items() if a in keep and b in keep]
        return max(found, key=lambda d: d.samples, default=Drop())


class SandboxProbe:
    """A ``ConnectivityProbe`` on an in-process ``sandbox.server.Sandbox`` (``sandbox_factory``, time_scale 0),
    for flow tests: the probe lives on the sandbox's loop thread, where its world runs; every call is handed
    there. Use it as a context manager around the flow::

        with SandboxProbe(sb, ["cluster-1", "cluster-2"]) as probe:
            run_the_flow(...)
        assert probe.worst().samples == 0, probe.drops()
    """

    def __init__(self, sandbox: Any, members: list[str] | None = None, *, period: float = 0.5) -> None:
        self._sandbox = sandbox
        self._loop = sandbox._loop  # the sandbox's LoopThread
        assert self._loop is not None, "start the sandbox first"
        world = sandbox.world
        self.probe: ConnectivityProbe = self._loop.call(lambda: ConnectivityProbe(world, members, period=period))

    def __enter__(self) -> SandboxProbe:
        self._loop.call(self.probe.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call(self.probe.stop)

    @property
    def samples(self) -> int:
        return int(self._loop.call(lambda: self.probe.samples))

    @property
    def seconds(self) -> float:
        return float(self._loop.call(lambda: self.probe.seconds))

    def drops(self) -> dict[Pair, Drop]:
        return dict(self._loop.call(self.probe.drops))

    def worst(self, members: list[str] | None = None) -> Drop:
        return Drop(**vars(self._loop.call(self.probe.worst, members)))
