"""The guide's failover example as a drill: a global nginx per cluster, scaled to zero one cluster at a time.

Shaped like a chaos experiment (chaostoolkit): a steady-state gate (``baseline``) that must hold before
anything is disrupted, a method (``failover`` then ``restore`` per cluster) and a rollback that always
runs (``restore_all``). Nothing half-done is left behind: before a replica count changes, the original
is written into an annotation on the Deployment, so a drill that dies mid-way is undone by the next
one (``recover_unfinished``) or by the rollback.

Which cluster a backend lives in is judged by the pod CIDRs of the clusters, never by the
``(preferred)`` marker alone: from Cilium 1.18 every listed backend shows it (cilium#43681), and
``nodeName`` is missing on some local backends. No Prefect here; the flow calls the phases as tasks.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from clustermesh.cilium.output import Service, parse_service_list
from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.errors import ClusterMeshError, ConflictError, DrillError, KubeApiError, WaitTimeoutError
from clustermesh.kube.client import ExecOutput, wait_for
from clustermesh.spec import DrillSettings, MeshSpec
from clustermesh.steps.models import ClusterFacts

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_LABEL",
    "AGENT_NAMESPACE",
    "BACKEND",
    "CLIENT",
    "CLIENT_CONTAINER",
    "CLIENT_IMAGE",
    "ORIGINAL_REPLICAS_ANNOTATION",
    "PART_OF",
    "SERVICE",
    "AgentView",
    "BackendView",
    "Drill",
    "DrillClient",
    "DrillPhase",
    "DrillResult",
    "classify_backends",
    "drill_manifests",
    "failover_problems",
    "find_frontend",
    "read_backends",
    "run_drill",
    "steady_problems",
]

PART_OF = {"app.kubernetes.io/part-of": "clustermesh-drill"}
BACKEND = "clustermesh-drill-backend"
CLIENT = "clustermesh-drill-client"
SERVICE = "clustermesh-drill"
CLIENT_IMAGE = "curlimages/curl:8.10.1"
CLIENT_CONTAINER = "client"
ORIGINAL_REPLICAS_ANNOTATION = "clustermesh.io/drill-original-replicas"
"""Written before a drill scales a backend Deployment, removed once the count is back: the undo record."""

AGENT_NAMESPACE = "kube-system"
AGENT_LABEL = "k8s-app=cilium"
AGENT_CONTAINER = "cilium-agent"
PROBE_MAX_TIME = 3
"""Seconds one curl through the service may take (``--max-time``)."""
PROBE_INTERVAL = 0.2
"""Pause between two requests of the background probe during a failover."""
AGENT_WORKERS = 8

PhaseName = Literal["recover", "workloads", "baseline", "failover", "restore", "rollback"]
PhaseStatus = Literal["passed", "failed", "skipped"]
DrillStatus = Literal["passed", "failed", "not run"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

AGENT_CHECK = (
    "`kubectl -n kube-system exec <cilium pod> -c cilium-agent -- cilium-dbg service list "
    "--clustermesh-affinity` (`cilium` on 1.13–1.14), `cilium-dbg status` (ClusterMesh line) and that the "
    "drill Service carries the global annotation in every cluster"
)

BASELINE_CHECK = (
    AGENT_CHECK + "; for missing or unreachable remote backends: TCP 2379 from every node to each peer's "
    "clustermesh-apiserver and UDP 8472 (VXLAN) between the clusters' nodes (the setup's steps 7 and 8)"
)


class DrillClient(Protocol):
    """What the drill needs of a cluster client; ``ClusterClient`` has it, test fakes too."""

    def create_or_replace(self, manifest: Mapping[str, Any]) -> Any: ...

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...

    def patch_deployment_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...

    def list_pods(
        self, namespace: str, label_selector: str, field_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput: ...


# --------------------------------------------------------------------------------------------------
# What the agents list


class BackendView(BaseModel):
    """One backend as one agent lists it, placed in a cluster by pod CIDR."""

    model_config = ConfigDict(frozen=True)

    address: str
    ip: str
    cluster: str | None
    """The cluster whose pod CIDR holds the IP; None when no cluster's does (a stale or foreign IP)."""
    local: bool
    """In the listing agent's own cluster."""
    preferred: bool
    """As the agent reports it; on 1.18+ true for every listed backend, so only a hint there."""
    state: str
    agent: str
    """The agent pod that listed it."""

    def describe(self) -> str:
        where = "local" if self.local else (self.cluster or "unknown cluster")
        return f"{self.address} ({where}, {self.state}{', preferred' if self.preferred else ''})"


