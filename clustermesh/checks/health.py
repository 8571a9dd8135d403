"""Step 8's check as findings, diagnosed in order: the configuration first, then the paths.

An unhealthy pair whose configuration is already known to be wrong (a peer entry missing, a bad
certificate, a cluster that failed its prerequisites) is that failure's consequence: its finding points
there, and no port is blamed. So is pod traffic that fails only because the other cluster is not
connected back (replies cannot be routed). A port is named only where the configuration is right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from clustermesh.checks.common import RERUN_SETUP
from clustermesh.checks.findings import Finding
from clustermesh.errors import MeshUnhealthyError
from clustermesh.spec import Timeouts
from clustermesh.steps import step7_reachability as reachability
from clustermesh.steps import step8_health as health

__all__ = ["check_mesh_health", "explained_cells", "health_findings"]

Cell = tuple[str, str]
_MAX_REASON = 300


def _about(finding: Finding, clusters: set[str]) -> tuple[str, ...]:
    """The clusters a finding is about: its ``clusters``, else what its subject names."""
    if finding.clusters:
        return tuple(c for c in finding.clusters if c in clusters)
    src, arrow, dst = finding.subject.partition(" → ")
    if arrow and src in clusters and dst in clusters:
        return src, dst
    first = finding.subject.split(" ", 1)[0]  # "cluster-1", "cluster-1 clustermesh-apiserver-remote-cert"
    return (first,) if first in clusters else ()


def explained_cells(findings: Iterable[Finding], clusters: Sequence[str]) -> dict[Cell, Finding]:
    """Pairs of distinct clusters that a failure found before the health check explains, with that failure.

    A failure about one cluster's configuration of a peer explains both directions between the two
    (agents of neither side connect, or replies cannot come back); a failure about a cluster as a whole
    explains every pair it is part of. Each pair keeps the closest failure: about that direction, else
    the other direction, else the whole cluster; the first found among equals.
    """
    names = set(clusters)
    best: dict[Cell, tuple[int, Finding]] = {}
    for finding in findings:
        if finding.level != "failure":
            continue
        about = _about(finding, names)
        if len(about) >= 2 and about[0] != about[1]:
            a, b = about[:2]
            ranked = [((a, b), 0), ((b, a), 1)]
        elif about:
            a = about[0]
            ranked = [(p, 2) for o in clusters if o != a for p in ((a, o), (o, a))]
        else:
            ranked = []
        for pair, rank in ranked:
            if pair not in best or rank < best[pair][0]:
                best[pair] = (rank, finding)
    return {pair: finding for pair, (_, finding) in best.items()}


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _explained(cell: health.HealthCell, cause: Finding) -> Finding:
    return Finding(
        level="failure",
        subject=f"{cell.src} → {cell.dst}",
        reason=_short(f"{cell.describe()}, explained by the failure above: {cause.subject}: {cause.reason}"),
        fix=f"fix that first ({cause.fix or RERUN_SETUP}), then verify again; no port is blamed while the "
        "configuration is wrong",
    )


def _not_connected_back(blocked: reachability.BlockedPath, reverse: health.HealthCell) -> Finding:
    src, dst = blocked.src_cluster, blocked.dst_cluster
    return Finding(
        level="failure",
        subject=f"{src} → {dst}",
        reason=_short(
            f"pod traffic fails ({blocked.evidence[0] if blocked.evidence else 'endpoint probes'}), and {dst} is "
            f"not connected back to {src} ({reverse.describe()}): replies to pods cannot be routed"
        ),
        fix=f"connect {dst} to {src} first (see {dst} → {src}), then verify again; no port is blamed before that",
    )


def _port(blocked: reachability.BlockedPath) -> Finding:
    src, dst, what = blocked.src_cluster, blocked.dst_cluster, blocked.what
    return Finding(
        level="failure",
        subject=f"{src} → {dst}",
        reason=f"{what} blocked or broken: {blocked.evidence[0] if blocked.evidence else ''}"[:_MAX_REASON],
        fix=f"open {what} from the nodes of {src} to {dst} (step 7's rules)"
        if what != reachability.APISERVER_PATH
        else f"check TCP to {dst}'s clustermesh-apiserver and the mesh values (run the setup again)",
    )


def health_findings(matrix: health.HealthMatrix, found: Sequence[Finding] = ()) -> list[Finding]:
    """What a health matrix says, for the nightly summary, in the light of the failures ``found`` before it.

    One ok for a healthy mesh. Otherwise, per unhealthy pair: one failure pointing at the earlier
    failure that explains it, if any (see :func:`explained_cells`); else one per blocked path, naming
    the port to open, except pod traffic failing only because the other side is not connected back.
    """
    if matrix.healthy:
        return [Finding(level="ok", subject="mesh health", reason=matrix.summary())]
    explained = explained_cells(found, matrix.clusters)
    blocked: dict[Cell, list[reachability.BlockedPath]] = {}
    for b in reachability.blocked_paths(matrix):
        blocked.setdefault((b.src_cluster, b.dst_cluster), []).append(b)
    findings: list[Finding] = []
    for cell in matrix.cells:
        pair = (cell.src, cell.dst)
        if cell.healthy or cell.src == cell.dst:
            continue
        if pair in explained:
            findings.append(_explained(cell, explained[pair]))
            continue
        reverse = matrix.cell(cell.dst, cell.src)
        for b in blocked.get(pair, []):
            back = b.what == reachability.UDP_8472_PATH and bool(reverse.missing)
            findings.append(_not_connected_back(b, reverse) if back else _port(b))
    if not findings:
        findings.append(
            Finding(level="failure", subject="mesh health", reason=matrix.summary(), fix=health.MESH_HEALTH_CHECK)
        )
    return findings


def check_mesh_health(
    clients: Mapping[str, health.HealthClient],
    timeouts: Timeouts,
    *,
    found: Sequence[Finding] = (),
    progress: Callable[[health.HealthProgress], None] | None = None,
    settle: health.SettleRule | None = health.SETTLE,
) -> tuple[health.HealthMatrix, list[Finding]]:
    """The nightly's step 8: wait for health (reporting ``progress``), then the findings.

    Pairs already explained by the failures ``found`` before (drift, certificates, prerequisites) are
    not waited for: the configuration will not heal by itself, so a mesh whose other pairs are healthy
    is judged on the first look. The rest is waited for until healthy, the timeout, or the ``settle``
    rule's early verdict (:class:`~clustermesh.steps.step8_health.SettleRule`).
    """
    known = frozenset(explained_cells(found, list(clients)))
    try:
        matrix = health.wait_for_mesh_health(
            clients,
            timeout=timeouts.health,
            poll_interval=timeouts.poll_interval,
            exec_timeout=timeouts.api,
            progress=progress,
            settle=settle,
            known_broken=known,
        )
    except MeshUnhealthyError as exc:
        if not isinstance(exc.matrix, health.HealthMatrix):
            raise
        matrix = exc.matrix
    return matrix, health_findings(matrix, found)
