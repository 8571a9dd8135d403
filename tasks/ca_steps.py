"""CA rotation as Prefect tasks: the plan, and one cluster's rotation from wherever the last run left it.

Both hold or handle key material (the new CA's key, the remote certificates' keys): never cached nor
persisted. Each rerun reads the clusters again, which is what makes it resume: the phase is read back from
``cilium-ca`` and ``clustermesh-ca-next``, and every step writes only what still differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from clustermesh.cilium.chart_source import ChartUnavailableError
from clustermesh.kube import ClusterClient
from clustermesh.lifecycle import ca_plan, ca_rotation
from clustermesh.lifecycle.ca_rotation import NAMESPACE
from clustermesh.lifecycle.reissue import request_reissue
from clustermesh.spec import MeshSpec
from clustermesh.steps.chart_check import check_values
from tasks.common import cluster_client

UNPERSISTED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class ClusterRotation(BaseModel):
    """What rotating one cluster's CA did; fingerprints only."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    found: str  # the phase the run found (``done``: nothing to do)
    new_ca: str | None
    writes: list[str]

    def describe(self) -> str:
        if self.found == "done":
            return f"{self.cluster}: {ca_rotation.PHASE_TEXT['done']}"
        head = f"{self.cluster}: CA rotated to {self.new_ca} (found: {ca_rotation.PHASE_TEXT[self.found]})"
        return "\n".join([head, *(f"    {w}" for w in self.writes)])


@task(name="Plan the CA rotation", task_run_name="Plan the CA rotation", **UNPERSISTED)
def plan_rotation(spec: MeshSpec, cluster: str | None) -> ca_plan.RotationPlan:
    """Every member's installation and each target's CA Secrets read; nothing written."""

    def read(name: str) -> dict[str, Any]:
        with cluster_client(spec, name) as client:
            return client.get_application_installation()

    def secret(name: str, secret_name: str) -> dict[str, Any] | None:
        with cluster_client(spec, name) as client:
            return client.get_secret(NAMESPACE, secret_name)

    return ca_plan.plan_rotation(spec, cluster, read, secret)


@task(name="Rotate the CA", **UNPERSISTED)
def rotate_cluster(spec: MeshSpec, cluster: str, wrote: Callable[[str], None]) -> ClusterRotation:
    """Rotate ``cluster``'s CA through its phases (re-issued as its tls.auto.method allows: certgen's CronJob, or
    a KKP render under helm); ``wrote`` hears each write."""
    installations: dict[str, dict[str, Any]] = {}
    for member in spec.clusters:
        with cluster_client(spec, member.name) as client:
            installations[member.name] = client.get_application_installation()
    peers, _by_hand = ca_plan.peers_of(cluster, installations)
    method = ca_plan.rotation_method(spec, installations[cluster])

    def reissue(client: ClusterClient) -> None:
        request_reissue(client, spec, cluster, method)

    ref = (installations[cluster].get("spec") or {}).get("applicationRef") or {}
    version = str(ref.get("version") or spec.cilium.version or "")

    def check(values: Mapping[str, Any]) -> None:
        try:
            check_values(spec, cluster, version, values)
        except ChartUnavailableError:
            return  # no chart to be had: KKP's render is the check

    with cluster_client(spec, cluster) as client:
        rotation = ca_rotation.Rotation(
            client=client,
            spec=spec,
            cluster=cluster,
            peers=peers,
            peer_client=lambda name: cluster_client(spec, name),
            reissue=reissue,
            wrote=wrote,
            check_values=check if version else None,
        )
        found, new_ca = ca_rotation.rotate_cluster(rotation)
    return ClusterRotation(cluster=cluster, found=found, new_ca=new_ca, writes=rotation.writes)
