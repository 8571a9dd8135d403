"""How the sandbox turns a chart version and values into what a release applies: one small interface.

``World`` renders through a ``Renderer``. ``BuiltinRenderer`` is the first implementation: the sandbox's
own model of Cilium's chart (``sandbox.chart``), which judges the pipeline's values the way the real
chart would. A renderer that runs the real chart (``helm template``) is one more implementation beside
it; it raises ``ChartError`` with Helm's wording where the chart refuses, and returns a ``Rendered``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sandbox import chart
from sandbox.chart import ChartError, Rendered

__all__ = ["BuiltinRenderer", "ChartError", "Rendered", "Renderer"]


@runtime_checkable
class Renderer(Protocol):
    """Render ``values`` with the chart of ``version``; raise ``ChartError`` (or ``ValueError``) as Helm fails."""

    def render(self, version: str, values: dict[str, Any]) -> Rendered: ...


class BuiltinRenderer:
    """The sandbox's own model of the chart (``sandbox.chart.render``)."""

    def render(self, version: str, values: dict[str, Any]) -> Rendered:
        return chart.render(version, values)
