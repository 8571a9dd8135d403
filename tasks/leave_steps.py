"""Leaving the mesh as Prefect tasks: the plan, the removal per remaining member, the leaving cluster's cleanup.

The plan and the removals carry values with key material: never cached nor persisted (each rerun reads
the clusters again, which is what makes it idempotent: a member without the entry is not written). The
leaving cluster may be dead: its tasks try once, and an unreachable API becomes a note, not a failure.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh.drill.manifests import PART_OF
from clustermesh.errors import KubeApiError, KubeconfigError
from clustermesh.lifecycle import leave
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import StepChange
from tasks.common import COMMON, cluster_client

UNPERSISTED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="Plan the removal", task_run_name="Plan the removal", **UNPERSISTED)
def plan_leave(spec: MeshSpec, leaving: str) -> leave.LeavePlan:
    """Every remaining member's installation read; the leaving cluster is never asked."""

    def read(name: str) -> dict[str, Any]:
        with cluster_client(spec, name) as client:
            return client.get_application_installation()

    def services(name: str) -> list[dict[str, Any]]:
        with cluster_client(spec, name) as client:
            return client.list_services()

    return leave.plan_leave(spec, leaving, read, services)


@task(name="Remove the peer", **COMMON, **UNPERSISTED)
def remove_peer(spec: MeshSpec, cluster: str, leaving: str) -> StepChange:
    with cluster_client(spec, cluster) as client:
        return leave.remove_peer(client, spec, cluster, leaving)


@task(name="Delete the drill's resources", **UNPERSISTED)
def delete_drill_resources(spec: MeshSpec, cluster: str) -> str:
    """The drill's namespace in the leaving cluster, deleted only when labelled as the drill's; a note either way."""
    namespace = spec.drill.namespace
    try:
        with cluster_client(spec, cluster) as client:
            outcome = client.delete_namespace_if_labelled(namespace, PART_OF)
    except (KubeApiError, KubeconfigError) as exc:
        return f"{cluster} unreachable, its drill namespace {namespace} was left: {_first_line(exc)}"
    if outcome == "not ours":
        return f"namespace {namespace} in {cluster} is not labelled as the drill's: left alone"
    return f"drill namespace {namespace} in {cluster}: {outcome}"


@task(name="Disconnect the removed cluster", **UNPERSISTED)
def disable_in_removed(spec: MeshSpec, cluster: str) -> StepChange | str:
    """Remove every managed peer entry from the leaving cluster's own values; a note when it is unreachable."""
    try:
        with cluster_client(spec, cluster) as client:
            return leave.disable_mesh_peers(client, spec, cluster)
    except (KubeApiError, KubeconfigError) as exc:  # a failing KKP install is an error, not a note
        return f"{cluster} unreachable, its own mesh values were left: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
