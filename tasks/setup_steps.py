"""The guide's eight steps as Prefect tasks: each a few lines around one domain function.

Every task retries transient failures only (``tasks.common``), borrows its cluster's client from the
run's sessions (parameters carry references, not credentials, and a kubeconfig is resolved once per
run) and is named after the guide, so the Prefect UI reads like the guide.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps import chart_check, membership
from clustermesh.steps import step1_prerequisites as prerequisites
from clustermesh.steps import step2_4_6_mesh_values as mesh_config
from clustermesh.steps import step3_5_endpoints as endpoints
from clustermesh.steps import step7_reachability as reachability
from clustermesh.steps import step8_health as health
from clustermesh.steps.fingerprints import endpoint_state, prerequisite_state
from clustermesh.steps.models import ClusterFacts, MeshEndpoint, StepChange
from clustermesh.values import CaMaterial, PeerEntry
from tasks.caching import StepCachePolicy
from tasks.common import COMMON, cluster_client, cluster_clients, load_secret_block, open_client
from tasks.results import FernetPickleSerializer


def connect(spec: MeshSpec, cluster: str) -> ClusterClient:
    """A client of its own (the caller closes it): for the approval plan, which closes the clients it is given."""
    return open_client(spec, cluster)


def _observe_prerequisites(inputs: dict[str, Any]) -> str:
    with cluster_client(inputs["spec"], inputs["cluster"]) as client:
        return prerequisite_state(client)


def _observe_endpoint(inputs: dict[str, Any]) -> str:
    facts: ClusterFacts = inputs["facts"]
    with cluster_client(inputs["spec"], facts.name) as client:
        return endpoint_state(client, facts.cilium_version)


READ_CACHE = StepCachePolicy(observe=_observe_prerequisites)
ENDPOINT_CACHE = StepCachePolicy(observe=_observe_endpoint)
RUN_CACHE = StepCachePolicy(per_run=True)


@task(name="1. Check prerequisites", cache_policy=READ_CACHE, persist_result=True, **COMMON)
def check_prerequisites(spec: MeshSpec, cluster: str) -> ClusterFacts:
    with cluster_client(spec, cluster) as client:
        return prerequisites.check_prerequisites(client, spec.cluster(cluster), spec, load_secret=load_secret_block)


@task(
    name="1. Check pod CIDRs and versions across clusters",
    task_run_name="1. Check pod CIDRs and versions across clusters",
    cache_policy=NO_CACHE,
)
def check_mesh_prerequisites(facts: list[ClusterFacts]) -> list[str]:
    membership.refuse_unlisted_managed_peers(facts)  # a managed peer the spec dropped stops the run, unwritten
    return prerequisites.check_mesh_prerequisites(facts) + prerequisites.policy_warnings(facts)


@task(
    name="1. Render the values with the Cilium chart",
    task_run_name="1. Render the values with the Cilium chart",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def check_chart(spec: MeshSpec, facts: list[ClusterFacts]) -> chart_check.ChartReport:
    """Every cluster's final values rendered with the chart it runs, before step 2 writes anything."""
    with cluster_clients(spec) as clients:
        return chart_check.check_mesh_chart(clients, {f.name: f for f in facts}, spec)


@task(name="2/4/6. Write Cluster Mesh values", cache_policy=RUN_CACHE, persist_result=True, **COMMON)
def configure_mesh(
    spec: MeshSpec,
    facts: ClusterFacts,
    step: str,
    peers: list[PeerEntry],
    shared_ca: CaMaterial | None = None,
) -> StepChange:
    with cluster_client(spec, facts.name) as client:
        check = chart_check.values_checker(spec, facts) if spec.cilium.chart.source is not None else None
        cluster = spec.cluster(facts.name)
        return mesh_config.configure_mesh(
            client, facts, cluster, spec, step=step, peers=peers, shared_ca=shared_ca, check_values=check
        )


@task(
    name="3/5. Retrieve Cluster Mesh data",
    cache_policy=ENDPOINT_CACHE,
    result_serializer=FernetPickleSerializer(),
    persist_result=True,
    **COMMON,
)
def collect_mesh_endpoint(
    spec: MeshSpec, facts: ClusterFacts, want_ca_key: bool, expected_ca: str | None = None
) -> MeshEndpoint:
    with cluster_client(spec, facts.name) as client:
        return endpoints.collect_mesh_endpoint(client, facts, spec, want_ca_key=want_ca_key, expected_ca=expected_ca)


@task(
    name="7. Check node reachability",
    task_run_name="7. Check node reachability",
    cache_policy=RUN_CACHE,
    persist_result=True,
    **COMMON,
)
def check_node_reachability(spec: MeshSpec, endpoints_: list[MeshEndpoint]) -> reachability.FirewallReport:
    """The firewall report; it keeps the health matrix its probe measured (``measured``) for step 8."""
    apiservers = {e.cluster: (e.ips[0], e.port) for e in endpoints_}
    with cluster_clients(spec) as clients:
        return reachability.check_reachability(clients, apiservers, exec_timeout=spec.timeouts.api)


@task(
    name="8. Check mesh health",
    task_run_name="8. Check mesh health",
    cache_policy=RUN_CACHE,
    persist_result=True,
    **COMMON,
)
def check_mesh_health(spec: MeshSpec, measured: health.HealthMatrix | None = None) -> health.HealthMatrix:
    """Wait until the mesh is healthy, starting from step 7's matrix: a healthy one is not probed again.

    While it waits, what is still missing goes to the run's log.
    """
    logger = get_run_logger()
    with cluster_clients(spec) as clients:
        return health.wait_for_mesh_health(
            clients,
            timeout=spec.timeouts.health,
            poll_interval=spec.timeouts.poll_interval,
            exec_timeout=spec.timeouts.api,
            first=measured,
            progress=lambda report: logger.info(report.line()),
        )
