"""The messages the team reads: the nightly summary and run alerts, as Block Kit, plain text and Markdown.

Message building is pure (models in, Block Kit dicts or text out) and stays inside Slack's limits,
because Slack answers an oversized payload with ``ok: false`` rather than truncating it.

What a reader sees, in this order: the verdict with a coloured mark (green / yellow / red circle), the
few figures that matter, the failures and warnings (failures first) each with its fix on a line of its
own, the link to the flow run. In the thread: every check, failures first and the ``ok`` lines last.
Slack shows node names short (``…nljcd`` for ``mn8h16khqy-worker-qvm9kk-f8b546b32b-nljcd``); the
artifact and the plain text keep them whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clustermesh.checks.findings import Finding

__all__ = [
    "GUIDE_URL",
    "Alert",
    "Summary",
    "alert_blocks",
    "alert_text",
    "detail_chunks",
    "finding_details",
    "render_markdown",
    "render_plain",
    "seconds",
    "short_node_names",
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

# The KKP guide the pipeline follows; its step 7 lists the firewall rules a mesh needs.
GUIDE_URL = "https://docs.kubermatic.com/kubermatic/main/tutorials-howtos/networking/cilium-cluster-mesh/"
_STEP7_RULES = "step 7's rules"

# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

Status = Literal["PASS", "WARN", "FAIL", "RUNNING"]
Level = Literal["failure", "warning", "ok"]
_STATUS_WORD: dict[str, str] = {"PASS": "PASSED", "WARN": "WARNINGS", "FAIL": "FAILED", "RUNNING": "RUNNING"}
# Slack shortcodes (rendered as emoji in headers with ``emoji: true``, in mrkdwn and in notifications)
_STATUS_EMOJI: dict[str, str] = {
    "PASS": ":large_green_circle:",
    "WARN": ":large_yellow_circle:",
    "FAIL": ":red_circle:",
    "RUNNING": ":hourglass_flowing_sand:",
}
_LEVEL_EMOJI: dict[str, str] = {"failure": ":x:", "warning": ":warning:", "ok": ":white_check_mark:"}
# the same marks for Markdown (the Prefect UI does not know Slack's shortcodes)
_STATUS_ICON: dict[str, str] = {"PASS": "🟢", "WARN": "🟡", "FAIL": "🔴", "RUNNING": "⏳"}
_LEVEL_ICON: dict[str, str] = {"failure": "❌", "warning": "⚠️", "ok": "✅"}
_LEVEL_WORD: dict[str, str] = {"failure": "FAILURE", "warning": "WARNING", "ok": "OK"}
_LEVEL_ORDER: tuple[Level, ...] = ("failure", "warning", "ok")


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
    # per cluster, its certificate that expires first: (cluster, days left, "Secret key"); shown when given
    cert_expiry_per_cluster: list[tuple[str, int, str]] = Field(default_factory=list)
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
# Text helpers (pure)
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


# A generated Kubernetes name: four or more dash-separated parts, at least two of them hash-like
# (letters and digits), e.g. KKP's <cluster id>-<machine deployment>-<hash>-<hash>-<suffix>.
_NAME = re.compile(r"(?<![\w.-])([a-z0-9]+(?:-[a-z0-9]+){3,})(?![\w-])")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _generated(name: str) -> bool:
    parts = name.split("-")
    hashy = sum(1 for p in parts if any(c.isdigit() for c in p) and any(c.isalpha() for c in p))
    return len(name) >= 24 and hashy >= 2 and not _UUID.match(name)


def short_node_names(text: str) -> str:
    """Generated node names cut to their unique last part: ``…nljcd`` (still greppable in ``kubectl get nodes``)."""
    return _NAME.sub(lambda m: "…" + m.group(1).rsplit("-", 1)[1] if _generated(m.group(1)) else m.group(1), text)


def _figures(summary: Summary) -> list[tuple[str, str]]:
    """The figures in a fixed order, so every night's message reads the same."""

    def or_not(value: object | None, fmt: str = "{}") -> str:
        return "not measured" if value is None else fmt.format(value)

    if summary.nodes_total is None:
        nodes = "not measured"
    else:
        nodes = f"{summary.nodes_reachable if summary.nodes_reachable is not None else '?'}/{summary.nodes_total}"
    days = summary.cert_expiry_days
    figures = [
        ("Mesh", summary.mesh),
        ("Clusters", or_not(summary.clusters)),
        ("Nodes reachable", nodes),
        ("Failover drill", or_not(summary.drill)),
        ("Failover time", "not measured" if summary.failover_seconds is None else seconds(summary.failover_seconds)),
        ("Nearest certificate expiry", "not measured" if days is None else _expiry(days)),
    ]
    if summary.cert_expiry_per_cluster:
        per_cluster = "; ".join(f"{c}: {_expiry(d)} ({cert})" for c, d, cert in summary.cert_expiry_per_cluster)
        figures.append(("Certificate expiry per cluster", per_cluster))
    return figures


