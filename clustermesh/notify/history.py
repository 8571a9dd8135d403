"""Tonight against earlier nights: what changed since the last run, and whether failover got slower.

Pure: the figures of each night (:class:`NightFigures`, kept by the nightly as a table artifact and read
back from Prefect's API by ``tasks.history``) in, a :class:`Comparison` out, as text lines for the Slack
thread and Markdown for the run's artifact.

**The rule for "slower than usual"** (failover time) and "more failed requests than usual": tonight's
figure is compared with the *median* of the earlier nights that measured it (at most
:data:`MAX_NIGHTS`, at least :data:`MIN_NIGHTS`), and is called out only when it is clearly above: more
than :data:`RATIO` × the median **and** more than the median plus a margin (:data:`FAILOVER_MARGIN_S`
seconds, :data:`FAILED_REQUESTS_MARGIN` requests). The ratio keeps a 0.2 s → 0.25 s wobble quiet, the margin a
0.01 s → 0.03 s one; either alone cries wolf.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clustermesh.checks.findings import Finding
from clustermesh.drill import DrillResult
from clustermesh.notify.messages import seconds
from clustermesh.steps.health_matrix import HealthCell, HealthMatrix

__all__ = [
    "FAILED_REQUESTS_MARGIN",
    "FAILOVER_MARGIN_S",
    "MAX_NIGHTS",
    "MIN_NIGHTS",
    "RATIO",
    "Comparison",
    "NightFigures",
    "PairVerdict",
    "Trend",
    "compare",
    "pair_key",
    "pair_verdict",
]

MAX_NIGHTS = 14
"""Earlier nights the medians are taken over (the newest ones)."""
MIN_NIGHTS = 2
"""Below this many earlier nights with a figure there is no "usual" to compare with."""
RATIO = 1.5
FAILOVER_MARGIN_S = 2.0
FAILED_REQUESTS_MARGIN = 2
FORMAT = "1"

PairVerdict = Literal["healthy", "degraded", "down", "not measured"]
"""A cell of the health matrix: every node reached / some / none (or no agent answered) / no matrix."""
PAIR_VERDICTS: tuple[PairVerdict, ...] = ("healthy", "degraded", "down", "not measured")


def pair_key(src: str, dst: str) -> str:
    return f"{src} → {dst}"


def pair_verdict(cell: HealthCell) -> PairVerdict:
    if cell.healthy:
        return "healthy"
    if cell.agents == 0 or cell.reachable == 0:
        return "down"
    return "degraded"


def _finding_key(finding: Finding) -> str:
    return f"{finding.level}: {finding.subject}"


class NightFigures(BaseModel):
    """What one night measured, as compared with other nights; nothing secret (names and numbers)."""

    model_config = ConfigDict(frozen=True)

    run_id: str = ""
    when: datetime | None = None
    verdict: str
    clusters: list[str] = Field(default_factory=list)
    pairs: dict[str, PairVerdict] = Field(default_factory=dict)
    """``"cluster-1 → cluster-2"`` → its verdict, in the matrix's order."""
    findings: list[str] = Field(default_factory=list)
    """Warnings and failures as ``"level: subject"`` (ok checks are not history)."""
    failover_seconds: float | None = None
    """The slowest cluster's failover in the drill; None when the drill did not fail over."""
    failed_requests: int | None = None
    requests: int | None = None
    cert_expiry_days: int | None = None

    @classmethod
    def of_night(
        cls,
        *,
        verdict: str,
        clusters: Sequence[str],
        findings: Sequence[Finding],
        health: HealthMatrix | None,
        drill: DrillResult | None,
        cert_expiry_days: int | None,
        run_id: str = "",
        when: datetime | None = None,
    ) -> NightFigures:
        pairs: dict[str, PairVerdict] = {}
        for src in clusters:
            for dst in clusters:
                cell = _cell_or_none(health, src, dst)
                pairs[pair_key(src, dst)] = pair_verdict(cell) if cell is not None else "not measured"
        failed_over = drill is not None and bool(drill.failover_seconds)
        return cls(
            run_id=run_id,
            when=when,
            verdict=verdict,
            clusters=list(clusters),
            pairs=pairs,
            findings=[_finding_key(f) for f in findings if f.level != "ok"],
            failover_seconds=max(drill.failover_seconds.values()) if drill and drill.failover_seconds else None,
            failed_requests=drill.failed_probes if failed_over and drill else None,
            requests=drill.probes if failed_over and drill else None,
            cert_expiry_days=cert_expiry_days,
        )

    # -- as a Prefect table artifact (readable in the UI, read back from the API) -----------------

    def table_rows(self) -> list[dict[str, str]]:
        """Rows ``{"figure", "value"}``; :meth:`from_table_rows` reads them back."""
        rows = [
            ("format", FORMAT),
            ("verdict", self.verdict),
            ("clusters", ", ".join(self.clusters)),
            ("failover seconds", _text(self.failover_seconds)),
            ("failed requests", _text(self.failed_requests)),
            ("requests", _text(self.requests)),
            ("nearest certificate expiry days", _text(self.cert_expiry_days)),
        ]
        rows += [(f"pair {pair}", verdict) for pair, verdict in self.pairs.items()]
        rows += [("finding", finding) for finding in self.findings]
        return [{"figure": figure, "value": value} for figure, value in rows]

    @classmethod
    def from_table_rows(
        cls, rows: Sequence[Mapping[str, object]], *, run_id: str = "", when: datetime | None = None
    ) -> NightFigures | None:
        """The figures from :meth:`table_rows`; None for rows of another format (or none at all)."""
        values: dict[str, str] = {}
        pairs: dict[str, PairVerdict] = {}
        findings: list[str] = []
        for row in rows:
            figure, value = str(row.get("figure", "")), str(row.get("value", ""))
            if figure.startswith("pair "):
                pairs[figure.removeprefix("pair ")] = _verdict(value)
            elif figure == "finding":
                findings.append(value)
            else:
                values[figure] = value
        if values.get("format") != FORMAT or "verdict" not in values:
            return None
        return cls(
            run_id=run_id,
            when=when,
            verdict=values["verdict"],
            clusters=[c.strip() for c in values.get("clusters", "").split(",") if c.strip()],
            pairs=pairs,
            findings=findings,
            failover_seconds=_float(values.get("failover seconds")),
            failed_requests=_int(values.get("failed requests")),
            requests=_int(values.get("requests")),
            cert_expiry_days=_int(values.get("nearest certificate expiry days")),
        )


