"""``nightly_mesh_verification`` end to end: a sandbox mesh built by the real setup flow, the session's
Prefect test server, and the Slack-compatible test server on loopback (slack-sdk talks real HTTP to it).

What the team would read is checked on the message the Slack server kept (after its edits), not on what
the pipeline says it sent; what the Logs tab shows is read back from the Prefect API; replica counts and
certificate dates are read from the sandbox with the official ``kubernetes`` client.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client as k8s

from clustermesh.spec import MeshSpec, NotifySettings
from clustermesh.spec.settings import SlackSettings
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import (
    REPORTED_FAILURE,
    VerificationFailed,
    VerificationResult,
    nightly_mesh_verification,
    verification_result,
)
from tests.flows.conftest import Kube, cli, mesh_spec, write_edited_yaml
from tests.helpers import cli_environment, sandbox_process
from tests.slack_server import SlackTestServer

UI = "https://prefect.example.com"
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")
DRILL_NS = "clustermesh-drill"
DRILL_BACKEND = "clustermesh-drill-backend"
LEAF_CERTS = (
    "clustermesh-apiserver-server-cert",
    "clustermesh-apiserver-remote-cert",
    "clustermesh-apiserver-admin-cert",
)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test configures Slack itself (or not at all): nothing leaks in from the developer's shell."""
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slack() -> Iterator[SlackTestServer]:
    with SlackTestServer() as server:
        yield server


@pytest.fixture
def slack_env(slack: SlackTestServer, monkeypatch: pytest.MonkeyPatch) -> SlackTestServer:
    """Slack configured the way a deployment does it without a spec section: by environment."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    return slack


# ------------------------------------------------------------------------------------------- helpers


def with_link(spec: MeshSpec) -> MeshSpec:
    return spec.model_copy(update={"notify": NotifySettings(prefect_ui_url=UI)})


def with_drill_timeout(spec: MeshSpec, seconds: float) -> MeshSpec:
    return spec.model_copy(update={"drill": spec.drill.model_copy(update={"timeout": seconds})})


def with_slack(spec: MeshSpec, channel: str, token_env: str = "SLACK_BOT_TOKEN") -> MeshSpec:
    slack = SlackSettings(channel=channel, token_env=token_env)
    return spec.model_copy(update={"notify": spec.notify.model_copy(update={"slack": slack})})


def run_nightly(spec: MeshSpec, *, run_drill: bool = True) -> tuple[Any, VerificationResult]:
    """Run the flow; its verdict read from the final state as the CLI reads it."""
    state = nightly_mesh_verification(spec, run_drill=run_drill, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), f"{state}: {state.result(raise_on_failure=False)!r}"
    return state, result


def run_logs(state: Any) -> list[Any]:
    """The run's log records as the Prefect API keeps them (what the UI's Logs tab shows), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id(state)])),
                sort=LogSort.TIMESTAMP_ASC,
            )
        )


def at_least(logs: list[Any], level: int) -> list[str]:
    return [log.message for log in logs if log.level >= level]


def our_warnings(logs: list[Any]) -> list[str]:
    """Warnings and worse, without Prefect's own note that an ad-hoc run has no mesh lock registered."""
    return [m for m in at_least(logs, 30) if not m.startswith("Concurrency limits ['mesh-")]


def top_level(slack: SlackTestServer) -> list[dict[str, Any]]:
    return [m for m in slack.messages if m.get("thread_ts") is None]


def api_calls(slack: SlackTestServer, method: str) -> list[dict[str, Any]]:
    return [r for r in slack.requests if r["path"] == f"/api/{method}"]


def fields_of(message: dict[str, Any]) -> dict[str, str]:
    """The figures of a summary as the reader sees them: ``{"Clusters": "2", ...}`` from the section fields."""
    out: dict[str, str] = {}
    for block in message["blocks"]:
        for field in block.get("fields") or []:
            name, _, value = field["text"].partition("\n")
            out[name.strip("*")] = value
    return out


