"""Where the Cilium chart archive comes from: a local folder of archives, or a Helm repository URL.

A repository is read the way ``helm pull`` reads it: its ``index.yaml`` lists every chart version with
the URLs of its archive; the exact version is downloaded once into a cache folder and used from there
afterwards (no request at all on a later run). Requests have short timeouts, so an offline machine
learns in seconds that the chart is out of reach, and a source found unreachable is remembered for a
while in this process: the next cluster, step or run does not try again.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clustermesh.cilium.chart import chart_for
from clustermesh.errors import ChartRenderError

__all__ = [
    "CACHE_DIR_ENV",
    "ChartUnavailableError",
    "chart_cache_dir",
    "fetch_chart",
    "forget_unreachable",
    "is_url",
    "latest_in_line",
]

CACHE_DIR_ENV = "CLUSTERMESH_STATE_DIR"
REQUEST_TIMEOUT = 3.0
"""Seconds per request: a repository that answers does so well within this; an offline one fails fast."""
REMEMBER_UNREACHABLE = 600.0
"""Seconds a source found unreachable is not asked again by this process."""
_MAX_ARCHIVE_BYTES = 64 * 1024 * 1024


class ChartUnavailableError(ChartRenderError):
    """No archive for this version could be had from the source: the chart check is skipped, not failed."""


@dataclass
class _Unreachable:
    reason: str
    until: float


_unreachable: dict[str, _Unreachable] = {}
_lock = threading.Lock()


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def chart_cache_dir() -> Path:
    """``$CLUSTERMESH_STATE_DIR/charts``, else ``$XDG_CACHE_HOME/clustermesh/charts``, else ``~/.cache/…``."""
    state = os.environ.get(CACHE_DIR_ENV)
    if state:
        return Path(state) / "charts"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "clustermesh" / "charts"


def forget_unreachable() -> None:
    """Try every source again on the next call (a test, or a process that knows the network is back)."""
    with _lock:
        _unreachable.clear()


def fetch_chart(source: str, version: str, *, cache_dir: Path | None = None) -> Path:
    """The ``cilium-<version>.tgz`` archive from ``source`` (a folder, or a Helm repository URL).

    Raises ``ChartUnavailableError`` when the source cannot provide it (unreachable, no such version,
    no such folder): the caller says so and carries on without the check.
    """
    if not is_url(source):
        folder = Path(source).expanduser()
        try:
            return chart_for(folder, version)
        except ChartRenderError as exc:
            raise ChartUnavailableError(exc.chart, exc.problem, fix=exc.fix) from None
    cached = _cached_path(source, version, cache_dir or chart_cache_dir())
    if cached.is_file():
        return cached
    with _lock:
        known = _unreachable.get(source)
        if known is not None and known.until > time.monotonic():
            raise ChartUnavailableError(cached.name, known.reason, fix=_URL_FIX)
    try:
        return _download(source, version, cached)
    except ChartUnavailableError as exc:
        if exc.problem.startswith("cannot reach"):
            with _lock:
                _unreachable[source] = _Unreachable(exc.problem, time.monotonic() + REMEMBER_UNREACHABLE)
        raise


def latest_in_line(source: str, line: str) -> str:
    """The newest ``<line>.<patch>`` the source holds (a folder's archives, a repository's ``index.yaml``).

    Raises ``ChartUnavailableError`` when the source is unreachable or holds no version of that line.
    """
    if not is_url(source):
        return fetch_chart(source, line).name.removeprefix("cilium-").removesuffix(".tgz")
    repo = source.rstrip("/") + "/"
    what = f"cilium-{line}.x.tgz"
    with _lock:
        known = _unreachable.get(source)
        if known is not None and known.until > time.monotonic():
            raise ChartUnavailableError(what, known.reason, fix=_URL_FIX)
    try:
        index = yaml.safe_load(_get(repo + "index.yaml", what))
    except ChartUnavailableError as exc:
        if exc.problem.startswith("cannot reach"):
            with _lock:
                _unreachable[source] = _Unreachable(exc.problem, time.monotonic() + REMEMBER_UNREACHABLE)
        raise
    except yaml.YAMLError as exc:
        raise ChartUnavailableError(what, f"{repo}index.yaml is not YAML ({exc})", fix=_URL_FIX) from None
    entries = (index.get("entries") or {}).get("cilium") if isinstance(index, dict) else None
    patches = [
        int(m["patch"])
        for e in entries or []
        if isinstance(e, dict)
        and (m := _PATCH.fullmatch(str(e.get("version", "")).removeprefix("v")))
        and m["line"] == line
    ]
    if not patches:
        raise ChartUnavailableError(what, f"{repo}index.yaml lists no cilium {line}.x", fix=_URL_FIX)
    return f"{line}.{max(patches)}"


_PATCH = re.compile(r"(?P<line>[0-9]+\.[0-9]+)\.(?P<patch>[0-9]+)")


_URL_FIX = (
    "set cilium.chart.source to a folder holding cilium-<version>.tgz (helm pull cilium/cilium --version <v>) "
    "or to a Helm repository this machine can reach"
)


def _cached_path(source: str, version: str, cache_dir: Path) -> Path:
    """One folder per repository URL, so two repositories never share an archive of the same name."""
    repo = source.rstrip("/") + "/"
    parsed = urllib.parse.urlsplit(repo)
    label = "".join(ch if ch.isalnum() else "-" for ch in parsed.netloc)[:40]
    digest = hashlib.sha256(repo.encode()).hexdigest()[:12]
    return cache_dir / f"{label}-{digest}" / f"cilium-{version.removeprefix('v')}.tgz"


def _get(url: str, what: str) -> bytes:
    """The body at ``url``; a name lookup that hangs (no DNS server answering) is given up after the timeout too:
    the socket timeout does not cover it, so the request runs in a thread of its own."""
    outcome: list[bytes | BaseException] = []

    def fetch() -> None:
        try:
            outcome.append(_request(url))
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=fetch, name="clustermesh-chart-fetch", daemon=True)
    worker.start()
    deadline = REQUEST_TIMEOUT * 4  # connect + read of an archive of a few MB
    worker.join(deadline)
    if not outcome:
        raise ChartUnavailableError(what, f"cannot reach {url} (no answer within {deadline:g}s)", fix=_URL_FIX)
    result = outcome[0]
    if isinstance(result, BaseException):
        return _raise_unavailable(url, what, result)
    if len(result) > _MAX_ARCHIVE_BYTES:
        raise ChartUnavailableError(what, f"{url} is larger than {_MAX_ARCHIVE_BYTES} bytes", fix=_URL_FIX)
    return result


def _request(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "clustermesh"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310 - http(s) only
        data: bytes = response.read(_MAX_ARCHIVE_BYTES + 1)
    return data


def _raise_unavailable(url: str, what: str, error: BaseException) -> bytes:
    try:
        raise error
    except urllib.error.HTTPError as exc:
        raise ChartUnavailableError(what, f"{url} answered HTTP {exc.code}", fix=_URL_FIX) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ChartUnavailableError(what, f"cannot reach {url} ({reason})", fix=_URL_FIX) from None


def _archive_url(source: str, version: str, index: Any) -> tuple[str, str]:
    """The download URL ``index.yaml`` gives for cilium ``version`` (relative URLs resolve against the repo),
    and the archive's sha256 digest it lists ("" when it lists none)."""
    repo = source.rstrip("/") + "/"
    entries = (index.get("entries") or {}).get("cilium") if isinstance(index, dict) else None
    wanted = version.removeprefix("v")
    for entry in entries or []:
        if isinstance(entry, dict) and str(entry.get("version", "")).removeprefix("v") == wanted:
            urls = entry.get("urls") or []
            if urls:
                return urllib.parse.urljoin(repo, str(urls[0])), str(entry.get("digest") or "")
    have = sorted(str(e.get("version")) for e in entries or [] if isinstance(e, dict))[-5:]
    raise ChartUnavailableError(
        f"cilium-{wanted}.tgz",
        f"{repo}index.yaml lists no cilium {wanted} (latest there: {', '.join(have) or 'none'})",
        fix=_URL_FIX,
    )


def _download(source: str, version: str, target: Path) -> Path:
    repo = source.rstrip("/") + "/"
    raw = _get(repo + "index.yaml", target.name)
    try:
        index = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ChartUnavailableError(target.name, f"{repo}index.yaml is not YAML ({exc})", fix=_URL_FIX) from None
    url, digest = _archive_url(source, version, index)
    archive = _get(url, target.name)
    if digest and hashlib.sha256(archive).hexdigest() != digest.removeprefix("sha256:"):
        raise ChartUnavailableError(
            target.name, f"{url} does not match the digest index.yaml lists ({digest[:19]}…)", fix=_URL_FIX
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    partial.write_bytes(archive)
    partial.replace(target)  # whole or absent: a concurrent reader never sees half an archive
    return target
