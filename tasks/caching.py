"""Cache keys for the setup steps: a cached result is reused only while the cluster still matches it.

Prefect's key is only what a policy computes (no task name), so every key here starts with the task's
name. Read steps add a fingerprint of the objects they read (resourceVersions of the Secrets, the
Service, the ApplicationInstallation): rotate a CA and the key changes, so the step reads again. Write
steps are keyed to the flow run: a retry of the same run (Prefect's "Retry" on a failed run) skips
the writes already done, while a new run recomputes and, finding nothing to change, writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

Observe = Callable[[dict[str, Any]], str]


@dataclass
class StepCachePolicy(CachePolicy):
    """task name + inputs, plus the run id (``per_run``) and/or a fingerprint of cluster state (``observe``)."""

    observe: Observe | None = None
    per_run: bool = False

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts: dict[str, Any] = {"task": task_ctx.task.name, "inputs": inputs}
        if self.per_run:
            parts["run"] = str(task_ctx.task_run.flow_run_id)
        if self.observe is not None:
            parts["state"] = self.observe(inputs)
        return hash_objects(parts, raise_on_failure=True)
