"""The drill's phases over a set of clusters: :class:`Drill`.

Every phase returns a :class:`DrillPhase`; the order they run in is :func:`clustermesh.drill.run_drill`'s.
The failover itself, the one phase that disrupts, is :mod:`clustermesh.drill.failover`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.drill.agents import AgentView, frontend_address, read_backends
from clustermesh.drill.client import DrillClient
from clustermesh.drill.expectations import AGENT_CHECK, BASELINE_CHECK, Look, steady_problems
from clustermesh.drill.failover import FailoverRun
from clustermesh.drill.manifests import (
    APISERVER,
    APISERVER_NS,
    BACKEND,
    CLIENT,
    CLIENT_IMAGE,
    FAILOVER_REPLICAS,
    ORIGINAL_REPLICAS_ANNOTATION,
    SERVICE,
    drill_manifests,
)
from clustermesh.drill.prober import PROBE_INTERVAL, curl
from clustermesh.drill.results import DrillPhase, PhaseName, PhaseStatus
from clustermesh.drill.text import cut
from clustermesh.drill.undo import Undone, undo_recorded
from clustermesh.drill.workloads import (
    backend_count,
    deployment_ready,
    describe_deployment,
    parse_count,
    pod_ready,
    recorded,
    replicas_of,
)
from clustermesh.errors import ClusterMeshError, DrillError, StopRequested, WaitTimeoutError
from clustermesh.kube import wait_for
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from clustermesh.stopping import note_written, raise_if_stopping


class Drill:
    """The drill's phases over a set of clusters; stateless between calls (the record is on the cluster).

    Each phase returns a :class:`DrillPhase` and never raises for a cluster's answer (a timeout, an API
    error): that becomes a failed phase with the reason. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        clients: Mapping[str, DrillClient],
        facts: Mapping[str, ClusterFacts],
        spec: MeshSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        missing = [c.name for c in spec.clusters if c.name not in clients or c.name not in facts]
        if missing:
            raise DrillError(
                missing[0],
                f"no client or facts for cluster(s) {', '.join(missing)}",
                fix="pass a client and the prerequisite facts for every cluster of the spec",
            )
        self.clients = clients
        self.facts = facts
        self.spec = spec
        self.settings = spec.drill
        self.clusters = [c.name for c in spec.clusters]
        self.clock = clock
        self.sleep = sleep
        self.probe_interval = probe_interval
        self.recovered: list[str] = []
        """What :meth:`recover` restored, for the result."""
        self._dropped: list[str] = []
        self.left_alone: list[str] = []
        """Records :meth:`recover` dropped without restoring: someone had set another count since."""
        self.backend_replicas: dict[str, int] = {}
        """Each cluster's backend count as :meth:`ensure_workloads` left it (``drill.replicas`` unless a
        person set another)."""

    # -- helpers -----------------------------------------------------------------------------------

    def profile(self, cluster: str) -> CiliumProfile:
        return profile_for(self.facts[cluster].cilium_version)

    def targets(self, clusters_to_fail: Sequence[str] | None) -> list[str]:
        """The clusters to fail over, in order; unknown names are refused before anything is touched."""
        if clusters_to_fail is None:
            return list(self.clusters)
        unknown = [c for c in clusters_to_fail if c not in self.clusters]
        if unknown:
            raise DrillError(
                unknown[0],
                "is not a cluster of this mesh",
                fix=f"name clusters to fail from the spec: {', '.join(self.clusters)}",
            )
        return list(dict.fromkeys(clusters_to_fail))

    def wait(
        self,
        cluster: str,
        read: Callable[[], Any],
        predicate: Callable[[Any], bool],
        *,
        expected: str,
        check: str,
        describe: Callable[[Any], str] | None = None,
    ) -> Any:
        """:func:`wait_for` with the drill's timeout, the spec's poll interval and the drill's clock."""
        return wait_for(
            read,
            predicate,
            timeout=self.settings.timeout,
            expected=expected,
            check=check,
            cluster=cluster,
            poll_interval=self.spec.timeouts.poll_interval,
            describe=describe,
            clock=self.clock,
            sleep=self.sleep,
        )

    def frontend(self, cluster: str) -> str:
        """The drill Service's frontend in ``cluster`` as the agents list it ("clusterIP:port")."""
        svc = self.clients[cluster].get_service(self.settings.namespace, SERVICE)
        cluster_ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
        if not cluster_ip or cluster_ip == "None":
            raise DrillError(
                cluster,
                f"Service {self.settings.namespace}/{SERVICE} has no cluster IP",
                fix="run the workloads phase first; the drill needs a ClusterIP frontend to look for",
            )
        return frontend_address(cluster_ip, self.settings.port)

    def ready_backends(self, cluster: str) -> set[str]:
        """IPs of ``cluster``'s Ready backend pods: the addresses every agent should list."""
        pods = self.clients[cluster].list_pods(self.settings.namespace, f"app={BACKEND}")
        return {str(p["status"]["podIP"]) for p in pods if pod_ready(p) and (p.get("status") or {}).get("podIP")}

    def client_pod(self, cluster: str) -> str:
        """The Ready client pod of ``cluster`` that probes are sent from (the first by name)."""
        pods = self.clients[cluster].list_pods(self.settings.namespace, f"app={CLIENT}")
        ready = sorted(str(p["metadata"]["name"]) for p in pods if pod_ready(p))
        if not ready:
            raise DrillError(
                cluster,
                f"no Ready pod of Deployment {self.settings.namespace}/{CLIENT} to probe from",
                fix=f"kubectl -n {self.settings.namespace} describe deployment {CLIENT} (image {CLIENT_IMAGE})",
            )
        return ready[0]

    def _curl(self, cluster: str, pod: str, url: str) -> tuple[bool, str]:
        return curl(self.clients[cluster], self.settings.namespace, pod, url, api_timeout=self.spec.timeouts.api)

    def service_url(self) -> str:
        s = self.settings
        return f"http://{SERVICE}.{s.namespace}.svc.cluster.local:{s.port}/"

    def probe(self, cluster: str, pod: str | None = None) -> tuple[bool, str]:
        """One request through the drill Service from ``cluster``'s client pod."""
        return self._curl(cluster, pod or self.client_pod(cluster), self.service_url())

    def agent_views(self, cluster: str, frontend: str) -> list[AgentView]:
        """What every agent of ``cluster`` lists for ``frontend``."""
        return read_backends(self.clients[cluster], cluster, self.facts, frontend, timeout=self.spec.timeouts.api)

    def _steady(self, cluster: str, views: Sequence[AgentView], expected: Mapping[str, set[str]]) -> list[str]:
        return steady_problems(
            views,
            cluster=cluster,
            local=expected[cluster],
            remote={c: ips for c, ips in expected.items() if c != cluster},
            affinity=self.settings.affinity,
            marker_reliable=self.profile(cluster).preferred_marker_reliable,
        )

    def phase_result(
        self, name: PhaseName, cluster: str | None, status: PhaseStatus, detail: str, start: float, **kw: Any
    ) -> DrillPhase:
        """A :class:`DrillPhase` that began at ``start`` and ends now, its detail cut to 2000 characters."""
        return DrillPhase(
            name=name,
            cluster=cluster,
            status=status,
            detail=cut(detail, 2000),
            seconds=round(self.clock() - start, 3),
            **kw,
        )

    def _wait_backend_ready(self, cluster: str, target: int) -> None:
        """Until all ``target`` replicas of ``cluster``'s backend Deployment are Ready, and no others run."""
        ns = self.settings.namespace
        client = self.clients[cluster]
        self.wait(
            cluster,
            lambda: client.get_deployment(ns, BACKEND),
            lambda d: deployment_ready(d, target),
            expected=f"all {target} replicas of {ns}/{BACKEND} Ready",
            check=f"kubectl -n {ns} describe deployment {BACKEND} and its pods' events",
            describe=describe_deployment,
        )

    # -- phases ------------------------------------------------------------------------------------

    def recover(self) -> DrillPhase:
        """:meth:`recover_unfinished` as a phase; its lines go to ``self.recovered``, ``self.left_alone``
        and the detail."""
        start = self.clock()
        try:
            self.recovered = self.recover_unfinished()
        except DrillError as exc:
            return self.phase_result("recover", None, "failed", str(exc), start)
        lines = self.recovered + self.left_alone + self._dropped
        if not lines:
            return self.phase_result("recover", None, "skipped", "nothing left by an earlier drill", start)
        return self.phase_result("recover", None, "passed", "; ".join(lines), start)

    def recover_unfinished(self) -> list[str]:
        """Undo what an earlier drill left behind (a Deployment still carrying the replica record).

        Returns what was restored. A backend someone scaled since that drill keeps its count (the line
        goes to ``self.left_alone``). Raises :class:`DrillError` when a recovery fails: the drill must
        not start on a cluster that is still scaled down.
        """
        restored: list[str] = []
        errors: list[str] = []
        self.left_alone, self._dropped = [], []
        for cluster in self.clusters:
            for undo, namespace in ((self._undo, self.settings.namespace), (self._undo_apiserver, APISERVER_NS)):
                try:
                    undone = undo(cluster, wait_ready=True)
                except ClusterMeshError as exc:
                    errors.append(f"{cluster}: {exc}")
                    continue
                if undone is not None:
                    line = undone.describe(namespace, since="an earlier drill")
                    (restored if undone.restored else self.left_alone if undone.kept else self._dropped).append(line)
        if errors:
            done = f"; restored: {'; '.join(restored)}" if restored else ""
            raise DrillError(
                errors[0].split(":", 1)[0],
                f"could not undo what an earlier drill left: {' | '.join(errors)}{done}",
                fix=f"restore the replica count recorded in annotation {ORIGINAL_REPLICAS_ANNOTATION} by hand "
                "(kubectl scale), then remove the annotation",
            )
        return restored

    def ensure_workloads(self) -> DrillPhase:
        """Create or update the drill's workloads in every cluster and wait until all of them are Ready."""
        start = self.clock()
        ns = self.settings.namespace
        done: list[str] = []
        try:
            for cluster in self.clusters:
                client = self.clients[cluster]
                actions = self._apply_workloads(cluster)
                for name, count in ((BACKEND, self.backend_replicas[cluster]), (CLIENT, 1)):
                    self.wait(
                        cluster,
                        lambda c=client, n=name: c.get_deployment(ns, n),  # type: ignore[misc]
                        lambda d, k=count: deployment_ready(d, k),  # type: ignore[misc]
                        expected=f"all {count} replicas of {ns}/{name} Ready",
                        check=f"kubectl -n {ns} describe deployment {name} (image pull, scheduling, readiness)",
                        describe=describe_deployment,
                    )
                self.frontend(cluster)
                done.append(f"{cluster}: " + (", ".join(actions) or "unchanged"))
        except StopRequested:
            raise
        except ClusterMeshError as exc:
            return self.phase_result("workloads", None, "failed", str(exc), start)
        return self.phase_result("workloads", None, "passed", "Ready; " + "; ".join(done), start)

    def _apply_workloads(self, cluster: str) -> list[str]:
        """Create or update the drill's objects in ``cluster``; what changed, in words.

        The backend keeps a replica count someone else set (``drill.replicas`` applies to a new backend, and
        to one still at the count the drill gave it).
        """
        ns = self.settings.namespace
        client = self.clients[cluster]
        count, applied = backend_count(client.get_deployment(ns, BACKEND), self.settings.replicas)
        self.backend_replicas[cluster] = count
        actions = [] if applied is None else [f"kept {BACKEND} at the {count} replicas someone set"]
        manifests = drill_manifests(self.settings, self.profile(cluster), backend_replicas=count, applied=applied)
        for manifest in manifests:
            raise_if_stopping(f"applying {manifest['kind']} {ns}/{manifest['metadata']['name']} in {cluster}")
            action = getattr(client.create_or_replace(manifest), "action", "applied")
            if action != "unchanged":
                actions.append(f"{action} {manifest['kind']} {manifest['metadata']['name']}")
        return actions

    def _observe_steady(self, frontends: Mapping[str, str]) -> tuple[Look, int, int]:
        look = Look()
        probes = failed = 0
        expected = {c: self.ready_backends(c) for c in self.clusters}
        for cluster in self.clusters:
            want = max(1, self.backend_replicas.get(cluster, self.settings.replicas))
            if len(expected[cluster]) < want:
                look.problems.append(f"{cluster}: {len(expected[cluster])}/{want} backend pods Ready")
        for cluster in self.clusters:
            views = self.agent_views(cluster, frontends[cluster])
            look.views[cluster] = views
            look.problems.extend(self._steady(cluster, views, expected))
            pod = self.client_pod(cluster)
            ok, what = self.probe(cluster, pod)
            probes += 1
            if not ok:
                failed += 1
                look.problems.append(f"{cluster}: {self.service_url()} from {pod} gave {what}")
            look.problems.extend(self._unreachable_peers(cluster, pod, expected))
        return look, probes, failed

    def _unreachable_peers(self, cluster: str, pod: str, expected: Mapping[str, set[str]]) -> list[str]:
        """The remote backends must answer from here too: failover relies on the cross-cluster path."""
        problems: list[str] = []
        for peer in self.clusters:
            if peer == cluster:
                continue
            unreachable = []
            for ip in sorted(expected[peer]):
                ok, what = self._curl(cluster, pod, f"http://{frontend_address(ip, self.settings.port)}/")
                if not ok:
                    unreachable.append(f"{ip} ({what})")
            if unreachable:
                problems.append(
                    f"{cluster}: remote backends of {peer} unreachable from {pod}: {', '.join(unreachable[:4])}"
                )
        return problems

    def baseline(self) -> DrillPhase:
        """Steady-state gate: every agent lists every backend, and the service answers in every cluster."""
        start = self.clock()
        counts = {"probes": 0, "failed": 0}
        last = Look()
        try:
            frontends = {c: self.frontend(c) for c in self.clusters}

            def read() -> Look:
                nonlocal last
                look, probes, failed = self._observe_steady(frontends)
                counts["probes"] += probes
                counts["failed"] += failed
                last = look
                return look

            self.wait(
                ",".join(self.clusters),
                read,
                lambda look: not look.problems,
                expected="every agent to list every backend of every cluster and the service to answer everywhere",
                check=BASELINE_CHECK,
                describe=lambda look: look.describe(),
            )
        except WaitTimeoutError as exc:
            return self.phase_result(
                "baseline",
                None,
                "failed",
                f"steady state not reached within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}",
                start,
                backends=last.backends(),
                probes=counts["probes"],
                failed_probes=counts["failed"],
            )
        except ClusterMeshError as exc:
            return self.phase_result(
                "baseline", None, "failed", str(exc), start, backends=last.backends(), probes=counts["probes"]
            )
        agents = sum(len(v) for v in last.views.values())
        return self.phase_result(
            "baseline",
            None,
            "passed",
            f"{agents} agents in {len(self.clusters)} clusters list the drill service's backends; "
            f"the service answers in every cluster",
            start,
            backends=last.backends(),
            probes=counts["probes"],
            failed_probes=counts["failed"],
        )

    def failover(self, cluster: str) -> DrillPhase:
        """Scale ``cluster``'s backends to 0 and watch its agents fail over to the remote backends.

        The original count goes into an annotation first, with the resourceVersion just read: a 409
        means someone else is changing the Deployment, and the drill backs off without scaling.
        """
        return FailoverRun(self, cluster).run()

    def restore(self, cluster: str) -> DrillPhase:
        """Scale back to the recorded count, wait for every replica and the agents, then drop the record."""
        start = self.clock()
        ns = self.settings.namespace
        client = self.clients[cluster]
        last = Look()
        try:
            deployment = client.get_deployment(ns, BACKEND)
            record = None if deployment is None else recorded(deployment)
            if deployment is None or record is None:
                detail = f"{ns}/{BACKEND} carries no drill record: nothing to restore"
                return self.phase_result("restore", cluster, "skipped", detail, start)
            target = parse_count(record)
            if target is None:
                target = self.settings.replicas
            found = replicas_of(deployment)
            if found not in (FAILOVER_REPLICAS, target):  # someone scaled it meanwhile: theirs, not restored
                client.patch_deployment_annotations(ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: None})
                kept = Undone(cluster=cluster, found=found, target=target, record=record)
                return self.phase_result("restore", cluster, "skipped", kept.describe(ns, since="the failover"), start)
            client.scale_deployment(ns, BACKEND, target)
            note_written(f"{cluster}: scaled {ns}/{BACKEND} back to {target} replicas")
            self._wait_backend_ready(cluster, target)
            frontend = self.frontend(cluster)

            def read() -> Look:
                nonlocal last
                last = self._restored_look(cluster, frontend, target)
                return last

            self.wait(
                cluster,
                read,
                lambda look: not look.problems,
                expected=f"every agent of {cluster} to list its {target} local backends again",
                check=AGENT_CHECK,
                describe=lambda look: look.describe(),
            )
            client.patch_deployment_annotations(ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: None})
        except WaitTimeoutError as exc:
            detail = f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            return self.phase_result("restore", cluster, "failed", detail, start, backends=last.backends())
        except ClusterMeshError as exc:
            return self.phase_result("restore", cluster, "failed", str(exc), start, backends=last.backends())
        return self.phase_result(
            "restore",
            cluster,
            "passed",
            f"scaled {ns}/{BACKEND} back to {target}; all Ready and listed as local backends again",
            start,
            backends=last.backends(),
        )

    def _restored_look(self, cluster: str, frontend: str, target: int) -> Look:
        """What ``cluster``'s agents list while its ``target`` backends come back, and what is still wrong."""
        expected = {c: self.ready_backends(c) for c in self.clusters}
        views = self.agent_views(cluster, frontend)
        problems = self._steady(cluster, views, expected)
        if len(expected[cluster]) < target:
            problems.insert(0, f"{cluster}: {len(expected[cluster])}/{target} backend pods Ready")
        return Look({cluster: views}, problems)

    def _undo(self, cluster: str, *, wait_ready: bool) -> Undone | None:
        """:func:`undo_recorded` on ``cluster``'s backend; with ``wait_ready`` until its replicas are Ready."""
        return undo_recorded(
            self.clients[cluster],
            cluster,
            self.settings.namespace,
            default=self.settings.replicas,
            wait_ready=(lambda target: self._wait_backend_ready(cluster, target)) if wait_ready else None,
        )

    def _undo_apiserver(self, cluster: str, *, wait_ready: bool) -> Undone | None:
        """:func:`undo_recorded` on ``cluster``'s clustermesh-apiserver (the cluster-loss drill's record)."""
        client = self.clients[cluster]

        def ready(target: int) -> None:
            self.wait(
                cluster,
                lambda: client.get_deployment(APISERVER_NS, APISERVER),
                lambda d: deployment_ready(d, target),
                expected=f"all {target} replicas of {APISERVER_NS}/{APISERVER} Ready",
                check=f"kubectl -n {APISERVER_NS} describe deployment {APISERVER} and its pods' events",
                describe=describe_deployment,
            )

        return undo_recorded(
            client, cluster, APISERVER_NS, default=1, wait_ready=ready if wait_ready else None, name=APISERVER
        )

    def restore_all(self) -> DrillPhase:
        """The rollback that always runs: every recorded count still at the drill's 0 is put back (a count someone
        set since is kept); one cluster's failure stops nothing. Runs after a stop too: it undoes, never disrupts."""
        start = self.clock()
        ns = self.settings.namespace
        restored: list[str] = []
        errors: list[str] = []
        for cluster in self.clusters:
            for undo, where in ((self._undo, f"{ns}/{BACKEND}"), (self._undo_apiserver, f"{APISERVER_NS}/{APISERVER}")):
                try:
                    undone = undo(cluster, wait_ready=False)
                    if undone is not None and undone.kept:
                        restored.append(
                            f"{cluster}: {where} left at {undone.found} replicas someone set since; record dropped"
                        )
                    elif undone is not None:
                        restored.append(f"{cluster}: {where} {undone.found} → {undone.target} replicas")
                except Exception as exc:  # never let one cluster stop the others' rollback
                    errors.append(f"{cluster}: failed to scale {where} back: {cut(str(exc), 400)}")
        if errors:
            return self.phase_result("rollback", None, "failed", "; ".join(errors + restored), start)
        if restored:
            return self.phase_result("rollback", None, "passed", "undone: " + "; ".join(restored), start)
        return self.phase_result("rollback", None, "passed", "no replica count left changed", start)
