"""Renewing certificates as Prefect tasks: the plan, the re-issue per due cluster, the hand-out per holder.

Never cached nor persisted (the hand-out carries key material; each rerun reads the clusters again, which
is what makes it idempotent and lets a stopped run converge).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clustermesh import checks
from clustermesh.checks import Finding
from clustermesh.lifecycle import reissue, renew
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts, StepChange
from tasks.common import COMMON, cluster_client, cluster_clients

UNPERSISTED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="Plan the renewal", task_run_name="Plan the renewal", **COMMON, **UNPERSISTED)
def plan_renew(spec: MeshSpec, cluster: str | None) -> tuple[renew.RenewPlan, dict[str, ClusterFacts], list[Finding]]:
    """Every member read (step 1, its clock, leaves and installation) and the renewal planned."""
    with cluster_clients(spec) as clients:
        facts, findings = checks.check_reachability_and_versions(clients, spec)
        plan = renew.plan_renew(spec, facts, lambda name: clients[name], cluster)
    return plan, facts, [f for f in findings if f.level != "ok"]


@task(name="Re-issue certificates", **COMMON, **UNPERSISTED)
def reissue_cluster(spec: MeshSpec, cluster: str, method: str) -> str:
    """Ask ``cluster`` to re-issue its leaf certificates and wait until they are new."""
    with cluster_client(spec, cluster) as client:
        before = reissue.leaf_fingerprints(client)
        done = reissue.request_reissue(client, spec, cluster, method)
        after = reissue.wait_reissued(client, spec, cluster, before)
    changed = ", ".join(f"{name} {before[name]} → {after[name]}" for name in before)
    return f"{cluster}: {done}; {changed}"


@task(name="Hand out the peers' certificates", **COMMON, **UNPERSISTED)
def hand_out(spec: MeshSpec, holder: str, facts: dict[str, ClusterFacts], replace: list[str]) -> StepChange:
    """``holder``'s values with the newest certificate of every peer in ``replace`` (endpoints read now, after
    the re-issues); its other copies are kept while current."""
    with cluster_clients(spec) as clients:
        endpoints = renew.collect_endpoints(spec, facts, lambda name: clients[name])
        return renew.hand_out(clients[holder], spec, facts[holder], endpoints, replace)