def all_text(message: dict[str, Any]) -> str:
    """Every piece of text a reader can see in a message: fallback, header, fields, sections, context."""
    parts = [message.get("text") or ""]
    for block in message["blocks"]:
        for item in [block.get("text"), *(block.get("fields") or []), *(block.get("elements") or [])]:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
    return "\n".join(parts)


def nearest_leaf_expiry_days(kubes: dict[str, Kube]) -> int:
    """Days until the first clustermesh leaf certificate of any cluster expires, read from the Secrets."""
    now = datetime.now(UTC)
    ends = []
    for k in kubes.values():
        for secret in LEAF_CERTS:
            data = k.secret_data(secret)
            assert data is not None and data.get("tls.crt"), f"{secret} missing"
            cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
            ends.append(cert.not_valid_after_utc)
    return (min(ends) - now).days


def flow_run_id(state: Any) -> Any:
    return state.state_details.flow_run_id


def artifacts_of(flow_run: Any, key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])
                )
            )
        )


# -------------------------------------------------------------------------------- a healthy night


def test_a_healthy_mesh_passes_with_one_slack_message_edited_in_place_and_details_in_its_thread(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], slack_env: SlackTestServer
) -> None:
    slack = slack_env
    sb = meshed(clusters=2, nodes=2)
    k = kubes(sb)

    state, result = run_nightly(with_link(mesh_spec(sb)))

    assert state.is_completed(), state
    assert result.status == "PASS", result.describe()
    assert result.slack == "delivered"
    assert result.drill is not None and result.drill.status == "passed", result.drill

    # one parent: posted first as RUNNING, then edited in place (same ts) to PASSED
    parents = top_level(slack)
    assert len(parents) == 1, [m["text"] for m in parents]
    parent = parents[0]
    posts = [r for r in api_calls(slack, "chat.postMessage") if not r["body"].get("thread_ts")]
    assert len(posts) == 1
    assert posts[0]["answer"]["ts"] == parent["ts"]
    assert posts[0]["body"]["text"].startswith(":hourglass_flowing_sand: RUNNING"), posts[0]["body"]["text"]
    updates = api_calls(slack, "chat.update")
    assert updates and all(u["body"]["ts"] == parent["ts"] for u in updates)
    assert parent["edits"] >= 1
    assert parent["text"].startswith(":large_green_circle: PASSED"), parent["text"]
    assert parent["blocks"][0]["text"]["text"].startswith(":large_green_circle: PASSED")
    assert "RUNNING" not in all_text(parent)

    # the key figures, as the reader sees them
    figures = fields_of(parent)
    assert figures["Mesh"] == "sandbox"
    assert figures["Clusters"] == "2"
    assert figures["Nodes reachable"] == "8/8"  # 2 clusters × 2 nodes, seen from both clusters
    assert figures["Failover drill"] == "passed"
    slowest = max(result.drill.failover_seconds.values())
    assert set(result.drill.failover_seconds) == {"cluster-1", "cluster-2"}
    assert figures["Failover time"] == (f"{slowest:.1f} s" if slowest >= 1 else f"{slowest:.2f} s")
    days = nearest_leaf_expiry_days(k)
    assert figures["Nearest certificate expiry"] in (f"in {days} days", f"in {days + 1} days")
    link = f"{UI}/runs/flow-run/{flow_run_id(state)}"
    assert f"<{link}|" in all_text(parent)

    # every check in the thread of that parent, marked ok, the drill without "failover drill" twice
    replies = slack.replies(parent["ts"])
    assert replies, "no thread replies"
    assert all(r["channel"] == parent["channel"] for r in replies)
    thread = "\n".join(r["text"] for r in replies)
    assert ":white_check_mark: *mesh health*:" in thread
    assert ":white_check_mark: *failover drill*: passed: failed over" in thread
    assert "failover drill: failover drill" not in thread and "drill*: failover drill" not in thread
    assert len([line for line in thread.splitlines() if line.startswith(":white_check_mark:")]) == len(result.findings)


# -------------------------------------------------------------------------------- a broken night


