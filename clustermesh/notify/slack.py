"""Telling the team in Slack: the nightly summary (one parent, edited in place, details in its thread)
and run alerts, posted through slack-sdk to a bot token's channel or an incoming webhook.

Slack is a side channel: a failed post must never fail a verification or a drill, so every
``Notifier`` method returns a ``PostResult`` instead of raising. What is posted is built in
:mod:`clustermesh.notify.messages`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.error import URLError
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from clustermesh.errors import SlackConfigError
from clustermesh.notify.messages import (
    Alert,
    Summary,
    alert_blocks,
    alert_text,
    detail_chunks,
    finding_details,
    summary_blocks,
    summary_text,
)

__all__ = [
    "CHANNEL_ERRORS",
    "SCOPE_ERRORS",
    "TOKEN_ERRORS",
    "Notifier",
    "PostResult",
    "SlackCheck",
    "SlackTarget",
    "check_target",
    "resolve_target",
]

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_TIMEOUT = 10

# Answers Slack gives for a payload it will not take: worth one retry as plain text.
PAYLOAD_ERRORS = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long", "too_many_attachments"}
)

# Answers no retry will change (Slack's codes; webhooks answer no_service / invalid_token /
# action_prohibited): the token, the channel or the app's scopes must be fixed by a person.
TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "invalid_token",
        "no_service",
        "action_prohibited",
    }
)
CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "channel_is_archived"})
SCOPE_ERRORS = frozenset({"missing_scope", "no_permission", "restricted_action", "ekm_access_denied"})

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Secrets out of logs: slack-sdk logs request URLs (a webhook URL *is* the credential) on retries and
# at debug level, so its clients log through a logger that scrubs anything credential-shaped.
# ---------------------------------------------------------------------------------------------------

_SECRET_PATTERNS = (
    re.compile(r"xox[a-z]-[A-Za-z0-9-]+"),
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"(/services/)[^\s'\",]+"),
)


def _scrub(text: str, secrets: Sequence[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class _ScrubSecrets(logging.Filter):
    """Rewrites each record's message with credentials replaced, before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = _scrub(message)
        record.args = None
        return True


_sdk_log = logging.getLogger(f"{__name__}.sdk")
if not any(isinstance(f, _ScrubSecrets) for f in _sdk_log.filters):
    _sdk_log.addFilter(_ScrubSecrets())


# ---------------------------------------------------------------------------------------------------
# Targets and results
# ---------------------------------------------------------------------------------------------------


class PostResult(BaseModel):
    """How a post went; ``error`` is Slack's code (``channel_not_found``) or ours (``timeout``)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    ts: str | None = None
    channel: str | None = None
    posted: int = 0
    error: str | None = None
    detail: str | None = None


class SlackTarget(BaseModel):
    """Where messages go. Secrets are ``SecretStr``: they print as ``**********``."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["bot", "webhook"]
    token: SecretStr | None = None
    channel: str | None = None
    webhook_url: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> SlackTarget:
        """A half-filled target would only fail at the first post, after the run did its work."""
        if self.kind == "bot" and (self.token is None or not self.channel):
            raise ValueError("a bot target needs a token and a channel")
        if self.kind == "webhook" and self.webhook_url is None:
            raise ValueError("a webhook target needs a webhook URL")
        return self

    def describe(self) -> str:
        """A safe one-liner for logs and the CLI."""
        if self.kind == "bot":
            return f"Slack bot token, channel {self.channel}"
        return "Slack incoming webhook"


