"""The MCS-API drill: the guide's failover once more, through an exported service (``--scenario mcs``).

Where the mesh has the Multi-Cluster Services API on (``cilium.mcs_api``; cilium-config
``clustermesh-enable-mcs-api: "true"`` in every member), the drill Service is exported in every member (a
ServiceExport of the same name, kept afterwards like the drill's other workloads). Then, in one phase
(``mcs-export``): every member holds a ServiceImport of it that lists every member, with an address, and every
agent lists every member's backends behind that address; ``<svc>.<ns>.svc.clusterset.local`` answers from every
member's client pod. Then per member, as the scale-to-zero drill does but through the ServiceImport's address and
the ``clusterset.local`` name: its backends scaled to 0 (recorded, always undone), its agents must list only the
other members' backends and the name keep answering; scaled back, its own backends must return.

Cilium's derived Service carries no affinity: every member's backends are listed as active in the steady state,
whatever ``drill.affinity`` says for the global Service. ``clusterset.local`` needs CoreDNS's ``multicluster``
plugin (CoreDNS 1.12.2+; on 1.19+ the chart's ``clustermesh.mcsapi.corednsAutoConfigure``): a name that does not
resolve fails the phase saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clustermesh.cilium.mcs import MCS_API_CONFIG_KEY, MCS_API_FIELD, mcs_api_enabled_in_config
from clustermesh.drill.agents import AgentView, frontend_address
from clustermesh.drill.expectations import steady_problems
from clustermesh.drill.failover import FailoverRun
from clustermesh.drill.manifests import SERVICE
from clustermesh.drill.phases import Drill
from clustermesh.drill.results import DrillPhase, DrillStatus
from clustermesh.errors import ClusterMeshError, DrillError, StopRequested, WaitTimeoutError
from clustermesh.kube.client import ClusterClient
from clustermesh.kube.mcs import apply_service_export, get_service_import
from clustermesh.stopping import note_written, raise_if_stopping

if TYPE_CHECKING:
    from clustermesh.drill.run import _Run

MCS_CHECK = (
    "kubectl get serviceexport,serviceimport -n <drill namespace> in every member (ServiceImport status.clusters, "
    "spec.ips), cilium-config clustermesh-enable-mcs-api, the cilium-operator's log (MCS-API controllers), and "
    "CoreDNS's multicluster plugin for clusterset.local (CoreDNS 1.12.2+)"
)


COREDNS_HINT = (
    "a clusterset.local name that does not resolve (curl exit 6) needs CoreDNS 1.12.2+ with its multicluster plugin "
    "(from Cilium 1.19 the chart can set it up: clustermesh.mcsapi.corednsAutoConfigure.enabled)"
)


def mcs_off(drill: Drill) -> list[str]:
    """The members whose cilium-config does not turn MCS-API on, each with what it says."""
    off: list[str] = []
    for cluster in drill.clusters:
        config = drill.clients[cluster].get_configmap("kube-system", "cilium-config")
        if not mcs_api_enabled_in_config(config):
            value = ((config or {}).get("data") or {}).get(MCS_API_CONFIG_KEY, "absent")
            off.append(f"{cluster} (cilium-config {MCS_API_CONFIG_KEY}: {value})")
    return off


def import_problems(cluster: str, imported: Mapping[str, Any] | None, members: Sequence[str]) -> list[str]:
    """Why ``cluster``'s ServiceImport of the drill Service is not complete yet (empty when it is)."""
    if imported is None:
        return [f"{cluster}: no ServiceImport {SERVICE}"]
    problems: list[str] = []
    listed = {str(c.get("cluster")) for c in (imported.get("status") or {}).get("clusters") or []}
    missing = [m for m in members if m not in listed]
    if missing:
        problems.append(f"{cluster}: ServiceImport {SERVICE} does not list {', '.join(missing)}")
    if not (imported.get("spec") or {}).get("ips"):
        problems.append(f"{cluster}: ServiceImport {SERVICE} has no address (spec.ips) yet")
    return problems


