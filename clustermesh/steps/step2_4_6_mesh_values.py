"""The guide's steps 2, 4 and 6: write the mesh values into the ``cilium`` ApplicationInstallation.

Every call computes the desired values (the cluster's current values with our overlay merged in,
``clusters[]`` by name), compares them semantically and writes only what differs, carrying the
resourceVersion it read: a 409 means someone else wrote in between, so it reads again and recomputes
(their unrelated change is kept), never overwrites. Then it waits until KKP reports the installation
applied for the new generation, and turns a KKP failure into an error with KKP's own message.

Each write also records a digest of the values it wrote in an annotation, and in another the peers it
manages (``clustermesh.steps.membership``). When KKP has given up on an installation
(``InstallationFailed…``: it retries only on a spec change) and the failing values are still exactly
the ones we wrote, a rerun asks KKP to try again, by rewriting the same values with a comment that
names the retry (a new generation, the same values), and says so. Values someone else changed since
are not ours to retry: the run refuses as before.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from clustermesh.cilium.mcs import mcs_api_values, superseded_mcs_api_paths
from clustermesh.cilium.profiles import parse_cilium_version
from clustermesh.errors import ConflictError, InstallFailedError, ValuesError
from clustermesh.kube import ClusterClient
from clustermesh.spec import ClusterSpec, MeshSpec
from clustermesh.steps.cert_copies import keep_current_copies
from clustermesh.steps.membership import MANAGED_PEERS_ANNOTATION, managed_peers_after_write
from clustermesh.steps.models import ClusterFacts, StepChange
from clustermesh.stopping import note_written, raise_if_stopping
from clustermesh.values import (
    CaMaterial,
    PeerEntry,
    ValuesChange,
    deep_merge,
    dump_values,
    legacy_paths_to_remove,
    plan_change,
    read_values,
    render_mesh_values,
)

MAX_CONFLICT_RETRIES = 8
FAILED_REASONS = ("InstallationFailed", "InstallationFailedRetriesExceeded")
WRITTEN_ANNOTATION = "clustermesh.io/values-sha256"
"""The digest of the values this pipeline last wrote: failing values with this digest are ours to retry."""


def plan_mesh_values(
    ai: dict[str, Any],
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    *,
    peers: list[PeerEntry],
    shared_ca: CaMaterial | None,
    replace_copies: Collection[str] = (),
    now: datetime | None = None,
) -> ValuesChange:
    """What the values of ``cluster`` must become; pure, so ``--plan`` and the write share it.

    A peer's copy the values hold that is still current (``clustermesh.steps.cert_copies``: trusted by the
    peer's CA, more than ``certificates.warn_days`` left at ``now``) is kept rather than replaced by the peer's
    newest certificate, unless the peer is in ``replace_copies`` (a renewal hands those out).
    """
    profile = facts.profile
    current, _field = read_values(ai)
    peers = keep_current_copies(
        current, peers, replace=replace_copies, warn_days=spec.certificates.warn_days, now=now or datetime.now(UTC)
    )
    overlay = render_mesh_values(profile, cluster, spec, shared_ca=shared_ca, peers=peers)
    overlay = deep_merge(overlay, mcs_api_values(profile, enabled=spec.cilium.mcs_api, cluster=cluster.name))
    remove = legacy_paths_to_remove(profile, current, parse_cilium_version(facts.cilium_version).patch)
    remove += superseded_mcs_api_paths(profile, current, enabled=spec.cilium.mcs_api)
    return plan_change(current, overlay, remove=remove)


def configure_mesh(
    client: ClusterClient,
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    *,
    step: str,
    peers: list[PeerEntry],
    shared_ca: CaMaterial | None = None,
    write: bool = True,
    check_values: Callable[[Mapping[str, Any]], None] | None = None,
    replace_copies: Collection[str] = (),
) -> StepChange:
    """Bring ``cluster``'s mesh values to the desired state and wait for KKP; see the module docstring.

    ``check_values`` sees the exact values right before they are written (the chart check) and raises
    to stop the write. ``replace_copies``: peers whose copy is replaced even while current (a renewal).
    """
    conflicts = 0
    while True:
        ai = client.get_application_installation()
        retry = _failed_install_to_retry(cluster.name, ai)
        _, field = read_values(ai)
        change = plan_mesh_values(
            ai, facts, cluster, spec, peers=peers, shared_ca=shared_ca, replace_copies=replace_copies
        )
        if not write or not (change.changed or retry):
            written = False
            break
        if check_values is not None:
            check_values(change.new_values)
        raise_if_stopping(f"writing the mesh values of {cluster.name} ({step})")  # Ctrl-C: no further write
        try:
            updated = _with_values(ai, change.new_values, field, retry=retry, peers=[p.name for p in peers])
            ai = client.replace_application_installation(updated)
        except ConflictError:
            conflicts += 1
            if conflicts > MAX_CONFLICT_RETRIES:
                raise
            continue
        note_written(step if cluster.name in step else f"{step} in {cluster.name}")
        written = True
        break
    if write:
        ai = wait_applied(client, spec, cluster.name)
    return StepChange(
        cluster=cluster.name,
        step=step,
        changed=change.changed,
        written=written,
        diff=change.diff_lines(redact=True),
        values_field=field,
        generation=int(ai.get("metadata", {}).get("generation", 0)),
        conflicts_retried=conflicts,
        applied=write,
        install_retried=retry is not None and written,
    )


def values_digest(values: Mapping[str, Any]) -> str:
    """A digest of parsed values, independent of key order and of how the YAML was laid out."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def failing_values_are_ours(ai: Mapping[str, Any]) -> bool:
    """KKP gave up on this installation, and its values are still exactly what this pipeline wrote."""
    if install_state(dict(ai))[0] != "failed":
        return False
    recorded = ((ai.get("metadata") or {}).get("annotations") or {}).get(WRITTEN_ANNOTATION)
    try:
        values, field = read_values(ai)
    except ValuesError:
        return False
    return field == "valuesBlock" and recorded == values_digest(values)


