"""Before a Cilium upgrade: values that work on both the current line and the target line, proved by rendering.

``upgrade_check`` lists what the target chart would refuse or silently ignore. For each finding with a known
fix this module computes the values change (only the keys the finding names, plus the key that replaces one;
a person's other keys stay as they are) and proves it with the real charts before proposing it:

- the target chart renders the changed values, and no longer ignores the key;
- the current chart renders them too, and the cluster would run exactly what it runs today (every object,
  every ConfigMap's data, every container's command, args and env; Secret contents and annotations aside);

so KKP's upgrade goes through and nothing changes before it. A fix that fails the proof, and a refusal with no
known fix, is BLOCKING: the reason, and what to do instead (often: upgrade in two hops, one line at a time).

The fixes known (reference/cilium.md §5): ``clustermesh.enableMCSAPISupport`` becomes
``clustermesh.mcsapi.enabled`` (1.19 reads both, 1.20 only the new one); the keys 1.20 removed
(``clustermesh.apiserver.tls.{server,admin,remote}.{cert,key}``, ``tls.enableSecrets``) go; the old
``clustermesh.apiserver.tls.ca`` goes where the target ignores or refuses it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from clustermesh.cilium.chart_source import ChartUnavailableError
from clustermesh.cilium.profiles import REMOVED_IN_1_20, parse_cilium_version, profile_for
from clustermesh.kube import ClusterClient
from clustermesh.lifecycle.upgrade_check import ClusterUpgrade, UpgradeReport, check_upgrade
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.chart_check import ChartValuesRefusedError, check_values, values_checker
from clustermesh.steps.models import ClusterFacts, StepChange
from clustermesh.steps.step1_prerequisites import check_prerequisites
from clustermesh.steps.step2_4_6_mesh_values import write_planned_values
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT
from clustermesh.values import Path, ValuesChange, legacy_paths_to_remove, plan_change, read_values, value_at

__all__ = [
    "ClusterValuesPlan",
    "Fix",
    "UpgradePlan",
    "plan_mesh_upgrade",
    "plan_upgrade_values",
    "write_upgrade_values",
]

MCS_OLD: Path = ("clustermesh", "enableMCSAPISupport")
MCS_NEW: Path = ("clustermesh", "mcsapi", "enabled")
_PROVIDED_CERTS = {p for p in REMOVED_IN_1_20 if p[-1] in ("cert", "key")}
UPGRADE_STEP = "Prepare the values for Cilium"


@dataclass(frozen=True)
class Fix:
    """One finding's values change: keys to remove, and what to set instead (nested, merged into the values)."""

    finding: str
    remove: tuple[Path, ...]
    overlay: dict[str, Any]
    says: str

    def apply(self, values: Mapping[str, Any]) -> ValuesChange:
        return _change(values, [self])


@dataclass
class ClusterValuesPlan:
    """One cluster: the proved values change (or none), what it fixes, and what cannot be fixed this way."""

    cluster: str
    current: str
    target: str
    fixes: list[Fix] = field(default_factory=list)
    change: ValuesChange | None = None
    blocking: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        return self.change is not None and self.change.changed

    def render_text(self) -> str:
        lines = [f"{self.cluster}: values for {self.current} and {self.target}"]
        lines += [f"  FIX      {f.finding}: {f.says}" for f in self.fixes]
        lines += [f"  BLOCKING {b}" for b in self.blocking]
        lines += [f"  note     {n}" for n in self.notes]
        if self.writes:
            assert self.change is not None
            lines += ["  values diff (key material as fingerprints):"]
            lines += [f"    {line}" for line in self.change.diff_lines(redact=True)]
        elif not (self.blocking or self.notes):
            lines.append("  nothing to write: the values already work on both lines")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "current": self.current,
            "target": self.target,
            "fixes": [{"finding": f.finding, "change": f.says} for f in self.fixes],
            "blocking": self.blocking,
            "notes": self.notes,
            "diff": self.change.diff_lines(redact=True) if self.change is not None else [],
        }


# ------------------------------------------------------------------------------ the fixes


def _nest(path: Path, leaf: Any) -> dict[str, Any]:
    node: Any = leaf
    for key in reversed(path):
        node = {key: node}
    return dict(node)


