"""Delayed work: real ``call_later`` scaled by ``time_scale``, or (``time_scale`` 0) a virtual clock that
fires timers in due order only once all reactive work has settled."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable

log = logging.getLogger("sandbox.world")  # the name it always logged under


class _Timer:
    """A cancellable delayed call."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False
        self.fired = False
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    def fire(self) -> None:
        if self.cancelled or self.fired:
            return
        self.fired = True
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - a broken controller step must not kill the loop
            log.exception("sandbox timer failed")

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)


class _Clock:
    """Real scaled delays, or with ``scale == 0`` a virtual clock that advances only when idle."""

    def __init__(self, scale: float, busy: Callable[[], bool]) -> None:
        self.scale = scale
        self.busy = busy
        self.loop: asyncio.AbstractEventLoop | None = None
        self.now = 0.0
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = 0
        self._tick_scheduled = False
        self._early: list[tuple[float, _Timer]] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        early, self._early = self._early, []
        for delay, t in early:
            self._schedule(delay, t)
        self._arm()

    def after(self, delay: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer(fn)
        if self.loop is None and self.scale > 0:
            self._early.append((delay, t))
        else:
            self._schedule(delay, t)
        return t

    def _schedule(self, delay: float, t: _Timer) -> None:
        if self.scale > 0:
            assert self.loop is not None
            t.handle = self.loop.call_later(max(0.0, delay) * self.scale, t.fire)
        else:
            self._seq += 1
            heapq.heappush(self._heap, (self.now + max(0.0, delay), self._seq, t))
            self._arm()

    def _arm(self) -> None:
        if self.scale > 0 or self.loop is None or self._tick_scheduled or not self._heap:
            return
        self._tick_scheduled = True
        self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_scheduled = False
        while self._heap and not self._heap[0][2].pending:
            heapq.heappop(self._heap)
        if not self._heap or self.loop is None:
            return
        if self.busy():
            self._tick_scheduled = True
            self.loop.call_soon(self._tick)
            return
        due, _, t = heapq.heappop(self._heap)
        self.now = max(self.now, due)
        t.fire()
        self._arm()

    def stop(self) -> None:
        for _, _, t in self._heap:
            t.cancel()
        self._heap.clear()
        self.loop = None