def _cell_or_none(health: HealthMatrix | None, src: str, dst: str) -> HealthCell | None:
    if health is None:
        return None
    try:
        return health.cell(src, dst)
    except KeyError:
        return None


def _text(value: float | int | None) -> str:
    return "" if value is None else str(value)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text and text.strip() else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    number = _float(text)
    return None if number is None else int(number)


def _verdict(text: str) -> PairVerdict:
    for verdict in PAIR_VERDICTS:
        if text == verdict:
            return verdict
    return "not measured"


# ------------------------------------------------------------------------------------------ comparing


class Trend(BaseModel):
    """Tonight's figure against the median of the earlier nights that measured it."""

    model_config = ConfigDict(frozen=True)

    tonight: float
    median: float
    nights: int
    above_usual: bool


def _trend(tonight: float | None, earlier: Sequence[float | None], margin: float) -> Trend | None:
    measured = [v for v in earlier if v is not None]
    if tonight is None or len(measured) < MIN_NIGHTS:
        return None
    median = float(statistics.median(measured))
    above = tonight > RATIO * median and tonight > median + margin
    return Trend(tonight=float(tonight), median=median, nights=len(measured), above_usual=above)


class Comparison(BaseModel):
    """Tonight against the previous night (changes) and the last :data:`MAX_NIGHTS` nights (medians)."""

    model_config = ConfigDict(frozen=True)

    tonight: NightFigures
    earlier: list[NightFigures]
    """Newest first, at most :data:`MAX_NIGHTS`."""
    changed_pairs: list[tuple[str, PairVerdict, PairVerdict]] = Field(default_factory=list)
    new_findings: list[str] = Field(default_factory=list)
    gone_findings: list[str] = Field(default_factory=list)
    failover: Trend | None = None
    failed_requests: Trend | None = None

    @property
    def previous(self) -> NightFigures | None:
        return self.earlier[0] if self.earlier else None

    def lines(self) -> list[str]:
        """Plain lines for the Slack thread and the CLI, the headline first; none starts with an emoji code."""
        previous = self.previous
        if previous is None:
            return ["History: no earlier night of this mesh recorded yet; tonight is the first to compare with."]
        lines = [f"History: tonight against {_nights(len(self.earlier))} (last: {_night(previous)})."]
        lines += self._trend_lines()
        if self.changed_pairs:
            lines += [f"Pair {pair}: {before} → {now} since the last night" for pair, before, now in self.changed_pairs]
        else:
            lines.append("Pairs: no pair changed since the last night.")
        lines += [f"New since the last night: {finding}" for finding in self.new_findings]
        lines += [f"Gone since the last night: {finding}" for finding in self.gone_findings]
        lines.append(self._expiry_line(previous))
        return lines

    def _trend_lines(self) -> list[str]:
        lines = []
        rule = f"rule: above {RATIO:g}× the median and more than {{margin}} above it, over at most {MAX_NIGHTS} nights"
        if self.failover is not None:
            t = self.failover
            text = f"failover {seconds(t.tonight)} vs median {seconds(t.median)} over {_nights(t.nights)}"
            if t.above_usual:
                lines.append(f"Slower than usual: {text} ({rule.format(margin=f'{FAILOVER_MARGIN_S:g} s')}).")
            else:
                lines.append(f"Failover as usual: {text}.")
        elif self.tonight.failover_seconds is not None:
            tonight = seconds(self.tonight.failover_seconds)
            lines.append(f"Failover {tonight}; fewer than {MIN_NIGHTS} earlier nights to compare with.")
        if self.failed_requests is not None:
            t = self.failed_requests
            text = f"{t.tonight:g} failed requests vs median {t.median:g} over {_nights(t.nights)}"
            if t.above_usual:
                margin = f"{FAILED_REQUESTS_MARGIN} requests"
                lines.append(f"More failed requests than usual: {text} ({rule.format(margin=margin)}).")
            else:
                lines.append(f"Failed requests as usual: {text}.")
        return lines

    def _expiry_line(self, previous: NightFigures) -> str:
        now, before = self.tonight.cert_expiry_days, previous.cert_expiry_days
        if now is None:
            return "Nearest certificate expiry: not measured tonight."
        if before is None:
            return f"Nearest certificate expiry: {now} days (not measured the night before)."
        if now > before:
            return f"Nearest certificate expiry: {now} days, was {before}: renewed since the last night."
        return f"Nearest certificate expiry: {now} days, was {before} the night before ({now - before:+d})."

    def markdown(self) -> str:
        """The comparison as a Markdown section: the lines, then tonight's and earlier nights' figures."""
        out = ["## Compared with earlier nights", ""]
        out += [f"- {_md(line)}" for line in self.lines()]
        out += ["", "| Night | Verdict | Failover | Failed requests | Nearest expiry (days) |", "|:--|:--|--:|--:|--:|"]
        for night in [self.tonight, *self.earlier]:
            label = "tonight" if night is self.tonight else _night(night)
            failover = "–" if night.failover_seconds is None else seconds(night.failover_seconds)
            out.append(
                f"| {_md(label)} | {night.verdict} | {failover} | {_dash(night.failed_requests)} "
                f"| {_dash(night.cert_expiry_days)} |"
            )
        return "\n".join(out) + "\n"

    def headline(self) -> str | None:
        """The one line worth a person's attention (slower / more failures), or None."""
        for line in self._trend_lines():
            if line.startswith(("Slower", "More failed")):
                return line
        return None


