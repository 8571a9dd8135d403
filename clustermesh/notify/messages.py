"""The messages the team reads: the nightly summary and run alerts, as Block Kit and as plain text.

Message building is pure (models in, Block Kit dicts out) and stays inside Slack's limits, because
Slack answers an oversized payload with ``ok: false`` rather than truncating it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clustermesh.checks.findings import Finding

__all__ = [
    "Alert",
    "Summary",
    "alert_blocks",
    "alert_text",
    "detail_chunks",
    "render_plain",
    "seconds",
    "summary_blocks",
    "summary_text",
]

# Slack's Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks), and our own budget
# below the undocumented ~12k characters of block text per message (msg_blocks_too_long).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
FINDINGS_BUDGET = 9000
MAX_LINE = 500
MAX_REPLY_TEXT = 3500
MAX_REPLIES = 5
MAX_FALLBACK_TEXT = 3000

# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

Status = Literal["PASS", "WARN", "FAIL", "RUNNING"]
_STATUS_WORD: dict[str, str] = {"PASS": "PASSED", "WARN": "WARNINGS", "FAIL": "FAILED", "RUNNING": "RUNNING"}
_LEVEL_WORD: dict[str, str] = {"failure": "FAILURE", "warning": "WARNING", "ok": "OK"}


class Summary(BaseModel):
    """What the team reads the morning after: verdict, the few figures that matter, what to fix."""

    model_config = ConfigDict(frozen=True)

    title: str
    status: Status
    mesh: str
    clusters: int | None = None
    nodes_reachable: int | None = None
    nodes_total: int | None = None
    drill: str | None = None
    failover_seconds: float | None = None
    cert_expiry_days: int | None = None
    run_url: str | None = None
    findings: list[Finding] = Field(default_factory=list)


class Alert(BaseModel):
    """A flow run that ended Failed or Crashed: posted on its own, not into the nightly thread."""

    model_config = ConfigDict(frozen=True)

    flow: str
    run: str
    state: Literal["Failed", "Crashed"]
    error: str
    cluster: str | None = None
    run_url: str | None = None


# ---------------------------------------------------------------------------------------------------
# Message building (pure)
# ---------------------------------------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """mrkdwn treats <, > and & as control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    return f"<{url.replace('|', '%7C').replace('>', '%3E')}|{_escape(label)}>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def seconds(value: float) -> str:
    """A duration for people: tenths from a second up, hundredths below (a 40 ms failover is not "0.0 s")."""
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def _figures(summary: Summary) -> list[tuple[str, str]]:
    """The figures in a fixed order, so every night's message reads the same."""

    def or_not(value: object | None, fmt: str = "{}") -> str:
        return "not measured" if value is None else fmt.format(value)

    if summary.nodes_total is None:
        nodes = "not measured"
    else:
        nodes = f"{summary.nodes_reachable if summary.nodes_reachable is not None else '?'}/{summary.nodes_total}"
    days = summary.cert_expiry_days
    if days is None:
        expiry = "not measured"
    elif days < 0:
        expiry = f"expired {_plural(-days, 'day')} ago"
    else:
        expiry = f"in {_plural(days, 'day')}"
    return [
        ("Mesh", summary.mesh),
        ("Clusters", or_not(summary.clusters)),
        ("Nodes reachable", nodes),
        ("Failover drill", or_not(summary.drill)),
        ("Failover time", "not measured" if summary.failover_seconds is None else seconds(summary.failover_seconds)),
        ("Nearest certificate expiry", expiry),
    ]


def _problems(summary: Summary) -> list[Finding]:
    """Failures first, then warnings: the reader fixes from the top."""
    failures = [f for f in summary.findings if f.level == "failure"]
    warnings = [f for f in summary.findings if f.level == "warning"]
    return failures + warnings


def _finding_line(finding: Finding, *, markdown: bool) -> str:
    word = _LEVEL_WORD[finding.level]
    if markdown:
        line = f"*{word}* {_escape(finding.subject)}: {_escape(finding.reason)}"
        if finding.fix:
            line += f" Fix: {_escape(finding.fix)}"
    else:
        line = f"{word} {finding.subject}: {finding.reason}"
        if finding.fix:
            line += f" Fix: {finding.fix}"
    return _cut(line, MAX_LINE)


def _counts(summary: Summary) -> str:
    failures = sum(1 for f in summary.findings if f.level == "failure")
    warnings = sum(1 for f in summary.findings if f.level == "warning")
    oks = sum(1 for f in summary.findings if f.level == "ok")
    return f"{_plural(failures, 'failure')}, {_plural(warnings, 'warning')}, {oks} ok"


