"""What a cluster's agents remember of a peer whose clustermesh-apiserver they can no longer reach.

Cilium keeps a lost cluster's services and backends (stale) until the connection comes back and a resync
replaces them; from 1.19 ``clustermesh.cacheTTL`` (cilium-config ``clustermesh-cache-ttl``, default ``0s``:
forever) withdraws them once the connection has been lost that long. Only an *unreachable* peer is
remembered (:data:`UNREACHABLE`: the apiserver scaled away, TCP 2379 blocked); a peer removed from the
configuration, or one refused for its certificates or identity, is dropped at once as before.

The memory is formed by observation, as everything the datapath computes: an agent exec that finds a
peer connected records it as synced; the first exec that finds it unreachable starts the loss. Time is
the sandbox's clock when a World registered its stores (:func:`register`: the virtual clock at
``time_scale`` 0, which a wake-up timer moves on to the TTL), else the question's ``now``.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sandbox.datapath.facts import _Facts
from sandbox.datapath.links import _Mesh
from sandbox.datapath.state import NS, UNREACHABLE, _object
from sandbox.store import Store

CACHE_TTL_KEY = "clustermesh-cache-ttl"
"""cilium-config's key for ``clustermesh.cacheTTL`` (1.19+ charts render it always; default ``0s``)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``"0s"``, ``"90s"``, ``"1m30s"``) in seconds; 0 for anything unreadable (never withdraw)."""
    text = text.strip()
    if not text or text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return 0.0
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class CacheEvent:
    """One change of what ``cluster``'s agents hold of ``peer``, at ``at`` seconds of the sandbox clock."""

    cluster: str
    peer: str
    what: Literal["lost", "withdrawn", "resynced"]
    at: float


@dataclass
class _Remembered:
    facts: _Facts
    """The peer as last synced (its services and pods then)."""
    lost_at: float | None = None
    withdrawn: bool = False


@dataclass
class CacheBook:
    """One sandbox's memory: per (cluster, peer) what was last synced, and the events so far."""

    clock: Callable[[], float] | None = None
    """The sandbox's clock in seconds; None: the question's ``now``."""
    wake: Callable[[float], None] | None = None
    """Asks the sandbox to look again after that many seconds (a timer moves a virtual clock on)."""
    remembered: dict[tuple[str, str], _Remembered] = field(default_factory=dict)
    events: list[CacheEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_BOOKS: dict[int, tuple[weakref.ref[Store], CacheBook]] = {}
"""By ``id(store)``; an entry goes with its store (a Store is not hashable)."""


def register(store: Store, book: CacheBook) -> None:
    """``store``'s cluster keeps its memory in ``book`` (one book per World, shared by its clusters)."""
    key = id(store)
    _BOOKS[key] = (weakref.ref(store, lambda _ref: _BOOKS.pop(key, None)), book)


def book_of(store: Store) -> CacheBook:
    """The book ``store`` was registered with; else one of its own, on the question's ``now``."""
    found = _BOOKS.get(id(store))
    if found is not None and found[0]() is store:
        return found[1]
    book = CacheBook()
    register(store, book)
    return book


def cache_ttl(mesh: _Mesh, src: _Facts) -> float:
    """``src``'s agents' cacheTTL in seconds (0: keep forever, also where the line has no such key)."""
    config = _object(mesh.states[src.name].store, "v1/configmaps", NS, "cilium-config") or {}
    return parse_duration(str((config.get("data") or {}).get(CACHE_TTL_KEY) or "0s"))


def stale_peers(mesh: _Mesh, src: _Facts) -> list[_Facts]:
    """Peers ``src``'s agents lost but still hold (as last synced); records synced, lost, withdrawn, resynced."""
    book = book_of(mesh.states[src.name].store)
    now = book.clock() if book.clock is not None else mesh.now.timestamp()
    ttl = cache_ttl(mesh, src)
    kept: list[_Facts] = []
    with book.lock:
        for dst in mesh.others(src):
            key = (src.name, dst.name)
            link = mesh.link(src, dst)
            memory = book.remembered.get(key)
            if link.ok:
                if memory is not None and memory.lost_at is not None:
                    book.events.append(CacheEvent(src.name, dst.name, "resynced", now))
                book.remembered[key] = _Remembered(dst)
                continue
            if memory is None:
                continue
            if link.reason != UNREACHABLE or dst.cilium_name not in src.peers:
                del book.remembered[key]  # refused or no longer configured: gone at once, as before
                continue
            if memory.lost_at is None:
                memory.lost_at = now
                book.events.append(CacheEvent(src.name, dst.name, "lost", now))
                if ttl > 0 and book.wake is not None:
                    book.wake(ttl)
            if memory.withdrawn:
                continue
            if ttl > 0 and now - memory.lost_at >= ttl:
                memory.withdrawn = True
                book.events.append(CacheEvent(src.name, dst.name, "withdrawn", now))
                continue
            kept.append(memory.facts)
    return kept
