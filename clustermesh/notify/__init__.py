"""Telling people: the Slack adapter and the messages it posts."""

from clustermesh.notify.slack import (
    Alert,
    Notifier,
    PostResult,
    SlackTarget,
    Summary,
    alert_text,
    render_plain,
    resolve_target,
)

__all__ = ["Alert", "Notifier", "PostResult", "SlackTarget", "Summary", "alert_text", "render_plain", "resolve_target"]