def _blank(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


def resolve_target(token: str | None, channel: str | None, webhook_url: str | None) -> SlackTarget | None:
    """Pick the Slack target from settings; ``None`` means nothing is configured (print instead).

    A bot token wins over a webhook: only it can thread replies and edit the parent in place.
    Empty strings count as unset (an exported but empty environment variable).
    """
    token, channel, webhook_url = _blank(token), _blank(channel), _blank(webhook_url)
    if token is not None:
        if any(c.isspace() for c in token):
            raise SlackConfigError(
                "slack token", "contains whitespace", fix="copy the bot token (xoxb-…) again, without spaces"
            )
        if channel is None:
            raise SlackConfigError(
                "slack channel",
                "a bot token needs a channel to post to",
                fix="set the channel by name (#mesh-alerts) or ID (C0123456789)",
            )
        return SlackTarget(kind="bot", token=SecretStr(token), channel=channel)
    if webhook_url is not None:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("https", "http") or not parts.netloc or not parts.path.strip("/"):
            raise SlackConfigError(
                "slack webhook URL",
                "is not an http(s) URL with a path",
                fix="use the incoming-webhook URL from the Slack app (https://hooks.slack.com/services/…)",
            )
        return SlackTarget(kind="webhook", webhook_url=SecretStr(webhook_url))
    if channel is not None:
        raise SlackConfigError(
            "slack channel",
            f"is set to {channel!r} but there is no bot token or webhook URL to post with",
            fix="set the bot token (e.g. SLACK_BOT_TOKEN) or a webhook URL, or unset the channel",
        )
    return None


# ---------------------------------------------------------------------------------------------------
# Posting
# ---------------------------------------------------------------------------------------------------


def _retry_handlers() -> list[RetryHandler]:
    # TimeoutError (a read timeout) is deliberately absent: chat.postMessage is not idempotent and the
    # first request may already have landed, so retrying it could post the summary twice.
    return [
        ConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitErrorRetryHandler(max_retry_count=3),
        ServerErrorRetryHandler(max_retry_count=2),
    ]


_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def api_url(base_url: str | None = None) -> str:
    """The Web API base: ``base_url``, else ``SLACK_API_URL``, else Slack's own."""
    return base_url or os.environ.get("SLACK_API_URL") or DEFAULT_API_URL


def _web_client(token: str, base_url: str | None, timeout: int) -> WebClient:
    url = api_url(base_url)
    web = WebClient(token=token, base_url=url, timeout=timeout, logger=_sdk_log, retry_handlers=_retry_handlers())
    if urlsplit(url).hostname in _LOOPBACK:
        web.proxy = None  # slack-sdk ignores NO_PROXY; a proxy cannot reach our loopback
    return web


class Notifier:
    """Posts summaries and alerts to one Slack target; never raises for Slack's sake.

    Bot token: the summary is a parent message edited in place (``update_summary``) with details as
    thread replies. Webhook: one message per post, no thread, no edit (Slack gives a webhook no ``ts``).
    """

    def __init__(
        self,
        target: SlackTarget,
        *,
        base_url: str | None = None,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        self._target = target
        self._channel_id: str | None = None
        self._secrets: tuple[str, ...] = tuple(
            s.get_secret_value() for s in (target.token, target.webhook_url) if s is not None
        )
        self._web: WebClient | None = None
        self._hook: WebhookClient | None = None
        if target.kind == "bot":
            assert target.token is not None and target.channel is not None
            self._web = _web_client(target.token.get_secret_value(), base_url, timeout)
            if _CHANNEL_ID.match(target.channel):
                self._channel_id = target.channel
        else:
            assert target.webhook_url is not None
            hook_url = target.webhook_url.get_secret_value()
            self._hook = WebhookClient(url=hook_url, timeout=timeout, logger=_sdk_log, retry_handlers=_retry_handlers())
            if urlsplit(hook_url).hostname in _LOOPBACK:
                self._hook.proxy = None

    def __repr__(self) -> str:
        return f"Notifier({self._target.describe()})"

    @property
    def supports_threads(self) -> bool:
        """Only a bot token gets a ``ts`` back, which threads and edits need."""
        return self._web is not None

    # -- public operations ----------------------------------------------------------------------

    def post_summary(self, summary: Summary) -> PostResult:
        """Post the parent message; keep ``result.ts`` (and ``result.channel``) to update it later."""
        return self._post(summary_text(summary), summary_blocks(summary), what="summary")

    def post_alert(self, alert: Alert) -> PostResult:
        """Post a run alert as its own top-level message."""
        return self._post(alert_text(alert), alert_blocks(alert), what="alert")

    def update_summary(self, ts: str, summary: Summary, *, channel: str | None = None) -> PostResult:
        """Edit the parent in place (same ``ts``), e.g. RUNNING → FAILED.

        ``chat.update`` only takes a channel ID: pass ``channel`` from the ``PostResult`` when this
        notifier did not post the parent itself and the target channel is a name.
        """
        if self._web is None:
            return self._failed(
                "update summary", "not_supported_by_webhook", "an incoming webhook cannot edit messages"
            )
        channel_id = channel or self._channel_id
        if channel_id is None:
            return self._failed(
                "update summary",
                "channel_id_unknown",
                "chat.update needs the channel ID; pass channel= from the PostResult of the parent",
            )
        text, blocks = summary_text(summary), summary_blocks(summary)
        try:
            try:
                self._web.chat_update(channel=channel_id, ts=ts, text=text, blocks=blocks)
                return PostResult(ok=True, ts=ts, channel=channel_id, posted=1)
            except SlackApiError as e:
                if self._api_error(e) not in PAYLOAD_ERRORS:
                    raise
                # blocks=[] clears the old blocks: leaving them would show the stale status.
                self._web.chat_update(channel=channel_id, ts=ts, text=text, blocks=[])
                _log.warning("Slack refused the summary blocks (%s); updated with plain text", self._api_error(e))
                return PostResult(ok=True, ts=ts, channel=channel_id, posted=1, detail="plain text only")
        except Exception as e:  # noqa: BLE001 - Slack must never fail the run
            return self._failure("update summary", e)

    def post_details(self, ts: str, lines: Sequence[str], *, channel: str | None = None) -> PostResult:
        """Reply in the parent's thread with plain lines (escaped), batched into at most a few messages.

        Slack allows about one message per second per channel; batching keeps a run's details to a
        short burst instead of sleeping between replies.
        """
        return self._reply(ts, detail_chunks(lines) if lines else [], channel=channel)

    def post_findings(self, ts: str, summary: Summary, *, channel: str | None = None) -> PostResult:
        """Reply in the parent's thread with every check of ``summary``: failures first, ``ok`` last."""
        return self._reply(ts, finding_details(summary), channel=channel)

    def upload_file(
        self, ts: str, content: bytes, *, filename: str, title: str, alt_text: str, channel: str | None = None
    ) -> PostResult:
        """Share a file (the nightly's picture) in the parent's thread: ``files_upload_v2`` (needs ``files:write``)."""
        channel_id = channel or self._channel_id
        if self._web is None or channel_id is None:
            return self._failed("upload file", "not_supported", "a file goes only with a bot token, into a thread")
        try:
            self._web.files_upload_v2(
                channel=channel_id,
                thread_ts=ts,
                content=content,
                filename=filename,
                title=title,
                alt_txt=alt_text[:1000],  # Slack's limit for alt text
            )
        except Exception as e:  # noqa: BLE001 - Slack must never fail the run
            return self._failure("upload file", e)
        return PostResult(ok=True, ts=ts, channel=channel_id, posted=1)

    def _reply(self, ts: str, chunks: list[str], *, channel: str | None) -> PostResult:
        if self._web is None:
            return self._failed(
                "post details", "not_supported_by_webhook", "an incoming webhook cannot reply in a thread"
            )
        if not chunks:
            return PostResult(ok=True, ts=ts, channel=channel or self._channel_id, posted=0)
        target = channel or self._channel_id or self._target.channel
        assert target is not None
        posted = 0
        try:
            for chunk in chunks:
                self._web.chat_postMessage(
                    channel=target, thread_ts=ts, text=chunk, unfurl_links=False, unfurl_media=False
                )
                posted += 1
        except Exception as e:  # noqa: BLE001 - Slack must never fail the run
            result = self._failure("post details", e)
            return result.model_copy(update={"ts": ts, "posted": posted})
        return PostResult(ok=True, ts=ts, channel=self._channel_id, posted=posted)

    # -- internals ------------------------------------------------------------------------------

    def _post(self, text: str, blocks: list[dict[str, Any]], *, what: str) -> PostResult:
        try:
            if self._web is not None:
                return self._post_bot(text, blocks, what=what)
            return self._post_webhook(text, blocks, what=what)
        except Exception as e:  # noqa: BLE001 - Slack must never fail the run
            return self._failure(f"post {what}", e)

    def _post_bot(self, text: str, blocks: list[dict[str, Any]], *, what: str) -> PostResult:
        assert self._web is not None and self._target.channel is not None
        detail = None
        try:
            response = self._web.chat_postMessage(
                channel=self._target.channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False
            )
        except SlackApiError as e:
            if self._api_error(e) not in PAYLOAD_ERRORS:
                raise
            _log.warning("Slack refused the %s blocks (%s); posting plain text", what, self._api_error(e))
            response = self._web.chat_postMessage(
                channel=self._target.channel, text=text, unfurl_links=False, unfurl_media=False
            )
            detail = "plain text only"
        channel_id = str(response.get("channel") or "") or None
        if channel_id:
            self._channel_id = channel_id
        ts = response.get("ts")
        return PostResult(ok=True, ts=str(ts) if ts else None, channel=channel_id, posted=1, detail=detail)

    def _post_webhook(self, text: str, blocks: list[dict[str, Any]], *, what: str) -> PostResult:
        assert self._hook is not None
        response = self._hook.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
        detail = None
        if response.status_code == 400 and response.body in PAYLOAD_ERRORS:
            _log.warning("Slack refused the %s blocks (%s); posting plain text", what, response.body)
            response = self._hook.send(text=text, unfurl_links=False, unfurl_media=False)
            detail = "plain text only"
        if response.status_code == 200 and response.body == "ok":
            return PostResult(ok=True, posted=1, detail=detail)
        code = _scrub(str(response.body or "").strip(), self._secrets)[:100] or f"http_{response.status_code}"
        if response.status_code == 429:
            code = "ratelimited"
        return self._failed(f"post {what}", code, f"webhook answered HTTP {response.status_code}")

    @staticmethod
    def _api_error(e: SlackApiError) -> str:
        response = e.response
        if response.status_code == 429:
            return "ratelimited"
        error = response.get("error") if isinstance(response.data, dict) else None
        return str(error) if error else f"http_{response.status_code}"

    def _failure(self, action: str, e: Exception) -> PostResult:
        """Turn whatever went wrong into a code and a secret-free detail."""
        if isinstance(e, SlackApiError):
            code = self._api_error(e)
            detail = f"Slack answered HTTP {e.response.status_code}"
            needed = e.response.get("needed") if isinstance(e.response.data, dict) else None
            if needed:
                detail += f", needs scope {needed}"
        elif isinstance(e, TimeoutError) or (isinstance(e, URLError) and isinstance(e.reason, TimeoutError)):
            code, detail = "timeout", "no answer within the timeout; not retried (the post may have landed)"
        elif isinstance(e, URLError | ConnectionError | OSError):
            code, detail = "connection_error", f"cannot reach Slack: {type(e).__name__}"
        elif isinstance(e, SlackClientError):
            code, detail = "client_error", type(e).__name__
        else:
            code, detail = "unexpected_error", type(e).__name__
        return self._failed(action, code, detail)

    def _failed(self, action: str, code: str, detail: str) -> PostResult:
        code, detail = _scrub(code, self._secrets), _scrub(detail, self._secrets)
        # INFO, not WARNING: the PostResult carries it, and the caller says once what to fix and where
        _log.info("Slack %s failed (%s): %s; target: %s", action, code, detail, self._target.describe())
        return PostResult(ok=False, channel=self._channel_id, error=code, detail=detail)


# ---------------------------------------------------------------------------------------------------
# Checking a target before the first night
# ---------------------------------------------------------------------------------------------------


class SlackCheck(BaseModel):
    """What Slack said about a target, without posting: ``token_error`` / ``channel_error`` are Slack's
    codes (``invalid_auth``, ``channel_not_found``, ``is_archived``); ``notes`` what could not be checked."""

    model_config = ConfigDict(frozen=True)

    team: str | None = None
    bot: str | None = None
    channel_id: str | None = None
    token_error: str | None = None
    channel_error: str | None = None
    notes: list[str] = []

    @property
    def ok(self) -> bool:
        return self.token_error is None and self.channel_error is None


_LIST_PAGES = 20  # × 1000 channels: enough for any workspace we post to; beyond, say we could not check


def check_target(target: SlackTarget, *, base_url: str | None = None, timeout: int = DEFAULT_TIMEOUT) -> SlackCheck:
    """``auth.test`` for the token, then ``conversations.info`` (an ID) or ``conversations.list`` (a name)
    for the channel. Never posts, never raises for Slack's sake; what cannot be checked becomes a note.
    """
    if target.kind == "webhook" or target.token is None or target.channel is None:
        return SlackCheck(notes=["an incoming webhook cannot be checked without posting; the first message will show"])
    web = _web_client(target.token.get_secret_value(), base_url, timeout)
    secrets = (target.token.get_secret_value(),)
    try:
        auth = web.auth_test()
    except SlackApiError as e:
        return SlackCheck(token_error=Notifier._api_error(e))
    except Exception as e:  # noqa: BLE001 - unreachable Slack: say so, decide nothing
        where = urlsplit(api_url(base_url)).hostname or "?"
        why = f"could not reach Slack at {where} ({type(e).__name__}): token and channel not checked"
        return SlackCheck(notes=[why])
    team, bot = _text(auth.get("team")), _text(auth.get("user"))
    notes: list[str] = []
    scopes = {s.strip() for s in str(auth.headers.get("x-oauth-scopes") or "").split(",") if s.strip()}
    if scopes and "chat:write" not in scopes:
        return SlackCheck(team=team, bot=bot, token_error="missing_scope")
    channel = target.channel.strip()
    try:
        found = _find_channel(web, channel)
    except SlackApiError as e:
        code = Notifier._api_error(e)
        if code in CHANNEL_ERRORS:
            return SlackCheck(team=team, bot=bot, channel_error=code)
        needed = e.response.get("needed") if isinstance(e.response.data, dict) else None
        answer = f"Slack answered {code}" + (f", needs scope {needed}" if needed else "")
        notes.append(_scrub(f"channel {channel} not checked: {answer}", secrets))
        return SlackCheck(team=team, bot=bot, notes=notes)
    except Exception as e:  # noqa: BLE001 - as above
        why = _scrub(str(e), secrets)[:200] if isinstance(e, SlackClientError) else type(e).__name__
        return SlackCheck(team=team, bot=bot, notes=[f"channel {channel} not checked: {why}"])
    if found is None:
        return SlackCheck(team=team, bot=bot, channel_error="channel_not_found")
    if found.get("is_archived"):
        return SlackCheck(team=team, bot=bot, channel_id=_text(found.get("id")), channel_error="is_archived")
    if found.get("is_member") is False:
        notes.append(
            f"the bot is not a member of {channel}: invite it (/invite @{bot or 'your-bot'}), "
            "or give the app the chat:write.public scope (public channels only)"
        )
    return SlackCheck(team=team, bot=bot, channel_id=_text(found.get("id")), notes=notes)


def _text(value: object) -> str | None:
    return str(value) if value else None


def _find_channel(web: WebClient, channel: str) -> dict[str, Any] | None:
    """The conversation by ID (``conversations.info``) or by name (``conversations.list``, paged)."""
    if _CHANNEL_ID.match(channel):
        info = web.conversations_info(channel=channel)
        data = info.get("channel")
        return dict(data) if isinstance(data, dict) else None
    name = channel.removeprefix("#")
    cursor: str | None = None
    for _ in range(_LIST_PAGES):
        page = web.conversations_list(
            types="public_channel,private_channel", exclude_archived=False, limit=1000, cursor=cursor
        )
        for item in page.get("channels") or []:
            if isinstance(item, dict) and item.get("name") == name:
                return dict(item)
        meta = page.get("response_metadata") or {}
        cursor = str(meta.get("next_cursor") or "") if isinstance(meta, dict) else ""
        if not cursor:
            return None
    raise SlackClientError(f"more than {_LIST_PAGES * 1000} channels: give the channel's ID instead of its name")
