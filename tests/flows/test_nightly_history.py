"""The nightly compares itself with earlier nights read back from Prefect's API, and draws a picture.

Four nightlies of one 2-cluster sandbox mesh (Cilium 1.16) in a row on the session's Prefect test server,
Slack on the loopback test server: the first has nothing to compare with, the second one night, the third
runs with cluster-1's API answering each ``/scale`` request 3 s late (the sandbox's ``api-latency`` fault
with ``only``), so the drill's failover of cluster-1, timed from its scale request until every agent lists
only remote backends, takes seconds instead of a fraction of one, and it must say "slower than usual"
against the median of the first two, the
fourth runs with UDP 8472 blocked between the clusters and must name the pairs that went down. Each
night's PNG is downloaded from the Slack test server and read pixel by pixel at the cells the layout
puts them (``heatmap_cell_pixel``): green for a healthy pair, red for a pair that is down.
"""

from __future__ import annotations

import io
import re
import stat
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clustermesh.spec import MeshSpec
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from tests.flows.conftest import mesh_spec
from tests.slack_server import SlackTestServer

pytest.importorskip("matplotlib", reason="the plots group (matplotlib) is not installed: uv sync --group plots")

from clustermesh.notify.pictures import SIZE_PX, VERDICT_COLOURS, heatmap_cell_pixel  # noqa: E402
from tasks.history import figures_key, history_key, mesh_tag  # noqa: E402

SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")
SCALE_LATENCY_S = 3.0


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackTestServer]:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    with SlackTestServer() as server:
        monkeypatch.setenv("SLACK_BOT_TOKEN", server.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", server.url)
        yield server


def night(spec: MeshSpec) -> tuple[Any, VerificationResult]:
    state = nightly_mesh_verification(spec, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), f"{state}: {state.result(raise_on_failure=False)!r}"
    return state, result


def thread_of_last_night(slack: SlackTestServer) -> tuple[str, list[dict[str, Any]]]:
    """The newest summary's thread: its text, and the files shared in it."""
    parents = [m for m in slack.messages if m.get("thread_ts") is None]
    parent = parents[-1]
    text = "\n".join(m["text"] for m in slack.replies(parent["ts"]))
    return text, slack.files_in(parent["ts"])


def picture_bytes(slack: SlackTestServer, files: list[dict[str, Any]]) -> bytes:
    """The one PNG of the thread, downloaded with the bot token as a Slack client would."""
    assert len(files) == 1, files
    shared = files[0]
    assert shared["mimetype"] == "image/png" and shared["name"].endswith(".png"), shared
    request = urllib.request.Request(shared["url_private"], headers={"Authorization": f"Bearer {slack.token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the loopback test server
        data: bytes = answer.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) == shared["size"]
    return data


def picture(slack: SlackTestServer, files: list[dict[str, Any]]) -> Any:
    """The thread's PNG opened with Pillow (a matplotlib dependency), its size checked."""
    from PIL import Image

    image = Image.open(io.BytesIO(picture_bytes(slack, files))).convert("RGB")
    assert image.size == SIZE_PX
    return image


def rgb(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def cell_colour(image: Any, row: int, column: int) -> tuple[int, int, int]:
    return tuple(image.getpixel(heatmap_cell_pixel(2, row, column)))  # type: ignore[return-value]


def flow_runs_tagged(spec: MeshSpec) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[mesh_tag(spec)])))
        )


def artifacts(key: str, flow_run_ids: list[Any]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)
                )
            )
        )


