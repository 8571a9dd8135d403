"""Evidence on failure: what an engineer would look at first when a nightly check or a drill phase fails.

Pure: which members are affected (and towards which peers), which agent commands to run, how their
output is cut to what matters (the ``ClusterMesh:`` block of ``cilium status``, the drill Service's rows
of ``cilium service list``), truncated (at most :data:`MAX_LINES` lines a section, "… N more lines") and
redacted (certificates, keys and tokens never leave: :func:`redact`). Running the commands is
``tasks.evidence``'s job.

Bounded: at most :data:`MAX_AGENTS` agents, one per affected member. A command that fails or is missing
is recorded as such; ``troubleshoot clustermesh`` (Cilium 1.16, backported to late 1.14/1.15 patches,
cilium#32336) answers "unknown command" on lines without it, and the evidence then says
"not available on <version>".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from clustermesh.checks.findings import Finding
from clustermesh.kube.api_errors import redact_shapes

MAX_AGENTS = 4
"""Agents asked at most: one per affected member."""
MAX_LINES = 40
"""Lines kept of each command's output (after cutting to the part that matters)."""
COMMAND_TIMEOUT = 20.0
"""Seconds each command may take in the agent before it is recorded as timed out."""

REDACTED_PEM = "[redacted {kind}]"

# Any PEM block (certificate, key, CSR), cut short or not; and base64 of PEM ("LS0tLS1CRUdJTi" is
# "-----BEGIN") or of DER certificates and keys ("MII…"), as Secrets and Helm values carry them.
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL)
_B64_PEM = re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=_-]*")
_B64_DER = re.compile(r"MII[A-Za-z0-9+/]{60,}={0,2}")
_FINDING_PAIR = re.compile(r"^(\S+) → (\S+)")


def redact(text: str) -> str:
    """Text safe for Slack and artifacts: PEM blocks, their base64 and tokens struck out.

    Certificate *facts* (subject, issuer, validity, serial) stay: they are what the engineer needs.
    """
    text = _PEM.sub(lambda m: REDACTED_PEM.format(kind=m.group(1).lower()), text)
    text = _B64_PEM.sub("[redacted base64 PEM]", text)
    text = _B64_DER.sub("[redacted base64 DER]", text)
    return redact_shapes(text)


def truncate(text: str, max_lines: int = MAX_LINES) -> str:
    """The first ``max_lines`` lines and "… N more lines" for the rest."""
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join([*lines[:max_lines], f"… {len(lines) - max_lines} more lines"])


# ------------------------------------------------------------------------------------ who and what


class EvidenceTarget(BaseModel):
    """One affected member: the agent of it to ask, and the peers it cannot reach (empty: all)."""

    model_config = ConfigDict(frozen=True)

    cluster: str
    peers: tuple[str, ...] = ()
    why: str


def _add(found: dict[str, tuple[set[str], list[str]]], cluster: str, peer: str | None, why: str) -> None:
    peers, reasons = found.setdefault(cluster, (set(), []))
    if peer is not None and peer != cluster:
        peers.add(peer)
    if why not in reasons:
        reasons.append(why)


def affected_members(
    clusters: Sequence[str],
    findings: Iterable[Finding],
    unhealthy_pairs: Iterable[tuple[str, str]] = (),
    failed_phases: Iterable[tuple[str | None, str]] = (),
) -> list[EvidenceTarget]:
    """The members whose agents to ask, at most :data:`MAX_AGENTS`, in the order the failures name them.

    ``unhealthy_pairs``: health-matrix cells (src, dst) that are not healthy: src's agents cannot reach dst.
    ``failed_phases``: failed drill phases (cluster or None, name): the disrupted cluster's peers watch it.
    Failure findings add the clusters they name (``a → b`` subjects, ``Finding.clusters``, a cluster subject).
    """
    known = list(clusters)
    found: dict[str, tuple[set[str], list[str]]] = {}
    for src, dst in unhealthy_pairs:
        _add(found, src, dst, f"cannot reach {dst} (health matrix)")
    for cluster, phase in failed_phases:
        for member in [c for c in known if c != cluster] if cluster else known:
            _add(found, member, cluster, f"drill phase {phase} failed" + (f" ({cluster})" if cluster else ""))
    for finding in findings:
        if finding.level != "failure":
            continue
        pair = _FINDING_PAIR.match(finding.subject)
        if pair and pair.group(1) in known:
            _add(found, pair.group(1), pair.group(2) if pair.group(2) in known else None, finding.subject)
            continue
        named = [c for c in finding.clusters if c in known] or [c for c in known if c == finding.subject]
        for cluster in named:
            _add(found, cluster, None, finding.subject)
    targets = [
        EvidenceTarget(cluster=c, peers=tuple(sorted(peers)), why="; ".join(reasons)[:300])
        for c, (peers, reasons) in found.items()
    ]
    return targets[:MAX_AGENTS]


def troubleshoot_argv(cli: str, peers: Sequence[str]) -> list[str]:
    return [cli, "troubleshoot", "clustermesh", *peers]


def status_argv(cli: str) -> list[str]:
    return [cli, "status", "--verbose"]


def service_list_argv(cli: str) -> list[str]:
    return [cli, "service", "list"]


# ------------------------------------------------------------------------------------ cutting output


def clustermesh_block(status: str) -> str:
    """The ``ClusterMesh:`` line of ``cilium status`` and its indented details; empty when absent."""
    lines = status.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ClusterMesh:"):
            block = [line]
            block.extend(next_line for next_line in _indented(lines[i + 1 :]))
            return "\n".join(block)
    return ""


