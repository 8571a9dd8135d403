"""Evidence on failure, end to end: a failing nightly on a sandbox with a fault attaches what an engineer would
look at first — the agents' ``troubleshoot clustermesh``, the ClusterMesh block of ``cilium status``, the
service list and the last probe results — to its artifacts and its Slack thread, redacted; a healthy night
collects nothing.

Real flows on a Prefect test server, the Slack-compatible test server on loopback, in-process sandboxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect import flow

from clustermesh.drill import DrillPhase, DrillResult
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from tasks import evidence
from tests.flows.conftest import Kube, mesh_spec
from tests.slack_server import SlackTestServer

DRILL_NS, DRILL_SERVICE = "clustermesh-drill", "clustermesh-drill"
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackTestServer]:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    with SlackTestServer() as server:
        monkeypatch.setenv("SLACK_BOT_TOKEN", server.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", server.url)
        yield server


@flow
def drill_evidence(spec: Any, drill: DrillResult) -> Any:
    """What ``failover_drill`` does after a failed drill started on its own (one call, no Slack)."""
    return evidence.on_failure(spec, "FAIL", [], drill=drill)


def run_nightly(spec: Any) -> tuple[Any, VerificationResult]:
    state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), f"{state}: {state.result(raise_on_failure=False)!r}"
    return state, result


def artifact_text(state: Any, key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            )
        )
    return str(found[0].data) if found else None


def drill_service(k: Kube) -> str:
    """The drill's global Service (no backends yet), made with the official client; its ``clusterIP:port``."""
    k.core.create_namespace({"metadata": {"name": DRILL_NS}})
    k.core.create_namespaced_service(
        DRILL_NS,
        {
            "metadata": {"name": DRILL_SERVICE, "annotations": {"service.cilium.io/global": "true"}},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]},
        },
    )
    for _ in range(200):  # the sandbox's controller allocates the ClusterIP right after the create
        ip = k.core.read_namespaced_service(DRILL_SERVICE, DRILL_NS).spec.cluster_ip
        if ip:
            return f"{ip}:80"
        time.sleep(0.05)
    raise AssertionError("the drill Service got no ClusterIP")


def thread_text(slack: SlackTestServer) -> str:
    parents = [m for m in slack.messages if m.get("thread_ts") is None]
    assert len(parents) == 1, [m["text"] for m in parents]
    return "\n".join(r["text"] for r in slack.replies(parents[0]["ts"]))


def test_a_failing_nightly_attaches_the_agents_evidence_redacted_to_its_artifacts_and_slack_thread(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], slack: SlackTestServer
) -> None:
    sb = meshed(clusters=2, cilium_version="1.16")
    frontends = {name: drill_service(k) for name, k in kubes(sb).items()}
    sb.fault("rotate-ca", cluster="cluster-2")  # cluster-2's mesh certificates now come from a CA nobody trusts
    spec = mesh_spec(sb, health=5)

    state, result = run_nightly(spec)

    assert result.status == "FAIL", result.describe()
    markdown = artifact_text(state, f"{spec.name}-evidence")
    assert markdown is not None, "no evidence artifact on a FAIL"
    thread = thread_text(slack)
    for where, text in (("artifact", markdown), ("slack thread", thread)):
        # what an engineer looks at first, from one agent of an affected member
        assert "troubleshoot clustermesh" in text, where
        assert "Found 1 cluster configurations" in text, where
        assert "certificate signed by unknown authority" in text or "bad certificate" in text, (where, text)
        assert "Serial number:" in text and "Issuer:" in text and "Not after:" in text, where
        assert "ClusterMesh:" in text and "0/1 remote clusters ready" in text, where
        assert "drill Service backends" in text and "10.240.16.1:443" not in text, where  # only its rows
        assert all(frontend in text for frontend in frontends.values()), (where, frontends)
        assert "last probe results" in text.lower() and "from \\ to" in text, where
        # redacted: the agents print no PEM, and nothing PEM-shaped got through
        assert "BEGIN" not in text and "PRIVATE KEY" not in text, where
    asked = [line for line in thread.splitlines() if line.startswith("== cluster-")]
    assert asked and all("/cilium-" in line and "(Cilium 1.16" in line for line in asked), asked


def test_a_healthy_nightly_collects_no_evidence(meshed: Callable[..., Any], slack: SlackTestServer) -> None:
    sb = meshed(clusters=2, cilium_version="1.16")
    spec = mesh_spec(sb)

    state, result = run_nightly(spec)

    assert result.status == "PASS", result.describe()
    assert artifact_text(state, f"{spec.name}-evidence") is None
    assert "Evidence:" not in thread_text(slack)


def test_on_1_13_troubleshoot_is_not_available_the_rest_is_kept_and_a_failed_drill_asks_the_watching_members(
    meshed: Callable[..., Any], slack: SlackTestServer
) -> None:
    sb = meshed(clusters=2, cilium_version="1.13")
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="tcp/2379")
    spec = mesh_spec(sb, health=5)

    state, result = run_nightly(spec)

    assert result.status == "FAIL", result.describe()
    thread = thread_text(slack)
    assert "not available on Cilium 1.13" in thread, thread
    assert "cilium troubleshoot clustermesh cluster-2" in thread, thread
    assert "ClusterMesh:" in thread and "cilium status --verbose" in thread
    assert "BEGIN" not in thread

    # a failed drill phase started on its own: the members watching the disrupted cluster are asked
    drill = DrillResult(
        status="failed",
        reason="failover of cluster-2 did not happen",
        phases=[
            DrillPhase(
                name="failover",
                cluster="cluster-2",
                status="failed",
                detail="agents kept local backends",
                probes=10,
                failed_probes=3,
            )
        ],
        recovered=[],
        failover_seconds={},
        failed_probes=3,
        probes=10,
    )
    drill_state = drill_evidence(spec, drill, return_state=True)
    markdown = artifact_text(drill_state, f"{spec.name}-evidence") or ""
    assert "## cluster-1/cilium-" in markdown and "## cluster-2/" not in markdown, markdown
    assert "drill phase failover failed (cluster-2)" in markdown
    assert "drill failover cluster-2: failed, failed probes 3/10" in markdown
