"""Waiting for a cluster to reach a state: poll a read until a predicate holds, or say what was last seen."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from clustermesh.errors import NotFoundError, TransientKubeError, WaitTimeoutError
from clustermesh.kube.api_errors import cut
from clustermesh.stopping import raise_if_stopping

__all__ = ["describe_object", "wait_for"]

T = TypeVar("T")


def wait_for(
    read: Callable[[], T],
    predicate: Callable[[T], bool],
    *,
    timeout: float,
    expected: str,
    check: str,
    cluster: str,
    poll_interval: float = 1.0,
    describe: Callable[[T], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Read until ``predicate`` holds, and return what it held for; else :class:`WaitTimeoutError`.

    Polls rather than watches, on purpose: a poll works for any read (a custom object, exec output,
    a condition across several objects), rides over a dropped connection or a restarted API server
    without resume logic (no 410 Expired, no bookmarks), and at one GET a second costs nothing at our
    scale. "Not found" and transient errors count as "not yet" and become the last thing seen; any
    other error ends the wait at once. The timeout names ``expected``, the last thing seen and
    ``check`` (what the operator should look at).
    """
    show: Callable[[Any], str] = describe or describe_object
    deadline = clock() + timeout
    last_seen = "nothing: no read finished"
    while True:
        raise_if_stopping(f"waiting for {expected} in {cluster}")
        try:
            value = read()
        except NotFoundError as exc:
            last_seen = f"not found ({exc.target})"
        except TransientKubeError as exc:
            last_seen = f"no answer ({exc.problem})"
        else:
            if predicate(value):
                return value
            last_seen = show(value)
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeoutError(cluster, expected, last_seen, timeout=timeout, check=check)
        sleep(min(poll_interval, remaining))


def describe_object(value: object) -> str:
    """A one-line view of what a wait last saw: kind, name, generation and status, never data or spec."""
    if value is None:
        return "nothing (not found)"
    if isinstance(value, Mapping) and isinstance(value.get("metadata"), Mapping):
        meta = value["metadata"]
        name = "/".join(str(p) for p in (meta.get("namespace"), meta.get("name")) if p)
        parts = [f"{value.get('kind', 'object')} {name}".strip()]
        if "generation" in meta:
            parts.append(f"generation {meta['generation']}")
        if "status" in value and value.get("kind") != "Secret":
            parts.append("status " + cut(json.dumps(value["status"], sort_keys=True, default=str), 400))
        return ", ".join(parts)
    if isinstance(value, list):
        shown = "; ".join(describe_object(v) for v in value[:3])
        return f"{len(value)} item(s)" + (f": {shown}" if shown else "") + ("; …" if len(value) > 3 else "")
    return cut(repr(value), 300)