def _expiry(days: int) -> str:
    return f"expired {_plural(-days, 'day')} ago" if days < 0 else f"in {_plural(days, 'day')}"


def _ordered(findings: Sequence[Finding], levels: Sequence[Level] = _LEVEL_ORDER) -> list[Finding]:
    """Failures first, then warnings, then ok: the reader fixes from the top. Stable within a level."""
    return [f for level in levels for f in findings if f.level == level]


def _problems(summary: Summary) -> list[Finding]:
    return _ordered(summary.findings, ("failure", "warning"))


def _counts(summary: Summary) -> str:
    failures = sum(1 for f in summary.findings if f.level == "failure")
    warnings = sum(1 for f in summary.findings if f.level == "warning")
    oks = sum(1 for f in summary.findings if f.level == "ok")
    return f"{_plural(failures, 'failure')}, {_plural(warnings, 'warning')}, {oks} ok"


def _heading(summary: Summary) -> str:
    return f"{_STATUS_WORD[summary.status]}: {summary.title}"


def _finding_mrkdwn(finding: Finding) -> str:
    """``:x: *subject*: reason`` and, on a line of its own, ``↳ Fix: …`` (step 7's rules linked)."""
    subject = _escape(_cut(short_node_names(finding.subject), 200))
    reason = _escape(_cut(short_node_names(finding.reason), MAX_LINE))
    text = f"{_LEVEL_EMOJI[finding.level]} *{subject}*: {reason}"
    if finding.fix:
        fix = _escape(_cut(short_node_names(finding.fix), MAX_LINE))
        text += "\n      ↳ *Fix:* " + fix.replace(_STEP7_RULES, _link(GUIDE_URL, _STEP7_RULES), 1)
    return text


def _pack_lines(lines: list[str], *, chunk: int, budget: int, max_chunks: int, unit: str) -> list[str]:
    """Join lines into at most ``max_chunks`` texts of ≤ ``chunk`` chars, ≤ ``budget`` in total.

    What does not fit is replaced by ``… and N more <unit>s`` at the end, which itself always fits.
    A "line" may hold a newline (a finding and its fix): it is kept together.
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


# ---------------------------------------------------------------------------------------------------
# Slack: the summary (parent message and thread)
# ---------------------------------------------------------------------------------------------------


def summary_blocks(summary: Summary) -> list[dict[str, Any]]:
    """Block Kit for the parent message: verdict header, figures, failures then warnings, run link.

    Stays within Slack's limits whatever the input: ≤50 blocks, section text ≤3000, ≤10 fields of
    ≤2000, and a findings budget below the undocumented per-message total.
    """
    header = _cut(f"{_STATUS_EMOJI[summary.status]} {_heading(summary)}", MAX_HEADER)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
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
        lines = [f"*Checks: {_counts(summary)}*"] + [_finding_mrkdwn(f) for f in problems]
        spare = MAX_BLOCKS - len(blocks) - 1  # keep one for the context line
        for text in _pack_lines(
            lines, chunk=MAX_SECTION_TEXT, budget=FINDINGS_BUDGET, max_chunks=spare, unit="finding"
        ):
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    elif summary.findings:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f":white_check_mark: All checks passed ({_counts(summary)})."},
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
    """Notification and screen-reader fallback: the verdict's mark and word first, then the counts."""
    text = f"{_STATUS_EMOJI[summary.status]} {_heading(summary)}"
    if summary.mesh not in summary.title:
        text += f" (mesh {summary.mesh})"
    if summary.findings:
        text += f" — {_counts(summary)}"
    problems = _problems(summary)
    if problems:
        first = problems[0]
        text += f". First: {short_node_names(first.subject)}: {short_node_names(first.reason)}"
    return _cut(text, MAX_FALLBACK_TEXT)


