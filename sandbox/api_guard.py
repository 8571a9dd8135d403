"""What stands in front of a simulated cluster's API: injected faults (errors, dropped connections,
latency, an outage), then the bearer token. ``KubeApi`` wraps its Starlette app in ``_Guard``."""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from sandbox.store import ApiError

__all__ = ["ApiFaults"]


@dataclass
class ApiFaults:
    """Injected API trouble, consulted on every request; mutate it while the server runs."""

    error_rate: float = 0.0
    latency_s: float = 0.0
    latency_only: str = ""
    """Delay only requests whose path contains this (e.g. ``/scale``); empty: every request."""
    down: bool = False
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def roll(self) -> float:
        """A uniform draw in [0, 1) from the fault's own (seedable) generator."""
        return self._rng.random()


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.status(), status_code=err.code)


class _DroppedConnection(Exception):
    """Raised to make uvicorn close a connection without an answer; never logged."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DroppedConnection)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class _Guard:
    """Faults first (a server that is down checks no tokens), then the bearer token."""

    def __init__(self, app: ASGIApp, token: str, faults: ApiFaults | None) -> None:
        self.app = app
        self.token = token
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        if faults is not None:
            if faults.latency_s > 0 and faults.latency_only in str(scope.get("path", "")):
                await asyncio.sleep(faults.latency_s)
            if faults.down:
                await self._deny(scope, receive, send, ApiError(503, "ServiceUnavailable", "the server is down"))
                return
            if faults.error_rate > 0 and faults.roll() < faults.error_rate:
                if scope["type"] == "http" and faults.roll() < 0.5 and self._drop(receive):
                    # let the transport's connection_lost run, so uvicorn sees a disconnect, not a bug
                    for _ in range(3):
                        await asyncio.sleep(0)
                    return
                await self._deny(scope, receive, send, ApiError(500, "InternalError", "injected API error"))
                return
        headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", []))
        auth = headers.get("authorization", "")
        if not (auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip(), self.token)):
            await self._deny(scope, receive, send, ApiError(401, "Unauthorized", "Unauthorized"))
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _drop(receive: Receive) -> bool:
        """Abort the TCP connection under the request (uvicorn's h11 cycle holds the transport)."""
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            return False
        transport.abort()
        return True

    async def _deny(self, scope: Scope, receive: Receive, send: Send, err: ApiError) -> None:
        response = _error_response(err)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        ws = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await ws.send_denial_response(response)
        else:
            await ws.close()
