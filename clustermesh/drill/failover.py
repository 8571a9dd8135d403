"""The failover phase: record the count, scale one cluster's backends to 0, watch its agents fail over.

A prober sends requests through the service from that cluster the whole time; the phase reports how
many failed, how long the agents took to list only remote backends, and what they listed last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from clustermesh.drill.expectations import AGENT_CHECK, Look, failover_problems
from clustermesh.drill.manifests import BACKEND, FAILOVER_REPLICAS, ORIGINAL_REPLICAS_ANNOTATION
from clustermesh.drill.prober import Prober
from clustermesh.drill.results import DrillPhase, PhaseStatus
from clustermesh.drill.workloads import recorded
from clustermesh.errors import ClusterMeshError, ConflictError, StopRequested, WaitTimeoutError
from clustermesh.stopping import note_written, raise_if_stopping

if TYPE_CHECKING:
    from clustermesh.drill.phases import Drill


class _Refused(Exception):
    """A reason not to scale, found before anything changed: the phase fails with it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FailoverRun:
    """One failover of one cluster (:meth:`Drill.failover`); its steps share the counts on the instance."""

    def __init__(self, drill: Drill, cluster: str) -> None:
        self.drill = drill
        self.cluster = cluster
        self.start = drill.clock()
        self.ns = drill.settings.namespace
        self.client = drill.clients[cluster]
        self.last = Look()
        """What the agents listed last: reported with the phase however it ends."""
        self.prober: Prober | None = None
        self.failover_s: float | None = None
        self.extra_probes = 0
        """Requests sent while waiting for the service to answer, beside the prober's."""
        self.extra_failed = 0

    def run(self) -> DrillPhase:
        """The phase: every refusal, timeout and API error becomes a failed phase with its reason."""
        try:
            original, version = self._backend_to_scale()
            remote = self._remote_backends()
            frontend = self.drill.frontend(self.cluster)
            pod = self.drill.client_pod(self.cluster)
            raise_if_stopping(f"scaling {self.cluster}/{self.ns}/{BACKEND} to {FAILOVER_REPLICAS}")  # nothing disrupted
            self._record(original, version)
            self._scale_and_watch(frontend, pod, remote)
        except StopRequested:
            raise  # the run ends here; the rollback undoes what was done
        except _Refused as exc:
            return self._result("failed", exc.detail)
        except WaitTimeoutError as exc:
            return self._result(
                "failed", f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            )
        except ClusterMeshError as exc:
            return self._result("failed", str(exc))
        return self._result("passed", self._passed(original, remote))

    def _backend_to_scale(self) -> tuple[int, str | None]:
        """The backend's replica count and resourceVersion; refused when missing, already recorded, or at 0."""
        deployment = self.client.get_deployment(self.ns, BACKEND)
        if deployment is None:
            raise _Refused(f"no Deployment {self.ns}/{BACKEND} in {self.cluster}: run the workloads phase first")
        record = recorded(deployment)
        if record is not None:
            raise _Refused(
                f"{self.ns}/{BACKEND} already carries {ORIGINAL_REPLICAS_ANNOTATION}={record} from another drill: "
                "not scaled; restore it first"
            )
        original = int((deployment.get("spec") or {}).get("replicas", 0))
        if original < 1:
            raise _Refused(f"{self.ns}/{BACKEND} has {original} replicas: nothing to fail over from")
        version: str | None = (deployment.get("metadata") or {}).get("resourceVersion")
        return original, version

    def _remote_backends(self) -> dict[str, set[str]]:
        """The other clusters' Ready backends; refused when there are none to fail over to."""
        remote = {c: self.drill.ready_backends(c) for c in self.drill.clusters if c != self.cluster}
        if not any(remote.values()):
            raise _Refused("no Ready backend in any other cluster: scaling down would take the service down")
        return remote

    def _record(self, original: int, version: str | None) -> None:
        """Write the undo record, only onto the Deployment as read: a 409 means someone else is changing it."""
        try:
            self.client.patch_deployment_annotations(
                self.ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: str(original)}, resource_version=version
            )
        except ConflictError:
            raise _Refused(
                f"{self.ns}/{BACKEND} changed between read and annotate (HTTP 409, resourceVersion {version}): "
                "someone else is changing it; not scaled"
            ) from None

    def _scale_and_watch(self, frontend: str, pod: str, remote: Mapping[str, set[str]]) -> None:
        """Scale to 0 with the prober running; wait for only remote backends listed, then for an answer."""
        drill, cluster = self.drill, self.cluster
        with Prober(lambda: drill.probe(cluster, pod)[0], drill.probe_interval) as prober:
            self.prober = prober
            scaled_at = drill.clock()
            self.client.scale_deployment(self.ns, BACKEND, FAILOVER_REPLICAS)
            note_written(f"{cluster}: scaled {self.ns}/{BACKEND} to {FAILOVER_REPLICAS} (failover drill)")
            drill.wait(
                cluster,
                lambda: self._read_agents(frontend, remote),
                lambda look: not look.problems,
                expected=f"every agent of {cluster} to list only the remote backends of {frontend}",
                check=AGENT_CHECK,
                describe=lambda look: look.describe(),
            )
            self.failover_s = round(drill.clock() - scaled_at, 3)
            drill.wait(
                cluster,
                lambda: self._answer(pod),
                lambda got: got[0],
                expected=f"{drill.service_url()} to answer from {pod} with only remote backends",
                check="the datapath to the remote cluster (UDP 8472 between nodes) and the remote backends",
                describe=lambda got: got[1],
            )

    def _read_agents(self, frontend: str, remote: Mapping[str, set[str]]) -> Look:
        views = self.drill.agent_views(self.cluster, frontend)
        self.last = Look({self.cluster: views}, failover_problems(views, cluster=self.cluster, remote=remote))
        return self.last

    def _answer(self, pod: str) -> tuple[bool, str]:
        ok, what = self.drill.probe(self.cluster, pod)
        self.extra_probes += 1
        self.extra_failed += 0 if ok else 1
        return ok, what

    def _counts(self) -> tuple[int, int]:
        """Requests sent during the phase and how many failed, the prober's and the waits' together."""
        prober = self.prober
        probes = self.extra_probes + (prober.requests if prober else 0)
        failed = self.extra_failed + (prober.failures if prober else 0)
        return probes, failed

    def _passed(self, original: int, remote: Mapping[str, set[str]]) -> str:
        n_remote = sum(len(v) for v in remote.values())
        probes, failed = self._counts()
        return (
            f"scaled {self.ns}/{BACKEND} from {original} to 0; every agent listed only the {n_remote} remote "
            f"backends after {self.failover_s:.2f}s; the service answered at the end ({failed}/{probes} requests "
            "failed meanwhile)"
        )

    def _result(self, status: PhaseStatus, detail: str) -> DrillPhase:
        probes, failed = self._counts()
        prober = self.prober
        if prober and prober.errors:
            detail += f"; {len(prober.errors)} probe exec(s) failed (last: {prober.errors[-1]})"
        return self.drill.phase_result(
            "failover",
            self.cluster,
            status,
            detail,
            self.start,
            backends=self.last.backends(),
            probes=probes,
            failed_probes=failed,
            failover_seconds=self.failover_s,
        )
