"""Slack from the flows: resolve the target from references, post summaries, alert from hooks.

Where Slack settings come from: the spec's ``notify.slack`` section (channel, a Prefect Secret block
or an env var holding the bot token, an env var holding a webhook URL); when the spec has none, the
environment (``SLACK_BOT_TOKEN`` + ``SLACK_CHANNEL``, or ``SLACK_WEBHOOK_URL``). ``SLACK_API_URL``
points the client at a Slack-compatible server. No Slack at all: messages are logged and saved as
artifacts instead. A Slack outage never fails a flow (the Notifier returns errors, never raises).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import Flow, get_run_logger
from prefect.blocks.system import Secret
from prefect.client.schemas.objects import FlowRun, State

from clustermesh.errors import ReportedFailure
from clustermesh.notify import Alert, Notifier, PostResult, SlackTarget, alert_text, resolve_target
from clustermesh.spec import MeshSpec


def slack_target(spec: MeshSpec) -> SlackTarget | None:
    """The configured Slack target, or None when nothing is configured (see the module docstring)."""
    settings = spec.notify.slack
    if settings is not None:
        token: str | None = None
        if settings.token_block:
            block: Any = Secret.load(settings.token_block)
            token = str(block.get())
        elif settings.token_env:
            token = os.environ.get(settings.token_env) or None
        webhook = os.environ.get(settings.webhook_env) or None if settings.webhook_env else None
        return resolve_target(token, settings.channel, webhook)
    return slack_target_from_env()


def notifier(spec: MeshSpec) -> Notifier | None:
    target = slack_target(spec)
    return Notifier(target) if target is not None else None


def ui_url(spec: MeshSpec | None) -> str | None:
    base = (spec.notify.prefect_ui_url if spec else None) or os.environ.get("PREFECT_UI_URL")
    return base.rstrip("/") if base else None


def run_url(spec: MeshSpec | None, flow_run_id: object) -> str | None:
    base = ui_url(spec)
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def _spec_from(flow_run: FlowRun) -> MeshSpec | None:
    raw = (flow_run.parameters or {}).get("spec")
    try:
        return MeshSpec.model_validate(raw) if raw is not None else None
    except Exception:  # noqa: BLE001 - a hook must alert even when the parameters were the problem
        return None


def alert_on_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_failure`` / ``on_crashed`` hook: what failed, which cluster, the error's first line, the link."""
    error: BaseException | None = None
    try:
        data = state.result(raise_on_failure=False)
    except BaseException as exc:  # noqa: BLE001 - a result that cannot be read is reported as the error
        data = exc
    if isinstance(data, BaseException):
        error = data
    if isinstance(error, ReportedFailure) or getattr(data, "reported", False):
        return  # the flow's own summary already told Slack why
    spec = _spec_from(flow_run)
    message = str(error or state.message or state.name).strip().splitlines()
    alert = Alert(
        flow=flow.name,
        run=flow_run.name,
        state="Crashed" if state.is_crashed() else "Failed",
        error=(message[0] if message else str(state.name))[:500],
        cluster=getattr(error, "cluster", None),
        run_url=run_url(spec, flow_run.id),
    )
    target = slack_target(spec) if spec is not None else slack_target_from_env()
    if target is None:
        print(alert_text(alert), flush=True)  # no Slack configured: at least the process output says it
        return
    result: PostResult = Notifier(target).post_alert(alert)
    if not result.ok:
        print(f"Slack alert not delivered: {result.error}", flush=True)


def slack_target_from_env() -> SlackTarget | None:
    return resolve_target(
        os.environ.get("SLACK_BOT_TOKEN") or None,
        os.environ.get("SLACK_CHANNEL") or None,
        os.environ.get("SLACK_WEBHOOK_URL") or None,
    )


def log_post(result: PostResult, what: str) -> None:
    logger = get_run_logger()
    if result.ok:
        logger.info("Slack: %s posted (ts %s)", what, result.ts)
    else:
        logger.warning("Slack: %s not delivered (%s); the run goes on", what, result.error)