class McsDrill(Drill):
    """The drill's phases with the ServiceImport's address as the frontend and ``clusterset.local`` as the URL."""

    def cluster_client(self, cluster: str) -> ClusterClient:
        client = self.clients[cluster]
        if not isinstance(client, ClusterClient):
            raise DrillError(cluster, "the MCS-API drill needs a ClusterClient", fix="pass ClusterClients")
        return client

    def service_import(self, cluster: str) -> dict[str, Any] | None:
        return get_service_import(self.cluster_client(cluster), self.settings.namespace, SERVICE)

    def frontend(self, cluster: str) -> str:
        """The ServiceImport's address in ``cluster`` as the agents list it ("ip:port")."""
        ips = ((self.service_import(cluster) or {}).get("spec") or {}).get("ips") or []
        if not ips:
            raise DrillError(
                cluster,
                f"ServiceImport {self.settings.namespace}/{SERVICE} has no address (spec.ips)",
                fix=f"run the mcs-export phase first; check {MCS_CHECK}",
            )
        return frontend_address(str(ips[0]), self.settings.port)

    def service_url(self) -> str:
        s = self.settings
        return f"http://{SERVICE}.{s.namespace}.svc.clusterset.local:{s.port}/"

    def _steady(self, cluster: str, views: Sequence[AgentView], expected: Mapping[str, set[str]]) -> list[str]:
        """Every member's backends listed as active: the derived Service has no affinity."""
        return steady_problems(
            views,
            cluster=cluster,
            local=expected[cluster],
            remote={c: ips for c, ips in expected.items() if c != cluster},
            affinity="none",
            marker_reliable=self.profile(cluster).preferred_marker_reliable,
        )

    def export(self) -> DrillPhase:
        """Export the drill Service everywhere; wait for every member's complete ServiceImport, then for every
        agent to list every member's backends behind it and ``clusterset.local`` to answer everywhere."""
        start = self.clock()
        ns = self.settings.namespace
        try:
            created = []
            for cluster in self.clusters:
                raise_if_stopping(f"exporting {ns}/{SERVICE} in {cluster}")
                if apply_service_export(self.cluster_client(cluster), ns, SERVICE) == "created":
                    note_written(f"{cluster}: ServiceExport {ns}/{SERVICE} (MCS-API drill)")
                    created.append(cluster)
            self.wait(
                ",".join(self.clusters),
                lambda: [p for c in self.clusters for p in import_problems(c, self.service_import(c), self.clusters)],
                lambda problems: not problems,
                expected=f"a ServiceImport {ns}/{SERVICE} listing every member, with an address, in every member",
                check=MCS_CHECK,
                describe=lambda problems: "; ".join(problems),
            )
        except StopRequested:
            raise
        except WaitTimeoutError as exc:
            detail = f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            return self.phase_result("mcs-export", None, "failed", detail, start)
        except ClusterMeshError as exc:
            return self.phase_result("mcs-export", None, "failed", str(exc), start)
        steady = self.baseline()  # the steady state through the ServiceImport's address and clusterset.local
        exported = f"exported in {', '.join(created)}" if created else "already exported everywhere"
        addresses = ", ".join(f"{c} {self.frontend(c)}" for c in self.clusters) if steady.status == "passed" else ""
        detail = f"{ns}/{SERVICE} {exported}; " + (
            f"ServiceImport in every member ({addresses}); {steady.detail}; {self.service_url()} answered"
            if steady.status == "passed"
            else f"through the ServiceImport: {steady.detail}; {COREDNS_HINT}"
        )
        return steady.model_copy(
            update={"name": "mcs-export", "detail": detail, "seconds": round(self.clock() - start, 3)}
        )


def run_mcs(run: _Run, targets: Sequence[str]) -> tuple[DrillStatus, str]:
    """The ``mcs`` scenario after the workloads and the global Service's baseline: export, then failover and restore
    through the ServiceImport one member at a time; after a failure the others are skipped."""
    base = run.drill
    off = mcs_off(base)
    if off:
        return "not run", (
            f"MCS-API is off in {'; '.join(off)}: set {MCS_API_FIELD}: true in the spec and run the setup "
            "(Cilium 1.17+), nothing disrupted"
        )
    drill = McsDrill(
        base.clients, base.facts, base.spec, clock=base.clock, sleep=base.sleep, probe_interval=base.probe_interval
    )
    drill.backend_replicas = dict(base.backend_replicas)
    if run.record("mcs-export", drill.export).status != "passed":
        return "not run", f"the exported service is not whole, nothing disrupted: {run.phases[-1].detail}"
    for index, cluster in enumerate(targets):
        failover = run.record(f"mcs failover {cluster}", lambda c=cluster: FailoverRun(drill, c).run())  # type: ignore[misc]
        restore = run.record(f"mcs restore {cluster}", lambda c=cluster: drill.restore(c))  # type: ignore[misc]
        bad = next((p for p in (failover, restore) if p.status == "failed"), None)
        if bad is not None:
            for rest in targets[index + 1 :]:
                detail = f"not disrupted: the {bad.name} of {cluster} failed"
                run._add(DrillPhase(name="failover", cluster=rest, status="skipped", detail=detail))  # noqa: SLF001
            return "failed", f"{bad.name} of {cluster} through the ServiceImport failed: {bad.detail}"
    return "passed", f"{len(targets)} member(s) failed over and restored through the exported service"
