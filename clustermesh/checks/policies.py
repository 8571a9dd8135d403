"""The nightly's finding about network policies that match only local endpoints (Cilium 1.19+).

Step 1 lists them (:func:`clustermesh.steps.step1_prerequisites.check_prerequisites`, into
``ClusterFacts.local_only_policies``) when ``clustermesh.policyDefaultLocalCluster`` is in effect; the rule
of which policies change meaning is :mod:`clustermesh.cilium.policies` (cilium-cli's
``inspect-policy-default-local-cluster``). The rule sits below the steps so that step 1 can use it too.
"""

from __future__ import annotations

from collections.abc import Mapping

from clustermesh.checks.findings import Finding, warn
from clustermesh.cilium.policies import local_only_warning
from clustermesh.steps.models import ClusterFacts

__all__ = ["policy_findings"]


def policy_findings(facts: Mapping[str, ClusterFacts]) -> list[Finding]:
    """One warning per cluster whose policies change meaning, naming them (the first few, then a count)."""
    findings = []
    for name, found in facts.items():
        if found.local_only_policies:
            reason, fix = local_only_warning(name, found.cilium_version, found.local_only_policies)
            findings.append(warn(name, reason, fix))
    return findings
