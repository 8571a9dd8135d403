"""The nightly's memory, kept by Prefect itself: each night's figures as a table artifact of its run,
earlier nights read back from Prefect's API (no file of our own), and the picture beside the results.

- **Finding a mesh's nights.** Each nightly run tags itself ``clustermesh-mesh:<name>`` (:func:`mesh_tag`)
  and records its figures as the table artifact ``<name>-nightly-figures`` (:func:`record_figures`). The
  next night reads the newest runs of the flow ``nightly-mesh-verification`` with that tag, this run
  excluded, and their figures artifacts (:func:`earlier_nights`); a run without one (it crashed before its
  summary) is skipped. A parameter would not do: a deployment's run reads the spec from a Variable.
- **The picture** is written owner-only (0600 in 0700 folders) into the run's local result storage,
  ``nightly-pictures/<name>-<flow run id>.png`` (:func:`keep_picture`), and named by the history's
  Markdown artifact with its text version. Not an image artifact: that needs a URL a browser can fetch,
  and neither Prefect's server nor a worker serves files; nor a data URI in an artifact, which would put
  tens of kilobytes of PNG into the API database every night.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.filesystems import LocalFileSystem
from prefect.runtime import flow_run

from clustermesh.notify.history import MAX_NIGHTS, Comparison, NightFigures
from clustermesh.notify.pictures import INSTALL_HINT, FailoverPoint, alt_text, plots_available, render_picture
from clustermesh.spec import MeshSpec
from tasks.results import OwnerOnlyFileSystem

NIGHTLY_FLOW = "nightly-mesh-verification"
MESH_TAG_PREFIX = "clustermesh-mesh:"
PICTURES = "nightly-pictures"


def mesh_tag(spec: MeshSpec) -> str:
    return f"{MESH_TAG_PREFIX}{spec.name}"


def figures_key(spec: MeshSpec) -> str:
    return f"{spec.name}-nightly-figures"


def history_key(spec: MeshSpec) -> str:
    return f"{spec.name}-nightly-history"


def _this_run() -> UUID | None:
    run_id = flow_run.get_id()
    return UUID(str(run_id)) if run_id else None


@task(name="Compare with earlier nights", task_run_name="Compare with earlier nights", cache_policy=NO_CACHE)
def earlier_nights(spec: MeshSpec) -> list[NightFigures]:
    """The figures of this mesh's earlier nightly runs, newest first, at most :data:`MAX_NIGHTS`.

    Tags this run with :func:`mesh_tag` so the next night finds it. When Prefect's API cannot answer, one
    warning and no history: the night's verdict never depends on it.
    """
    logger = get_run_logger()
    try:
        nights = _read_earlier_nights(spec)
    except Exception as exc:  # noqa: BLE001 - history is a comparison, never a reason to fail the night
        why = f"{type(exc).__name__}: {exc}"[:300]
        logger.warning("History: earlier nights not read from Prefect's API (%s); compared with none", why)
        return []
    logger.info("History: %d earlier night(s) of mesh %s read from Prefect's API", len(nights), spec.name)
    return nights


def _read_earlier_nights(spec: MeshSpec) -> list[NightFigures]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    this_run = _this_run()
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[NIGHTLY_FLOW])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[mesh_tag(spec)]),
                id=FlowRunFilterId(not_any_=[this_run] if this_run else None),
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=MAX_NIGHTS,
        )
        artifacts = (
            prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[figures_key(spec)]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in runs]),
                )
            )
            if runs
            else []
        )
        if this_run is not None:
            tags = set(prefect.read_flow_run(this_run).tags or [])
            if mesh_tag(spec) not in tags:
                prefect.update_flow_run(this_run, tags=sorted(tags | {mesh_tag(spec)}))
    rows_by_run = {artifact.flow_run_id: artifact.data for artifact in artifacts}
    nights: list[NightFigures] = []
    for run in runs:
        rows = _rows(rows_by_run.get(run.id))
        figures = NightFigures.from_table_rows(rows, run_id=str(run.id), when=run.start_time) if rows else None
        if figures is not None:
            nights.append(figures)
    return nights


def _rows(data: Any) -> list[dict[str, Any]]:
    """A table artifact's rows as the API returns them (a JSON string of a list of dicts)."""
    import json

    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return []
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


def record_figures(spec: MeshSpec, figures: NightFigures) -> None:
    """Tonight's figures as this run's table artifact: what the next nights compare with."""
    create_table_artifact(
        key=figures_key(spec),
        table=figures.table_rows(),
        description=f"figures of the night ({figures.verdict}), read back by the next nights",
    )


def keep_picture(spec: MeshSpec, png: bytes) -> Path | None:
    """The PNG, owner-only, in the run's local result storage; None when that storage is not local."""
    context = FlowRunContext.get()
    storage = context.result_store.result_storage if context is not None else None
    if not isinstance(storage, LocalFileSystem) or not storage.basepath:
        return None
    run_id = _this_run() or "no-run"
    written = OwnerOnlyFileSystem(basepath=storage.basepath).write_path(f"{PICTURES}/{spec.name}-{run_id}.png", png)
    return Path(str(written))


class Picture(NamedTuple):
    png: bytes | None
    """None without the ``plots`` group (said once in the logs) or when drawing failed."""
    alt_text: str
    """The picture in words, for screen readers (Slack's alt text) and the artifact."""
    markdown: str
    """Where the PNG is kept (or why there is none), then the text version."""


def picture_for(spec: MeshSpec, comparison: Comparison) -> Picture:
    """Tonight's picture, kept beside the run's results (:func:`keep_picture`)."""
    logger = get_run_logger()
    tonight = comparison.tonight
    series: list[FailoverPoint] = [(n.when, n.failover_seconds) for n in reversed(comparison.earlier)]
    series.append((tonight.when, tonight.failover_seconds))
    text = alt_text(tonight.clusters, tonight.pairs, series)
    if not plots_available():
        logger.info("No picture tonight: %s; the text version stays", INSTALL_HINT)
        return Picture(None, text, f"No picture: {INSTALL_HINT}.\n\nText version: {text}")
    median = comparison.failover.median if comparison.failover else None
    try:
        title = f"Cluster Mesh {spec.name}: nightly {tonight.verdict}"
        png = render_picture(title, tonight.clusters, tonight.pairs, series, median)
    except Exception as exc:  # noqa: BLE001 - a picture is a courtesy, never a reason to fail the night
        logger.warning("No picture tonight: drawing it failed (%s); the text version stays", type(exc).__name__)
        return Picture(None, text, f"No picture: drawing it failed.\n\nText version: {text}")
    path = keep_picture(spec, png)
    where = f"`{path}` (owner-only, beside the run's results)" if path else "not kept: the result storage is not local"
    return Picture(png, text, f"PNG ({len(png)} bytes): {where}.\n\nText version: {text}")


def record_history(spec: MeshSpec, comparison: Comparison, picture: str) -> None:
    """The comparison, the picture's place (or why there is none) and its text version, as Markdown."""
    markdown = comparison.markdown() + "\n## Picture\n\n" + picture + "\n"
    create_markdown_artifact(key=history_key(spec), markdown=markdown, description="compared with earlier nights")
