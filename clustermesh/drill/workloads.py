"""What the drill reads of its own workloads: pods and Deployments Ready, the undo record, and whose count it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.drill.manifests import APPLIED_REPLICAS_ANNOTATION, ORIGINAL_REPLICAS_ANNOTATION


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def deployment_ready(deployment: Mapping[str, Any] | None, replicas: int) -> bool:
    """All ``replicas`` Ready and nothing else running: a rollout or scale finished, not just begun."""
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    return (
        int(spec.get("replicas", 1)) == replicas
        and int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(status.get("readyReplicas", 0) or 0) >= replicas
        and int(status.get("updatedReplicas", 0) or 0) >= replicas
        and int(status.get("replicas", 0) or 0) == replicas
    )


def describe_deployment(deployment: Mapping[str, Any] | None) -> str:
    if deployment is None:
        return "no such Deployment"
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    return (
        f"spec.replicas {spec.get('replicas')}, status replicas {status.get('replicas', 0)}, "
        f"ready {status.get('readyReplicas', 0)}, updated {status.get('updatedReplicas', 0)}"
    )


def recorded(deployment: Mapping[str, Any]) -> str | None:
    """The replica count a drill recorded before scaling ``deployment``, as written; None without a record."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ORIGINAL_REPLICAS_ANNOTATION)
    return None if value is None else str(value)


def parse_count(text: str) -> int | None:
    """A recorded replica count; None when it is not a whole number of at least 0."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def replicas_of(deployment: Mapping[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("replicas", 0))


def backend_count(deployment: Mapping[str, Any] | None, wanted: int) -> tuple[int, int | None]:
    """The replica count to give the drill's backend, and the count to record as the drill's own.

    ``wanted`` (``drill.replicas``) when there is no backend yet or its count is still the one the drill
    gave it; a count someone else set since is theirs and is kept (recorded as the drill's: ``wanted``,
    so that later runs keep it too). Returns ``(count, None)`` when the count is the drill's.
    """
    if deployment is None:
        return wanted, None
    current = replicas_of(deployment)
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(APPLIED_REPLICAS_ANNOTATION)
    applied = parse_count(str(text)) if text is not None else None
    if current in (wanted, applied):
        return wanted, None
    return current, wanted if applied is None else applied