def compare(tonight: NightFigures, earlier: Sequence[NightFigures]) -> Comparison:
    """Tonight against ``earlier`` (newest first; only the first :data:`MAX_NIGHTS` count)."""
    nights = list(earlier[:MAX_NIGHTS])
    previous = nights[0] if nights else None
    changed: list[tuple[str, PairVerdict, PairVerdict]] = []
    new: list[str] = []
    gone: list[str] = []
    if previous is not None:
        for pair, now in tonight.pairs.items():
            before = previous.pairs.get(pair)
            if before is not None and before != now:
                changed.append((pair, before, now))
        new = [f for f in tonight.findings if f not in previous.findings]
        gone = [f for f in previous.findings if f not in tonight.findings]
    failed_margin = float(FAILED_REQUESTS_MARGIN)
    return Comparison(
        tonight=tonight,
        earlier=nights,
        changed_pairs=changed,
        new_findings=new,
        gone_findings=gone,
        failover=_trend(tonight.failover_seconds, [n.failover_seconds for n in nights], FAILOVER_MARGIN_S),
        failed_requests=_trend(
            None if tonight.failed_requests is None else float(tonight.failed_requests),
            [None if n.failed_requests is None else float(n.failed_requests) for n in nights],
            failed_margin,
        ),
    )


def _nights(n: int) -> str:
    return f"{n} earlier night{'' if n == 1 else 's'}"


def _night(night: NightFigures) -> str:
    if night.when is None:
        return f"time unknown, {night.verdict}"
    when = night.when.astimezone(UTC) if night.when.tzinfo else night.when
    return f"{when:%Y-%m-%d %H:%M} UTC, {night.verdict}"
    return f"{when}, {night.verdict}"


def _dash(value: int | None) -> str:
    return "–" if value is None else str(value)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
