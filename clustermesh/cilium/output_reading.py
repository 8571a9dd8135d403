"""What both Cilium output parsers need: numbered lines, located JSON errors, typed JSON access, IPs.

The parsers either return exactly what an output says or raise `CiliumOutputError` naming the command,
the line (or JSON path) and what was expected; the helpers here build those errors. Only `re`, `json`
and `ipaddress`, and no per-line work beyond one pass, so 100,000 backends stay cheap. Shared by
``health_output`` and ``service_output`` only: the room's ``__init__`` does not export them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from clustermesh.errors import CiliumOutputError

__all__ = ["JsonReader", "first_line", "load_json", "normalise_ip", "numbered_lines"]

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def normalise_ip(text: str) -> str | None:
    """Canonical text of an IP, or None when it is not one (so text and JSON compare equal)."""
    if _CANONICAL_IPV4.fullmatch(text):
        return text  # already canonical; skips `ipaddress`, most of the cost on 100,000 backends
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines without trailing whitespace; blank lines carry no meaning in any layout."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if line:
            yield number, line


def first_line(text: str) -> tuple[int, str]:
    return next(numbered_lines(text), (1, ""))


def load_json(text: str, command: str) -> Any:
    """`json.loads` with every failure (syntax, depth, giant numbers) turned into a located error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        lines = text.splitlines()
        line = lines[err.lineno - 1] if 0 < err.lineno <= len(lines) else ""
        raise CiliumOutputError(
            command,
            f"invalid or truncated JSON ({err.msg}, column {err.colno})",
            expected=f"the complete output of `{command} -o json`",
            line_no=err.lineno,
            line=line,
        ) from None
    except (ValueError, RecursionError) as err:
        raise CiliumOutputError(
            command,
            f"JSON that cannot be loaded ({type(err).__name__}: {str(err)[:80]})",
            expected=f"the output of `{command} -o json`",
            line_no=1,
            line=first_line(text)[1],
        ) from None


class JsonReader:
    """Typed access to decoded JSON that reports the path of anything of the wrong shape."""

    def __init__(self, command: str) -> None:
        self.command = command

    def fail(self, path: str, value: object, expected: str) -> CiliumOutputError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:79] + "…"
        return CiliumOutputError(
            self.command, f"unexpected value {shown}", expected=expected, json_path=path or "top level"
        )

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, value, "a JSON object")
        return value

    def opt_obj(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        value = parent.get(key)
        return None if value is None else self.obj(value, f"{path}.{key}")

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, value, "a JSON array")
        return value

    def opt_array(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        return [] if value is None else self.array(value, f"{path}.{key}")

    def string(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        value = parent.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{path}.{key}", value, "a non-empty string")
        return value

    def opt_string(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = parent.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(f"{path}.{key}", value, "a string")
        return value

    def integer(self, parent: Mapping[str, Any], key: str, path: str, low: int, high: int) -> int:
        value = parent.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{path}.{key}", value, f"an integer from {low} to {high}")
        return value

    def opt_bool(self, parent: Mapping[str, Any], key: str, path: str) -> bool:
        value = parent.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", value, "true or false")
        return value

    def ip(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        raw = self.string(parent, key, path)
        ip = normalise_ip(raw)
        if ip is None:
            raise self.fail(f"{path}.{key}", raw, "an IPv4 or IPv6 address")
        return ip
