"""One run per mesh at a time: the lock that setup, the nightly and a drill started on its own all hold."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment

from clustermesh.errors import MeshBusyError
from clustermesh.spec import MeshSpec

LOCK_WAIT_SECONDS = 3600.0  # how long a run waits for another setup / nightly of the same mesh


def mesh_lock_name(spec: MeshSpec) -> str:
    return f"mesh-{spec.name}"


@contextmanager
def mesh_lock(spec: MeshSpec, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the mesh's global concurrency limit (``mesh-<name>``, limit 1) shared by setup and nightly.

    Strict when the run comes from a deployment: there a missing limit is a configuration error
    (``clustermesh blocks register`` creates it), and running unlimited would let the nightly drill
    scale down backends in the middle of a setup. Ad-hoc runs (``clustermesh setup``, the demo,
    tests) have no registered limits, so a missing limit only skips the lock (Prefect logs it).
    """
    name = mesh_lock_name(spec)
    strict = deployment.id is not None
    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=strict))
        except ConcurrencySlotAcquisitionError as exc:
            raise MeshBusyError(
                f"cannot take global concurrency limit {name!r} ({exc}); without it this run could overlap "
                f"another setup or nightly of mesh {spec.name!r}. If it does not exist, create it with "
                f"`clustermesh blocks register --config <mesh.yaml>` (or `prefect gcl create {name} --limit 1`)"
            ) from None
        except TimeoutError:
            raise MeshBusyError(
                f"another run of mesh {spec.name!r} (setup or nightly verification) held {name!r} for more "
                f"than {wait_seconds:g}s; see the runs in the Prefect UI and retry once it has finished"
            ) from None
        yield


__all__ = ["LOCK_WAIT_SECONDS", "mesh_lock", "mesh_lock_name"]
