"""Evidence on failure: run what ``clustermesh.checks.evidence`` chose in the affected agents, attach it.

One agent per affected member (at most four, in parallel), each command with its own timeout through
the ClusterClient's exec; whatever fails is written down, nothing here fails the run. The result goes,
redacted, to a Markdown artifact and into the Slack thread of the run's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from clustermesh.checks import Finding
from clustermesh.checks import evidence as ev
from clustermesh.drill import DrillResult
from clustermesh.drill.agents import AGENT_CONTAINER, AGENT_LABEL, AGENT_NAMESPACE, frontend_address
from clustermesh.drill.manifests import SERVICE
from clustermesh.kube import ClusterClient
from clustermesh.notify import PostResult
from clustermesh.spec import MeshSpec
from clustermesh.steps.step8_health import HealthMatrix
from tasks.notify import RunSlack
from tasks.verify_steps import all_clients

AGENT_CLIS = ("cilium-dbg", "cilium")  # cilium-dbg from 1.15; 1.13–1.14 ship only ``cilium``
NOT_FOUND_EXIT = 127  # the container runtime's answer to a binary that is not there


def _run(client: ClusterClient, pod: str, argv: Sequence[str]) -> tuple[int, str, str] | str:
    """``(exit code, stdout, stderr)``, or the error that kept the command from running."""
    try:
        out = client.exec(AGENT_NAMESPACE, pod, AGENT_CONTAINER, list(argv), timeout=ev.COMMAND_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - evidence never fails the run: the error is the evidence
        return str(getattr(exc, "problem", None) or exc)
    return out.exit_code, out.stdout, out.stderr


def _agent_cli(client: ClusterClient, pod: str) -> tuple[str, str | None]:
    """The agent CLI this pod has and the Cilium version it reports (``Client: 1.16.9 …``)."""
    for cli in AGENT_CLIS:
        outcome = _run(client, pod, [cli, "version"])
        if isinstance(outcome, tuple) and outcome[0] == NOT_FOUND_EXIT:
            continue
        if isinstance(outcome, tuple) and outcome[0] == 0:
            words = outcome[1].split()
            return cli, words[1] if len(words) > 1 and words[0] == "Client:" else None
        return cli, None
    return AGENT_CLIS[-1], None


def _first_agent(client: ClusterClient) -> str | None:
    pods = [
        p for p in client.list_pods(AGENT_NAMESPACE, AGENT_LABEL) if (p.get("status") or {}).get("phase") == "Running"
    ]
    names = sorted(str(p["metadata"]["name"]) for p in pods)
    return names[0] if names else None


def _drill_frontend(client: ClusterClient, spec: MeshSpec) -> str | None:
    """``clusterIP:port`` of the drill Service in this cluster, as the agents list it; None without one."""
    try:
        service = client.get_service(spec.drill.namespace, SERVICE)
    except Exception:  # noqa: BLE001 - without the Service the whole list is kept
        return None
    ip = ((service or {}).get("spec") or {}).get("clusterIP")
    return frontend_address(str(ip), spec.drill.port) if ip and ip != "None" else None


def agent_evidence(client: ClusterClient, spec: MeshSpec, target: ev.EvidenceTarget) -> ev.AgentEvidence:
    """One affected member: its first running agent's troubleshoot, ClusterMesh status and drill backends."""
    try:
        pod = _first_agent(client)
    except Exception as exc:  # noqa: BLE001 - recorded, never raised
        return ev.AgentEvidence(cluster=target.cluster, agent=None, why=target.why, problem=ev.redact(str(exc))[:300])
    if pod is None:
        return ev.AgentEvidence(
            cluster=target.cluster, agent=None, why=target.why, problem="no running Cilium agent pod (k8s-app=cilium)"
        )
    cli, version = _agent_cli(client, pod)
    frontend = _drill_frontend(client, spec)
    troubleshoot, status, services = (
        ev.troubleshoot_argv(cli, target.peers),
        ev.status_argv(cli),
        ev.service_list_argv(cli),
    )
    sections = [
        ev.section("troubleshoot clustermesh", troubleshoot, _run(client, pod, troubleshoot), version=version),
        ev.section("ClusterMesh status", status, _run(client, pod, status), cut=ev.clustermesh_block),
        ev.section(
            "drill Service backends" if frontend else "service list",
            services,
            _run(client, pod, services),
            cut=lambda text: ev.service_rows(text, frontend),
        ),
    ]
    return ev.AgentEvidence(cluster=target.cluster, agent=pod, why=target.why, version=version, sections=sections)


