"""The sandbox's calendar: the date at which its certificates are issued and judged.

A certificate lives for a year or three; a test cannot wait that long. A World keeps a calendar offset in
days (``World.advance_calendar``): "now" for certificates is the real UTC time plus that offset. Certgen
issues at calendar time and keeps a leaf only while it is valid then, the agents refuse a peer whose
certificate has expired at calendar time (the datapath's x509 errors), and each cluster's Kubernetes API
sends its HTTP ``Date`` header at calendar time, so a client that asks the cluster for its clock (the
pipeline's ``ClusterClient.server_time``) judges expiry as the cluster does.

The datapath is computed from stores alone, so a store is registered with its World's calendar
(:func:`register`, as ``remote_cache`` registers its clock); an unregistered store is on real time.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable
from email.utils import format_datetime
from typing import Any

from sandbox.store import Store

__all__ = ["Calendar", "DateHeader", "calendar_now", "http_date", "register"]


class Calendar:
    """Real UTC time moved on by ``offset_days`` (one per World, shared by its clusters)."""

    def __init__(self, offset_days: float = 0.0) -> None:
        self.offset_days = float(offset_days)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(days=self.offset_days)

    def advance(self, days: float) -> float:
        """Move the calendar on by ``days`` (never back: certificates already issued would be "not yet valid")."""
        if days < 0:
            raise ValueError(f"advance_days {days} is negative: the calendar only moves forward")
        self.offset_days += float(days)
        return self.offset_days


_CALENDARS: dict[int, tuple[weakref.ref[Store], Calendar]] = {}
"""By ``id(store)``; an entry goes with its store (a Store is not hashable)."""


def register(store: Store, calendar: Calendar) -> None:
    """``store``'s cluster lives on ``calendar``."""
    key = id(store)
    _CALENDARS[key] = (weakref.ref(store, lambda _ref: _CALENDARS.pop(key, None)), calendar)


def calendar_of(store: Store | None) -> Calendar | None:
    found = _CALENDARS.get(id(store)) if store is not None else None
    if found is not None and found[0]() is store:
        return found[1]
    return None


def calendar_now(stores: Store | Iterable[Store] | None = None) -> dt.datetime:
    """Calendar time of the first registered store among ``stores``; real UTC time when none is registered."""
    candidates = [stores] if isinstance(stores, Store) else list(stores or ())
    for store in candidates:
        calendar = calendar_of(store)
        if calendar is not None:
            return calendar.now()
    return dt.datetime.now(dt.UTC)


def http_date(when: dt.datetime) -> str:
    """An HTTP ``Date`` value (RFC 9110 IMF-fixdate): ``Sun, 06 Dec 2026 07:13:44 GMT``."""
    return format_datetime(when.astimezone(dt.UTC), usegmt=True)


class DateHeader:
    """ASGI middleware: every HTTP response carries ``Date`` at the store's calendar time.

    The server must not add its own (uvicorn's ``date_header=False``), or a response would carry two.
    """

    def __init__(self, app: Any, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Any) -> None:
            if message.get("type") == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", http_date(calendar_now(self.store)).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_dated)
