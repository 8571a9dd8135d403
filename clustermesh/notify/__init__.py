"""Telling people: the Slack adapter and the messages it posts."""

from clustermesh.notify.messages import Alert, Summary, alert_text, render_plain
from clustermesh.notify.slack import Notifier, PostResult, SlackTarget, resolve_target

__all__ = ["Alert", "Notifier", "PostResult", "SlackTarget", "Summary", "alert_text", "render_plain", "resolve_target"]
