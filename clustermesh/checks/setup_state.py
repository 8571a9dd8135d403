"""Whether there is a mesh to verify at all: before any setup, one finding says so instead of thirty.

A nightly run against clusters the setup never touched would otherwise report every peer missing,
every entry absent and, after waiting out the whole health timeout, every pair unreachable: true, and
no help. The one fix is to run the setup.
"""

from __future__ import annotations

from collections.abc import Mapping

from clustermesh.checks.findings import Finding, fail
from clustermesh.steps.models import ClusterFacts

__all__ = ["NOT_SET_UP", "mesh_not_set_up"]

NOT_SET_UP = "the mesh is not set up"
RUN_SETUP = (
    "run setup (clustermesh setup --config <this mesh's spec file>, or the mesh-setup deployment); "
    "add --plan first to see what it writes"
)


def mesh_not_set_up(facts: Mapping[str, ClusterFacts]) -> Finding | None:
    """One failure when no cluster that answered has Cluster Mesh enabled or a peer configured, else None.

    Judged on the clusters step 1 could read; a cluster that did not answer has its own finding. One
    cluster with the mesh enabled (a setup stopped half-way) is a mesh to verify: the drift check then
    names what is missing.
    """
    if not facts or any(f.mesh_enabled or f.peers_configured for f in facts.values()):
        return None
    names = ", ".join(facts)
    return fail(
        "mesh",
        f"{NOT_SET_UP}: none of {names} has Cluster Mesh enabled (clustermesh.useAPIServer) or a peer "
        "configured; nothing else was checked",
        RUN_SETUP,
    )
