"""The guide's eight steps as Prefect tasks: each a few lines around one domain function.

Every task retries transient failures only (connection errors, 5xx, 429; never bad input), resolves
the cluster's kubeconfig itself (parameters carry references, not credentials) and is named after
the guide, so the Prefect UI reads like the guide.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from clustermesh.kube import ClusterClient, is_transient, open_cluster
from clustermesh.spec import MeshSpec
from clustermesh.steps import step1_prerequisites as prerequisites
from clustermesh.steps import step2_4_6_mesh_values as mesh_config
from clustermesh.steps import step3_5_endpoints as endpoints
from clustermesh.steps import step7_reachability as reachability
from clustermesh.steps import step8_health as health
from clustermesh.steps.fingerprints import endpoint_state, prerequisite_state
from clustermesh.steps.models import ClusterFacts, MeshEndpoint, StepChange
from clustermesh.values import CaMaterial, PeerEntry
from tasks.caching import StepCachePolicy
from tasks.results import FernetPickleSerializer

RETRY_DELAYS = [1, 3, 10]


def load_secret_block(name: str) -> str:
    """The text of a Prefect Secret block (how kubeconfigs are stored for deployments)."""
    block: Any = Secret.load(name)
    return str(block.get())


def connect(spec: MeshSpec, cluster: str) -> ClusterClient:
    return open_cluster(spec.cluster(cluster), request_timeout=spec.timeouts.api, load_secret=load_secret_block)


def retry_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what another attempt can fix: the API was unreachable, busy or failing."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's exception is what we classify
        return is_transient(exc)
    return False


def _observe_prerequisites(inputs: dict[str, Any]) -> str:
    with connect(inputs["spec"], inputs["cluster"]) as client:
        return prerequisite_state(client)


def _observe_endpoint(inputs: dict[str, Any]) -> str:
    facts: ClusterFacts = inputs["facts"]
    with connect(inputs["spec"], facts.name) as client:
        return endpoint_state(client, facts.cilium_version)


READ_CACHE = StepCachePolicy(observe=_observe_prerequisites)
ENDPOINT_CACHE = StepCachePolicy(observe=_observe_endpoint)
RUN_CACHE = StepCachePolicy(per_run=True)
COMMON: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}


@task(name="1. Check prerequisites", cache_policy=READ_CACHE, persist_result=True, **COMMON)
def check_prerequisites(spec: MeshSpec, cluster: str) -> ClusterFacts:
    with connect(spec, cluster) as client:
        return prerequisites.check_prerequisites(client, spec.cluster(cluster), spec, load_secret=load_secret_block)


@task(name="1. Check pod CIDRs and versions across clusters", cache_policy=NO_CACHE)
def check_mesh_prerequisites(facts: list[ClusterFacts]) -> list[str]:
    return prerequisites.check_mesh_prerequisites(facts)


@task(name="2/4/6. Write Cluster Mesh values", cache_policy=RUN_CACHE, persist_result=True, **COMMON)
def configure_mesh(
    spec: MeshSpec,
    facts: ClusterFacts,
    step: str,
    peers: list[PeerEntry],
    shared_ca: CaMaterial | None = None,
) -> StepChange:
    with connect(spec, facts.name) as client:
        return mesh_config.configure_mesh(
            client, facts, spec.cluster(facts.name), spec, step=step, peers=peers, shared_ca=shared_ca
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
    with connect(spec, facts.name) as client:
        return endpoints.collect_mesh_endpoint(client, facts, spec, want_ca_key=want_ca_key, expected_ca=expected_ca)


@task(name="7. Check node reachability", cache_policy=RUN_CACHE, persist_result=True, **COMMON)
def check_node_reachability(spec: MeshSpec, endpoints_: list[MeshEndpoint]) -> reachability.FirewallReport:
    clients = {c.name: connect(spec, c.name) for c in spec.clusters}
    try:
        nodes = {name: reachability.list_node_addresses(client, name) for name, client in clients.items()}
        apiservers = {e.cluster: (e.ips[0], e.port) for e in endpoints_}
        matrix = health.probe_mesh(clients, exec_timeout=spec.timeouts.api)
        return reachability.firewall_report(reachability.firewall_rules(nodes, apiservers), matrix)
    finally:
        for client in clients.values():
            client.close()


@task(name="8. Check mesh health", cache_policy=RUN_CACHE, persist_result=True, **COMMON)
def check_mesh_health(spec: MeshSpec) -> health.HealthMatrix:
    clients = {c.name: connect(spec, c.name) for c in spec.clusters}
    try:
        return health.wait_for_mesh_health(
            clients,
            timeout=spec.timeouts.health,
            poll_interval=spec.timeouts.poll_interval,
            exec_timeout=spec.timeouts.api,
        )
    finally:
        for client in clients.values():
            client.close()