class AgentView(BaseModel):
    """What one agent lists for the drill Service's frontend, or why it could not be read."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    agent: str
    node: str | None
    frontend: str
    listed: bool
    backends: list[BackendView]
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.agent}"

    def active(self) -> set[str]:
        return {b.ip for b in self.backends if b.state == "active"}


def _owner(ip: str, networks: Mapping[str, Sequence[Network]]) -> str | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for cluster, nets in networks.items():
        if any(address.version == n.version and address in n for n in nets):
            return cluster
    return None


def classify_backends(
    service: Service, *, cluster: str, agent: str, pod_cidrs: Mapping[str, Sequence[str]]
) -> list[BackendView]:
    """Place every backend of ``service`` in the cluster whose pod CIDR holds its IP.

    Pod CIDRs, not ``(preferred)``: 1.18+ marks every listed backend preferred (cilium#43681).
    """
    networks = {name: [ipaddress.ip_network(c, strict=False) for c in cidrs] for name, cidrs in pod_cidrs.items()}
    views = []
    for backend in service.backends:
        owner = _owner(backend.ip, networks)
        views.append(
            BackendView(
                address=backend.address,
                ip=backend.ip,
                cluster=owner,
                local=owner == cluster,
                preferred=backend.preferred,
                state=backend.state,
                agent=agent,
            )
        )
    return views


def _frontend(cluster_ip: str, port: int) -> str:
    return f"[{cluster_ip}]:{port}" if ":" in cluster_ip else f"{cluster_ip}:{port}"


def find_frontend(services: Iterable[Service], frontend: str) -> Service | None:
    """The TCP entry for ``frontend`` ("ip:port"); before 1.17 entries carry no protocol at all."""
    for service in services:
        if service.frontend == frontend and service.protocol in (None, "TCP"):
            return service
    return None


def _cut(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_agent(
    client: DrillClient,
    cluster: str,
    pod: str,
    node: str | None,
    profile: CiliumProfile,
    frontend: str,
    pod_cidrs: Mapping[str, Sequence[str]],
    timeout: float,
) -> AgentView:
    """Text first (the guide's command); JSON only when the text cannot be had or read."""
    problems: list[str] = []
    base = [profile.agent_cli, "service", "list"]
    for argv in ([*base, "--clustermesh-affinity"], [*base, "-o", "json"]):
        shown = " ".join(argv)
        try:
            out = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, argv, timeout=timeout)
        except KubeApiError as exc:
            problems.append(f"`{shown}`: {_cut(exc.problem)}")
            continue
        if not out.ok:
            problems.append(f"`{shown}` exited {out.exit_code}: {_cut(out.stderr or out.stdout)}")
            continue
        try:
            services = parse_service_list(out.stdout)
        except ClusterMeshError as exc:
            problems.append(_cut(str(exc)))
            continue
        service = find_frontend(services, frontend)
        backends = (
            [] if service is None else classify_backends(service, cluster=cluster, agent=pod, pod_cidrs=pod_cidrs)
        )
        return AgentView(
            cluster=cluster, agent=pod, node=node, frontend=frontend, listed=service is not None, backends=backends
        )
    return AgentView(
        cluster=cluster,
        agent=pod,
        node=node,
        frontend=frontend,
        listed=False,
        backends=[],
        error="; ".join(problems),
    )


def read_backends(
    client: DrillClient,
    cluster: str,
    facts: Mapping[str, ClusterFacts],
    frontend: str,
    *,
    timeout: float,
) -> list[AgentView]:
    """Ask every Cilium agent of ``cluster`` which backends it has for ``frontend`` ("clusterIP:port").

    Every agent, not one: each node programs its own datapath, so one lagging agent means some pods
    still send traffic to backends that are gone. An agent that cannot be read comes back with ``error``.
    """
    profile = profile_for(facts[cluster].cilium_version)
    pod_cidrs = {name: list(f.pod_cidrs) for name, f in facts.items()}
    agents = [
        (str(p["metadata"]["name"]), (p.get("spec") or {}).get("nodeName"))
        for p in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL)
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    agents.sort()
    if not agents:
        return []
    with ThreadPoolExecutor(max_workers=min(AGENT_WORKERS, len(agents))) as pool:
        return list(
            pool.map(
                lambda a: _read_agent(client, cluster, a[0], a[1], profile, frontend, pod_cidrs, timeout),
                agents,
            )
        )


# --------------------------------------------------------------------------------------------------
# What the agents should list


def _list_ips(ips: Iterable[str], limit: int = 6) -> str:
    shown = sorted(ips)
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def _visible(
    affinity: str, marker_reliable: bool, local: set[str], remote: Mapping[str, set[str]]
) -> tuple[set[str], dict[str, set[str]]]:
    """Which local and remote backends an agent must list in the steady state.

    From 1.18 an agent lists only the preferred backends when it has any (cilium#43681): with local
    affinity the remote ones are hidden while local ones are active, so only those can be checked.
    """
    if marker_reliable:
        return set(local), {c: set(ips) for c, ips in remote.items()}
    if affinity == "local" and local:
        return set(local), {}
    if affinity == "remote" and any(remote.values()):
        return set(), {c: set(ips) for c, ips in remote.items()}
    return set(local), {c: set(ips) for c, ips in remote.items()}


def steady_problems(
    views: Sequence[AgentView],
    *,
    cluster: str,
    local: set[str],
    remote: Mapping[str, set[str]],
    affinity: str,
    marker_reliable: bool,
) -> list[str]:
    """Why ``cluster``'s agents are not in the steady state (empty when they are).

    Steady: every agent lists every ready backend of every cluster as active (only the preferred ones on
    1.18+, see :func:`_visible`), and where the marker is reliable the affinity's side is preferred.
    """
    if not views:
        return [f"{cluster}: no Cilium agent pods found (kube-system, {AGENT_LABEL})"]
    want_local, want_remote = _visible(affinity, marker_reliable, local, remote)
    total = len(want_local) + sum(len(v) for v in want_remote.values())
    problems: list[str] = []
    for view in views:
        if view.error is not None:
            problems.append(f"{view.name}: could not read the service list: {view.error}")
            continue
        if not view.listed:
            problems.append(f"{view.name} does not list the drill Service's frontend {view.frontend}")
            continue
        active = view.active()
        missing: list[str] = []
        if want_local - active:
            missing.append(f"local backends {_list_ips(want_local - active)}")
        for peer, ips in sorted(want_remote.items()):
            if ips - active:
                missing.append(f"remote backends {_list_ips(ips - active)} ({peer})")
        if missing:
            listed = sum(1 for ip in active if ip in want_local or any(ip in v for v in want_remote.values()))
            problems.append(f"{view.name} lists {listed}/{total} expected backends; missing {'; '.join(missing)}")
        if marker_reliable and affinity in ("local", "remote"):
            all_remote: set[str] = set().union(*remote.values())
            side = local if affinity == "local" else all_remote
            if side & active:  # an active backend on the preferred side: only those may be preferred
                wrong = sorted(
                    b.address
                    for b in view.backends
                    if b.state == "active" and (b.ip in local or b.ip in all_remote) and b.preferred != (b.ip in side)
                )
                if wrong:
                    problems.append(
                        f"{view.name}: (preferred) does not follow affinity {affinity} on {', '.join(wrong)}"
                    )
    return problems


def failover_problems(views: Sequence[AgentView], *, cluster: str, remote: Mapping[str, set[str]]) -> list[str]:
    """Why ``cluster``'s agents have not failed over yet: any local backend left, or a remote one missing."""
    if not views:
        return [f"{cluster}: no Cilium agent pods found (kube-system, {AGENT_LABEL})"]
    problems: list[str] = []
    for view in views:
        if view.error is not None:
            problems.append(f"{view.name}: could not read the service list: {view.error}")
            continue
        if not view.listed:
            problems.append(f"{view.name} does not list the drill Service's frontend {view.frontend}")
            continue
        local = [b for b in view.backends if b.local]
        if local:
            problems.append(f"{view.name} still lists local backends {', '.join(b.describe() for b in local[:6])}")
        active = view.active()
        for peer, ips in sorted(remote.items()):
            if ips - active:
                problems.append(f"{view.name} is missing remote backends {_list_ips(ips - active)} ({peer})")
    return problems


# --------------------------------------------------------------------------------------------------
# Results


class DrillPhase(BaseModel):
    """One step of the drill, as reported in the artifact and to Slack."""

    model_config = ConfigDict(frozen=True)

    name: PhaseName
    cluster: str | None
    """The cluster disrupted or restored; None for phases over every cluster."""
    status: PhaseStatus
    detail: str
    backends: dict[str, list[BackendView]] = {}
    """Backends the agents of each cluster listed when the phase ended (one entry per agent and backend)."""
    probes: int = 0
    failed_probes: int = 0
    seconds: float = 0.0
    failover_seconds: float | None = None
    """Failover only: from the scale call until every agent listed only remote backends."""

    def table_row(self) -> dict[str, str]:
        return {
            "phase": self.name,
            "cluster": self.cluster or "all",
            "status": self.status,
            "detail": self.detail,
            "failover s": "" if self.failover_seconds is None else f"{self.failover_seconds:.2f}",
            "failed probes": f"{self.failed_probes}/{self.probes}" if self.probes else "",
        }


class DrillResult(BaseModel):
    """The whole drill: "not run" means the steady state did not hold and nothing was disrupted."""

    model_config = ConfigDict(frozen=True)

    status: DrillStatus
    reason: str
    phases: list[DrillPhase]
    recovered: list[str]
    failover_seconds: dict[str, float]
    failed_probes: int
    probes: int = 0

    def table_rows(self) -> list[dict[str, str]]:
        """Rows for a Prefect table artifact: phase, cluster, status, detail, failover s, failed probes."""
        return [p.table_row() for p in self.phases]

    def summary(self) -> str:
        if self.status == "not run":
            text = f"failover drill not run: {self.reason}"
        elif self.status == "failed":
            text = f"failover drill failed: {self.reason}"
        else:
            times = ", ".join(f"{c} in {s:.2f}s" for c, s in self.failover_seconds.items())
            text = f"failover drill passed: failed over {times}; {self.failed_probes}/{self.probes} probes failed"
        if self.recovered:
            text += f" (first restored {len(self.recovered)} deployment(s) left by an earlier drill)"
        return text


# --------------------------------------------------------------------------------------------------
# Manifests


def drill_manifests(settings: DrillSettings, profile: CiliumProfile) -> list[dict[str, Any]]:
    """Namespace, backend and client Deployments, and the global Service of the guide's example."""
    ns = settings.namespace
    backend_labels = {"app": BACKEND, **PART_OF}
    client_labels = {"app": CLIENT, **PART_OF}
    annotations = {**profile.global_annotations(), **profile.affinity_annotations(settings.affinity)}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(PART_OF)}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": BACKEND, "namespace": ns, "labels": backend_labels},
            "spec": {
                "replicas": settings.replicas,
                "selector": {"matchLabels": {"app": BACKEND}},
                "template": {
                    "metadata": {"labels": backend_labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "backend",
                                "image": settings.image,
                                "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": settings.port},
                                    "periodSeconds": 2,
                                },
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": CLIENT, "namespace": ns, "labels": client_labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": CLIENT}},
                "template": {
                    "metadata": {"labels": client_labels},
                    "spec": {
                        "containers": [
                            {"name": CLIENT_CONTAINER, "image": CLIENT_IMAGE, "command": ["sleep", "infinity"]}
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": SERVICE,
                "namespace": ns,
                "labels": {"app": BACKEND, **PART_OF},
                "annotations": annotations,
            },
            "spec": {
                "type": settings.service_type,
                "selector": {"app": BACKEND},
                "ports": [{"name": "http", "port": settings.port, "targetPort": settings.port, "protocol": "TCP"}],
            },
        },
    ]