def test_a_broken_vxlan_path_fails_the_run_without_drilling_and_slack_names_udp_8472_once(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], slack_env: SlackTestServer
) -> None:
    slack = slack_env
    sb = meshed(clusters=2, nodes=2)
    k = kubes(sb)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    spec = with_drill_timeout(with_link(mesh_spec(sb, health=5)), 2)

    state, result = run_nightly(spec)

    # a FAIL that reached Slack: type FAILED, named so the crash-safe Automation does not post again
    assert state.is_failed() and state.name == REPORTED_FAILURE, state
    assert isinstance(state.result(raise_on_failure=False), VerificationFailed)
    assert result.status == "FAIL" and result.reported
    assert result.slack == "delivered"
    assert "UDP 8472" in (state.message or ""), state.message
    assert result.drill is not None and result.drill.status == "not run", result.drill
    assert "nothing disrupted" in result.drill.reason
    assert not any(p.name in ("failover", "restore") for p in result.drill.phases), result.drill.phases
    # the flow's gate saw the unhealthy matrix first: the drill did not even create its workloads
    assert "not healthy" in result.drill.reason, result.drill.reason
    for name, kube in k.items():
        with pytest.raises(k8s.ApiException) as missing:
            k8s.AppsV1Api(kube.api).read_namespaced_deployment(DRILL_BACKEND, DRILL_NS)
        assert missing.value.status == 404, name

    # one message: the summary, FAILED, naming the port; the failure hook did not alert again
    parents = top_level(slack)
    assert len(parents) == 1, [m["text"] for m in parents]
    parent = parents[0]
    assert parent["edits"] >= 1
    assert parent["text"].startswith(":red_circle: FAILED"), parent["text"]
    text = all_text(parent)
    assert "UDP 8472" in text, text
    assert "cluster-1" in text and "cluster-2" in text
    assert fields_of(parent)["Failover drill"] == "not run"
    assert f"{UI}/runs/flow-run/{flow_run_id(state)}" in text
    assert "<https://docs.kubermatic.com/" in text and "|step 7's rules>" in text
    assert not any(m["text"].startswith("FAILED: flow") for m in slack.messages)
    # the thread: failures first, the ok lines last
    marks = [line.split(" ", 1)[0] for r in slack.replies(parent["ts"]) for line in r["text"].splitlines()]
    marks = [m for m in marks if m.startswith(":")]
    assert marks == sorted(marks, key=[":x:", ":warning:", ":white_check_mark:"].index), marks
    assert marks[0] == ":x:" and marks[-1] == ":white_check_mark:"

    # the Logs tab: the findings themselves at ERROR / WARNING, the last error a finding with its fix
    logs = run_logs(state)
    errors = at_least(logs, 40)
    assert errors and errors[-1].startswith("FAILURE cluster-") and "UDP 8472" in errors[-1], errors
    assert "fix: open UDP 8472" in errors[-1]
    assert not any("Traceback" in m or "Engine execution" in m for m in errors), errors
    assert any(m.startswith("WARNING failover drill: not run") for m in at_least(logs, 30))


# -------------------------------------------------------------------------------- Slack in trouble


def test_slack_down_does_not_fail_the_verification(meshed: Callable[..., Any], slack_env: SlackTestServer) -> None:
    slack = slack_env
    sb = meshed(clusters=2, nodes=1)
    slack.down = True  # every request: connection dropped without an answer

    state, result = run_nightly(mesh_spec(sb), run_drill=False)

    assert state.is_completed(), state
    assert result.status == "PASS", result.describe()
    assert result.slack.startswith("not delivered"), result.slack
    assert slack.messages == []
    assert api_calls(slack, "chat.postMessage"), "the flow never tried to post"
    # one warning for the whole run (start message and summary both failed), saying where to look
    warnings = our_warnings(run_logs(state))
    assert len(warnings) == 1, warnings
    assert "connection_error" in warnings[0] and "127.0.0.1" in warnings[0] and "SLACK_API_URL" in warnings[0]
    assert "the verdict stands" in warnings[0]


