"""What every check says: findings (ok / warning / failure, each failure with its fix) and the verdict."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

Verdict = Literal["PASS", "WARN", "FAIL"]


class Finding(BaseModel):
    """One check result; warnings and failures are listed in the summary, ``ok`` ones only counted."""

    model_config = ConfigDict(frozen=True)

    level: Literal["ok", "warning", "failure"]
    subject: str
    reason: str
    fix: str = ""
    clusters: tuple[str, ...] = ()
    """The clusters a finding is about when its subject does not say it (``cluster-1`` missing its
    peer ``cluster-2``: both); empty when the subject does (``cluster-1``, ``cluster-1 → cluster-2``)."""


def overall(findings: Iterable[Finding]) -> Verdict:
    """The run's verdict for the Slack header: any failure fails it, else any warning warns."""
    levels = {f.level for f in findings}
    if "failure" in levels:
        return "FAIL"
    if "warning" in levels:
        return "WARN"
    return "PASS"


def ok(subject: str, reason: str) -> Finding:
    return Finding(level="ok", subject=subject, reason=reason)


def warn(subject: str, reason: str, fix: str) -> Finding:
    return Finding(level="warning", subject=subject, reason=reason, fix=fix)


def fail(subject: str, reason: str, fix: str, *, clusters: tuple[str, ...] = ()) -> Finding:
    return Finding(level="failure", subject=subject, reason=reason, fix=fix, clusters=clusters)
