"""Text for the drill's messages: one line, cut to a length a Slack line or an artifact cell can carry."""

from __future__ import annotations


def cut(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