MISCONFIGURED = {
    # name: (environment, spec's Slack section channel or None, what the one warning must name)
    "a bot token but no channel": ({"SLACK_BOT_TOKEN": "{token}"}, None, ("SLACK_CHANNEL", "notify: {slack:")),
    "a refused token": (
        {"SLACK_BOT_TOKEN": "xoxb-not-the-right-one", "SLACK_CHANNEL": "#mesh-alerts"},
        None,
        ("invalid_auth", "env var SLACK_BOT_TOKEN on the worker"),
    ),
    "an unknown channel in the spec": (
        {"SLACK_BOT_TOKEN": "{token}"},
        "#no-such-channel",
        ("channel_not_found", "notify.slack.channel", "clustermesh blocks register"),
    ),
    "a spec channel but no token on the worker": (
        {},
        "#mesh-alerts",
        ("SLACK_BOT_TOKEN", "notify.slack.token_env", "worker"),
    ),
}


@pytest.mark.parametrize("case", list(MISCONFIGURED))
def test_a_slack_misconfiguration_keeps_the_verdict_and_says_once_where_to_fix_it(
    case: str, meshed: Callable[..., Any], slack: SlackTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, channel, named = MISCONFIGURED[case]
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(token=slack.token))
    sb = meshed(clusters=2, nodes=1)
    spec = mesh_spec(sb) if channel is None else with_slack(mesh_spec(sb), channel)

    state, result = run_nightly(spec, run_drill=False)

    assert state.is_completed(), state
    assert result.status == "PASS", result.describe()
    assert not result.reported and result.slack.startswith("not delivered"), result.slack
    warnings = our_warnings(run_logs(state))
    assert len(warnings) == 1, warnings
    for words in named:
        assert words in warnings[0], (words, warnings[0])
    assert slack.token not in warnings[0] and slack.token not in result.slack
    assert slack.messages == []
    assert len(api_calls(slack, "chat.postMessage")) <= 1, "a refusal no retry changes is not tried again"


