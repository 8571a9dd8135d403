"""Slack notifications: message content and limits, and posting through slack-sdk to a real local server."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from clustermesh.checks.findings import Finding
from clustermesh.errors import SlackConfigError
from clustermesh.notify.messages import (
    GUIDE_URL,
    Alert,
    Summary,
    alert_blocks,
    alert_text,
    finding_details,
    render_markdown,
    render_plain,
    short_node_names,
    summary_blocks,
    summary_text,
)
from clustermesh.notify.slack import Notifier, PostResult, SlackTarget, check_target, resolve_target
from tests.slack_server import SlackTestServer

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """slack-sdk ignores NO_PROXY: a proxy from the environment would swallow loopback calls."""
    for name in (*PROXY_VARS, "SLACK_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slack() -> Iterator[SlackTestServer]:
    with SlackTestServer() as server:
        yield server


def bot(slack: SlackTestServer, channel: str = "#mesh-alerts", **kwargs: Any) -> Notifier:
    target = resolve_target(slack.token, channel, None)
    assert target is not None
    return Notifier(target, base_url=slack.url, **kwargs)


def webhook(url: str) -> Notifier:
    target = resolve_target(None, None, url)
    assert target is not None
    return Notifier(target)


def summary(**changes: Any) -> Summary:
    values: dict[str, Any] = {
        "title": "Nightly mesh verification",
        "status": "FAIL",
        "mesh": "prod-mesh",
        "clusters": 3,
        "nodes_reachable": 11,
        "nodes_total": 12,
        "drill": "passed",
        "failover_seconds": 4.25,
        "cert_expiry_days": 12,
        "run_url": "https://prefect.example/runs/flow-run/1234",
        "findings": [
            Finding(level="ok", subject="cluster-a", reason="Cilium 1.16.4 ready"),
            Finding(
                level="failure",
                subject="cluster-b → cluster-c",
                reason="UDP 8472 blocked",
                fix="allow VXLAN between node subnets",
            ),
            Finding(level="warning", subject="cluster-c", reason="CA expires in 12 days", fix="rotate the CA"),
        ],
    }
    values.update(changes)
    return Summary(**values)


def many_findings(n: int) -> list[Finding]:
    return [
        Finding(
            level="failure" if i % 3 == 0 else "warning",
            subject=f"node-{i:04d}.cluster-{i % 7}",
            reason="health probe to remote node timed out after 5 s " + "x" * 40,
            fix="check the firewall for TCP 4240 between the node subnets",
        )
        for i in range(n)
    ]


def block_texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", [])]
    return texts


def sections(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]


def top_level(slack: SlackTestServer) -> list[dict[str, Any]]:
    return [m for m in slack.messages if m["thread_ts"] is None]


def posts(slack: SlackTestServer, method: str = "chat.postMessage") -> list[dict[str, Any]]:
    return [r for r in slack.requests if r["path"] == f"/api/{method}"]


# -- message building -----------------------------------------------------------------------------


def test_summary_blocks_show_status_figures_findings_and_run_link() -> None:
    blocks = summary_blocks(summary())
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": ":red_circle: FAILED: Nightly mesh verification", "emoji": True},
    }
    fields = " | ".join(f["text"] for f in blocks[1]["fields"])
    for expected in ("prod-mesh", "*Clusters*\n3", "11/12", "passed", "4.2 s", "in 12 days"):
        assert expected in fields
    listed = "\n".join(sections(blocks))
    # each problem: a mark, the subject in bold, the reason; its fix on a line of its own
    assert ":x: *cluster-b → cluster-c*: UDP 8472 blocked\n      ↳ *Fix:* allow VXLAN between node subnets" in listed
    assert ":warning: *cluster-c*: CA expires in 12 days\n      ↳ *Fix:* rotate the CA" in listed
    assert listed.index(":x:") < listed.index(":warning:"), "failures come first"
    assert "Cilium 1.16.4 ready" not in listed, "ok findings are counted, not listed"
    assert "1 failure, 1 warning, 1 ok" in listed
    assert blocks[-1]["type"] == "context"
    assert "<https://prefect.example/runs/flow-run/1234|" in blocks[-1]["elements"][0]["text"]


@pytest.mark.parametrize(
    ("status", "mark"),
    [("PASS", ":large_green_circle:"), ("WARN", ":large_yellow_circle:"), ("FAIL", ":red_circle:")],
)
def test_the_verdict_is_seen_at_a_glance_as_a_coloured_mark_in_header_and_notification(status: str, mark: str) -> None:
    blocks = summary_blocks(summary(status=status))
    assert blocks[0]["text"]["text"].startswith(f"{mark} ")
    assert summary_text(summary(status=status)).startswith(f"{mark} ")
    others = {":large_green_circle:", ":large_yellow_circle:", ":red_circle:"} - {mark}
    assert not any(o in blocks[0]["text"]["text"] for o in others)


def test_the_thread_lists_every_check_failures_first_ok_last_with_fixes_on_their_own_line() -> None:
    findings = [
        Finding(level="ok", subject="cluster-a", reason="Cilium ready"),
        Finding(level="warning", subject="cluster-c", reason="CA expires in 12 days", fix="rotate the CA"),
        Finding(level="ok", subject="mesh health", reason="all nodes reachable"),
        Finding(level="failure", subject="cluster-b → cluster-c", reason="UDP 8472 blocked", fix="open it"),
    ]
    [reply] = finding_details(summary(findings=findings))
    lines = reply.splitlines()
    assert lines == [
        ":x: *cluster-b → cluster-c*: UDP 8472 blocked",
        "      ↳ *Fix:* open it",
        ":warning: *cluster-c*: CA expires in 12 days",
        "      ↳ *Fix:* rotate the CA",
        ":white_check_mark: *cluster-a*: Cilium ready",
        ":white_check_mark: *mesh health*: all nodes reachable",
    ]


def test_step_7s_rules_are_linked_to_the_guide_in_slack_the_artifact_and_the_plain_text() -> None:
    blocked = Finding(
        level="failure",
        subject="cluster-1 → cluster-2",
        reason="UDP 8472 (VXLAN) blocked or broken",
        fix="open UDP 8472 (VXLAN) from the nodes of cluster-1 to cluster-2 (step 7's rules)",
    )
    s = summary(findings=[blocked])
    assert f"(<{GUIDE_URL}|step 7's rules>)" in "\n".join(sections(summary_blocks(s)))
    assert f"([step 7's rules]({GUIDE_URL}))" in render_markdown(s)
    assert f"step 7's rules: {GUIDE_URL}" in render_plain(s)


def test_slack_shows_generated_node_names_short_and_leaves_other_names_whole() -> None:
    text = (
        "cluster-1 agent on mn8h16khqy-worker-qvm9kk-f8b546b32b-nljcd → "
        "cluster-2/4waiymyq99-worker-p6bbhf-988b880340-mz8sk: endpoint ICMP: Connection timed out"
    )
    assert short_node_names(text) == "cluster-1 agent on …nljcd → cluster-2/…mz8sk: endpoint ICMP: Connection timed out"
    for whole in (
        "cluster-1 clustermesh-apiserver-remote-cert",  # no hash-like parts
        "ip-10-0-1-23.eu-central-1.compute.internal",  # digits only
        "run 22dff588-9eb3-44d9-aca4-2864dae476ac",  # a UUID
        "clustermesh-drill-backend-7d9f8c6b5-abcde",  # one hash-like part
    ):
        assert short_node_names(whole) == whole
    s = summary(findings=[Finding(level="failure", subject="cluster-1 → cluster-2", reason=text, fix="x")])
    assert "…nljcd" in "\n".join(sections(summary_blocks(s))) and "…nljcd" in summary_text(s)
    assert "mn8h16khqy-worker-qvm9kk-f8b546b32b-nljcd" in render_markdown(s), "the artifact keeps the whole name"


def test_the_artifact_is_markdown_with_a_figures_table_a_run_link_and_every_check() -> None:
    findings = [
        Finding(level="ok", subject="cluster-a", reason="fine"),
        Finding(level="failure", subject="a|b", reason="line one\nline two <x>", fix="do it"),
    ]
    markdown = render_markdown(summary(findings=findings))
    lines = markdown.splitlines()
    assert lines[0] == "# 🔴 FAILED: Nightly mesh verification"
    assert "| Figure | Value |" in lines and "| Nodes reachable | 11/12 |" in lines
    assert "| Flow run | [open the flow run](https://prefect.example/runs/flow-run/1234) |" in lines
    assert "```" not in markdown, "a table, not a code block"
    rows = [line for line in lines if line.startswith("| ❌") or line.startswith("| ✅")]
    assert rows == [
        "| ❌ failure | a\\|b | line one line two &lt;x&gt; | do it |",
        "| ✅ ok | cluster-a | fine |  |",
    ], "failures first; a pipe, a newline or HTML cannot break the table"


def test_summary_without_run_url_has_no_link_and_unmeasured_figures_say_so() -> None:
    blocks = summary_blocks(
        summary(run_url=None, drill=None, failover_seconds=None, nodes_total=None, cert_expiry_days=-3)
    )
    assert all(b["type"] != "context" for b in blocks)
    fields = " | ".join(f["text"] for f in blocks[1]["fields"])
    assert fields.count("not measured") == 3
    assert "expired 3 days ago" in fields


def test_all_passing_summary_says_so_instead_of_listing() -> None:
    blocks = summary_blocks(summary(status="PASS", findings=[Finding(level="ok", subject="a", reason="fine")]))
    assert blocks[0]["text"]["text"].startswith(":large_green_circle: PASSED:")
    assert ":white_check_mark: All checks passed (0 failures, 0 warnings, 1 ok)." in sections(blocks)


def test_mrkdwn_control_characters_are_escaped_so_text_cannot_become_links_or_mentions() -> None:
    finding = Finding(level="failure", subject="<!channel>", reason="a & b", fix="use <x>")
    blocks = summary_blocks(summary(findings=[finding]))
    listed = "\n".join(sections(blocks))
    assert "&lt;!channel&gt;" in listed and "a &amp; b" in listed
    assert "<!channel>" not in listed


def test_six_hundred_findings_stay_inside_slack_limits_and_say_how_many_were_left_out() -> None:
    big = summary(findings=many_findings(600), title="T" * 400, mesh="m" * 5000)
    blocks = summary_blocks(big)
    assert len(blocks) <= 50
    assert len(blocks[0]["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for f in blocks[1]["fields"]) and len(blocks[1]["fields"]) <= 10
    texts = sections(blocks)
    assert all(len(t) <= 3000 for t in texts)
    assert sum(len(t) for t in block_texts(blocks)) <= 12_000
    shown = sum(t.count(":x: ") + t.count(":warning: ") for t in texts)
    assert 0 < shown < 600
    assert texts[-1].endswith(f"… and {600 - shown} more findings")


def test_six_hundred_findings_are_accepted_by_a_server_that_enforces_slack_limits(
    slack: SlackTestServer,
) -> None:
    result = bot(slack).post_summary(summary(findings=many_findings(600)))
    assert result.ok, result
    assert result.detail is None, "the blocks themselves were accepted, no plain-text fallback"
    assert top_level(slack)[0]["blocks"] == summary_blocks(summary(findings=many_findings(600)))


def test_summary_text_leads_with_verdict_and_counts() -> None:
    text = summary_text(summary())
    assert text.startswith(
        ":red_circle: FAILED: Nightly mesh verification (mesh prod-mesh) — 1 failure, 1 warning, 1 ok"
    )
    assert "cluster-b → cluster-c: UDP 8472 blocked" in text
    assert len(summary_text(summary(findings=many_findings(600)))) <= 3000


def test_render_plain_keeps_every_finding_and_figure() -> None:
    text = render_plain(summary(findings=many_findings(600)))
    assert text.count("FAILURE ") + text.count("WARNING ") == 600
    assert "Nodes reachable:" in text and "11/12" in text
    assert "Run: https://prefect.example/runs/flow-run/1234" in text
    assert "… and" not in text


def test_alert_names_flow_run_state_cluster_and_only_the_first_error_line() -> None:
    alert = Alert(
        flow="nightly-mesh-verification",
        run="gentle-fox",
        state="Crashed",
        cluster="cluster-b",
        error="\nTimeout waiting for clustermesh-apiserver\nTraceback (most recent call last): ...",
        run_url="https://prefect.example/runs/flow-run/99",
    )
    text = alert_text(alert)
    assert text == (
        "CRASHED: flow nightly-mesh-verification, run gentle-fox on cluster cluster-b"
        " — Timeout waiting for clustermesh-apiserver"
    )
    blocks = alert_blocks(alert)
    joined = "\n".join(block_texts(blocks))
    assert "*Cluster*\ncluster-b" in joined and "*State*\nCrashed" in joined
    assert "Traceback" not in joined
    assert blocks[-1]["type"] == "context"


# -- resolving the target ---------------------------------------------------------------------------


def test_nothing_configured_means_print_instead() -> None:
    assert resolve_target(None, None, None) is None
    assert resolve_target("", " ", "") is None


def test_a_half_filled_target_is_refused_before_any_post() -> None:
    with pytest.raises(ValueError, match="needs a token and a channel"):
        SlackTarget(kind="bot", token=SecretStr("xoxb-secret"))
    with pytest.raises(ValueError, match="needs a webhook URL"):
        SlackTarget(kind="webhook")


def test_bot_token_wins_over_webhook_because_only_it_can_thread() -> None:
    target = resolve_target("xoxb-1-2-secret", "#mesh-alerts", "https://hooks.slack.com/services/T/B/secret")
    assert target is not None and target.kind == "bot" and target.channel == "#mesh-alerts"
    assert "secret" not in repr(target) and "secret" not in str(target)


@pytest.mark.parametrize(
    ("token", "channel", "hook", "setting"),
    [
        ("xoxb-secret-value", None, None, "slack channel"),
        ("xoxb-secret value", "#mesh-alerts", None, "slack token"),
        (None, "#mesh-alerts", None, "slack channel"),
        (None, None, "hooks.slack.com/services/secret-value", "slack webhook URL"),
    ],
)
def test_unusable_settings_name_the_setting_but_not_the_secret(
    token: str | None, channel: str | None, hook: str | None, setting: str
) -> None:
    with pytest.raises(SlackConfigError) as info:
        resolve_target(token, channel, hook)
    assert info.value.setting == setting
    assert "secret" not in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


# -- bot token: parent, update in place, thread ------------------------------------------------------


def test_summary_is_posted_once_and_returns_ts_and_channel_id_even_when_posted_by_name(
    slack: SlackTestServer,
) -> None:
    result = bot(slack, "#mesh-alerts").post_summary(summary(status="RUNNING"))
    assert result.ok and result.posted == 1
    assert result.channel == "C0123456789"
    [message] = slack.messages
    assert message["ts"] == result.ts
    assert message["blocks"][0]["text"]["text"] == ":hourglass_flowing_sand: RUNNING: Nightly mesh verification"
    assert message["text"] == summary_text(summary(status="RUNNING"))
    assert posts(slack)[0]["headers"]["authorization"] == f"Bearer {slack.token}"


def test_parent_is_updated_in_place_with_the_new_status(slack: SlackTestServer) -> None:
    notifier = bot(slack)
    parent = notifier.post_summary(summary(status="RUNNING"))
    assert parent.ts is not None
    updated = notifier.update_summary(parent.ts, summary(status="PASS", findings=[]))
    assert updated.ok and updated.ts == parent.ts
    [message] = slack.messages
    assert message["ts"] == parent.ts and message["edits"] == 1
    assert message["blocks"][0]["text"]["text"] == ":large_green_circle: PASSED: Nightly mesh verification"
    assert message["text"].startswith(":large_green_circle: PASSED:")


def test_update_from_another_process_needs_the_channel_id_when_configured_by_name(
    slack: SlackTestServer,
) -> None:
    parent = bot(slack).post_summary(summary(status="RUNNING"))
    assert parent.ts is not None
    later = bot(slack)
    refused = later.update_summary(parent.ts, summary())
    assert not refused.ok and refused.error == "channel_id_unknown"
    assert later.update_summary(parent.ts, summary(), channel=parent.channel).ok
    assert bot(slack, "C0123456789").update_summary(parent.ts, summary()).ok
    assert slack.message(parent.ts)["edits"] == 2


def test_updating_a_message_that_does_not_exist_is_reported(slack: SlackTestServer) -> None:
    result = bot(slack, "C0123456789").update_summary("1600000000.000001", summary())
    assert not result.ok and result.error == "message_not_found"


def test_details_are_thread_replies_batched_into_few_messages(slack: SlackTestServer) -> None:
    notifier = bot(slack)
    parent = notifier.post_summary(summary())
    assert parent.ts is not None
    lines = [f"cluster-{i % 3} node-{i:03d} → remote: reachable (ICMP, TCP 4240)" for i in range(120)]
    result = notifier.post_details(parent.ts, lines)
    assert result.ok
    replies = slack.replies(parent.ts)
    assert 1 < len(replies) == result.posted <= 5
    assert all(r["thread_ts"] == parent.ts for r in replies)
    assert "\n".join(r["text"] for r in replies).splitlines() == lines
    assert len(top_level(slack)) == 1


def test_too_many_detail_lines_end_with_how_many_were_left_out(slack: SlackTestServer) -> None:
    notifier = bot(slack)
    parent = notifier.post_summary(summary())
    assert parent.ts is not None
    lines = [f"line {i:05d} " + "y" * 90 for i in range(2000)]
    result = notifier.post_details(parent.ts, lines)
    assert result.ok and result.posted == 5
    replies = slack.replies(parent.ts)
    shown = sum(r["text"].count("line ") for r in replies)
    assert replies[-1]["text"].endswith(f"… and {2000 - shown} more lines")
    assert all(len(r["text"]) <= 4000 for r in replies)


def test_alert_is_its_own_top_level_message(slack: SlackTestServer) -> None:
    alert = Alert(flow="failover-drill", run="brave-owl", state="Failed", error="scale-down did not converge")
    result = bot(slack).post_alert(alert)
    assert result.ok
    [message] = slack.messages
    assert message["thread_ts"] is None and message["text"] == alert_text(alert)


def test_slack_api_url_environment_variable_sets_the_base_url(
    slack: SlackTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    target = resolve_target(slack.token, "#mesh-alerts", None)
    assert target is not None
    assert Notifier(target).post_summary(summary()).ok
    assert len(slack.messages) == 1


# -- failures never raise -------------------------------------------------------------------------


def test_rate_limited_once_is_retried_and_posted_once(slack: SlackTestServer) -> None:
    slack.fail_next(429, 1, retry_after=0)
    result = bot(slack).post_summary(summary())
    assert result.ok
    assert [r["status"] for r in posts(slack)] == [429, 200]
    assert len(slack.messages) == 1


def test_server_error_once_is_retried_and_posted_once(slack: SlackTestServer) -> None:
    slack.fail_next(500, 1)
    result = bot(slack).post_summary(summary())
    assert result.ok
    assert [r["status"] for r in posts(slack)] == [500, 200]
    assert len(slack.messages) == 1


def test_rate_limited_beyond_the_retries_reports_ratelimited(slack: SlackTestServer) -> None:
    slack.fail_next(429, 4, retry_after=0)
    result = bot(slack).post_summary(summary())
    assert not result.ok and result.error == "ratelimited"
    assert len(posts(slack)) == 4, "one try and three retries"
    assert slack.messages == []


def test_slack_down_returns_a_failed_result_instead_of_raising(slack: SlackTestServer) -> None:
    slack.down = True
    result = bot(slack).post_summary(summary())
    assert not result.ok and result.error == "connection_error"
    assert len(posts(slack)) == 3, "one try and two connection retries"


def test_connection_refused_returns_a_failed_result(slack: SlackTestServer) -> None:
    notifier = bot(slack)
    slack.stop()
    assert notifier.post_summary(summary()).error == "connection_error"
    assert notifier.update_summary("1700000001.000001", summary(), channel="C0123456789").error == ("connection_error")
    assert notifier.post_details("1700000001.000001", ["a"]).error == "connection_error"


def test_read_timeout_is_not_retried_because_the_post_may_have_landed(slack: SlackTestServer) -> None:
    slack.fail_next("hang", 1, delay=3)
    result = bot(slack, timeout=1).post_summary(summary())
    assert not result.ok and result.error == "timeout"
    assert len(posts(slack)) == 1


@pytest.mark.parametrize(
    ("channel", "token", "error"),
    [("#no-such-channel", None, "channel_not_found"), ("#mesh-alerts", "xoxb-wrong", "invalid_auth")],
)
def test_slack_refusals_are_reported_with_their_code(
    slack: SlackTestServer, channel: str, token: str | None, error: str
) -> None:
    target = resolve_target(token or slack.token, channel, None)
    assert target is not None
    result = Notifier(target, base_url=slack.url).post_summary(summary())
    assert result == PostResult(ok=False, error=error, detail="Slack answered HTTP 200")
    assert slack.messages == []


def test_refused_blocks_fall_back_to_plain_text(slack: SlackTestServer) -> None:
    slack.fail_next(200, 1, error="invalid_blocks")
    result = bot(slack).post_summary(summary())
    assert result.ok and result.detail == "plain text only"
    [message] = slack.messages
    assert message["blocks"] == [] and message["text"] == summary_text(summary())


def test_refused_blocks_on_update_clear_the_stale_blocks(slack: SlackTestServer) -> None:
    notifier = bot(slack)
    parent = notifier.post_summary(summary(status="RUNNING"))
    assert parent.ts is not None
    slack.fail_next(200, 1, error="msg_blocks_too_long")
    assert notifier.update_summary(parent.ts, summary(status="FAIL")).ok
    message = slack.message(parent.ts)
    assert message["blocks"] == [], "the RUNNING header must not survive"
    assert message["text"].startswith(":red_circle: FAILED:")


# -- webhook ------------------------------------------------------------------------------------


def test_webhook_posts_once_and_cannot_update_or_thread(slack: SlackTestServer) -> None:
    notifier = webhook(slack.webhook_url)
    assert not notifier.supports_threads
    result = notifier.post_summary(summary())
    assert result.ok and result.ts is None and result.posted == 1
    [message] = slack.messages
    assert message["via"] == "webhook" and message["blocks"] == summary_blocks(summary())
    assert "authorization" not in slack.requests[0]["headers"]
    update = notifier.update_summary("1700000001.000001", summary())
    assert not update.ok and update.error == "not_supported_by_webhook"
    assert update.detail == "an incoming webhook cannot edit messages"
    assert notifier.post_details("1700000001.000001", ["x"]).error == "not_supported_by_webhook"
    assert len(slack.requests) == 1, "nothing is sent for what a webhook cannot do"


def test_webhook_rate_limit_is_retried_and_revoked_webhook_is_reported(slack: SlackTestServer) -> None:
    slack.fail_next(429, 1, retry_after=0)
    assert webhook(slack.webhook_url).post_alert(Alert(flow="f", run="r", state="Failed", error="e")).ok
    assert len(slack.messages) == 1 and len(slack.requests) == 2
    revoked = webhook(slack.webhook_url.replace("XXXX", "REVOKED")).post_summary(summary())
    assert not revoked.ok and revoked.error == "no_service"


def test_webhook_refused_blocks_fall_back_to_plain_text(slack: SlackTestServer) -> None:
    slack.fail_next(400, 1, error="invalid_blocks")
    result = webhook(slack.webhook_url).post_summary(summary())
    assert result.ok and result.detail == "plain text only"
    [message] = slack.messages
    assert message["blocks"] == [] and message["text"] == summary_text(summary())


def test_webhook_down_returns_a_failed_result(slack: SlackTestServer) -> None:
    slack.down = True
    result = webhook(slack.webhook_url).post_summary(summary())
    assert not result.ok and result.error == "connection_error"


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_never_reach_results_exceptions_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cr3t-bot-credential-0042"  # not xoxb-shaped: redaction must not rely on the shape
    caplog.set_level(logging.DEBUG)
    results: list[PostResult] = []
    with SlackTestServer(token=token) as slack:
        notifier = bot(slack)
        hook = webhook(slack.webhook_url)
        results.append(notifier.post_summary(summary()))
        slack.fail_next(429, 4, retry_after=0)
        results.append(notifier.post_summary(summary()))
        slack.fail_next(500, 3)
        results.append(hook.post_summary(summary()))
        slack.fail_next(400, 1, error="invalid_blocks")
        results.append(hook.post_summary(summary()))
        results.append(hook.update_summary("1", summary()))
        results.append(bot(slack, "#nope").post_summary(summary()))
        slack.down = True
        results.append(notifier.post_summary(summary()))
        results.append(hook.post_summary(summary()))
        secrets = (token, slack.webhook_url, slack.webhook_url.split("/services/")[1])
        targets: list[SlackTarget] = [t for t in (resolve_target(token, "#x", slack.webhook_url),) if t]
    assert [r.ok for r in results] == [True, False, False, True, False, False, False, False]
    assert any(r.name == "clustermesh.notify.slack.sdk" for r in caplog.records), "slack-sdk logging was captured"
    haystacks = [r.getMessage() for r in caplog.records] + [caplog.text]
    haystacks += [repr(r) + r.model_dump_json() for r in results]
    haystacks += [repr(notifier), repr(hook), repr(targets), str(targets)]
    for secret in secrets:
        for haystack in haystacks:
            assert secret not in haystack


def test_a_sub_second_failover_time_shows_hundredths_not_zero() -> None:
    from clustermesh.notify.messages import seconds

    assert seconds(0.04) == "0.04 s"
    assert seconds(0.999) == "1.00 s"
    assert seconds(4.25) == "4.2 s"
    assert seconds(12.0) == "12.0 s"


# -- checking a target before the first night (clustermesh blocks register) -------------------------


def test_a_good_token_and_channel_pass_the_check_without_posting(slack: SlackTestServer) -> None:
    for channel in ("#mesh-alerts", "mesh-alerts", "C0123456789"):
        target = resolve_target(slack.token, channel, None)
        assert target is not None
        check = check_target(target, base_url=slack.url)
        assert check.ok and check.channel_id == "C0123456789", (channel, check)
        assert check.team == "clustermesh-test" and check.bot == "mesh-bot"
    assert slack.messages == []
    paths = {r["path"] for r in slack.requests}
    assert paths == {"/api/auth.test", "/api/conversations.list", "/api/conversations.info"}


def test_a_channel_name_is_found_across_pages_of_conversations_list(slack: SlackTestServer) -> None:
    slack.channels = {f"other-{i:03d}": f"C{i:09d}" for i in range(250)} | {"mesh-alerts": "C0123456789"}
    slack.list_page_size = 100
    target = resolve_target(slack.token, "#mesh-alerts", None)
    assert target is not None
    check = check_target(target, base_url=slack.url)
    assert check.ok and check.channel_id == "C0123456789"
    assert len([r for r in slack.requests if r["path"] == "/api/conversations.list"]) == 3


@pytest.mark.parametrize(
    ("token", "channel", "token_error", "channel_error"),
    [
        ("xoxb-wrong", "#mesh-alerts", "invalid_auth", None),
        (None, "#no-such-channel", None, "channel_not_found"),
        (None, "C0NOSUCH00", None, "channel_not_found"),
        (None, "#archived", None, "is_archived"),
    ],
)
def test_a_refused_token_or_an_unknown_or_archived_channel_is_named_by_the_check(
    slack: SlackTestServer, token: str | None, channel: str, token_error: str | None, channel_error: str | None
) -> None:
    slack.channels["archived"] = "C0ARCHIVED0"
    slack.archived.add("archived")
    target = resolve_target(token or slack.token, channel, None)
    assert target is not None
    check = check_target(target, base_url=slack.url)
    assert not check.ok
    assert (check.token_error, check.channel_error) == (token_error, channel_error)
    assert slack.messages == []


def test_a_bot_outside_the_channel_and_an_unreachable_slack_are_notes_not_errors(slack: SlackTestServer) -> None:
    slack.not_member.add("mesh-alerts")
    target = resolve_target(slack.token, "#mesh-alerts", None)
    assert target is not None
    check = check_target(target, base_url=slack.url)
    assert check.ok and any("/invite @mesh-bot" in n for n in check.notes), check.notes
    slack.stop()
    unreachable = check_target(target, base_url=slack.url)
    assert unreachable.ok and unreachable.team is None
    assert unreachable.notes and "could not reach Slack" in unreachable.notes[0]
    assert slack.token not in repr(unreachable)