def known_fixes(check: ClusterUpgrade, values: Mapping[str, Any]) -> list[Fix]:
    """A fix per ignored key (and for the old CA key the target refuses); refusals of other keys have none."""
    target = profile_for(check.target)
    fixes: list[Fix] = []
    certs = [tuple(d.split(".")) for d in check.ignored if tuple(d.split(".")) in _PROVIDED_CERTS]
    if certs:  # one fix: the chart refuses any of them left alone (with tls.auto off), so they go together
        fixes.append(
            Fix(
                ", ".join(".".join(p) for p in certs),
                tuple(certs),
                {},
                f"removed (the Cilium {check.target} chart reads no certificates from values; tls.auto issues them)",
            )
        )
    for dotted in check.ignored:
        path = tuple(dotted.split("."))
        if path in _PROVIDED_CERTS:
            continue
        if path == MCS_OLD:
            _, old = value_at(values, MCS_OLD)
            _, new = value_at(values, MCS_NEW)
            enabled = bool(old) or bool(new)
            fixes.append(
                Fix(dotted, (MCS_OLD,), _nest(MCS_NEW, enabled), f"now {'.'.join(MCS_NEW)}: {str(enabled).lower()}")
            )
        else:
            fixes.append(Fix(dotted, (path,), {}, f"removed (the Cilium {check.target} chart no longer reads it)"))
    legacy = legacy_paths_to_remove(target, values, parse_cilium_version(check.target).patch)
    named = {f.finding for f in fixes}
    for path in legacy:
        if ".".join(path) not in named:
            fixes.append(Fix(".".join(path), (path,), {}, f"removed (the Cilium {check.target} chart refuses it)"))
    return fixes


def _change(values: Mapping[str, Any], fixes: list[Fix]) -> ValuesChange:
    overlay: dict[str, Any] = {}
    remove: list[Path] = []
    for fix in fixes:
        overlay = _merged(overlay, fix.overlay)
        remove.extend(fix.remove)
    change = plan_change(values, overlay, remove=remove)
    new = copy.deepcopy(change.new_values)
    for path in change.removed:
        _prune_empty(new, path[:-1])
    current = change.current_values
    return ValuesChange(changed=new != current, new_values=new, current_values=current, removed=change.removed)