def _failed_install_to_retry(cluster: str, ai: dict[str, Any]) -> str | None:
    """None while the installation is not failing; KKP's reason when it is and the values are ours; else refuse."""
    state, why = install_state(ai)
    if state != "failed":
        return None
    if failing_values_are_ours(ai):
        return why
    raise InstallFailedError(
        cluster,
        f"ApplicationInstallation kube-system/cilium is failing ({why[:300]}); nothing was written on it",
        fix="repair the installation first (KKP UI → Applications, or its values), then run the setup again",
    )


def _with_values(
    ai: dict[str, Any], values: Mapping[str, Any], field: Any, *, retry: str | None, peers: list[str]
) -> dict[str, Any]:
    """The installation with ``values`` in ``field``, their digest and the managed peers recorded (``peers``:
    the entries this write carries); a retry adds a comment line.

    The comment makes the spec differ (so KKP, which retries only on a spec change, installs again)
    while the values stay the same; it names the generation, so a second retry differs from the first.
    """
    updated = copy.deepcopy(ai)
    dumped = dump_values(values, field)
    if retry is not None and isinstance(dumped, str):
        generation = (ai.get("metadata") or {}).get("generation")
        dumped += f"# clustermesh: KKP asked to install these values again (generation {generation} had failed)\n"
    updated.setdefault("spec", {})[field] = dumped
    annotations = updated.setdefault("metadata", {}).setdefault("annotations", {}) or {}
    annotations[WRITTEN_ANNOTATION] = values_digest(values)
    annotations[MANAGED_PEERS_ANNOTATION] = managed_peers_after_write(ai, values, peers)
    updated["metadata"]["annotations"] = annotations
    return updated


def installation_with_values(ai: dict[str, Any], values: Mapping[str, Any], field: Any) -> dict[str, Any]:
    """The installation carrying ``values``, its digest and the managed-peers record (a write that adds no
    peer: removed entries drop out of the record); for writes outside steps 2/4/6 (leaving the mesh)."""
    return _with_values(ai, values, field, retry=None, peers=[])


