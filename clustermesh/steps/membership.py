"""Managed peers: the ``clusters[]`` entries this pipeline wrote, recorded on the ApplicationInstallation.

Every values write (steps 2, 4, 6) records, in the same request, the names of the peers the pipeline
wrote into ``clustermesh.config.clusters`` (:data:`MANAGED_PEERS_ANNOTATION`). A peer a person added by
hand is never recorded, so it is never ours to touch. A recorded peer whose entry a person deleted is no
longer managed: only names still present in the values count.

The rule built on it: a setup whose spec no longer lists a peer the pipeline manages does not silently
leave it (or later remove it); it stops before any write and says how to resolve it. The nightly
reports the same as a finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clustermesh.errors import PrerequisiteError
from clustermesh.steps.models import ClusterFacts
from clustermesh.values import CLUSTERS_PATH, peer_entries

MANAGED_PEERS_ANNOTATION = "clustermesh.io/managed-peers"
"""Sorted, comma-separated names of the ``clusters[]`` entries this pipeline wrote on this installation."""


def recorded_managed_peers(ai: Mapping[str, Any]) -> list[str]:
    """The names the annotation lists (empty when absent or not a string), sorted and unique."""
    raw = ((ai.get("metadata") or {}).get("annotations") or {}).get(MANAGED_PEERS_ANNOTATION)
    if not isinstance(raw, str):
        return []
    return sorted({name.strip() for name in raw.split(",") if name.strip()})


def managed_peers(ai: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """The recorded peers whose entry is still in ``values`` (either form, ``enabled: false`` included)."""
    present = {str(entry.get("name")) for entry in peer_entries(values)}
    return [name for name in recorded_managed_peers(ai) if name in present]


def managed_peers_after_write(ai: Mapping[str, Any], new_values: Mapping[str, Any], written: Iterable[str]) -> str:
    """The annotation's value for a write of ``new_values`` that carries the peers named ``written``.

    Peers recorded before stay recorded while their entry is still there; entries a person added are
    never added to the record.
    """
    present = {str(entry.get("name")) for entry in peer_entries(new_values)}
    names = (set(recorded_managed_peers(ai)) | set(written)) & present
    return ",".join(sorted(names))


def unlisted_managed_peers(facts: Iterable[ClusterFacts], spec_names: Iterable[str]) -> dict[str, list[str]]:
    """Managed peers the spec no longer lists: each such peer → the clusters (sorted) that hold it."""
    listed = set(spec_names)
    holders: dict[str, list[str]] = {}
    for found in facts:
        for peer in found.managed_peers:
            if peer not in listed:
                holders.setdefault(peer, []).append(found.name)
    return {peer: sorted(names) for peer, names in sorted(holders.items())}


def unlisted_peer_problem(peer: str, holders: Sequence[str]) -> tuple[str, str]:
    """(problem, fix) for one managed peer missing from the spec, naming the clusters that hold it."""
    where = ", ".join(holders)
    problem = f"cluster {peer} is a managed peer of {where} but not in the spec"
    fix = (
        f"put {peer} back in the spec's clusters, or, if it left the mesh, delete the entry named {peer} from "
        f"{'.'.join(CLUSTERS_PATH)} in the cilium ApplicationInstallation values of {where} "
        "(KKP UI → Applications), then run the setup again"
    )
    return problem, fix


def refuse_unlisted_managed_peers(facts: Sequence[ClusterFacts]) -> None:
    """Stop the setup before any write when a peer the pipeline manages is missing from the spec.

    ``facts`` are step 1's facts of every cluster in the spec, so their names are the spec's members.
    """
    missing = unlisted_managed_peers(facts, [f.name for f in facts])
    if not missing:
        return
    problems = [unlisted_peer_problem(peer, holders) for peer, holders in missing.items()]
    raise PrerequisiteError(
        next(iter(missing)),
        "; ".join(problem for problem, _ in problems) + "; nothing was written",
        fix="; ".join(fix for _, fix in problems),
    )