def _indented(lines: Sequence[str]) -> Iterable[str]:
    for line in lines:
        if not line.startswith((" ", "\t")):
            return
        yield line


def service_rows(service_list: str, frontend: str | None) -> str:
    """The header and the rows of ``frontend`` ("ip:port") in ``cilium service list``; all when None or absent."""
    lines = service_list.rstrip("\n").splitlines()
    if frontend is None or not lines:
        return "\n".join(lines)
    kept = [lines[0]]
    inside = False
    for line in lines[1:]:
        cells = line.split()
        starts_row = bool(cells) and not line.startswith((" ", "\t"))
        if starts_row:
            inside = any(cell == frontend or cell.startswith(frontend + "/") for cell in cells[:2])
        if inside:
            kept.append(line)
    if len(kept) == 1:
        return "\n".join([*kept, f"(no entry for {frontend}: the agent does not list the drill Service)"])
    return "\n".join(kept)


# ------------------------------------------------------------------------------------ the result


class EvidenceSection(BaseModel):
    """One command's answer, cut, truncated and redacted; ``ok`` False when it failed or is unavailable."""

    model_config = ConfigDict(frozen=True)

    title: str
    command: str
    ok: bool
    text: str


def unknown_command(stderr: str) -> bool:
    return 'unknown command "troubleshoot"' in stderr


def section(
    title: str,
    argv: Sequence[str],
    outcome: tuple[int, str, str] | str,
    *,
    version: str | None = None,
    cut: Callable[[str], str] | None = None,
) -> EvidenceSection:
    """One section from a command's ``(exit code, stdout, stderr)`` or the error that kept it from running."""
    command = " ".join(argv)
    if isinstance(outcome, str):
        return EvidenceSection(title=title, command=command, ok=False, text=redact(f"not run: {outcome}")[:500])
    code, stdout, stderr = outcome
    if code != 0 and unknown_command(stderr):
        on = f"Cilium {version}" if version else "this Cilium version"
        text = f"not available on {on} (the agent answers: {stderr.strip().splitlines()[0]})"
        return EvidenceSection(title=title, command=command, ok=False, text=redact(text))
    body = cut(stdout) if cut is not None and code == 0 else stdout
    if code != 0:
        body = f"exited {code}: {(stderr or stdout).strip()}"
    return EvidenceSection(title=title, command=command, ok=code == 0, text=truncate(redact(body)))


class AgentEvidence(BaseModel):
    model_config = ConfigDict(frozen=True)

    cluster: str
    agent: str | None
    why: str
    version: str | None = None
    sections: list[EvidenceSection] = []
    problem: str | None = None
    """Why no agent could be asked (no running agent, the cluster not reachable)."""


class Evidence(BaseModel):
    """Everything collected for one failing run: per affected member one agent, and the last probe results."""

    model_config = ConfigDict(frozen=True)

    subject: str
    agents: list[AgentEvidence] = []
    probes: list[str] = []

    @property
    def empty(self) -> bool:
        return not self.agents and not self.probes

    def markdown(self) -> str:
        out = [f"# Evidence: {self.subject}", ""]
        for agent in self.agents:
            where = f"{agent.cluster}/{agent.agent}" if agent.agent else agent.cluster
            out.append(f"## {where}" + (f" (Cilium {agent.version})" if agent.version else ""))
            out.append(f"Why this member: {agent.why}")
            if agent.problem:
                out.append(f"\nNot collected: {agent.problem}")
            for sec in agent.sections:
                out += ["", f"### {sec.title}" + ("" if sec.ok else " (failed)"), f"`{sec.command}`", "```"]
                out += [sec.text.replace("```", "'''"), "```"]
            out.append("")
        if self.probes:
            out += ["## Last probe results", "```", *self.probes, "```"]
        return "\n".join(out)

    def slack_lines(self) -> list[str]:
        """The same as plain lines for the Slack thread (Notifier.post_details escapes and batches them)."""
        lines = [f"Evidence: {self.subject}"]
        for agent in self.agents:
            where = f"{agent.cluster}/{agent.agent}" if agent.agent else agent.cluster
            lines.append(f"== {where}" + (f" (Cilium {agent.version})" if agent.version else "") + f": {agent.why}")
            if agent.problem:
                lines.append(f"not collected: {agent.problem}")
            for sec in agent.sections:
                lines.append(f"-- {sec.title}: {sec.command}" + ("" if sec.ok else " (failed)"))
                lines.extend(sec.text.splitlines())
        if self.probes:
            lines.append("== last probe results")
            lines.extend(self.probes)
        return lines


def probe_lines(health_text: str | None, drill_rows: Sequence[Mapping[str, str]] = ()) -> list[str]:
    """The last probe results the run has: the health matrix as text, the drill phases with their probes."""
    lines = truncate(redact(health_text), MAX_LINES).splitlines() if health_text else []
    for row in drill_rows:
        probes = f", failed probes {row['failed probes']}" if row.get("failed probes") else ""
        lines.append(
            f"drill {row.get('phase')} {row.get('cluster')}: {row.get('status')}{probes}; {row.get('detail', '')}"[:300]
        )
    return lines


__all__ = [
    "COMMAND_TIMEOUT",
    "MAX_AGENTS",
    "MAX_LINES",
    "AgentEvidence",
    "Evidence",
    "EvidenceSection",
    "EvidenceTarget",
    "affected_members",
    "clustermesh_block",
    "probe_lines",
    "redact",
    "section",
    "service_list_argv",
    "service_rows",
    "status_argv",
    "troubleshoot_argv",
    "truncate",
]
