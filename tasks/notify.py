"""Slack from the flows: resolve the target from references, post summaries, alert from hooks.

Where Slack settings come from, first match wins:

- the spec's ``notify.slack`` section: ``channel`` (name or ID), the bot token from the Prefect Secret
  block ``token_block`` or else the worker's env var ``token_env`` (default ``SLACK_BOT_TOKEN``), an
  incoming-webhook URL from the env var ``webhook_env``;
- without that section, the worker's environment: ``SLACK_BOT_TOKEN`` + ``SLACK_CHANNEL``, or
  ``SLACK_WEBHOOK_URL``.

``SLACK_API_URL`` points the client at a Slack-compatible server; the links in messages use the spec's
``notify.prefect_ui_url`` or else ``PREFECT_UI_URL``. No Slack at all: the summary is printed and saved
as an artifact.

A Slack problem never fails a flow nor changes a verdict (the module's promise): settings that cannot
work, a refused token, an unknown channel or an unreachable Slack become **one** WARNING in the run's
logs that says what is wrong and exactly where to set what (:class:`RunSlack`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prefect import Flow, get_run_logger
from prefect.blocks.system import Secret
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import CancelledRun

from clustermesh.errors import ReportedFailure, SlackConfigError
from clustermesh.notify import Alert, Notifier, PostResult, SlackTarget, Summary, alert_text, resolve_target
from clustermesh.notify.slack import CHANNEL_ERRORS, SCOPE_ERRORS, TOKEN_ERRORS, api_url
from clustermesh.spec import MeshSpec

REGISTER = "`clustermesh blocks register --config mesh.yaml`"

# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SlackSetup:
    """The Slack target of a run and where each of its settings came from (for fixes, never values).

    ``problem`` is set when settings exist but cannot work: Slack is then off for the run and the
    problem, with its fix, is the run's one Slack warning.
    """

    target: SlackTarget | None = None
    token_from: str | None = None  # "Secret block clustermesh-slack-bot-token", "env var SLACK_BOT_TOKEN on the worker"
    token_fix: str | None = None
    channel_from: str | None = None  # "notify.slack.channel of the spec", "env var SLACK_CHANNEL on the worker"
    webhook_from: str | None = None
    problem: str | None = None

    @property
    def configured(self) -> bool:
        return self.target is not None or self.problem is not None


def _token_fix_for_block(block: str) -> str:
    return f"export SLACK_BOT_TOKEN=<the bot token, xoxb-…> and run {REGISTER}: it (re)writes the Secret block {block}"


def _token_fix_for_env(env: str) -> str:
    return f"set {env} to the bot token (xoxb-…) in the worker's environment and restart the worker"


def _channel_fix(channel_from: str | None) -> str:
    if channel_from and channel_from.startswith("notify.slack"):
        return (
            "put an existing channel (#name or its ID) in mesh.yaml's notify.slack.channel and run "
            f"{REGISTER} (the next run reads the spec it registers)"
        )
    return "set SLACK_CHANNEL (#name or its ID) in the worker's environment and restart the worker"


def slack_setup(spec: MeshSpec | None) -> SlackSetup:
    """The run's Slack target from the spec or the environment; never raises (see the module docstring)."""
    settings = spec.notify.slack if spec is not None else None
    if settings is None:
        return _setup_from_env()
    token: str | None = None
    token_from = token_fix = None
    if settings.token_block:
        token_from = f"Secret block {settings.token_block} (notify.slack.token_block)"
        token_fix = _token_fix_for_block(settings.token_block)
        try:
            block: Any = Secret.load(settings.token_block)
            token = str(block.get())
        except Exception:  # noqa: BLE001 - a missing or unreadable block turns Slack off, never the run
            return SlackSetup(
                problem=f"Slack is off for this run: the Secret block {settings.token_block} named in "
                f"notify.slack.token_block cannot be loaded. Fix: {token_fix}"
            )
    elif settings.token_env:
        token_from = f"env var {settings.token_env} on the worker (notify.slack.token_env)"
        token_fix = _token_fix_for_env(settings.token_env)
        token = os.environ.get(settings.token_env) or None
    channel_from = "notify.slack.channel of the spec"
    webhook_from = f"env var {settings.webhook_env} on the worker" if settings.webhook_env else None
    webhook = (os.environ.get(settings.webhook_env) or None) if settings.webhook_env else None
    if not (token or "").strip() and not (webhook or "").strip():
        where = token_from or "notify.slack.token_block / token_env"
        return SlackSetup(
            problem=f"Slack is off for this run: notify.slack.channel is {settings.channel} but there is no bot "
            f"token: {where} is empty or unset. Fix: "
            + (token_fix or f"set notify.slack.token_block (a Secret block written by {REGISTER})")
        )
    return _resolved(token, settings.channel, webhook, token_from, token_fix, channel_from, webhook_from)


