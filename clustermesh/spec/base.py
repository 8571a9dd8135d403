"""What every part of the spec shares: the strict base model and the rules for reference fields.

Reference fields (paths, block names, env var names) never hold the secret itself; the checks here
refuse secret-looking text and carry a fix in every error, so ``problems`` can print "field: message — fix".
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = [
    "BLOCK_NAME_RE",
    "CLUSTER_NAME_RE",
    "DNS_LABEL_RE",
    "ENV_NAME_RE",
    "SpecModel",
    "block_name",
    "custom_error",
    "env_name",
    "looks_secret",
    "network_input",
    "reference_only",
]

CLUSTER_NAME_RE = re.compile(r"^([a-z0-9][-a-z0-9]*)?[a-z0-9]$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BLOCK_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_MARKERS = (
    "apiVersion:",
    "-----BEGIN",
    "client-key-data",
    "token:",
    "xoxb-",
    "xoxp-",
    "hooks.slack.com",
)


def looks_secret(text: str) -> bool:
    """Kubeconfig text, PEM, Slack tokens: things a reference field must never hold, or an error echo."""
    return "\n" in text or "\r" in text or any(marker in text for marker in _SECRET_MARKERS)


def custom_error(kind: str, message: str, fix: str) -> PydanticCustomError:
    """A validation error carrying its fix, so ``load_spec`` can print "field: message — fix"."""
    return PydanticCustomError(kind, message, {"fix": fix})


def reference_only(value: str | None, kind: str, message: str, fix: str) -> str | None:
    """Reference fields (paths, names) hold no secret text and are not blank."""
    if value is not None and looks_secret(value):
        raise custom_error(kind, message, fix)
    if value is not None and not value.strip():
        raise custom_error("blank", "must not be blank", "remove the field or give a value")
    return value


def network_input(value: object) -> object:
    """Only text (or an address object) reaches ``ipaddress``, which calls str() on anything else.

    str() of a YAML alias bomb expands it in full: a ten-line spec would take all memory.
    """
    if isinstance(value, str | bytes | int | ipaddress.IPv4Network | ipaddress.IPv6Network) and not isinstance(
        value, bool
    ):
        return value
    raise custom_error("cidr_type", "not a network", "give a network like 172.26.0.0/16 (host bits zero)")


def env_name(value: str | None, *, example: str) -> str | None:
    """Fields that name an environment variable take its NAME, never its value."""
    if value is not None and not ENV_NAME_RE.match(value):
        raise custom_error(
            "env_name",
            "not an environment variable name",
            f"give the variable's NAME (letters, digits, _), e.g. {example}",
        )
    return value


def block_name(value: str | None, *, example: str) -> str | None:
    """Fields that name a Prefect block take its name (a slug)."""
    if value is not None and not BLOCK_NAME_RE.match(value):
        raise custom_error(
            "block_name",
            "not a Prefect block name",
            f"use the block's name: lowercase letters, digits and dashes, e.g. {example}",
        )
    return value


class SpecModel(BaseModel):
    """Typos are errors, not silently ignored keys; pydantic's own messages never echo input (secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
