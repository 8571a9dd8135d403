"""Go's formatting as Cilium's CLIs print it: ``text/tabwriter`` and ``time.Duration``'s ``String()``."""

from __future__ import annotations

from datetime import UTC, datetime

Version = tuple[int, int]
Result = tuple[int, str, str]


# ---------------------------------------------------------------------------------------------------
# Go formatting primitives
# ---------------------------------------------------------------------------------------------------

_NS_US = 1_000
_NS_MS = 1_000_000
_NS_S = 1_000_000_000
_NS_M = 60 * _NS_S
_NS_H = 60 * _NS_M


def _frac(value: int, unit: int, digits: int) -> str:
    """``value/unit`` with the fraction's trailing zeros dropped, as Go's ``fmtFrac`` does."""
    whole, rest = divmod(value, unit)
    if rest == 0:
        return str(whole)
    return f"{whole}.{str(rest).rjust(digits, '0').rstrip('0')}"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: RTTs and intervals must read exactly like the agent prints them."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < _NS_US:
        return f"{sign}{u}ns"
    if u < _NS_MS:
        return f"{sign}{_frac(u, _NS_US, 3)}µs"
    if u < _NS_S:
        return f"{sign}{_frac(u, _NS_MS, 6)}ms"
    out = sign
    if u >= _NS_H:
        out += f"{u // _NS_H}h"
        u %= _NS_H
        out += f"{u // _NS_M}m"
        u %= _NS_M
    elif u >= _NS_M:
        out += f"{u // _NS_M}m"
        u %= _NS_M
    return f"{out}{_frac(u, _NS_S, 9)}s"


def _rfc3339(ts: datetime) -> str:
    """Go's ``time.RFC3339`` in UTC (the agent's container runs in UTC); naive times count as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TabWriter:
    """A port of Go's ``text/tabwriter`` with a space pad character and no flags.

    Cells are tab-terminated; the text after a line's last tab is not part of any column. A column block
    is a run of consecutive lines that all have a cell in that column; its width is the widest cell plus
    ``padding`` (at least ``minwidth``). Widths count runes, so ``µ`` is one column wide.
    """

    def __init__(self, minwidth: int, tabwidth: int, padding: int) -> None:
        self.minwidth = minwidth
        self.tabwidth = tabwidth  # only used for tab padding, which Cilium never asks for
        self.padding = padding
        self._buf: list[str] = []

    def write(self, text: str) -> None:
        self._buf.append(text)

    def getvalue(self) -> str:
        """Format everything written so far (like ``Flush``) and return it."""
        raw = "".join(self._buf)
        lines = [line.split("\t") for line in raw.split("\n")]
        if lines[-1] == [""]:
            lines[-1] = []  # the unterminated last line is empty: Go keeps it with no cells
        out: list[str] = []
        self._format(out, lines, 0, len(lines), [])
        return "".join(out)

    def _format(self, out: list[str], lines: list[list[str]], line0: int, line1: int, widths: list[int]) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            self._write_lines(out, lines, line0, this, widths)
            line0 = this
            width = self.minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + self.padding)
                this += 1
            widths.append(width)
            self._format(out, lines, line0, this, widths)
            widths.pop()
            line0 = this
            this += 1  # the line that ended the block has no cell in this column
        self._write_lines(out, lines, line0, line1, widths)

    @staticmethod
    def _write_lines(out: list[str], lines: list[list[str]], line0: int, line1: int, widths: list[int]) -> None:
        for i in range(line0, line1):
            for j, cell in enumerate(lines[i]):
                out.append(cell)
                if j < len(widths):
                    out.append(" " * (widths[j] - len(cell)))
            if i + 1 < len(lines):
                out.append("\n")