def _merged(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _prune_empty(values: dict[str, Any], parent: Path) -> None:
    """Drop mappings our removal left empty (``tls: {server: {}}``), innermost first."""
    for depth in range(len(parent), 0, -1):
        found, node = value_at(values, parent[:depth])
        if not (found and isinstance(node, dict) and not node):
            return
        _, holder = value_at(values, parent[: depth - 1]) if depth > 1 else (True, values)
        del holder[parent[depth - 1]]


# ------------------------------------------------------------------------------ the proof


def _what_runs(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """What a render makes the cluster run, comparable across renders: objects by kind/namespace/name, without
    annotations (checksums) and Secret contents (certificates a render may generate)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "annotations"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    runs = {}
    for obj in manifests:
        meta = obj.get("metadata") or {}
        kept = {k: v for k, v in obj.items() if not (obj.get("kind") == "Secret" and k in ("data", "stringData"))}
        runs[f"{obj.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"] = strip(kept)
    return runs


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    differ = [
        k
        for k in sorted(set(before) | set(after))
        if json.dumps(before.get(k), sort_keys=True, default=str)
        != json.dumps(after.get(k), sort_keys=True, default=str)
    ]
    return [f"{k} {'appears' if k not in before else 'disappears' if k not in after else 'changes'}" for k in differ]


Render = Callable[[str, Mapping[str, Any]], list[dict[str, Any]] | None]


def prove(render: Render, current: str, target: str, values: Mapping[str, Any], fixes: list[Fix]) -> str:
    """ "" when the fixed values render on both lines and the current line runs what it runs today; else why not.
    Within one line (the upgrade done, or a patch upgrade) the fix is for the line the cluster runs: it may
    change what runs (a key that line ignores, set the way it reads it)."""
    new = _change(values, fixes).new_values
    try:
        render(target, new)
    except ChartValuesRefusedError as exc:
        return f"the Cilium {target} chart still refuses the changed values: {' '.join(exc.helm_message.split())}"
    try:
        fixed_today = render(current, new)
    except ChartValuesRefusedError as exc:
        return f"the Cilium {current} chart refuses the changed values: {' '.join(exc.helm_message.split())}"
    if parse_cilium_version(current).line == parse_cilium_version(target).line:
        return ""
    try:
        today = render(current, values)
    except ChartValuesRefusedError:
        return ""  # the current values fail today already: valid on both lines is all that can be asked
    changes = _differences(_what_runs(today or []), _what_runs(fixed_today or []))
    if changes:
        shown = "; ".join(changes[:3]) + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")
        return f"with the change, Cilium {current} would run differently before the upgrade: {shown}"
    return ""


def _instead(fix: Fix, current: str, target: str, values: Mapping[str, Any]) -> str:
    """What to do when no form of ``fix`` is valid on both lines."""
    now, then = parse_cilium_version(current), parse_cilium_version(target)
    if then.minor > now.minor + 1:
        return (
            f"upgrade in two hops, one line at a time: first to Cilium {now.major}.{now.minor + 1} (run "
            f"upgrade-check --to that version and write what it proposes), then to {target}"
        )
    tuple_path = tuple(fix.finding.split("."))
    _, auto = value_at(values, ("clustermesh", "apiserver", "tls", "auto", "enabled"))
    if (fix.remove[0] in _PROVIDED_CERTS or tuple_path[-1] == "enableSecrets") and auto is False:
        return (
            "tls.auto.enabled is false, so these certificates come from the values: on the current line either set "
            "clustermesh.apiserver.tls.auto.enabled true (method cronJob) and rerun the setup so every peer gets the "
            "new remote certificate, or create Secrets clustermesh-apiserver-{server,admin,remote}-cert yourself and "
            "set tls.enableSecrets false; then upgrade-check again"
        )
    return f"change {fix.finding} by hand so both Cilium {current} and {target} render the values, then check again"


def plan_upgrade_values(
    spec: MeshSpec, cluster: str, current: str, target: str, values: Mapping[str, Any], *, remote_cert: str = ""
) -> tuple[ClusterUpgrade, ClusterValuesPlan]:
    """The upgrade check of ``values`` and the proved values change that fixes what it found."""
    check = check_upgrade(spec, cluster, current, target, values, remote_cert=remote_cert)
    plan = ClusterValuesPlan(cluster=cluster, current=current, target=target)
    now, then = parse_cilium_version(current), parse_cilium_version(target)
    if (then.major, then.minor) > (now.major, now.minor + 1):
        plan.notes.append(
            f"Cilium upgrades one minor line at a time: upgrade to {now.major}.{now.minor + 1} first, then to {target}"
        )
    if check.skipped:
        plan.notes.append(f"no values proposed: {check.skipped}")
        return check, plan
    fixes = known_fixes(check, values)

    def render(version: str, candidate: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        return check_values(spec, cluster, version, candidate)

    try:
        proved = [f for f in fixes if _keep(plan, render, f, values)]
        if proved and (why := prove(render, current, target, values, proved)):
            plan.blocking += [f"{f.finding}: {why}" for f in proved]
            proved = []
        if check.refused and not plan.blocking and not _renders(render, target, _change(values, proved).new_values):
            plan.blocking += [
                f"the Cilium {target} chart refuses the values: {r}; no change valid on both lines fixes it here: "
                f"correct it by hand so both Cilium {current} and {target} render the values, then check again"
                for r in check.refused
            ]
    except ChartUnavailableError as exc:
        plan.notes.append(f"no values proposed: {exc.chart}: {exc.problem} ({exc.fix})")
        return check, plan
    plan.fixes = proved
    plan.change = _change(values, proved) if proved else None
    return check, plan


def _keep(plan: ClusterValuesPlan, render: Render, fix: Fix, values: Mapping[str, Any]) -> bool:
    why = prove(render, plan.current, plan.target, values, [fix])
    if why:
        plan.blocking.append(f"{fix.finding}: {why}; instead: {_instead(fix, plan.current, plan.target, values)}")
    return not why


def _renders(render: Render, version: str, values: Mapping[str, Any]) -> bool:
    try:
        render(version, values)
    except ChartValuesRefusedError:
        return False
    return True


# ------------------------------------------------------------------------------ the write


def write_upgrade_values(client: ClusterClient, spec: MeshSpec, facts: ClusterFacts, target: str) -> StepChange:
    """Write ``facts.name``'s proved values for ``target`` (read again, planned again: a rerun writes nothing),
    rendered by the current chart right before the write, with optimistic concurrency; then wait for KKP."""
    step = f"{UPGRADE_STEP} {target} in {facts.name}"

    def plan(ai: dict[str, Any]) -> ValuesChange | None:
        values, _field = read_values(ai)
        return plan_upgrade_values(spec, facts.name, facts.detected_cilium_version, target, values)[1].change

    check = values_checker(spec, facts)  # the render-before-write every values write gets
    return write_planned_values(client, spec, facts.name, step, plan, before_write=lambda c: check(c.new_values))


# ------------------------------------------------------------------------------ the mesh


@dataclass
class UpgradePlan:
    """Every checked cluster's upgrade check and values plan for one target version; nothing secret in the text."""

    mesh: str
    target: str
    checks: list[ClusterUpgrade]
    clusters: list[ClusterValuesPlan]

    @property
    def changing(self) -> list[str]:
        return [p.cluster for p in self.clusters if p.writes]

    @property
    def blocking(self) -> bool:
        return any(p.blocking for p in self.clusters)

    def report(self) -> UpgradeReport:
        return UpgradeReport(target=self.target, clusters=self.checks)

    def render_text(self) -> str:
        head = f"Values for Cilium {self.target} in mesh {self.mesh}: "
        head += f"write {', '.join(self.changing)}" if self.changing else "nothing to write"
        head += "; BLOCKING findings below" if self.blocking else ""
        return "\n".join([head, *(p.render_text() for p in self.clusters)])

    def render_markdown(self) -> str:
        head = "approve to write" if self.changing else "nothing to write"
        parts = [f"# Values for Cilium `{self.target}` in mesh `{self.mesh}`: {head}", ""]
        for plan in self.clusters:
            parts += [f"- **{plan.cluster}** ({plan.current}): fix {f.finding}: {f.says}" for f in plan.fixes]
            parts += [f"- **{plan.cluster}** BLOCKING: {b}" for b in plan.blocking]
            parts += [f"- **{plan.cluster}** note: {n}" for n in plan.notes]
            if not (plan.fixes or plan.blocking or plan.notes):
                parts.append(f"- **{plan.cluster}**: the values already work on both lines")
        for plan in self.clusters:
            if plan.writes and plan.change is not None:
                parts += ["", f"## {plan.cluster}", "```diff", *plan.change.diff_lines(redact=True), "```"]
        return "\n".join(parts) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "blocking": self.blocking,
            "changing": self.changing,
            "clusters": [p.as_dict() for p in self.clusters],
        }


def plan_mesh_upgrade(
    spec: MeshSpec,
    client_of: Callable[[ClusterSpec], AbstractContextManager[ClusterClient]],
    target: str,
    *,
    only: str | None = None,
    load_secret: Callable[[str], str] | None = None,
) -> UpgradePlan:
    """Every cluster of ``spec`` (or ``only`` that one): the upgrade check and the proved values for ``target``.
    ``client_of`` gives a cluster's client as a context manager (the CLI opens and closes one; a task borrows)."""
    profile_for(target)  # an unsupported target is the caller's error, before any cluster is opened
    plan = UpgradePlan(mesh=spec.name, target=target, checks=[], clusters=[])
    for cluster in spec.clusters:
        if only is not None and cluster.name != only:
            continue
        with client_of(cluster) as client:
            facts = check_prerequisites(client, cluster, spec, load_secret=load_secret)
            values, _ = read_values(client.get_application_installation())
            remote = (client.get_secret(NAMESPACE, REMOTE_CERT) or {}).get("data") or {}
        remote_cert = str(remote.get("tls.crt") or "")
        check, values_plan = plan_upgrade_values(
            spec, cluster.name, facts.detected_cilium_version, target, values, remote_cert=remote_cert
        )
        plan.checks.append(check)
        plan.clusters.append(values_plan)
    return plan