def install_state(ai: dict[str, Any]) -> tuple[str, str]:
    """("applied" | "failed" | "pending", why) for the installation's current generation (kkp.md §1)."""
    generation = ai.get("metadata", {}).get("generation")
    status = ai.get("status") or {}
    conditions = status.get("conditions") or {}
    ready = conditions.get("Ready") if isinstance(conditions, dict) else None
    if not isinstance(ready, dict) or ready.get("observedGeneration") != generation:
        return "pending", f"KKP has not observed generation {generation} yet"
    release = ((status.get("helmRelease") or {}).get("info") or {}).get("status")
    if ready.get("status") == "True" and release == "deployed":
        return "applied", "Ready=True, release deployed"
    if ready.get("status") == "False" and ready.get("reason") in FAILED_REASONS:
        return "failed", f"{ready.get('reason')}: {ready.get('message', '')}"
    return "pending", f"Ready={ready.get('status')} ({ready.get('reason')}), release {release}"


def wait_applied(client: ClusterClient, spec: MeshSpec, cluster: str) -> dict[str, Any]:
    """Wait until KKP applied the current generation; a KKP failure ends the wait with its message."""

    def read() -> dict[str, Any]:
        raise_if_stopping(f"waiting for KKP to apply the mesh values of {cluster}")  # a stopped run waits no longer
        return client.get_application_installation()

    ai = client.wait_for(
        read,
        lambda obj: install_state(obj)[0] != "pending",
        timeout=spec.timeouts.install,
        expected="KKP to apply the cilium ApplicationInstallation (Ready=True for the new generation)",
        check="kubectl get applicationinstallation cilium -n kube-system -o yaml (status.conditions), "
        "and the clustermesh-apiserver pods",
        poll_interval=spec.timeouts.poll_interval,
        describe=lambda obj: install_state(obj)[1],
    )
    state, why = install_state(ai)
    if state == "failed":
        raise InstallFailedError(
            cluster,
            f"KKP could not apply the mesh values: {why[:500]}{_helm_wait_hint(spec, why)}",
            fix="read the message above; values the chart refuses must be corrected in the spec "
            "(the previous values stay deployed when KKP rolls back)",
        )
    return ai


def _helm_wait_hint(spec: MeshSpec, why: str) -> str:
    """Helm ``--wait`` timing out says only "context deadline exceeded": name what it waits for."""
    if "deadline exceeded" not in why:
        return ""
    hint = "; Helm --wait timed out waiting for the cilium and clustermesh-apiserver pods to be ready"
    if spec.cilium.service_type == "LoadBalancer":
        hint += (
            " and for an address on Service kube-system/clustermesh-apiserver (kubectl get svc "
            "clustermesh-apiserver -n kube-system: EXTERNAL-IP <pending> means no LoadBalancer address is "
            "assigned; cilium.service_type NodePort avoids it)"
        )
    return hint


def write_planned_values(
    client: ClusterClient,
    spec: MeshSpec,
    cluster: str,
    step: str,
    plan: Callable[[dict[str, Any]], ValuesChange | None],
    *,
    before_write: Callable[[ValuesChange], None] | None = None,
) -> StepChange:
    """Read the cluster's installation, ``plan`` the change on what was read, write it with the resourceVersion
    read (a 409 reads and plans again, at most ``MAX_CONFLICT_RETRIES`` times), then wait until KKP applied it.

    Nothing to change (None, or unchanged): nothing written, so a rerun writes nothing. ``before_write`` runs on the
    change right before each write (the render-before-write check).
    """
    conflicts = 0
    while True:
        ai = client.get_application_installation()
        _, values_field = read_values(ai)
        change = plan(ai)
        if change is None or not change.changed:
            written = False
            break
        if before_write is not None:
            before_write(change)
        raise_if_stopping(f"{step} (mesh values)")
        try:
            ai = client.replace_application_installation(installation_with_values(ai, change.new_values, values_field))
        except ConflictError:
            conflicts += 1
            if conflicts > MAX_CONFLICT_RETRIES:
                raise
            continue
        note_written(step)
        written = True
        break
    if written:
        ai = wait_applied(client, spec, cluster)
    return StepChange(
        cluster=cluster,
        step=step,
        changed=change is not None and change.changed,
        written=written,
        diff=change.diff_lines(redact=True) if change is not None else [],
        values_field=values_field,
        generation=int(ai.get("metadata", {}).get("generation", 0)),
        conflicts_retried=conflicts,
        applied=written,
    )