def finding_details(summary: Summary) -> list[str]:
    """The thread under the parent: every check as mrkdwn, failures first and the ``ok`` lines last.

    Packed into at most a few replies (Slack allows about one message per second per channel).
    """
    return _pack_lines(
        [_finding_mrkdwn(f) for f in _ordered(summary.findings)],
        chunk=MAX_REPLY_TEXT,
        budget=MAX_REPLY_TEXT * MAX_REPLIES,
        max_chunks=MAX_REPLIES,
        unit="check",
    )


def detail_chunks(lines: Sequence[str]) -> list[str]:
    """Thread replies from plain lines: each line cut and escaped, packed into at most a few messages."""
    cut = [_escape(_cut(line, MAX_LINE)) for line in lines]
    return _pack_lines(
        cut, chunk=MAX_REPLY_TEXT, budget=MAX_REPLY_TEXT * MAX_REPLIES, max_chunks=MAX_REPLIES, unit="line"
    )


# ---------------------------------------------------------------------------------------------------
# The same summary for the console and the Prefect UI
# ---------------------------------------------------------------------------------------------------


def render_plain(summary: Summary) -> str:
    """The whole summary as plain text, for the console and the logs; nothing is cut, names stay whole."""
    lines = [_heading(summary), ""]
    figures = _figures(summary)
    width = max(len(name) for name, _ in figures) + 1
    lines += [f"  {name + ':':<{width}} {value}" for name, value in figures]
    if summary.findings:
        lines += ["", f"Checks: {_counts(summary)}"]
        for finding in _problems(summary):
            lines.append(f"  {_LEVEL_WORD[finding.level]:<8} {finding.subject}: {finding.reason}")
            if finding.fix:
                fix = finding.fix.replace(_STEP7_RULES, f"{_STEP7_RULES}: {GUIDE_URL}", 1)
                lines.append(f"  {'':<8} fix: {fix}")
    if summary.run_url:
        lines += ["", f"Run: {summary.run_url}"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A Markdown table cell: no pipe or newline may end it early, no HTML."""
    return _escape(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def render_markdown(summary: Summary) -> str:
    """The summary as a Markdown artifact: verdict, a table of figures, the run link, every check (failures first)."""
    lines = [f"# {_STATUS_ICON[summary.status]} {_cell(_heading(summary))}", ""]
    lines += ["| Figure | Value |", "|:--|:--|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in _figures(summary)]
    if summary.run_url:
        url = summary.run_url.replace(" ", "%20").replace(")", "%29")
        lines.append(f"| Flow run | [open the flow run]({url}) |")
    if summary.findings:
        lines += ["", f"## Checks: {_counts(summary)}", ""]
        lines += ["| | Check | Result | Fix |", "|:--|:--|:--|:--|"]
        for f in _ordered(summary.findings):
            fix = _cell(f.fix).replace(_STEP7_RULES, f"[{_STEP7_RULES}]({GUIDE_URL})", 1)
            lines.append(f"| {_LEVEL_ICON[f.level]} {f.level} | {_cell(f.subject)} | {_cell(f.reason)} | {fix} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------------------


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
            "text": {
                "type": "plain_text",
                "text": _cut(f":rotating_light: {alert.state.upper()}: {alert.flow}", MAX_HEADER),
                "emoji": True,
            },
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
