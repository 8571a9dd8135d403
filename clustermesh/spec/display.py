"""How a spec value appears in an error: scalars cut, containers summarised, secret-looking text hidden.

Error messages end up in logs, Slack and the Prefect UI, so nothing here ever prints a secret or a
value large enough to hurt (a YAML alias bomb, an integer of thousands of digits).
"""

from __future__ import annotations

from pydantic import BaseModel

from clustermesh.spec.base import looks_secret

__all__ = ["display", "int_text", "key_text"]


def key_text(key: object) -> str:
    """A mapping key for a field path or a summary: cut, and hidden when it looks like secret text."""
    if isinstance(key, int) and not isinstance(key, bool):
        return int_text(key)
    text = str(key)
    if looks_secret(text):
        return "<hidden key>"
    return text if len(text) <= 60 else text[:59] + "…"


def int_text(value: int) -> str:
    """Digits of a sane integer; a huge one is summarised (str() of >4300 digits raises ValueError)."""
    return str(value) if value.bit_length() <= 200 else f"<integer of {value.bit_length()} bits>"


def display(value: object, *, redact: bool = False) -> str:
    """Show a value safely: scalars as they are (cut), secret-looking text hidden, containers summarised."""
    if isinstance(value, str):
        if redact or looks_secret(value):
            return "<hidden: looks like secret text>"
        return repr(value if len(value) <= 60 else value[:59] + "…")
    if isinstance(value, int) and not isinstance(value, bool):
        return int_text(value)
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, dict):
        keys = ", ".join(key_text(k) for k in list(value)[:8])
        return f"<mapping with keys: {keys}>" if keys else "<empty mapping>"
    if isinstance(value, list | tuple):
        return f"<list of {len(value)} items>"
    if isinstance(value, BaseModel):
        return f"<{type(value).__name__}>"
    text = str(value)
    return text if len(text) <= 60 and not looks_secret(text) else f"<{type(value).__name__}>"
