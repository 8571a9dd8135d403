"""Telling people: the Slack adapter and the messages it posts."""

from clustermesh.notify.messages import Alert, Summary, alert_text, render_markdown, render_plain
from clustermesh.notify.slack import Notifier, PostResult, SlackCheck, SlackTarget, check_target, resolve_target

__all__ = [
    "Alert",
    "Notifier",
    "PostResult",
    "SlackCheck",
    "SlackTarget",
    "Summary",
    "alert_text",
    "check_target",
    "render_markdown",
    "render_plain",
    "resolve_target",
]
