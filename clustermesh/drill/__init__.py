"""The guide's failover example as a drill: a global nginx per cluster, scaled to zero one cluster at a time.

Shaped like a chaos experiment (chaostoolkit): a steady-state gate (``baseline``) that must hold before
anything is disrupted, a method (``failover`` then ``restore`` per cluster) and a rollback that always
runs (``restore_all``). Nothing half-done is left behind: before a replica count changes, the original
is written into an annotation on the Deployment, so a drill that dies mid-way is undone by the next
one (``recover_unfinished``) or by the rollback.

Which cluster a backend lives in is judged by the pod CIDRs of the clusters, never by the
``(preferred)`` marker alone: from Cilium 1.18 every listed backend shows it (cilium#43681), and
``nodeName`` is missing on some local backends. No Prefect here; the flow calls the phases as tasks.

The room, bottom to top: ``text`` and ``client`` (what the drill needs of a cluster client);
``manifests`` (the workloads and their names); ``agents`` (what the Cilium agents list); ``expectations``
(what they should list); ``results``; ``workloads`` (readiness, the undo record, whose count it is);
``undo`` (scaling back only what still shows the drill's hand); ``prober``; ``failover`` and ``phases``
(:class:`Drill`); ``mesh_status`` (which peers the agents report connected) and ``cluster_loss`` (the
cluster-loss scenario: a member's clustermesh-apiserver scaled to 0, the others watched); ``run``
(:func:`run_drill`, the order); ``gate`` (whether to start at all).

A count someone else set is never overwritten: an undo scales back only a backend still at the count
the failover set (0), and the workloads keep a backend count someone changed.
"""

from clustermesh.drill.agents import (
    AGENT_CONTAINER,
    AGENT_LABEL,
    AGENT_NAMESPACE,
    AgentView,
    BackendView,
    classify_backends,
    find_frontend,
    read_backends,
)
from clustermesh.drill.client import DrillClient
from clustermesh.drill.expectations import failover_problems, steady_problems
from clustermesh.drill.gate import drill_gate
from clustermesh.drill.manifests import (
    APPLIED_REPLICAS_ANNOTATION,
    BACKEND,
    CLIENT,
    CLIENT_CONTAINER,
    CLIENT_IMAGE,
    FAILOVER_REPLICAS,
    ORIGINAL_REPLICAS_ANNOTATION,
    PART_OF,
    SERVICE,
    drill_manifests,
)
from clustermesh.drill.phases import Drill
from clustermesh.drill.results import SCENARIOS, ClusterLoss, DrillPhase, DrillResult, MemberDuringLoss, Scenario
from clustermesh.drill.run import run_drill

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_LABEL",
    "AGENT_NAMESPACE",
    "APPLIED_REPLICAS_ANNOTATION",
    "BACKEND",
    "CLIENT",
    "CLIENT_CONTAINER",
    "CLIENT_IMAGE",
    "FAILOVER_REPLICAS",
    "ORIGINAL_REPLICAS_ANNOTATION",
    "PART_OF",
    "SCENARIOS",
    "SERVICE",
    "AgentView",
    "BackendView",
    "ClusterLoss",
    "Drill",
    "DrillClient",
    "DrillPhase",
    "DrillResult",
    "MemberDuringLoss",
    "Scenario",
    "classify_backends",
    "drill_gate",
    "drill_manifests",
    "failover_problems",
    "find_frontend",
    "read_backends",
    "run_drill",
    "steady_problems",
]
