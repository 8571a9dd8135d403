"""Undoing a failover from its record: only where the backend still shows the drill's hand.

A failover writes the original count into :data:`ORIGINAL_REPLICAS_ANNOTATION` and scales the backend to
:data:`FAILOVER_REPLICAS`. Whoever undoes it (the restore, the rollback, the next drill) scales back only
a backend still at that count: a count someone set since is theirs, and is left as it is. The record is
dropped either way, and the caller says which it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clustermesh.drill.client import DrillClient
from clustermesh.drill.manifests import BACKEND, FAILOVER_REPLICAS, ORIGINAL_REPLICAS_ANNOTATION
from clustermesh.drill.workloads import parse_count, recorded, replicas_of
from clustermesh.stopping import note_written


@dataclass(frozen=True)
class Undone:
    """What undoing one record found and did."""

    cluster: str
    found: int
    """The backend's replica count when it was read."""
    target: int
    """The count the record asked for (``drill.replicas`` when the record was unreadable)."""
    record: str
    """The record as written."""
    note: str = ""
    """Set when the record was unreadable: says which count was used instead."""
    name: str = BACKEND
    """The Deployment: the drill's backend, or ``clustermesh-apiserver`` (the cluster-loss drill)."""

    @property
    def restored(self) -> bool:
        """Scaled back: the backend was still at the count the failover set."""
        return self.found == FAILOVER_REPLICAS and self.target != FAILOVER_REPLICAS

    @property
    def kept(self) -> bool:
        """Someone else set another count since the failover: left as it is."""
        return self.found not in (FAILOVER_REPLICAS, self.target)

    def describe(self, namespace: str, *, since: str) -> str:
        """One line for the operator; ``since`` names the failover ("an earlier drill", "the failover")."""
        where = f"{self.cluster}/{namespace}/{self.name}"
        if self.restored:
            return f"restored {where} to {self.target} replicas left at {self.found} by {since}{self.note}"
        if self.kept:
            return (
                f"left {where} at {self.found} replicas: someone changed it after {since} scaled it to "
                f"{FAILOVER_REPLICAS} (its record said {self.record}); not restored, record dropped"
            )
        return f"dropped the record {since} left on {where}: it is at {self.target} replicas already"


def undo_recorded(
    client: DrillClient,
    cluster: str,
    namespace: str,
    *,
    default: int,
    wait_ready: Callable[[int], None] | None = None,
    name: str = BACKEND,
) -> Undone | None:
    """Scale Deployment ``name`` (the backend) back to its recorded count if it still shows the drill's hand;
    drop the record.

    None when nothing is recorded. An unreadable record falls back to ``default`` (the note says so).
    With ``wait_ready`` the record is dropped only once the count is back and Ready, so a failure leaves it.
    """
    deployment = client.get_deployment(namespace, name)
    record = None if deployment is None else recorded(deployment)
    if deployment is None or record is None:
        return None
    target = parse_count(record)
    note = ""
    if target is None:
        target = default
        note = f" (record {record!r} unreadable: used drill.replicas)"
    undone = Undone(cluster=cluster, found=replicas_of(deployment), target=target, record=record, note=note, name=name)
    if undone.restored:
        client.scale_deployment(namespace, name, target)
        note_written(f"{cluster}: scaled {namespace}/{name} back to {target} replicas")
    if wait_ready is not None and not undone.kept:
        wait_ready(target)
    client.patch_deployment_annotations(namespace, name, {ORIGINAL_REPLICAS_ANNOTATION: None})
    return undone
