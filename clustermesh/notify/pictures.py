"""The nightly's picture: the cluster × cluster health matrix as a heat map, and the failover time of the
last nights, as PNG bytes.

Drawn with matplotlib (the optional dependency group ``plots``; :func:`plots_available` says whether it
is installed) through its object-oriented API on the Agg canvas: no pyplot, so no global figure state and
no GUI backend, whatever the process does otherwise. The layout is fixed (:data:`SIZE_PX`,
:data:`HEATMAP_BOX`) so a cell's pixels can be found from its row and column (:func:`heatmap_cell_pixel`);
the colours are :data:`VERDICT_COLOURS`. Each cell also says its verdict in words: colour is never the
only cue, and :func:`alt_text` is the same content for screen readers.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from clustermesh.notify.history import PairVerdict, pair_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "HEATMAP_BOX",
    "INSTALL_HINT",
    "SIZE_PX",
    "VERDICT_COLOURS",
    "FailoverPoint",
    "alt_text",
    "heatmap_cell_pixel",
    "plots_available",
    "render_picture",
]

INSTALL_HINT = "install the plots group for pictures (uv sync --group plots)"

SIZE_PX = (1100, 500)
"""Width and height of the PNG in pixels (at :data:`_DPI`)."""
_DPI = 100
HEATMAP_BOX = (0.12, 0.24, 0.36, 0.62)
"""The heat map's axes in figure fractions: left, bottom, width, height (matplotlib's convention)."""
_FAILOVER_BOX = (0.60, 0.24, 0.37, 0.62)

VERDICT_COLOURS: dict[PairVerdict, str] = {
    "healthy": "#2e7d32",
    "degraded": "#f9a825",
    "down": "#c62828",
    "not measured": "#9e9e9e",
}
_VERDICT_WORD: dict[PairVerdict, str] = {"healthy": "OK", "degraded": "PART", "down": "DOWN", "not measured": "n/a"}
_VERDICT_MARK: dict[PairVerdict, str] = {"healthy": "✓", "degraded": "~", "down": "✗", "not measured": "?"}
"""What a cell says beyond 4 clusters, where a word no longer fits (the legend gives both)."""

FailoverPoint = tuple[datetime | None, float | None]
"""One night on the failover chart: when it ran, its slowest failover in seconds (None: not measured)."""


def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` group) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def heatmap_cell_pixel(clusters: int, row: int, column: int, at: tuple[float, float] = (0.2, 0.2)) -> tuple[int, int]:
    """The pixel (x, y from the top-left) inside the cell of source ``row`` and destination ``column``.

    ``at`` is the point within the cell as fractions from its top-left corner; the default stays clear of
    the cell's centred label.
    """
    left, bottom, width, height = HEATMAP_BOX
    w, h = SIZE_PX
    x = (left + (column + at[0]) / clusters * width) * w
    y_from_bottom = bottom + (clusters - row - at[1]) / clusters * height
    return int(x), int((1 - y_from_bottom) * h)


def alt_text(clusters: Sequence[str], pairs: Mapping[str, PairVerdict], failover: Sequence[FailoverPoint]) -> str:
    """The picture in words: how many pairs are healthy and each one that is not, then the failover times
    night by night (a screen reader should not read out 256 healthy cells)."""
    verdicts = {pair_key(s, d): pairs.get(pair_key(s, d), "not measured") for s in clusters for d in clusters}
    others = [f"{pair} {verdict}" for pair, verdict in verdicts.items() if verdict != "healthy"]
    healthy = len(verdicts) - len(others)
    text = f"Health matrix (from → to): {healthy} of {len(verdicts)} pairs healthy"
    text += (": " + "; ".join(others) + ".") if others else "."
    times = [f"{_label(when)} {'not measured' if s is None else f'{s:.2f} s'}" for when, s in failover]
    if times:
        text += " Failover time over the last nights, oldest first: " + "; ".join(times) + "."
    return text


def render_picture(
    title: str,
    clusters: Sequence[str],
    pairs: Mapping[str, PairVerdict],
    failover: Sequence[FailoverPoint],
    median: float | None = None,
) -> bytes:
    """The PNG: heat map on the left (rows: from, columns: to), failover time per night on the right.

    ``failover`` is oldest first, tonight last; ``median`` (the earlier nights') is drawn as a dashed line.
    Raises ImportError without matplotlib (check :func:`plots_available` first).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE_PX[0] / _DPI, SIZE_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)  # the figure draws on Agg (no pyplot, no GUI backend)
    fig.suptitle(title, fontsize=13)
    _draw_heatmap(fig, clusters, pairs)
    _draw_failover(fig, failover, median)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _draw_heatmap(fig: Figure, clusters: Sequence[str], pairs: Mapping[str, PairVerdict]) -> None:
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    ax = fig.add_axes(HEATMAP_BOX)
    n = max(len(clusters), 1)
    grid = [
        [to_rgb(VERDICT_COLOURS[pairs.get(pair_key(src, dst), "not measured")]) for dst in clusters] for src in clusters
    ]
    ax.imshow(grid or [[to_rgb(VERDICT_COLOURS["not measured"])]], aspect="auto", interpolation="nearest")
    words = _VERDICT_WORD if n <= 4 else _VERDICT_MARK
    size = 11 if n <= 4 else max(5, int(48 / n))
    for i, src in enumerate(clusters):
        for j, dst in enumerate(clusters):
            verdict = pairs.get(pair_key(src, dst), "not measured")
            ink = "white" if verdict in ("healthy", "down") else "black"  # legible on every fill
            ax.text(j, i, words[verdict], ha="center", va="center", color=ink, fontsize=size, fontweight="bold")
    ticks = max(6, min(10, int(80 / n)))
    ax.set_xticks(range(n), list(clusters) or [""], rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.tick_params(labelsize=ticks)
    ax.set_yticks(range(n), list(clusters) or [""])
    ax.set_xlabel("to")
    ax.set_ylabel("from")
    ax.set_title("Mesh health (cilium-health, every node)", fontsize=11)
    handles = [
        Patch(facecolor=colour, label=f"{verdict} ({_VERDICT_WORD[verdict]}, {_VERDICT_MARK[verdict]})")
        for verdict, colour in VERDICT_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.02, 0.01), ncols=4, fontsize=9, frameon=False)


def _draw_failover(fig: Figure, failover: Sequence[FailoverPoint], median: float | None) -> None:
    ax = fig.add_axes(_FAILOVER_BOX)
    ax.set_title("Failover time, last nights (tonight last)", fontsize=11)
    ax.set_ylabel("seconds (slowest cluster)")
    measured = [(k, s) for k, (_, s) in enumerate(failover) if s is not None]
    if measured:
        xs, ys = zip(*measured, strict=True)
        ax.plot(xs, ys, marker="o", color="#1565c0", label="failover")
        last_x, last_y = measured[-1]
        if last_x == len(failover) - 1:
            ax.plot([last_x], [last_y], marker="o", markersize=11, color="#c62828", label="tonight")
    else:
        ax.text(0.5, 0.5, "no failover measured", ha="center", va="center", transform=ax.transAxes)
    if median is not None:
        ax.axhline(median, linestyle="--", color="#616161", label=f"median {median:.2f} s")
    ax.set_xticks(range(len(failover)), [_label(when) for when, _ in failover], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(bottom=0)
    if measured or median is not None:
        ax.legend(loc="upper left", fontsize=8)


def _label(when: datetime | None) -> str:
    if when is None:
        return "?"
    moment = when.astimezone(UTC) if when.tzinfo else when
    return f"{moment:%m-%d %H:%M}"