def _pack_lines(lines: list[str], *, chunk: int, budget: int, max_chunks: int, unit: str) -> list[str]:
    """Join lines into at most ``max_chunks`` texts of ≤ ``chunk`` chars, ≤ ``budget`` in total.

    What does not fit is replaced by ``… and N more <unit>s`` at the end, which itself always fits.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    used = 0
    reserve = 40  # room for the "… and N more" line
    for index, line in enumerate(lines):
        is_last = index == len(lines) - 1
        room_chunk = chunk - (0 if is_last else reserve)
        need = len(line) + (1 if current else 0)
        if size + need > room_chunk and current and len(chunks) + 1 < max_chunks:
            chunks.append("\n".join(current))
            used += size
            current, size = [], 0
            need = len(line)
        if size + need > room_chunk or used + size + need > budget - (0 if is_last else reserve):
            rest = len(lines) - index
            current.append(f"… and {rest} more {unit}{'' if rest == 1 else 's'}")
            break
        current.append(line)
        size += need
    if current:
        chunks.append("\n".join(current))
    return chunks


def summary_blocks(summary: Summary) -> list[dict[str, Any]]:
    """Block Kit for the parent message: header, figures, warnings/failures, run link.

    Stays within Slack's limits whatever the input: ≤50 blocks, section text ≤3000, ≤10 fields of
    ≤2000, and a findings budget below the undocumented per-message total.
    """
    header = _cut(f"{_STATUS_WORD[summary.status]}: {summary.title}", MAX_HEADER)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{name}*\n{_escape(value)}", MAX_FIELD_TEXT)}
                for name, value in _figures(summary)[:MAX_FIELDS]
            ],
        },
    ]
    problems = _problems(summary)
    if problems:
        lines = [f"*Checks: {_counts(summary)}*"] + [_finding_line(f, markdown=True) for f in problems]
        spare = MAX_BLOCKS - len(blocks) - 1  # keep one for the context line
        for text in _pack_lines(
            lines, chunk=MAX_SECTION_TEXT, budget=FINDINGS_BUDGET, max_chunks=spare, unit="finding"
        ):
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    elif summary.findings:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"All checks passed ({_counts(summary)})."},
            }
        )
    if summary.run_url:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _link(summary.run_url, "Open the flow run")}],
            }
        )
    return blocks


def summary_text(summary: Summary) -> str:
    """Notification and screen-reader fallback: verdict first, then the counts."""
    text = f"{_STATUS_WORD[summary.status]}: {summary.title} (mesh {summary.mesh})"
    if summary.findings:
        text += f" — {_counts(summary)}"
    problems = _problems(summary)
    if problems:
        text += f". First: {_finding_line(problems[0], markdown=False)}"
    return _cut(text, MAX_FALLBACK_TEXT)


def render_plain(summary: Summary) -> str:
    """The whole summary as plain text, for the console and the flow artifact; nothing is cut."""
    lines = [f"{_STATUS_WORD[summary.status]}: {summary.title}", ""]
    figures = _figures(summary)
    width = max(len(name) for name, _ in figures) + 1
    lines += [f"  {name + ':':<{width}} {value}" for name, value in figures]
    if summary.findings:
        lines += ["", f"Checks: {_counts(summary)}"]
        for finding in _problems(summary):
            lines.append(f"  {_LEVEL_WORD[finding.level]:<8} {finding.subject}: {finding.reason}")
            if finding.fix:
                lines.append(f"  {'':<8} fix: {finding.fix}")
    if summary.run_url:
        lines += ["", f"Run: {summary.run_url}"]
    return "\n".join(lines) + "\n"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(no error message)"


def alert_text(alert: Alert) -> str:
    """One line a phone notification can show whole."""
    where = f" on cluster {alert.cluster}" if alert.cluster else ""
    return _cut(
        f"{alert.state.upper()}: flow {alert.flow}, run {alert.run}{where} — {_first_line(alert.error)}",
        MAX_FALLBACK_TEXT,
    )


def alert_blocks(alert: Alert) -> list[dict[str, Any]]:
    """Block Kit for a failed or crashed run: what, where, the first error line, the link."""
    fields = [("Flow", alert.flow), ("Run", alert.run), ("State", alert.state)]
    if alert.cluster:
        fields.append(("Cluster", alert.cluster))
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"{alert.state.upper()}: {alert.flow}", MAX_HEADER)},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{name}*\n{_escape(value)}", MAX_FIELD_TEXT)}
                for name, value in fields
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut(f"*Error*\n{_escape(_first_line(alert.error))}", MAX_SECTION_TEXT),
            },
        },
    ]
    if alert.run_url:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _link(alert.run_url, "Open the flow run")}],
            }
        )
    return blocks


def detail_chunks(lines: Sequence[str]) -> list[str]:
    """Thread replies: each line cut and escaped, packed into at most a few messages."""
    cut = [_escape(_cut(line, MAX_LINE)) for line in lines]
    return _pack_lines(
        cut, chunk=MAX_REPLY_TEXT, budget=MAX_REPLY_TEXT * MAX_REPLIES, max_chunks=MAX_REPLIES, unit="line"
    )