def _setup_from_env() -> SlackSetup:
    token = os.environ.get("SLACK_BOT_TOKEN") or None
    channel = os.environ.get("SLACK_CHANNEL") or None
    webhook = os.environ.get("SLACK_WEBHOOK_URL") or None
    token_from = "env var SLACK_BOT_TOKEN on the worker"
    if token and token.strip() and not (channel or "").strip():
        return SlackSetup(
            problem="Slack is off for this run: SLACK_BOT_TOKEN is set on the worker but no channel is set "
            "anywhere. Fix: add `notify: {slack: {channel: '#your-channel', token_env: SLACK_BOT_TOKEN}}` to "
            f"mesh.yaml and run {REGISTER}; or set SLACK_CHANNEL=#your-channel in the worker's "
            "environment"
        )
    return _resolved(
        token,
        channel,
        webhook,
        token_from,
        _token_fix_for_env("SLACK_BOT_TOKEN"),
        "env var SLACK_CHANNEL on the worker",
        "env var SLACK_WEBHOOK_URL on the worker",
    )


def _resolved(
    token: str | None,
    channel: str | None,
    webhook: str | None,
    token_from: str | None,
    token_fix: str | None,
    channel_from: str | None,
    webhook_from: str | None,
) -> SlackSetup:
    try:
        target = resolve_target(token, channel, webhook)
    except SlackConfigError as exc:
        source = {"slack token": token_from, "slack channel": channel_from, "slack webhook URL": webhook_from}
        where = source.get(exc.setting) or exc.setting
        return SlackSetup(
            problem=f"Slack is off for this run: {exc.setting} from {where} {exc.problem}. Fix: {exc.fix}"
        )
    if target is None:
        return SlackSetup()
    return SlackSetup(
        target=target,
        token_from=token_from if target.kind == "bot" else None,
        token_fix=token_fix if target.kind == "bot" else None,
        channel_from=channel_from if target.kind == "bot" else None,
        webhook_from=webhook_from if target.kind == "webhook" else None,
    )


def slack_target(spec: MeshSpec | None) -> SlackTarget | None:
    """The configured Slack target, or None when nothing (usable) is configured."""
    return slack_setup(spec).target


def notifier(spec: MeshSpec) -> Notifier | None:
    target = slack_target(spec)
    return Notifier(target) if target is not None else None


def ui_url(spec: MeshSpec | None) -> str | None:
    base = (spec.notify.prefect_ui_url if spec else None) or os.environ.get("PREFECT_UI_URL")
    return base.rstrip("/") if base else None


def run_url(spec: MeshSpec | None, flow_run_id: object) -> str | None:
    base = ui_url(spec)
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


# --------------------------------------------------------------------------- one run's Slack


def failure_fix(setup: SlackSetup, result: PostResult, scope: str = "chat:write") -> str:
    """What a failed post means and where to fix it, from Slack's code and where the settings came from."""
    code = result.error or "unknown"
    target = setup.target
    if target is not None and target.kind == "webhook":
        if code in TOKEN_ERRORS or code in CHANNEL_ERRORS:
            return (
                f"Slack refused the incoming webhook from {setup.webhook_from} ({code}). Fix: create a new "
                "incoming webhook in the Slack app and put its URL there"
            )
    elif code in TOKEN_ERRORS:
        return f"Slack refused the bot token from {setup.token_from} ({code}). Fix: {setup.token_fix}"
    elif code in CHANNEL_ERRORS and target is not None:
        return (
            f"Slack cannot post to channel {target.channel} from {setup.channel_from} ({code}). Fix: "
            f"{_channel_fix(setup.channel_from)}; invite the bot to it (/invite @your-bot)"
        )
    if code in SCOPE_ERRORS:
        return (
            f"the Slack app may not post ({code}{': ' + result.detail if result.detail else ''}). Fix: add the "
            f"{scope} scope under OAuth & Permissions in the Slack app and reinstall it"
        )
    host = urlsplit(api_url()).hostname if target is not None and target.kind == "bot" else "hooks.slack.com"
    return (
        f"Slack did not take the message ({code}: {result.detail or 'no detail'}). Fix: check that the worker "
        f"reaches {host} (network, proxy); SLACK_API_URL on the worker sets another API address"
    )


def is_permanent(code: str | None) -> bool:
    """A refusal no retry changes: the run stops calling Slack after it."""
    return code in TOKEN_ERRORS or code in CHANNEL_ERRORS or code in SCOPE_ERRORS


