"""Label and field selectors, parsed the way the API server does so lists and watches filter alike.

A selector that does not parse is the client's fault: it raises ``ApiError(400, "BadRequest")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.store import ApiError, Obj

_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "status.phase": ("status", "phase"),
    "spec.nodeName": ("spec", "nodeName"),
}


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector; ``op``: ``=``, ``!=``, ``in``, ``notin``, ``exists`` or ``!``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label too, as in Kubernetes
        return not present or value not in self.values


def _bad(kind: str, text: str, why: str) -> ApiError:
    return ApiError(400, "BadRequest", f'unable to parse requirement: {kind} selector "{text}": {why}')


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (``in (a,b)`` keeps its commas)."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _bad("label", text, "unbalanced parentheses")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise _bad("label", text, "unbalanced parentheses")
    parts.append("".join(cur))
    return parts


def _check_key(key: str, text: str) -> str:
    if not key or not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise _bad("label", text, f"invalid label key {key!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise _bad("label", text, f"invalid label value {value!r}")
    return value


_SET_RE = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into requirements (all must hold)."""
    if text is None or not text.strip():
        return []
    reqs: list[Requirement] = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise _bad("label", text, "empty requirement")
        m = _SET_RE.match(part)
        if m:
            key = _check_key(m.group(1), text)
            values = tuple(v.strip() for v in m.group(3).split(","))
            if values == ("",):
                raise _bad("label", text, f"for '{m.group(2)}' operator, values set can't be empty")
            for v in values:
                _check_value(v, text)
            reqs.append(Requirement(key, m.group(2), values))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip(), text), "!"))
            continue
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                key, value = part.split(op, 1)
                if "=" in value or "!" in value:
                    raise _bad("label", text, "unexpected '=' in value")
                reqs.append(Requirement(_check_key(key.strip(), text), norm, (_check_value(value.strip(), text),)))
                break
        else:
            if " " in part or "(" in part or ")" in part:
                raise _bad("label", text, "found unexpected token")
            reqs.append(Requirement(_check_key(part, text), "exists"))
    return reqs


def parse_field_selector(text: str | None) -> list[tuple[tuple[str, ...], str, str]]:
    """Parse ``metadata.name=x,status.phase!=Running`` into (path, op, value) triples."""
    if text is None or not text.strip():
        return []
    out: list[tuple[tuple[str, ...], str, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                field, value = part.split(op, 1)
                field = field.strip()
                if field not in FIELD_PATHS:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f'"{field}" is not a known field selector: only "{", ".join(FIELD_PATHS)}"',
                    )
                out.append((FIELD_PATHS[field], norm, value.strip()))
                break
        else:
            raise ApiError(400, "BadRequest", f'invalid selector: "{text}"; can\'t understand "{part}"')
    return out


def _field_value(obj: Obj, path: tuple[str, ...]) -> str:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    return "" if cur is None else str(cur)


def selector_string(match_labels: dict[str, str] | None) -> str:
    """``matchLabels`` as the string form Scale.status.selector carries."""
    return ",".join(f"{k}={v}" for k, v in sorted((match_labels or {}).items()))


def matcher(label_selector: str | None, field_selector: str | None) -> Callable[[Obj], bool] | None:
    """A predicate for ``Store.list`` and watches; None when nothing is selected (all match)."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)
    if not labels and not fields:
        return None

    def match(obj: Obj) -> bool:
        obj_labels = (obj.get("metadata") or {}).get("labels") or {}
        if not all(r.matches(obj_labels) for r in labels):
            return False
        for path, op, value in fields:
            actual = _field_value(obj, path)
            if (actual == value) != (op == "="):
                return False
        return True

    return match