def test_a_fail_that_slack_refused_ends_failed_for_the_automation_and_keeps_its_verdict(
    meshed: Callable[..., Any], slack: SlackTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-not-the-right-one")
    monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
    sb = meshed(clusters=2, nodes=1)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")

    state, result = run_nightly(mesh_spec(sb, health=3), run_drill=False)

    # not reported: the state keeps the name the failure Automation listens for (prefect.flow-run.Failed)
    assert state.is_failed() and state.name == "Failed", state
    assert result.status == "FAIL" and not result.reported
    assert "invalid_auth" in result.slack
    assert slack.messages == [], "neither the summary nor the failure hook got through with that token"
    logs = run_logs(state)
    assert [m for m in at_least(logs, 30) if "Slack" in m and "invalid_auth" in m], at_least(logs, 30)
    assert at_least(logs, 40)[-1].startswith("FAILURE cluster-"), at_least(logs, 40)


def test_a_rate_limited_first_post_is_retried_and_posted_once(
    meshed: Callable[..., Any], slack_env: SlackTestServer
) -> None:
    slack = slack_env
    sb = meshed(clusters=2, nodes=1)
    slack.fail_next(429, retry_after=0)

    state, result = run_nightly(mesh_spec(sb), run_drill=False)

    assert state.is_completed(), state
    assert result.status == "PASS"
    assert result.slack == "delivered"
    first_posts = [r for r in api_calls(slack, "chat.postMessage") if not r["body"].get("thread_ts")]
    assert [r["status"] for r in first_posts] == [429, 200]
    assert first_posts[0]["body"]["text"] == first_posts[1]["body"]["text"]
    parents = top_level(slack)
    assert len(parents) == 1, [m["text"] for m in parents]
    assert parents[0]["text"].startswith(":large_green_circle: PASSED") and parents[0]["edits"] >= 1


# --------------------------------------------------------------------------------- no Slack at all


def test_without_slack_the_summary_is_printed_and_saved_as_a_markdown_artifact(
    meshed: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    sb = meshed(clusters=2, nodes=1)
    capfd.readouterr()

    state, result = run_nightly(with_link(mesh_spec(sb)), run_drill=False)

    assert state.is_completed(), state
    assert result.status == "PASS"
    assert result.slack.startswith("not configured")
    out = capfd.readouterr().out
    link = f"{UI}/runs/flow-run/{flow_run_id(state)}"
    assert "PASSED: Cluster Mesh sandbox: nightly verification" in out
    assert "Failover drill:" in out and "skipped" in out
    assert f"Run: {link}" in out

    artifacts = artifacts_of(flow_run_id(state), "sandbox-nightly-summary")
    assert len(artifacts) == 1
    assert artifacts[0].type == "markdown"
    markdown = str(artifacts[0].data)
    assert markdown.startswith("# 🟢 PASSED: Cluster Mesh sandbox: nightly verification")
    assert "| Clusters | 2 |" in markdown and f"[open the flow run]({link})" in markdown
    assert "```" not in markdown
    assert "| ✅ ok | mesh health |" in markdown


# ------------------------------------------------------------------------------ the failure hook


def test_a_failed_setup_alerts_slack_naming_the_flow_the_cluster_and_the_error(
    sandbox_factory: Callable[..., Any], slack_env: SlackTestServer
) -> None:
    slack = slack_env
    sb = sandbox_factory(clusters=2, cilium_version="1.16", nodes=1)
    sb.fault("lb-never", cluster="cluster-2", on=True)
    spec = with_link(mesh_spec(sb, load_balancer=1.0))

    state = cluster_mesh_setup(spec, return_state=True)

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, Exception)
    first_line = str(error).strip().splitlines()[0]
    assert "cluster-2" in str(error)

    alerts = top_level(slack)
    assert len(alerts) == 1, [m["text"] for m in alerts]
    alert = alerts[0]
    text = all_text(alert)
    assert alert["text"].startswith("FAILED: flow cluster-mesh-setup"), alert["text"]
    assert fields_of(alert)["Flow"] == "cluster-mesh-setup"
    assert fields_of(alert)["Cluster"] == "cluster-2"
    escaped = first_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped[:200] in text, (first_line, text)
    assert f"<{UI}/runs/flow-run/{flow_run_id(state)}|" in text


# -------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tmp_path: Path, prefect_api_url: str) -> dict[str, str]:
    """Own PREFECT_HOME; the session's test server as API (no temporary server per process); no Slack."""
    return cli_environment(tmp_path / "prefect-home", prefect_api_url, without=SLACK_ENV)


@pytest.fixture
def sandbox_dir(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Path]:
    """``clustermesh sandbox up`` as a background process; yields its directory once ready."""
    directory = tmp_path / "sandbox"
    with sandbox_process(directory, env=cli_env):
        yield directory


def test_cli_verify_exits_0_on_a_healthy_mesh_and_1_once_vxlan_is_blocked(
    sandbox_dir: Path, cli_env: dict[str, str]
) -> None:
    mesh_yaml = sandbox_dir / "mesh.yaml"
    setup = cli(cli_env, "setup", "--config", str(mesh_yaml))
    assert setup.returncode == 0, setup.stdout + setup.stderr

    def short_health(data: dict[str, Any]) -> None:
        data.setdefault("timeouts", {})["health"] = 5

    config = write_edited_yaml(mesh_yaml, short_health, "verify.yaml")

    healthy = cli(cli_env, "verify", "--config", str(config), "--no-drill")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "PASS: mesh sandbox" in healthy.stdout

    fault = cli(
        cli_env, "sandbox", "fault", "block-port", "--dir", str(sandbox_dir),
        "--between", "cluster-1,cluster-2", "--port", "udp/8472",
    )  # fmt: skip
    assert fault.returncode == 0, fault.stdout + fault.stderr

    broken = cli(cli_env, "verify", "--config", str(config), "--no-drill")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "FAIL: mesh sandbox" in broken.stdout
    assert "UDP 8472" in broken.stdout
    # a FAIL is a verdict, printed with its findings: not a crash of the command or of Prefect's engine
    assert "Traceback" not in broken.stdout + broken.stderr, broken.stderr
    assert "could not run" not in broken.stderr, broken.stderr