class RunSlack:
    """One flow run's Slack: posts through a :class:`Notifier`, logs each success at INFO and says **once**
    (WARNING) what went wrong and where to fix it; after a refusal no retry changes (token, channel,
    scope) it stops calling Slack for the rest of the run.
    """

    def __init__(self, setup: SlackSetup, logger: Any) -> None:
        self.setup = setup
        self._logger = logger
        self._notifier = Notifier(setup.target) if setup.target is not None else None
        self._warned = False
        self._stopped: PostResult | None = None
        self.problem: str | None = setup.problem
        if setup.problem:
            self._warn(setup.problem)

    @classmethod
    def for_run(cls, spec: MeshSpec) -> RunSlack:
        return cls(slack_setup(spec), get_run_logger())

    @property
    def configured(self) -> bool:
        """Someone meant Slack to be used (even when it cannot work)."""
        return self.setup.configured

    @property
    def supports_threads(self) -> bool:
        return self._notifier is not None and self._notifier.supports_threads

    def post_summary(self, summary: Summary, what: str = "summary") -> PostResult:
        return self._call(what, lambda n: n.post_summary(summary))

    def update_summary(self, parent: PostResult, summary: Summary) -> PostResult:
        assert parent.ts is not None
        ts = parent.ts
        return self._call("summary update", lambda n: n.update_summary(ts, summary, channel=parent.channel))

    def post_findings(self, parent: PostResult, summary: Summary) -> PostResult:
        assert parent.ts is not None
        ts = parent.ts
        return self._call("details", lambda n: n.post_findings(ts, summary, channel=parent.channel))

    def post_lines(self, parent: PostResult, lines: list[str], what: str = "details") -> PostResult:
        """Plain lines (escaped) as replies in the parent's thread."""
        assert parent.ts is not None
        ts = parent.ts
        return self._call(what, lambda n: n.post_details(ts, lines, channel=parent.channel))

    def upload_picture(self, parent: PostResult, png: bytes, *, filename: str, title: str, alt_text: str) -> PostResult:
        """The picture into the parent's thread; a refusal says which scope uploads need (``files:write``)."""
        assert parent.ts is not None
        ts = parent.ts
        return self._call(
            "picture",
            lambda n: n.upload_file(ts, png, filename=filename, title=title, alt_text=alt_text, channel=parent.channel),
            scope="files:write",
        )

    def status(self, delivered: PostResult | None) -> str:
        """For ``VerificationResult.slack`` and the CLI: delivered, or why not and the fix."""
        if delivered is not None and delivered.ok:
            return "delivered"
        if not self.configured:
            return "not configured: printed and saved as an artifact"
        return f"not delivered: {self.problem or 'unknown'}"

    def _call(self, what: str, post: Any, scope: str = "chat:write") -> PostResult:
        if self._notifier is None:
            return PostResult(ok=False, error="not_configured", detail=self.problem or "Slack is not configured")
        if self._stopped is not None:
            return self._stopped
        result: PostResult = post(self._notifier)
        if result.ok:
            self._logger.info("Slack: %s posted (ts %s)", what, result.ts)
            return result
        fix = failure_fix(self.setup, result, scope)
        if is_permanent(result.error):
            self._stopped = result.model_copy(update={"detail": "not tried again: " + fix})
        if self._warned:
            self._logger.info("Slack: %s not delivered either (%s)", what, result.error)
        else:
            self.problem = fix
            self._warn(f"Slack: the {what} was not delivered; the verdict stands. {fix}")
        return result

    def _warn(self, text: str) -> None:
        self._warned = True
        self._logger.warning(text)


# ---------------------------------------------------------------------------- failure hook


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
        return  # the flow's own summary already told Slack why (or the Automation will)
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
    setup = slack_setup(spec)
    if setup.target is None:
        print(alert_text(alert), flush=True)  # no Slack: at least the process output says it
        if setup.problem:
            print(setup.problem, flush=True)
        return
    result: PostResult = Notifier(setup.target).post_alert(alert)
    if not result.ok:
        print(f"Slack alert not delivered: {failure_fix(setup, result)}", flush=True)


def slack_target_from_env() -> SlackTarget | None:
    return _setup_from_env().target


# ------------------------------------------------------------------ how a reported run ends

ENGINE_END = "Engine execution exited with unexpected exception"


class QuietReportedEnds(logging.Filter):
    """Prefect 3.9's ``run_flow`` logs ERROR "Engine execution exited with unexpected exception" with a
    traceback for **every** run that ends Failed or Cancelled under a worker or ``serve``, even one that
    ended so on purpose after saying why. For those ends — a :class:`ReportedFailure` (a FAIL verdict,
    logged finding by finding and sent to Slack) and a :class:`~prefect.exceptions.CancelledRun` (the
    state's message says why, e.g. "not approved") — the record becomes one INFO line, so the Logs tab's
    last error is the reason and not the machinery. Any other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == ENGINE_END and isinstance(exc, ReportedFailure | CancelledRun):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            record.msg, record.args = "Run ended as intended (%s): %s", (type(exc).__name__, first[:300])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_reported_ends() -> None:
    """Install :class:`QuietReportedEnds` on Prefect's flow-run logger (once; the flows call it at import)."""
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, QuietReportedEnds) for f in logger.filters):
        logger.addFilter(QuietReportedEnds())
