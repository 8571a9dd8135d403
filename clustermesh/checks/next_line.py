"""The nightly's look ahead: would each member's values survive the next Cilium minor line?

For each cluster, the newest patch of the next line the chart source holds (``cilium.chart.source``) renders
the cluster's current values (``steps/upgrade_check.py``). A refusal, a key that line no longer reads, or a
peer its dialer would read differently is a warning naming the cluster, the version and the key: fixed now,
KKP's upgrade goes through later. Defaults that change are not warned about (``clustermesh upgrade-check``
lists them). No source, a source out of reach or without the next line: a note (ok), said once.
"""

from __future__ import annotations

from collections.abc import Mapping

from clustermesh.checks.common import VerifyClient, error_parts
from clustermesh.checks.findings import Finding, ok, warn
from clustermesh.cilium.chart_source import ChartUnavailableError, latest_in_line
from clustermesh.cilium.profiles import SUPPORTED_LINES, parse_cilium_version
from clustermesh.errors import ClusterMeshError
from clustermesh.lifecycle.upgrade_check import ClusterUpgrade, check_upgrade
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT
from clustermesh.values import read_values

__all__ = ["next_line_findings"]

_SUBJECT = "next Cilium line"


def next_line_findings(
    clients: Mapping[str, VerifyClient], facts: Mapping[str, ClusterFacts], spec: MeshSpec
) -> list[Finding]:
    """Warnings for values the next line's chart would refuse, ignore or dial differently; notes otherwise."""
    source = spec.cilium.chart.source
    if source is None:
        return [ok(_SUBJECT, "not checked: cilium.chart.source is empty")]
    findings: list[Finding] = []
    skipped: dict[str, list[str]] = {}  # reason -> clusters: an unreachable source is said once
    for cluster in spec.clusters:
        found, client = facts.get(cluster.name), clients.get(cluster.name)
        if found is None or client is None:
            continue  # failed the prerequisites: reported there
        current = parse_cilium_version(found.cilium_version)
        line = f"{current.major}.{current.minor + 1}"
        if line not in SUPPORTED_LINES:
            findings.append(ok(cluster.name, f"no next line after Cilium {current.line} is known to this pipeline"))
            continue
        try:
            target = latest_in_line(source, line)
        except ChartUnavailableError as exc:
            skipped.setdefault(f"no Cilium {line} chart: {exc.problem} ({exc.fix})", []).append(cluster.name)
            continue
        try:
            values, _ = read_values(client.get_application_installation())
            remote = (client.get_secret(NAMESPACE, REMOTE_CERT) or {}).get("data") or {}
            result = check_upgrade(
                spec, cluster.name, found.cilium_version, target, values, remote_cert=str(remote.get("tls.crt") or "")
            )
        except ClusterMeshError as exc:  # unreadable values, a renderer setting to fix (helm not on PATH)
            reason, fix = error_parts(exc)
            findings.append(warn(cluster.name, f"Cilium {target} (the next line) not checked: {reason}", fix))
            continue
        findings.extend(_findings(result))
    findings += [ok(_SUBJECT, f"not checked for {', '.join(names)}: {reason}") for reason, names in skipped.items()]
    return findings


def _findings(result: ClusterUpgrade) -> list[Finding]:
    name, target = result.cluster, result.target
    upgrade = f"before upgrading to Cilium {target}"
    found = [
        warn(
            name,
            f"the Cilium {target} chart (the next line) would refuse the values: {refused}",
            f"correct the key in the cluster's cilium ApplicationInstallation values {upgrade} "
            f"(`clustermesh upgrade-check --to {target} --cluster {name}` shows the values that work on both lines)",
        )
        for refused in result.refused
    ]
    found += [
        warn(
            name,
            f"{key} is set, which the Cilium {target} chart (the next line) no longer reads (silently ignored)",
            f"run `clustermesh upgrade-check --to {target} --cluster {name} --yes` {upgrade}: it writes values that "
            f"work on both lines (or remove {key} from the cluster's cilium ApplicationInstallation values)",
        )
        for key in result.ignored
    ]
    found += [
        warn(
            f"{name} → {change.peer}",
            f"with Cilium {target} (the next line): {change.line()}",
            f"run `clustermesh upgrade-check --to {target} --cluster {name}` and adjust the values {upgrade}",
        )
        for change in result.peer_changes
    ]
    if result.skipped:
        found.append(ok(name, f"next line not checked: {result.skipped}"))
    elif not found:
        found.append(ok(name, f"the values render with Cilium {target} (the next line), nothing ignored"))
    return found