def _unhealthy_pairs(health: HealthMatrix | None) -> list[tuple[str, str]]:
    return [(c.src, c.dst) for c in health.cells if not c.healthy] if health is not None else []


def _failed_phases(drill: DrillResult | None) -> list[tuple[str | None, str]]:
    return [(p.cluster, p.name) for p in drill.phases if p.status == "failed"] if drill is not None else []


@task(name="Collect evidence of the failure", task_run_name="Collect evidence of the failure", cache_policy=NO_CACHE)
def collect_evidence(
    spec: MeshSpec,
    subject: str,
    findings: list[Finding],
    health: HealthMatrix | None = None,
    drill: DrillResult | None = None,
) -> ev.Evidence:
    """Ask one agent of each affected member (at most four) and add the run's last probe results."""
    clusters = health.clusters if health is not None else [c.name for c in spec.clusters]
    targets = ev.affected_members(clusters, findings, _unhealthy_pairs(health), _failed_phases(drill))
    probes = ev.probe_lines(health.render_text() if health else None, drill.table_rows() if drill else [])
    if not targets:
        return ev.Evidence(subject=subject, probes=probes)
    with all_clients(spec) as clients:
        asked = [t for t in targets if t.cluster in clients]
        with ThreadPoolExecutor(max_workers=len(asked) or 1) as pool:
            agents = list(pool.map(lambda t: agent_evidence(clients[t.cluster], spec, t), asked))
    for agent in agents:
        get_run_logger().info(
            "Evidence from %s/%s: %s",
            agent.cluster,
            agent.agent or "-",
            ", ".join(f"{s.title} {'ok' if s.ok else 'failed'}" for s in agent.sections) or agent.problem,
        )
    return ev.Evidence(subject=subject, agents=agents, probes=probes)


def attach_evidence(
    spec: MeshSpec, evidence: ev.Evidence, slack: RunSlack | None = None, thread: PostResult | None = None
) -> None:
    """The evidence as the run's artifact ``<mesh>-evidence`` and, when the summary has a thread, in it."""
    if evidence.empty:
        return
    create_markdown_artifact(key=f"{spec.name}-evidence", markdown=evidence.markdown(), description=evidence.subject)
    if slack is not None and thread is not None and thread.ok and thread.ts and slack.supports_threads:
        slack.post_lines(thread, evidence.slack_lines(), "evidence")


def on_failure(
    spec: MeshSpec,
    verdict: str,
    findings: list[Finding],
    health: HealthMatrix | None = None,
    drill: DrillResult | None = None,
    slack: RunSlack | None = None,
    thread: PostResult | None = None,
) -> ev.Evidence | None:
    """For a FAIL: collect the evidence and attach it (artifact, Slack thread). Never raises; None otherwise."""
    if verdict != "FAIL":
        return None
    failed = dict.fromkeys(f.subject for f in findings if f.level == "failure")  # each subject once, in order
    subject = f"mesh {spec.name}: " + ("; ".join(failed) or "drill failed")[:200]
    try:
        evidence = collect_evidence(spec, subject, findings, health, drill)
        attach_evidence(spec, evidence, slack, thread)
    except Exception as exc:  # noqa: BLE001 - evidence is a courtesy; the verdict stands without it
        get_run_logger().warning("Evidence not collected: %s", ev.redact(str(exc))[:300])
        return None
    return evidence
