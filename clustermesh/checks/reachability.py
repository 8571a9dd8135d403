"""Who answers and what runs there: step 1 of the setup, read-only, as findings.

The later checks look only at the clusters that pass here; a transient API error either becomes a
finding or, inside :func:`~clustermesh.checks.common.transient_errors_raise`, is raised for a retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from clustermesh.checks.common import VerifyClient, error_parts, safe_text
from clustermesh.checks.findings import Finding, fail, ok, warn
from clustermesh.cilium.profiles import parse_cilium_version
from clustermesh.errors import ClusterMeshError, PrerequisiteError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step1_prerequisites import check_mesh_prerequisites, check_prerequisites

__all__ = ["check_reachability_and_versions"]


def check_reachability_and_versions(
    clients: Mapping[str, VerifyClient], spec: MeshSpec
) -> tuple[dict[str, ClusterFacts], list[Finding]]:
    """Step 1 of the setup, read-only, as findings: who answers, what runs there, what rules out a mesh.

    Returns the facts of the clusters that passed (the later checks look only at those) and one
    finding per cluster, plus the cross-cluster rules (overlapping pod CIDRs fail, version skew warns).
    """
    facts: dict[str, ClusterFacts] = {}
    findings: list[Finding] = []
    for cluster in spec.clusters:
        client = clients.get(cluster.name)
        if client is None:
            findings.append(fail(cluster.name, "no client for this cluster", "check clusters[].kubeconfig in the spec"))
            continue
        try:
            # check_prerequisites only reads what VerifyClient offers; it is typed for the real client.
            found = check_prerequisites(cast(ClusterClient, client), cluster, spec)
        except ClusterMeshError as exc:
            reason, fix = error_parts(exc)
            findings.append(fail(cluster.name, reason, fix))
            continue
        facts[cluster.name] = found
        findings.append(ok(cluster.name, _versions(found)))
        findings.extend(_version_line_findings(cluster.name, found))
    if len(facts) >= 2:
        try:
            warnings = check_mesh_prerequisites(list(facts.values()))
        except PrerequisiteError as exc:
            reason, fix = error_parts(exc)
            findings.append(fail(exc.cluster, reason, fix))
        else:
            findings.extend(
                warn("mesh", safe_text(w), "upgrade the older clusters one minor at a time") for w in warnings
            )
    return facts, findings


def _version_line_findings(name: str, found: ClusterFacts) -> list[Finding]:
    """A spec pinning another Cilium version line than the cluster runs: its values are judged wrongly."""
    if not found.detected_cilium_version or found.cilium_version == found.detected_cilium_version:
        return []
    detected_line = parse_cilium_version(found.detected_cilium_version).line
    if detected_line == found.profile_line:
        return []
    return [
        warn(
            name,
            f"the spec says Cilium {found.cilium_version}, the cluster runs "
            f"{found.detected_cilium_version}: values are judged for the wrong version line",
            "update cilium.version in the spec, or remove it so the version is detected",
        )
    ]


def _versions(facts: ClusterFacts) -> str:
    text = f"Cilium {facts.detected_cilium_version}, Kubernetes {facts.kubernetes_version}"
    if facts.cilium_version != facts.detected_cilium_version:
        text += f" (judged as Cilium {facts.cilium_version}, from the spec)"
    return text + f"; {facts.nodes} nodes, prerequisites met"
