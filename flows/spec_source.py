"""Where a deployed nightly or drill gets its spec: the Prefect Variable its ``spec_variable`` parameter names.

The spec lives in one place. ``clustermesh blocks register`` writes it (kubeconfigs as Secret block names)
into the Variable ``clustermesh-spec``; the nightly and drill deployments carry only that name and each run
reads the Variable when it starts. So ``blocks register`` alone changes what the next run checks, ``prefect
deploy`` needs no spec (it works before the registration), and a run without one ends Failed naming the
Variable and ``clustermesh blocks register``. A ``spec`` given to the run (the CLI, tests, a custom run from
the UI) is used as it is; the Variable is then not read.
"""

from __future__ import annotations

from typing import Any

from clustermesh.errors import ClusterMeshError, SpecError
from clustermesh.spec import MeshSpec, from_data

__all__ = ["SPEC_VARIABLE", "SpecVariableError", "alert_with_spec", "resolve_spec"]

SPEC_VARIABLE = "clustermesh-spec"
"""The Variable ``clustermesh blocks register`` writes and prefect.yaml's nightly and drill read."""

REGISTER_FIX = (
    "run `clustermesh blocks register --config mesh.yaml` with PREFECT_API_URL pointing at this Prefect server "
    "(it writes the spec into that Variable); the next run reads it, no redeploy needed"
)


class SpecVariableError(ClusterMeshError):
    """A run that should read its spec from a Prefect Variable found none, or none that is valid.

    The first line says which Variable and the fix (the failure alert shows that line); the spec's
    problems, when there are some, follow.
    """

    def __init__(self, variable: str, problem: str, details: str = "") -> None:
        self.variable = variable
        where = f"the Prefect Variable {variable!r} (parameter spec_variable)" if variable else "spec_variable"
        text = f"no spec for this run: {where} {problem}. Fix: {REGISTER_FIX}, or give the run a spec"
        super().__init__(f"{text}\n{details}" if details else text)


def resolve_spec(spec: MeshSpec | None, spec_variable: str | None) -> MeshSpec:
    """``spec`` when the run was given one, else the spec in the Variable named ``spec_variable``, read now."""
    if spec is not None:
        return spec
    from prefect import get_run_logger

    name = (spec_variable or "").strip()
    if not name:
        raise SpecVariableError("", "is empty and no spec was given")
    value = _read_variable(name)
    if value is None:
        raise SpecVariableError(name, "does not exist on this Prefect server")
    try:
        resolved = from_data(value, source=f"Prefect Variable {name}")
    except SpecError as exc:
        count = len(exc.problems)
        raise SpecVariableError(
            name, f"does not hold a valid mesh spec ({count} problem{'s' if count != 1 else ''}, below)", str(exc)
        ) from None
    get_run_logger().info(
        "Spec: mesh %s (%d clusters) from the Prefect Variable %s, read at the start of this run",
        resolved.name,
        len(resolved.clusters),
        name,
    )
    return resolved


def _read_variable(name: str) -> Any:
    from prefect.variables import Variable

    return Variable.get(name, default=None)


def alert_with_spec(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` / ``on_crashed`` hook: :func:`tasks.notify.alert_on_failure` with the run's spec.

    That hook finds Slack and the UI link in the run's ``spec`` parameter; a run that read its spec from a
    Variable has none there, so the Variable is read again here (a missing or invalid one leaves the hook
    to the worker's environment, as for any run without a spec).
    """
    from tasks.notify import alert_on_failure

    parameters = dict(flow_run.parameters or {})
    name = parameters.get("spec_variable")
    if parameters.get("spec") is None and isinstance(name, str) and name.strip():
        try:
            value = _read_variable(name.strip())
        except Exception:  # noqa: BLE001 - a hook must alert even when the server is the problem
            value = None
        if isinstance(value, dict):
            parameters["spec"] = value
            flow_run = flow_run.model_copy(update={"parameters": parameters})
    alert_on_failure(flow, flow_run, state)