def warnings_of(state: Any) -> list[str]:
    """The run's WARNING-or-worse log lines as Prefect's API keeps them (the Logs tab)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return [log.message for log in logs if log.level >= 30 and not log.message.startswith("Concurrency limits")]


def test_three_nights_in_a_row_then_a_broken_one_compare_with_the_median_and_draw_the_run_s_numbers(
    meshed: Callable[..., Any], slack: SlackTestServer
) -> None:
    sb = meshed(clusters=2, nodes=1)
    # a mesh name of its own: the session's Prefect server holds other tests' nightlies of "sandbox"
    spec = mesh_spec(sb, health=10).model_copy(update={"name": f"history-{uuid.uuid4().hex[:8]}"})
    green, red = rgb(VERDICT_COLOURS["healthy"]), rgb(VERDICT_COLOURS["down"])

    # night 1: nothing to compare with; the picture is all green
    _, first = night(spec)
    assert first.status == "PASS" and first.drill is not None and first.drill.status == "passed", first.describe()
    text, files = thread_of_last_night(slack)
    assert "History: no earlier night of this mesh recorded yet" in text, text
    image = picture(slack, files)
    assert [cell_colour(image, r, c) for r in range(2) for c in range(2)] == [green] * 4

    # night 2: one earlier night, too few for a median; Slack refuses the upload (the app lacks files:write):
    # the night is delivered and keeps its verdict, one warning says which scope to add
    slack.refused["files.getUploadURLExternal"] = "missing_scope"
    second_state, second = night(spec)
    slack.refused.clear()
    assert second.status == "PASS" and second.slack == "delivered", second.describe()
    text, files = thread_of_last_night(slack)
    assert "History: tonight against 1 earlier night" in text, text
    assert "Pairs: no pair changed since the last night." in text
    assert "fewer than 2 earlier nights to compare with" in text
    assert files == []
    warnings = warnings_of(second_state)
    assert len(warnings) == 1 and "picture was not delivered" in warnings[0], warnings
    assert "files:write" in warnings[0] and slack.token not in warnings[0]
    usual = sorted(max(r.drill.failover_seconds.values()) for r in (first, second) if r.drill)
    assert len(usual) == 2 and max(usual) < 1.0, usual  # the instant sandbox fails over in a fraction of a second

    # night 3: cluster-1's API takes 3 s to answer a scale request: its failover takes seconds
    sb.fault("api-latency", cluster="cluster-1", seconds=SCALE_LATENCY_S, only="/scale")
    try:
        third_state, third = night(spec)
    finally:
        sb.fault("api-latency", cluster="cluster-1", seconds=0)
    assert third.drill is not None and third.drill.status == "passed", third.describe()
    slowest = max(third.drill.failover_seconds.values())
    median = (usual[0] + usual[1]) / 2
    assert slowest >= SCALE_LATENCY_S and slowest > 1.5 * median and slowest > median + 2, (slowest, usual)
    assert third.drill.failover_seconds["cluster-2"] < 1.0, third.drill.failover_seconds
    text, files = thread_of_last_night(slack)
    slower = [line for line in text.splitlines() if line.startswith("Slower than usual: failover")]
    assert slower, text
    assert "over 2 earlier nights" in slower[0] and "median" in slower[0], slower
    assert f"{slowest:.1f} s" in slower[0], (slowest, slower)
    assert any("Slower than usual" in line for line in third.history)
    (markdown,) = artifacts(history_key(spec), [third_state.state_details.flow_run_id])
    assert "Slower than usual: failover" in str(markdown.data) and "Text version: Health matrix" in str(markdown.data)
    # the artifact names the PNG kept beside the run's results: the owner's alone, the picture Slack got
    kept = Path(re.search(r"PNG \(\d+ bytes\): `([^`]+)`", str(markdown.data)).group(1))  # type: ignore[union-attr]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert kept.read_bytes() == picture_bytes(slack, files)

    # night 4: UDP 8472 blocked between the clusters: the pairs between them go down, in words and in red
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    _, fourth = night(spec.model_copy(update={"drill": spec.drill.model_copy(update={"timeout": 2})}))
    assert fourth.status == "FAIL", fourth.describe()
    text, files = thread_of_last_night(slack)
    assert "Pair cluster-1 → cluster-2: healthy → down since the last night" in text, text
    assert "Pair cluster-2 → cluster-1: healthy → down since the last night" in text, text
    assert "New since the last night: failure:" in text
    image = picture(slack, files)
    assert cell_colour(image, 0, 1) == red and cell_colour(image, 1, 0) == red
    assert cell_colour(image, 0, 0) == green and cell_colour(image, 1, 1) == green

    # the history is Prefect's: four runs tagged with the mesh, each with its figures artifact
    runs = flow_runs_tagged(spec)
    assert len(runs) == 4, [r.name for r in runs]
    assert len(artifacts(figures_key(spec), [r.id for r in runs])) == 4


def test_without_the_plots_group_the_night_says_so_once_and_keeps_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    import tasks.history
    from clustermesh.notify.history import compare
    from tests.domain.test_history import night as figures

    monkeypatch.setattr(tasks.history, "plots_available", lambda: False)  # as in a checkout without the group

    @flow(name="history-without-plots")
    def without_plots() -> tasks.history.Picture:
        spec = MeshSpec.model_construct(name="no-plots")  # only its name is read
        return tasks.history.picture_for(spec, compare(figures(0), [figures(1)]))

    state = without_plots(return_state=True)
    result = state.result()
    assert result.png is None
    assert result.markdown.startswith("No picture: install the plots group for pictures")
    assert "Text version: Health matrix (from → to): 4 of 4 pairs healthy." in result.markdown
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    said = [log.message for log in logs if "install the plots group" in log.message]
    assert len(said) == 1, said
