"""The cluster-loss drill: one member's mesh control plane goes away, the others are watched.

The member's ``kube-system/clustermesh-apiserver`` Deployment is scaled to 0 (its count recorded in
:data:`ORIGINAL_REPLICAS_ANNOTATION` first, as the failover records a backend's; the rollback and the
next drill undo it). Its backends stay alive: only the mesh's view of them is gone. Per other member
the drill measures whether the lost member's backends are kept (Cilium keeps them unless
``clustermesh.cacheTTL`` is set, 1.19+), whether requests are still answered, with a TTL how long until
they are withdrawn, and once the apiserver is back how long until every member is reconnected and lists
every backend again.

Remote backends are watched on a companion Service, :data:`LOSS_SERVICE`: the drill Service's
backends without an affinity annotation. From 1.18 an agent lists only the preferred backends of an
affinity service (cilium#43681), so with ``affinity: local`` the remote ones would be invisible.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clustermesh.drill.agents import AgentView, frontend_address
from clustermesh.drill.manifests import (
    APISERVER,
    APISERVER_NS,
    BACKEND,
    FAILOVER_REPLICAS,
    ORIGINAL_REPLICAS_ANNOTATION,
    PART_OF,
)
from clustermesh.drill.mesh_status import MESH_STATUS_CHECK, not_connected, not_lost, read_mesh_status
from clustermesh.drill.prober import Prober
from clustermesh.drill.results import ClusterLoss, DrillPhase, MemberDuringLoss, PhaseName, PhaseStatus
from clustermesh.drill.undo import Undone
from clustermesh.drill.workloads import deployment_ready, describe_deployment, parse_count, recorded, replicas_of
from clustermesh.errors import ClusterMeshError, ConflictError, DrillError, StopRequested, WaitTimeoutError
from clustermesh.stopping import note_written, raise_if_stopping

if TYPE_CHECKING:
    from clustermesh.drill.phases import Drill

LOSS_SERVICE = "clustermesh-drill-mesh"
"""Global, no affinity: every agent lists every cluster's backends of it, on every line."""
CACHE_TTL_KEY = "clustermesh-cache-ttl"
"""cilium-config's key for the chart's ``clustermesh.cacheTTL`` (1.19+; absent or ``0s``: kept forever)."""


def parse_go_duration(text: str) -> float:
    """A Go duration as cilium-config carries it ("0s", "30s", "1m30s", "1h") in seconds; 0 when unreadable."""
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    rest = text.strip()
    while rest:
        if rest[0].isdigit() or rest[0] == ".":
            number, rest = number + rest[0], rest[1:]
            continue
        unit = "ms" if rest.startswith("ms") else rest[0]
        if unit not in units or not number:
            return 0.0
        total += float(number) * units[unit]
        number, rest = "", rest[len(unit) :]
    return 0.0 if number else total


def loss_service(drill: Drill) -> dict[str, Any]:
    """The companion Service: the drill's backends, global, without an affinity annotation."""
    settings = drill.settings
    profile = drill.profile(drill.clusters[0])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": LOSS_SERVICE,
            "namespace": settings.namespace,
            "labels": {"app": BACKEND, **PART_OF},
            "annotations": dict(profile.global_annotations()),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": BACKEND},
            "ports": [{"name": "http", "port": settings.port, "targetPort": settings.port, "protocol": "TCP"}],
        },
    }


class _Refused(Exception):
    """A reason not to scale, found before anything changed."""


@dataclass
class _Watch:
    """What one other member did during the loss."""

    member: str
    ttl: float
    frontend: str
    pod: str
    kept: bool = True
    first_miss: str = ""
    withdrawn_at: float | None = None
    last_look: float = 0.0
    done: bool = False
    views: list[AgentView] = field(default_factory=list)