# --------------------------------------------------------------------------------------------------
# Small readers


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _deployment_ready(deployment: Mapping[str, Any] | None, replicas: int) -> bool:
    """All ``replicas`` Ready and nothing else running: a rollout or scale finished, not just begun."""
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    return (
        int(spec.get("replicas", 1)) == replicas
        and int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(status.get("readyReplicas", 0) or 0) >= replicas
        and int(status.get("updatedReplicas", 0) or 0) >= replicas
        and int(status.get("replicas", 0) or 0) == replicas
    )


def _describe_deployment(deployment: Mapping[str, Any] | None) -> str:
    if deployment is None:
        return "no such Deployment"
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    return (
        f"spec.replicas {spec.get('replicas')}, status replicas {status.get('replicas', 0)}, "
        f"ready {status.get('readyReplicas', 0)}, updated {status.get('updatedReplicas', 0)}"
    )


def _recorded(deployment: Mapping[str, Any]) -> str | None:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ORIGINAL_REPLICAS_ANNOTATION)
    return None if value is None else str(value)


def _parse_count(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


@dataclass
class _Look:
    """One observation during a wait: what the agents listed, and what is still wrong."""

    views: dict[str, list[AgentView]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return _cut("; ".join(self.problems) or "nothing wrong", 1500)

    def backends(self) -> dict[str, list[BackendView]]:
        return {c: [b for v in views for b in v.backends] for c, views in self.views.items()}


class _Prober:
    """Requests through the service every ``interval`` seconds in a thread, counting what failed."""

    def __init__(self, probe: Callable[[], bool], interval: float) -> None:
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="clustermesh-drill-probe", daemon=True)
        self.requests = 0
        self.failures = 0
        self.errors: list[str] = []

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self._probe()
            except Exception as exc:  # the exec itself failed (no request made); the drill goes on
                with self._lock:
                    self.errors.append(_cut(str(exc), 200))
            else:
                with self._lock:
                    self.requests += 1
                    self.failures += 0 if ok else 1
            self._stop.wait(self._interval)


# --------------------------------------------------------------------------------------------------
# The drill


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

    def _wait(
        self,
        cluster: str,
        read: Callable[[], Any],
        predicate: Callable[[Any], bool],
        *,
        expected: str,
        check: str,
        describe: Callable[[Any], str] | None = None,
    ) -> Any:
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

    def _frontend(self, cluster: str) -> str:
        svc = self.clients[cluster].get_service(self.settings.namespace, SERVICE)
        cluster_ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
        if not cluster_ip or cluster_ip == "None":
            raise DrillError(
                cluster,
                f"Service {self.settings.namespace}/{SERVICE} has no cluster IP",
                fix="run the workloads phase first; the drill needs a ClusterIP frontend to look for",
            )
        return _frontend(cluster_ip, self.settings.port)

    def ready_backends(self, cluster: str) -> set[str]:
        """IPs of ``cluster``'s Ready backend pods: the addresses every agent should list."""
        pods = self.clients[cluster].list_pods(self.settings.namespace, f"app={BACKEND}")
        return {str(p["status"]["podIP"]) for p in pods if _pod_ready(p) and (p.get("status") or {}).get("podIP")}

    def _client_pod(self, cluster: str) -> str:
        pods = self.clients[cluster].list_pods(self.settings.namespace, f"app={CLIENT}")
        ready = sorted(str(p["metadata"]["name"]) for p in pods if _pod_ready(p))
        if not ready:
            raise DrillError(
                cluster,
                f"no Ready pod of Deployment {self.settings.namespace}/{CLIENT} to probe from",
                fix=f"kubectl -n {self.settings.namespace} describe deployment {CLIENT} (image {CLIENT_IMAGE})",
            )
        return ready[0]

    def _curl(self, cluster: str, pod: str, url: str) -> tuple[bool, str]:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(PROBE_MAX_TIME), url]
        out = self.clients[cluster].exec(
            self.settings.namespace, pod, CLIENT_CONTAINER, argv, timeout=PROBE_MAX_TIME + self.spec.timeouts.api
        )
        code = out.stdout.strip()
        if out.ok and code == "200":
            return True, "HTTP 200"
        return (
            False,
            f"curl exit {out.exit_code}, HTTP {code or '000'}{': ' + _cut(out.stderr, 120) if out.stderr else ''}",
        )

    def service_url(self) -> str:
        s = self.settings
        return f"http://{SERVICE}.{s.namespace}.svc.cluster.local:{s.port}/"

    def probe(self, cluster: str, pod: str | None = None) -> tuple[bool, str]:
        """One request through the drill Service from ``cluster``'s client pod."""
        return self._curl(cluster, pod or self._client_pod(cluster), self.service_url())

    def _look(self, cluster: str, frontend: str) -> list[AgentView]:
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

    def _phase(
        self, name: PhaseName, cluster: str | None, status: PhaseStatus, detail: str, start: float, **kw: Any
    ) -> DrillPhase:
        return DrillPhase(
            name=name,
            cluster=cluster,
            status=status,
            detail=_cut(detail, 2000),
            seconds=round(self.clock() - start, 3),
            **kw,
        )

    # -- phases ------------------------------------------------------------------------------------

    def recover(self) -> DrillPhase:
        """:meth:`recover_unfinished` as a phase; the lines go to ``self.recovered`` and the detail."""
        start = self.clock()
        try:
            self.recovered = self.recover_unfinished()
        except DrillError as exc:
            return self._phase("recover", None, "failed", str(exc), start)
        if not self.recovered:
            return self._phase("recover", None, "skipped", "nothing left by an earlier drill", start)
        return self._phase("recover", None, "passed", "; ".join(self.recovered), start)

    def recover_unfinished(self) -> list[str]:
        """Undo what an earlier drill left behind (a Deployment still carrying the replica record).

        Raises :class:`DrillError` when a recovery fails: the drill must not start on a cluster that
        is still scaled down.
        """
        ns = self.settings.namespace
        restored: list[str] = []
        errors: list[str] = []
        for cluster in self.clusters:
            try:
                undone = self._undo_recorded(cluster, wait_ready=True)
                if undone is None:
                    continue
                left, target, note = undone
                restored.append(
                    f"restored {cluster}/{ns}/{BACKEND} to {target} replicas left at {left} by an earlier drill{note}"
                )
            except ClusterMeshError as exc:
                errors.append(f"{cluster}: {exc}")
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
                actions = []
                for manifest in drill_manifests(self.settings, self.profile(cluster)):
                    action = getattr(client.create_or_replace(manifest), "action", "applied")
                    if action != "unchanged":
                        actions.append(f"{action} {manifest['kind']} {manifest['metadata']['name']}")
                for name, count in ((BACKEND, self.settings.replicas), (CLIENT, 1)):
                    self._wait(
                        cluster,
                        lambda c=client, n=name: c.get_deployment(ns, n),  # type: ignore[misc]
                        lambda d, k=count: _deployment_ready(d, k),  # type: ignore[misc]
                        expected=f"all {count} replicas of {ns}/{name} Ready",
                        check=f"kubectl -n {ns} describe deployment {name} (image pull, scheduling, readiness)",
                        describe=_describe_deployment,
                    )
                self._frontend(cluster)
                done.append(f"{cluster}: " + (", ".join(actions) or "unchanged"))
        except ClusterMeshError as exc:
            return self._phase("workloads", None, "failed", str(exc), start)
        return self._phase("workloads", None, "passed", "Ready; " + "; ".join(done), start)

    def _observe_steady(self, frontends: Mapping[str, str]) -> tuple[_Look, int, int]:
        look = _Look()
        probes = failed = 0
        expected = {c: self.ready_backends(c) for c in self.clusters}
        for cluster in self.clusters:
            if len(expected[cluster]) < self.settings.replicas:
                look.problems.append(f"{cluster}: {len(expected[cluster])}/{self.settings.replicas} backend pods Ready")
        for cluster in self.clusters:
            views = self._look(cluster, frontends[cluster])
            look.views[cluster] = views
            look.problems.extend(self._steady(cluster, views, expected))
            pod = self._client_pod(cluster)
            ok, what = self.probe(cluster, pod)
            probes += 1
            if not ok:
                failed += 1
                look.problems.append(f"{cluster}: {self.service_url()} from {pod} gave {what}")
            # The remote backends must answer from here too: failover relies on the cross-cluster path.
            for peer in self.clusters:
                if peer == cluster:
                    continue
                unreachable = []
                for ip in sorted(expected[peer]):
                    ok, what = self._curl(cluster, pod, f"http://{_frontend(ip, self.settings.port)}/")
                    if not ok:
                        unreachable.append(f"{ip} ({what})")
                if unreachable:
                    look.problems.append(
                        f"{cluster}: remote backends of {peer} unreachable from {pod}: {', '.join(unreachable[:4])}"
                    )
        return look, probes, failed

    def baseline(self) -> DrillPhase:
        """Steady-state gate: every agent lists every backend, and the service answers in every cluster."""
        start = self.clock()
        counts = {"probes": 0, "failed": 0}
        last = _Look()
        try:
            frontends = {c: self._frontend(c) for c in self.clusters}

            def read() -> _Look:
                nonlocal last
                look, probes, failed = self._observe_steady(frontends)
                counts["probes"] += probes
                counts["failed"] += failed
                last = look
                return look

            self._wait(
                ",".join(self.clusters),
                read,
                lambda look: not look.problems,
                expected="every agent to list every backend of every cluster and the service to answer everywhere",
                check=BASELINE_CHECK,
                describe=lambda look: look.describe(),
            )
        except WaitTimeoutError as exc:
            return self._phase(
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
            return self._phase(
                "baseline", None, "failed", str(exc), start, backends=last.backends(), probes=counts["probes"]
            )
        agents = sum(len(v) for v in last.views.values())
        return self._phase(
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
        start = self.clock()
        ns = self.settings.namespace
        client = self.clients[cluster]
        last = _Look()
        prober: _Prober | None = None
        failover_s: float | None = None
        extra_probes = extra_failed = 0

        def result(status: PhaseStatus, detail: str) -> DrillPhase:
            probes = extra_probes + (prober.requests if prober else 0)
            failed = extra_failed + (prober.failures if prober else 0)
            if prober and prober.errors:
                detail += f"; {len(prober.errors)} probe exec(s) failed (last: {prober.errors[-1]})"
            return self._phase(
                "failover",
                cluster,
                status,
                detail,
                start,
                backends=last.backends(),
                probes=probes,
                failed_probes=failed,
                failover_seconds=failover_s,
            )

        try:
            deployment = client.get_deployment(ns, BACKEND)
            if deployment is None:
                return result("failed", f"no Deployment {ns}/{BACKEND} in {cluster}: run the workloads phase first")
            record = _recorded(deployment)
            if record is not None:
                return result(
                    "failed",
                    f"{ns}/{BACKEND} already carries {ORIGINAL_REPLICAS_ANNOTATION}={record} from another drill: "
                    "not scaled; restore it first",
                )
            original = int((deployment.get("spec") or {}).get("replicas", 0))
            if original < 1:
                return result("failed", f"{ns}/{BACKEND} has {original} replicas: nothing to fail over from")
            remote = {c: self.ready_backends(c) for c in self.clusters if c != cluster}
            if not any(remote.values()):
                return result(
                    "failed", "no Ready backend in any other cluster: scaling down would take the service down"
                )
            frontend = self._frontend(cluster)
            pod = self._client_pod(cluster)
            version = (deployment.get("metadata") or {}).get("resourceVersion")
            try:
                client.patch_deployment_annotations(
                    ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: str(original)}, resource_version=version
                )
            except ConflictError:
                return result(
                    "failed",
                    f"{ns}/{BACKEND} changed between read and annotate (HTTP 409, resourceVersion {version}): "
                    "someone else is changing it; not scaled",
                )
            with _Prober(lambda: self.probe(cluster, pod)[0], self.probe_interval) as prober:
                scaled_at = self.clock()
                client.scale_deployment(ns, BACKEND, 0)

                def read() -> _Look:
                    nonlocal last
                    views = self._look(cluster, frontend)
                    last = _Look({cluster: views}, failover_problems(views, cluster=cluster, remote=remote))
                    return last

                self._wait(
                    cluster,
                    read,
                    lambda look: not look.problems,
                    expected=f"every agent of {cluster} to list only the remote backends of {frontend}",
                    check=AGENT_CHECK,
                    describe=lambda look: look.describe(),
                )
                failover_s = round(self.clock() - scaled_at, 3)

                def answer() -> tuple[bool, str]:
                    nonlocal extra_probes, extra_failed
                    ok, what = self.probe(cluster, pod)
                    extra_probes += 1
                    extra_failed += 0 if ok else 1
                    return ok, what

                self._wait(
                    cluster,
                    answer,
                    lambda got: got[0],
                    expected=f"{self.service_url()} to answer from {pod} with only remote backends",
                    check="the datapath to the remote cluster (UDP 8472 between nodes) and the remote backends",
                    describe=lambda got: got[1],
                )
        except WaitTimeoutError as exc:
            return result(
                "failed", f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}"
            )
        except ClusterMeshError as exc:
            return result("failed", str(exc))
        n_remote = sum(len(v) for v in remote.values())
        probes = extra_probes + prober.requests
        failed = extra_failed + prober.failures
        return result(
            "passed",
            f"scaled {ns}/{BACKEND} from {original} to 0; every agent listed only the {n_remote} remote backends "
            f"after {failover_s:.2f}s; the service answered at the end ({failed}/{probes} requests failed meanwhile)",
        )

    def restore(self, cluster: str) -> DrillPhase:
        """Scale back to the recorded count, wait for every replica and the agents, then drop the record."""
        start = self.clock()
        ns = self.settings.namespace
        client = self.clients[cluster]
        last = _Look()
        try:
            deployment = client.get_deployment(ns, BACKEND)
            record = None if deployment is None else _recorded(deployment)
            if deployment is None or record is None:
                return self._phase(
                    "restore", cluster, "skipped", f"{ns}/{BACKEND} carries no drill record: nothing to restore", start
                )
            target = _parse_count(record)
            if target is None:
                target = self.settings.replicas
            client.scale_deployment(ns, BACKEND, target)
            self._wait(
                cluster,
                lambda: client.get_deployment(ns, BACKEND),
                lambda d: _deployment_ready(d, target),
                expected=f"all {target} replicas of {ns}/{BACKEND} Ready",
                check=f"kubectl -n {ns} describe deployment {BACKEND} and its pods' events",
                describe=_describe_deployment,
            )
            frontend = self._frontend(cluster)

            def read() -> _Look:
                nonlocal last
                expected = {c: self.ready_backends(c) for c in self.clusters}
                views = self._look(cluster, frontend)
                problems = self._steady(cluster, views, expected)
                if len(expected[cluster]) < target:
                    problems.insert(0, f"{cluster}: {len(expected[cluster])}/{target} backend pods Ready")
                last = _Look({cluster: views}, problems)
                return last

            self._wait(
                cluster,
                read,
                lambda look: not look.problems,
                expected=f"every agent of {cluster} to list its {target} local backends again",
                check=AGENT_CHECK,
                describe=lambda look: look.describe(),
            )
            client.patch_deployment_annotations(ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: None})
        except WaitTimeoutError as exc:
            return self._phase(
                "restore",
                cluster,
                "failed",
                f"{exc.expected} not seen within {exc.timeout:g}s: {exc.last_seen} — check {exc.check}",
                start,
                backends=last.backends(),
            )
        except ClusterMeshError as exc:
            return self._phase("restore", cluster, "failed", str(exc), start, backends=last.backends())
        return self._phase(
            "restore",
            cluster,
            "passed",
            f"scaled {ns}/{BACKEND} back to {target}; all Ready and listed as local backends again",
            start,
            backends=last.backends(),
        )

    def _undo_recorded(self, cluster: str, *, wait_ready: bool) -> tuple[int, int, str] | None:
        """Scale the backend back to the count its annotation records, then drop the annotation.

        Returns ``(replicas found, replicas restored, note)``, or None when nothing is recorded. An
        unreadable record falls back to ``drill.replicas`` (the note says so). With ``wait_ready`` the
        annotation is dropped only once every replica is Ready again, so a failure leaves the record.
        """
        ns = self.settings.namespace
        client = self.clients[cluster]
        deployment = client.get_deployment(ns, BACKEND)
        record = None if deployment is None else _recorded(deployment)
        if deployment is None or record is None:
            return None
        target = _parse_count(record)
        note = ""
        if target is None:
            target = self.settings.replicas
            note = f" (record {record!r} unreadable: used drill.replicas)"
        found = int((deployment.get("spec") or {}).get("replicas", 0))
        if found != target:
            client.scale_deployment(ns, BACKEND, target)
        if wait_ready:
            self._wait(
                cluster,
                lambda c=client: c.get_deployment(ns, BACKEND),  # type: ignore[misc]
                lambda d, n=target: _deployment_ready(d, n),  # type: ignore[misc]
                expected=f"all {target} replicas of {ns}/{BACKEND} Ready",
                check=f"kubectl -n {ns} describe deployment {BACKEND} and its pods' events",
                describe=_describe_deployment,
            )
        client.patch_deployment_annotations(ns, BACKEND, {ORIGINAL_REPLICAS_ANNOTATION: None})
        return found, target, note

    def restore_all(self) -> DrillPhase:
        """The rollback that always runs: every recorded count is put back; one cluster's failure stops nothing."""
        start = self.clock()
        ns = self.settings.namespace
        restored: list[str] = []
        errors: list[str] = []
        for cluster in self.clusters:
            try:
                undone = self._undo_recorded(cluster, wait_ready=False)
                if undone is not None:
                    current, target, _ = undone
                    restored.append(f"{cluster}: {current} → {target} replicas")
            except Exception as exc:  # never let one cluster stop the others' rollback
                errors.append(f"{cluster}: failed to scale {ns}/{BACKEND} back: {_cut(str(exc), 400)}")
        if errors:
            return self._phase("rollback", None, "failed", "; ".join(errors + restored), start)
        if restored:
            return self._phase("rollback", None, "passed", "scaled back " + "; ".join(restored), start)
        return self._phase("rollback", None, "passed", "no replica count left changed", start)


