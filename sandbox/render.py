"""How the sandbox turns a chart version and values into what a release applies: one small interface.

``World`` renders through a ``Renderer``. ``BuiltinRenderer`` is the first implementation: the sandbox's
own model of Cilium's chart (``sandbox.chart``), which judges the pipeline's values the way the real
chart would. ``ChartRenderer(charts_dir)`` (``sandbox.real_chart``, ``sandbox up --charts DIR``) runs the
real chart of each exact version with Helm's engine; it raises ``ChartError`` with Helm's own message where
the chart refuses, and returns a ``Rendered`` carrying the rendered mesh Secrets and hostAliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sandbox import chart
from sandbox.chart import ChartError, Rendered
from sandbox.real_chart import ChartRenderer

__all__ = ["BuiltinRenderer", "ChartError", "ChartRenderer", "Rendered", "Renderer", "renderer_for"]


@runtime_checkable
class Renderer(Protocol):
    """Render ``values`` with the chart of ``version``; raise ``ChartError`` (or ``ValueError``) as Helm fails."""

    def render(self, version: str, values: dict[str, Any]) -> Rendered: ...


class BuiltinRenderer:
    """The sandbox's own model of the chart (``sandbox.chart.render``)."""

    def render(self, version: str, values: dict[str, Any]) -> Rendered:
        return chart.render(version, values)


def renderer_for(charts: Path | str | None) -> Renderer:
    """The real charts in folder ``charts`` (``ChartRenderer``), or the built-in model when ``None``."""
    return BuiltinRenderer() if charts is None else ChartRenderer(charts)