class ClusterLossRun:
    """The loss and the reconnection of one member (:meth:`lose`, :meth:`reconnect`); figures in :meth:`figures`."""

    def __init__(self, drill: Drill, cluster: str) -> None:
        self.drill = drill
        self.cluster = cluster
        self.client = drill.clients[cluster]
        self.members = [c for c in drill.clusters if c != cluster]
        self.replicas = 0
        self.lost_ips: set[str] = set()
        self.watches: dict[str, _Watch] = {}
        self.probers: dict[str, Prober] = {}
        self.lost_after: float | None = None
        self.reconnected_after: float | None = None

    # -- the loss ----------------------------------------------------------------------------------

    def lose(self) -> DrillPhase:
        """Scale the member's clustermesh-apiserver to 0 and watch the others; every error becomes a failed phase."""
        start = self.drill.clock()
        try:
            version = self._prepare()
            raise_if_stopping(f"scaling {self.cluster}/{APISERVER_NS}/{APISERVER} to {FAILOVER_REPLICAS}")
            self._record(version)
            with ExitStack() as stack:
                for member, watch in self.watches.items():
                    probe = self._probe_of(member, watch.pod)
                    self.probers[member] = stack.enter_context(Prober(probe, self.drill.probe_interval))
                self._scale_and_watch()
            problems = self._judge()
        except StopRequested:
            raise
        except _Refused as exc:
            return self._phase("cluster-loss", "failed", str(exc), start)
        except WaitTimeoutError as exc:
            detail = f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            return self._phase("cluster-loss", "failed", detail, start)
        except ClusterMeshError as exc:
            return self._phase("cluster-loss", "failed", str(exc), start)
        if problems:
            return self._phase("cluster-loss", "failed", "; ".join(problems), start)
        return self._phase("cluster-loss", "passed", self.figures().expectation(), start)

    def _prepare(self) -> str | None:
        """The companion Service everywhere, the lost member's backends listed by every other; the apiserver's
        count and resourceVersion. Refused when there is nothing to lose or nobody to watch."""
        drill = self.drill
        if not self.members:
            raise _Refused("a cluster-loss drill needs at least one other member to watch")
        deployment = self.client.get_deployment(APISERVER_NS, APISERVER)
        if deployment is None:
            raise _Refused(f"no Deployment {APISERVER_NS}/{APISERVER} in {self.cluster}: is the mesh enabled there?")
        if (record := recorded(deployment)) is not None:
            raise _Refused(
                f"{APISERVER_NS}/{APISERVER} of {self.cluster} already carries {ORIGINAL_REPLICAS_ANNOTATION}="
                f"{record} from another drill: not scaled; restore it first"
            )
        self.replicas = replicas_of(deployment)
        if self.replicas < 1:
            raise _Refused(f"{APISERVER_NS}/{APISERVER} of {self.cluster} has 0 replicas: its mesh is down already")
        self.lost_ips = drill.ready_backends(self.cluster)
        if not self.lost_ips:
            raise _Refused(f"no Ready drill backend in {self.cluster}: nothing the others could keep")
        for name in drill.clusters:
            drill.clients[name].create_or_replace(loss_service(drill))
        for member in self.members:
            frontend = self._frontend(member)
            self.watches[member] = _Watch(member, self._cache_ttl(member), frontend, drill.client_pod(member))
            drill.wait(
                member,
                lambda w=self.watches[member]: self._look(w),  # type: ignore[misc]
                lambda views: self._all_listed(views),
                expected=f"every agent of {member} to list {self.cluster}'s backends of {LOSS_SERVICE} before the loss",
                check=MESH_STATUS_CHECK,
                describe=lambda views: self._describe(views),
            )
        version: str | None = (deployment.get("metadata") or {}).get("resourceVersion")
        return version

    def _frontend(self, member: str) -> str:
        svc = self.drill.clients[member].get_service(self.drill.settings.namespace, LOSS_SERVICE)
        cluster_ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
        if not cluster_ip or cluster_ip == "None":
            raise DrillError(
                member,
                f"Service {self.drill.settings.namespace}/{LOSS_SERVICE} has no cluster IP",
                fix="check that the cluster hands out ClusterIPs (kubectl get service -n <drill namespace>)",
            )
        return frontend_address(cluster_ip, self.drill.settings.port)

    def _cache_ttl(self, member: str) -> float:
        config = self.drill.clients[member].get_configmap("kube-system", "cilium-config") or {}
        return parse_go_duration(str((config.get("data") or {}).get(CACHE_TTL_KEY) or "0s"))

    def _url(self) -> str:
        s = self.drill.settings
        return f"http://{LOSS_SERVICE}.{s.namespace}.svc.cluster.local:{s.port}/"

    def _probe_of(self, member: str, pod: str) -> Callable[[], bool]:
        return lambda: self.drill._curl(member, pod, self._url())[0]

    def _record(self, version: str | None) -> None:
        try:
            self.client.patch_deployment_annotations(
                APISERVER_NS, APISERVER, {ORIGINAL_REPLICAS_ANNOTATION: str(self.replicas)}, resource_version=version
            )
        except ConflictError:
            raise _Refused(
                f"{APISERVER_NS}/{APISERVER} of {self.cluster} changed between read and annotate (HTTP 409): "
                "someone else is changing it; not scaled"
            ) from None

    def _scale_apiserver(self, replicas: int, *, note: str, expected: str, check: str) -> None:
        """Scale the lost member's clustermesh-apiserver to ``replicas`` and wait until the Deployment is there."""
        self.client.scale_deployment(APISERVER_NS, APISERVER, replicas)
        note_written(note)
        self.drill.wait(
            self.cluster,
            lambda: self.client.get_deployment(APISERVER_NS, APISERVER),
            lambda d: deployment_ready(d, replicas),
            expected=expected,
            check=check,
            describe=describe_deployment,
        )

    def _scale_and_watch(self) -> None:
        drill = self.drill
        scaled_at = drill.clock()
        self._scale_apiserver(
            FAILOVER_REPLICAS,
            note=f"{self.cluster}: scaled {APISERVER_NS}/{APISERVER} to 0 (cluster-loss drill)",
            expected=f"{APISERVER_NS}/{APISERVER} of {self.cluster} at 0 replicas",
            check=f"kubectl -n {APISERVER_NS} describe deployment {APISERVER}",
        )
        drill.wait(
            self.cluster,
            self._still_connected,
            lambda problems: not problems,
            expected=f"every agent of {', '.join(self.members)} to report {self.cluster} not connected",
            check=MESH_STATUS_CHECK,
            describe=lambda problems: "; ".join(problems),
        )
        lost_at = drill.clock()
        self.lost_after = round(lost_at - scaled_at, 3)
        self._watch(lost_at)
        for member, watch in self.watches.items():
            drill.wait(
                member,
                lambda m=member, p=watch.pod: drill._curl(m, p, self._url()),  # type: ignore[misc]
                lambda got: got[0],
                expected=f"{self._url()} to answer from {watch.pod} while {self.cluster}'s mesh is down",
                check="the remaining backends and the datapath to them (UDP 8472 between nodes)",
                describe=lambda got: got[1],
            )

    def _still_connected(self) -> list[str]:
        problems: list[str] = []
        for member in self.members:
            cli = self.drill.profile(member).agent_cli
            views = read_mesh_status(self.drill.clients[member], member, cli, timeout=self.drill.spec.timeouts.api)
            problems.extend(not_lost(views, self.cluster))
        return problems

    def _watch(self, lost_at: float) -> None:
        """Look at every member until each has answered its question: kept for ``loss_seconds`` (no TTL), or
        withdrawn (TTL; at most TTL + the drill's timeout)."""
        drill = self.drill
        while True:
            now = drill.clock()
            for watch in self.watches.values():
                if watch.done:
                    continue
                views = self._look(watch)
                watch.last_look = drill.clock() - lost_at
                listed_all, listed_none = self._all_listed(views), self._none_listed(views)
                if watch.ttl <= 0:
                    if not listed_all and watch.kept:
                        watch.kept, watch.first_miss = False, self._describe(views)
                    watch.done = now - lost_at >= drill.settings.loss_seconds
                elif listed_none:
                    watch.kept, watch.withdrawn_at, watch.done = False, round(drill.clock() - lost_at, 3), True
                else:
                    watch.done = now - lost_at >= watch.ttl + drill.settings.timeout
            if all(w.done for w in self.watches.values()):
                return
            raise_if_stopping(f"watching the others while {self.cluster}'s mesh is down")
            drill.sleep(drill.spec.timeouts.poll_interval)

    def _look(self, watch: _Watch) -> list[AgentView]:
        watch.views = self.drill.agent_views(watch.member, watch.frontend)
        return watch.views

    def _all_listed(self, views: list[AgentView]) -> bool:
        return bool(views) and all(v.error is None and self.lost_ips <= v.active() for v in views)

    def _none_listed(self, views: list[AgentView]) -> bool:
        return bool(views) and all(v.error is None and not self.lost_ips & v.active() for v in views)

    def _describe(self, views: list[AgentView]) -> str:
        parts = []
        for v in views:
            if v.error is not None:
                parts.append(f"{v.name}: {v.error}")
            else:
                parts.append(
                    f"{v.name} lists {len(self.lost_ips & v.active())}/{len(self.lost_ips)} of {self.cluster}'s"
                )
        return "; ".join(parts) or "no Cilium agent pods found"

    def _judge(self) -> list[str]:
        """What went against Cilium's documented behaviour (or the service stopped answering)."""
        problems = []
        for watch in self.watches.values():
            if watch.ttl <= 0 and not watch.kept:
                problems.append(
                    f"{watch.member} did not keep {self.cluster}'s backends although its cacheTTL is 0s "
                    f"(keep forever): {watch.first_miss}"
                )
            if watch.ttl > 0 and watch.withdrawn_at is None:
                problems.append(
                    f"{watch.member} still listed {self.cluster}'s backends {watch.last_look:.1f}s after losing it "
                    f"(cacheTTL {watch.ttl:g}s): {self._describe(watch.views)}"
                )
        return problems

    # -- the return --------------------------------------------------------------------------------

    def reconnect(self) -> DrillPhase:
        """Scale the apiserver back to its recorded count; wait until every member is connected to every peer
        and lists every backend again; then drop the record."""
        drill, client = self.drill, self.client
        start = drill.clock()
        try:
            deployment = client.get_deployment(APISERVER_NS, APISERVER)
            record = None if deployment is None else recorded(deployment)
            if deployment is None or record is None:
                detail = f"{APISERVER_NS}/{APISERVER} of {self.cluster} carries no drill record: nothing to restore"
                return self._phase("reconnect", "skipped", detail, start)
            target = parse_count(record) or 1
            found = replicas_of(deployment)
            if found not in (FAILOVER_REPLICAS, target):
                client.patch_deployment_annotations(APISERVER_NS, APISERVER, {ORIGINAL_REPLICAS_ANNOTATION: None})
                kept = Undone(cluster=self.cluster, found=found, target=target, record=record, name=APISERVER)
                return self._phase("reconnect", "skipped", kept.describe(APISERVER_NS, since="the loss"), start)
            scaled_at = drill.clock()
            self._scale_apiserver(
                target,
                note=f"{self.cluster}: scaled {APISERVER_NS}/{APISERVER} back to {target} replicas",
                expected=f"all {target} replicas of {APISERVER_NS}/{APISERVER} Ready",
                check=f"kubectl -n {APISERVER_NS} describe deployment {APISERVER} and its pods' events",
            )
            drill.wait(
                self.cluster,
                self._not_whole,
                lambda problems: not problems,
                expected="every member connected to every peer and listing every backend again",
                check=MESH_STATUS_CHECK,
                describe=lambda problems: "; ".join(problems[:6]),
            )
            self.reconnected_after = round(drill.clock() - scaled_at, 3)
            client.patch_deployment_annotations(APISERVER_NS, APISERVER, {ORIGINAL_REPLICAS_ANNOTATION: None})
        except WaitTimeoutError as exc:
            detail = f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            return self._phase("reconnect", "failed", detail, start)
        except ClusterMeshError as exc:
            return self._phase("reconnect", "failed", str(exc), start)
        detail = (
            f"scaled {APISERVER_NS}/{APISERVER} of {self.cluster} back to {target}; every member reconnected and "
            f"listed every backend after {self.reconnected_after:.1f}s"
        )
        return self._phase("reconnect", "passed", detail, start)

    def _not_whole(self) -> list[str]:
        drill = self.drill
        problems: list[str] = []
        expected = {c: drill.ready_backends(c) for c in drill.clusters}
        for name in drill.clusters:
            cli = drill.profile(name).agent_cli
            views = read_mesh_status(drill.clients[name], name, cli, timeout=drill.spec.timeouts.api)
            problems.extend(not_connected(views, [c for c in drill.clusters if c != name]))
            frontend = self._frontend(name)
            for view in drill.agent_views(name, frontend):
                missing = set().union(*expected.values()) - view.active()
                if view.error is not None or missing:
                    problems.append(f"{view.name} misses {len(missing)} backend(s) of {LOSS_SERVICE}")
        return problems

    # -- results -----------------------------------------------------------------------------------

    def figures(self) -> ClusterLoss:
        members = []
        for member, watch in self.watches.items():
            prober = self.probers.get(member)
            members.append(
                MemberDuringLoss(
                    member=member,
                    cache_ttl_seconds=watch.ttl,
                    cache_ttl_supported=self.drill.profile(member).cache_ttl_supported,
                    backends=len(self.lost_ips),
                    kept=watch.kept,
                    withdrawn_after_s=watch.withdrawn_at,
                    watched_s=round(watch.last_look, 3),
                    probes=prober.requests if prober else 0,
                    failed_probes=prober.failures if prober else 0,
                )
            )
        return ClusterLoss(
            cluster=self.cluster,
            apiserver_replicas=self.replicas,
            lost_after_s=self.lost_after,
            members=members,
            reconnected_after_s=self.reconnected_after,
        )

    def _phase(self, name: PhaseName, status: PhaseStatus, detail: str, start: float) -> DrillPhase:
        probes = sum(p.requests for p in self.probers.values()) if name == "cluster-loss" else 0
        failed = sum(p.failures for p in self.probers.values()) if name == "cluster-loss" else 0
        return self.drill.phase_result(name, self.cluster, status, detail, start, probes=probes, failed_probes=failed)