# --------------------------------------------------------------------------------------------------
# The whole drill


def run_drill(
    clients: Mapping[str, DrillClient],
    facts: Mapping[str, ClusterFacts],
    spec: MeshSpec,
    *,
    clusters_to_fail: Sequence[str] | None = None,
    on_phase: Callable[[DrillPhase], None] | None = None,
    run_phase: Callable[[str, Callable[[], DrillPhase]], DrillPhase] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrillResult:
    """Recover leftovers, check the steady state, then fail over and restore one cluster at a time.

    A failed steady state gives "not run" with nothing disrupted. After a failed failover or restore the
    remaining clusters are skipped: the mesh is not fit to take more. The rollback runs in any case.
    Leftovers are recovered even with ``drill.enabled: false``: a disabled drill must not keep a
    cluster scaled down. Clusters are always failed one at a time (the spec refuses ``one_at_a_time: false``).
    ``run_phase(name, call)`` runs each phase (the flow makes each a Prefect task); ``on_phase`` sees
    each result as it comes.
    """
    drill = Drill(clients, facts, spec, clock=clock, sleep=sleep)
    targets = drill.targets(clusters_to_fail)
    phases: list[DrillPhase] = []
    recovered: list[str] = []

    def record(name: str, call: Callable[[], DrillPhase]) -> DrillPhase:
        phase = call() if run_phase is None else run_phase(name, call)
        phases.append(phase)
        if on_phase is not None:
            on_phase(phase)
        return phase

    def method() -> tuple[DrillStatus, str]:
        if record("recover", drill.recover).status == "failed":
            return "not run", f"leftovers of an earlier drill could not be undone: {phases[-1].detail}"
        recovered.extend(drill.recovered)
        if not spec.drill.enabled:
            return "not run", "the drill is disabled (drill.enabled: false)"
        if record("workloads", drill.ensure_workloads).status != "passed":
            return "not run", f"drill workloads not ready, nothing disrupted: {phases[-1].detail}"
        if record("baseline", drill.baseline).status != "passed":
            return "not run", f"steady state does not hold, nothing disrupted: {phases[-1].detail}"
        for index, cluster in enumerate(targets):
            failover = record(f"failover {cluster}", lambda c=cluster: drill.failover(c))  # type: ignore[misc]
            restore = record(f"restore {cluster}", lambda c=cluster: drill.restore(c))  # type: ignore[misc]
            bad = next((p for p in (failover, restore) if p.status == "failed"), None)
            if bad is not None:
                for rest in targets[index + 1 :]:
                    skipped = DrillPhase(
                        name="failover",
                        cluster=rest,
                        status="skipped",
                        detail=f"not disrupted: the {bad.name} of {cluster} failed",
                    )
                    phases.append(skipped)
                    if on_phase is not None:
                        on_phase(skipped)
                return "failed", f"{bad.name} of {cluster} failed: {bad.detail}"
        return "passed", f"{len(targets)} cluster(s) failed over and restored"

    try:
        status, reason = method()
    finally:
        rollback = record("rollback", drill.restore_all)
    if rollback.status == "failed":
        if status == "passed":
            status = "failed"
        reason = f"{reason}; rollback: {rollback.detail}"
    failover_seconds = {
        p.cluster: p.failover_seconds
        for p in phases
        if p.name == "failover" and p.cluster is not None and p.failover_seconds is not None
    }
    return DrillResult(
        status=status,
        reason=reason,
        phases=phases,
        recovered=recovered,
        failover_seconds=failover_seconds,
        failed_probes=sum(p.failed_probes for p in phases if p.name == "failover"),
        probes=sum(p.probes for p in phases if p.name == "failover"),
    )
