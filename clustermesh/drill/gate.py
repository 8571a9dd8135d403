"""Whether the drill may disrupt the mesh at all, judged from what the other checks already found.

The drill's own baseline would find the same, but only after waiting out its timeout; and a mesh
already known to be unhealthy is never disrupted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from clustermesh.drill.results import DrillResult
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts
from clustermesh.steps.step8_health import HealthMatrix


class PrerequisiteFinding(Protocol):
    """What the gate reads of a prerequisite finding (``clustermesh.checks.Finding`` has it)."""

    @property
    def level(self) -> str: ...

    @property
    def subject(self) -> str: ...


def drill_gate(
    spec: MeshSpec,
    facts: Mapping[str, ClusterFacts],
    *,
    prerequisites: Iterable[PrerequisiteFinding] = (),
    health: HealthMatrix | None = None,
) -> DrillResult | None:
    """None when the drill may go ahead; else a "not run" result saying why (nothing was disrupted).

    In this order: a failed ``prerequisites`` finding (its subject is named), a cluster of the spec
    without ``facts`` (it did not pass its prerequisites), then an unhealthy mesh ``health`` matrix.
    Whether the drill is wanted at all (``drill.enabled``, a run's own switch) is the caller's.
    """
    failed = [f.subject for f in prerequisites if f.level == "failure"]
    if failed:
        return DrillResult.not_run(f"prerequisites failed for {', '.join(failed)}: nothing disrupted")
    if any(c.name not in facts for c in spec.clusters):
        return DrillResult.not_run("not every cluster passed its prerequisites: nothing disrupted")
    if health is not None and not health.healthy:
        return DrillResult.not_run(f"the mesh is not healthy ({health.summary()}): nothing disrupted")
    return None
