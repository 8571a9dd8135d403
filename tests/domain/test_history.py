"""Tonight against earlier nights (clustermesh/notify/history.py) and the picture (clustermesh/notify/pictures.py).

The comparison is pure: figures in, lines out. The rule under test: a figure is "above usual" only when it is
more than 1.5× the median of the earlier nights that measured it AND more than the median plus a margin
(2 s for failover, 2 requests for failed requests), over at most 14 nights, with at least 2 to compare.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta

import pytest

from clustermesh.checks import Finding
from clustermesh.drill import DrillResult
from clustermesh.notify.history import (
    FAILOVER_MARGIN_S,
    MAX_NIGHTS,
    NightFigures,
    compare,
    pair_key,
)
from clustermesh.steps.health_matrix import HealthCell, HealthMatrix

CLUSTERS = ["cluster-1", "cluster-2"]
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def cell(src: str, dst: str, reachable: int = 2, expected: int = 2, agents: int = 2) -> HealthCell:
    return HealthCell(
        src=src,
        dst=dst,
        reachable=reachable,
        expected=expected,
        agents=agents,
        failures=[],
        failing_paths=[],
        missing=[],
    )


def matrix(**overrides: tuple[int, int]) -> HealthMatrix:
    """2×2, every cell 2/2 reached by 2 agents; ``c1_c2=(reachable, agents)`` overrides one cell."""
    cells = []
    for src in CLUSTERS:
        for dst in CLUSTERS:
            reachable, agents = overrides.get(f"c{src[-1]}_c{dst[-1]}", (2, 2))
            cells.append(cell(src, dst, reachable=reachable, agents=agents))
    return HealthMatrix(clusters=CLUSTERS, cells=cells, agent_errors=[])


def drill(failover: dict[str, float], failed: int = 0, probes: int = 10) -> DrillResult:
    return DrillResult(
        status="passed",
        reason="",
        phases=[],
        recovered=[],
        failover_seconds=failover,
        failed_probes=failed,
        probes=probes,
    )


def night(
    days_ago: int,
    failover: float | None = 0.5,
    failed: int | None = 0,
    pairs: dict[str, str] | None = None,
    findings: list[str] | None = None,
    expiry: int | None = 300,
    verdict: str = "PASS",
) -> NightFigures:
    healthy = {pair_key(s, d): "healthy" for s in CLUSTERS for d in CLUSTERS}
    return NightFigures.model_validate(
        {
            "run_id": f"run-{days_ago}",
            "when": T0 - timedelta(days=days_ago),
            "verdict": verdict,
            "clusters": CLUSTERS,
            "pairs": {**healthy, **(pairs or {})},
            "findings": findings or [],
            "failover_seconds": failover,
            "failed_requests": failed,
            "requests": None if failed is None else 10,
            "cert_expiry_days": expiry,
        }
    )


# ------------------------------------------------------------------------------------ figures of a night


def test_a_night_s_figures_come_from_its_matrix_drill_findings_and_expiry() -> None:
    findings = [
        Finding(level="ok", subject="mesh health", reason="fine"),
        Finding(level="failure", subject="cluster-1 → cluster-2", reason="UDP 8472 blocked", fix="open it"),
        Finding(level="warning", subject="failover drill", reason="not run", fix="fix the above"),
    ]
    figures = NightFigures.of_night(
        verdict="FAIL",
        clusters=CLUSTERS,
        findings=findings,
        health=matrix(c1_c2=(0, 2), c2_c1=(1, 2), c2_c2=(2, 0)),
        drill=drill({"cluster-1": 0.4, "cluster-2": 1.25}, failed=3, probes=40),
        cert_expiry_days=12,
    )
    assert figures.pairs == {
        "cluster-1 → cluster-1": "healthy",
        "cluster-1 → cluster-2": "down",  # nothing reached
        "cluster-2 → cluster-1": "degraded",  # 1 of 2 nodes
        "cluster-2 → cluster-2": "down",  # no agent answered
    }
    assert figures.findings == ["failure: cluster-1 → cluster-2", "warning: failover drill"]
    assert figures.failover_seconds == 1.25  # the slowest cluster
    assert (figures.failed_requests, figures.requests, figures.cert_expiry_days) == (3, 40, 12)


def test_without_a_matrix_or_a_failover_the_figures_say_not_measured() -> None:
    figures = NightFigures.of_night(
        verdict="FAIL",
        clusters=CLUSTERS,
        findings=[],
        health=None,
        drill=DrillResult.not_run("the mesh is not healthy"),
        cert_expiry_days=None,
    )
    assert set(figures.pairs.values()) == {"not measured"}
    assert figures.failover_seconds is None and figures.failed_requests is None


def test_figures_survive_the_table_artifact_round_trip() -> None:
    original = night(
        0, failover=1.234, failed=2, pairs={pair_key("cluster-1", "cluster-2"): "down"}, findings=["failure: x"]
    )
    rows = original.table_rows()
    assert all(set(row) == {"figure", "value"} and all(isinstance(v, str) for v in row.values()) for row in rows)
    back = NightFigures.from_table_rows(rows, run_id=original.run_id, when=original.when)
    assert back == original


def test_rows_of_another_format_are_not_figures() -> None:
    assert NightFigures.from_table_rows([]) is None
    assert (
        NightFigures.from_table_rows([{"figure": "format", "value": "99"}, {"figure": "verdict", "value": "PASS"}])
        is None
    )
    assert NightFigures.from_table_rows([{"from \\ to": "cluster-1", "cluster-1": "2/2 ✓"}]) is None


# ------------------------------------------------------------------------------------------ comparing


def test_the_first_night_has_nothing_to_compare_with() -> None:
    comparison = compare(night(0), [])
    assert comparison.previous is None and comparison.failover is None and comparison.headline() is None
    assert comparison.lines() == [
        "History: no earlier night of this mesh recorded yet; tonight is the first to compare with."
    ]


def test_pairs_that_went_red_or_green_and_findings_that_came_or_went_are_named() -> None:
    c1_c2, c2_c1 = pair_key("cluster-1", "cluster-2"), pair_key("cluster-2", "cluster-1")
    previous = night(1, pairs={c2_c1: "down"}, findings=["failure: cluster-2 → cluster-1", "warning: drift"])
    tonight = night(0, pairs={c1_c2: "degraded"}, findings=["warning: drift", "failure: cluster-1 → cluster-2"])
    comparison = compare(tonight, [previous])
    assert comparison.changed_pairs == [(c1_c2, "healthy", "degraded"), (c2_c1, "down", "healthy")]
    assert comparison.new_findings == ["failure: cluster-1 → cluster-2"]
    assert comparison.gone_findings == ["failure: cluster-2 → cluster-1"]
    lines = comparison.lines()
    assert "Pair cluster-1 → cluster-2: healthy → degraded since the last night" in lines
    assert "Pair cluster-2 → cluster-1: down → healthy since the last night" in lines
    assert "New since the last night: failure: cluster-1 → cluster-2" in lines
    assert "Gone since the last night: failure: cluster-2 → cluster-1" in lines
    assert lines[0] == "History: tonight against 1 earlier night (last: 2026-11-30 02:00 UTC, PASS)."
    assert not any(line.startswith(":") for line in lines)  # Slack's emoji marks belong to the checks


def test_only_the_previous_night_counts_for_changes() -> None:
    c1_c2 = pair_key("cluster-1", "cluster-2")
    comparison = compare(night(0), [night(1), night(2, pairs={c1_c2: "down"}, findings=["failure: old"])])
    assert comparison.changed_pairs == [] and comparison.new_findings == [] and comparison.gone_findings == []
    assert "Pairs: no pair changed since the last night." in comparison.lines()


@pytest.mark.parametrize(
    ("earlier", "tonight", "slower"),
    [
        ([1.0, 1.2, 1.1], 4.0, True),  # median 1.1: above 1.65 and above 3.1
        ([1.0, 1.2, 1.1], 3.0, False),  # above 1.5× but within the 2 s margin
        ([0.02, 0.04], 1.5, False),  # 40× the median, yet only 1.47 s more: a wobble of a fast mesh
        ([0.02, 0.04], 2.5, True),
        ([10.0, 10.0, 10.0], 13.0, False),  # 3 s more, but not 1.5×: a slow mesh's usual spread
        ([10.0, 10.0, 10.0], 15.5, True),
        ([1.0, 1.0, 9.0, 9.0, 9.0], 4.0, False),  # the median (9), not the mean or the best night
    ],
)
def test_slower_than_usual_needs_both_the_ratio_and_the_margin(
    earlier: list[float], tonight: float, slower: bool
) -> None:
    comparison = compare(night(0, failover=tonight), [night(i + 1, failover=s) for i, s in enumerate(earlier)])
    assert comparison.failover is not None and comparison.failover.above_usual is slower
    line = next(line for line in comparison.lines() if "failover" in line.lower())
    if slower:
        assert line.startswith("Slower than usual: failover ") and f"over {len(earlier)} earlier nights" in line
        assert f"more than {FAILOVER_MARGIN_S:g} s above it" in line  # the rule is stated where it is applied
        assert comparison.headline() == line
    else:
        assert line.startswith("Failover as usual: ") and comparison.headline() is None


def test_the_median_needs_two_earlier_nights_that_measured_the_failover() -> None:
    one = compare(night(0, failover=9.0), [night(1, failover=0.1)])
    assert one.failover is None and one.headline() is None
    assert "Failover 9.0 s; fewer than 2 earlier nights to compare with." in one.lines()
    unmeasured = compare(
        night(0, failover=9.0), [night(1, failover=0.1), night(2, failover=None), night(3, failover=None)]
    )
    assert unmeasured.failover is None  # nights whose drill did not fail over are not "usual"
    counted = compare(night(0, failover=9.0), [night(1, failover=0.1), night(2, failover=None), night(3, failover=0.2)])
    assert counted.failover is not None and counted.failover.nights == 2 and counted.failover.above_usual


def test_only_the_newest_fourteen_nights_count() -> None:
    earlier = [night(i + 1, failover=1.0) for i in range(MAX_NIGHTS)] + [night(99, failover=100.0) for _ in range(10)]
    comparison = compare(night(0, failover=4.0), earlier)
    assert len(comparison.earlier) == MAX_NIGHTS
    assert comparison.failover is not None
    assert (comparison.failover.median, comparison.failover.nights, comparison.failover.above_usual) == (1.0, 14, True)


def test_more_failed_requests_than_usual_uses_the_same_rule_with_a_margin_of_two_requests() -> None:
    earlier = [night(1, failed=0), night(2, failed=1), night(3, failed=0)]
    assert compare(night(0, failed=2), earlier).failed_requests.above_usual is False  # type: ignore[union-attr]
    above = compare(night(0, failed=5), earlier)
    assert above.failed_requests is not None and above.failed_requests.above_usual
    assert "More failed requests than usual: 5 failed requests vs median 0 over 3 earlier nights" in "\n".join(
        above.lines()
    )


def test_the_certificate_countdown_is_against_the_night_before() -> None:
    assert (
        "Nearest certificate expiry: 29 days, was 30 the night before (-1)."
        in compare(night(0, expiry=29), [night(1, expiry=30)]).lines()
    )
    assert (
        "Nearest certificate expiry: 364 days, was 3: renewed since the last night."
        in compare(night(0, expiry=364), [night(1, expiry=3)]).lines()
    )
    assert "Nearest certificate expiry: not measured tonight." in compare(night(0, expiry=None), [night(1)]).lines()


def test_the_markdown_lists_tonight_then_the_earlier_nights() -> None:
    markdown = compare(night(0, failover=2.5), [night(1, failover=0.5), night(2, failover=None)]).markdown()
    assert markdown.startswith("## Compared with earlier nights\n")
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "Night" not in line]
    assert rows[0].startswith("| tonight | PASS | 2.5 s |")
    assert rows[1].startswith("| 2026-11-30 02:00 UTC, PASS | PASS | 0.50 s |")
    assert rows[2].startswith("| 2026-11-29 02:00 UTC, PASS | PASS | – |")


# -------------------------------------------------------------------------------------------- picture


def test_the_picture_is_drawn_from_the_numbers_it_is_given() -> None:
    pytest.importorskip("matplotlib", reason="the plots group (matplotlib) is not installed: uv sync --group plots")
    from PIL import Image

    from clustermesh.notify.pictures import SIZE_PX, VERDICT_COLOURS, alt_text, heatmap_cell_pixel, render_picture

    pyplot_before = "matplotlib.pyplot" in sys.modules
    healthy = {pair_key(s, d): "healthy" for s in CLUSTERS for d in CLUSTERS}
    red = {**healthy, pair_key("cluster-1", "cluster-2"): "down"}
    series = [(T0 - timedelta(days=1), 0.2), (T0, 3.5)]
    images = {}
    for name, pairs in (("green", healthy), ("red", red)):
        png = render_picture("mesh", CLUSTERS, pairs, series, median=0.2)  # type: ignore[arg-type]
        assert png.startswith(b"\x89PNG")
        image = Image.open(io.BytesIO(png)).convert("RGB")
        assert image.size == SIZE_PX
        images[name] = image

    def colour(name: str, row: int, column: int) -> tuple[int, int, int]:
        return images[name].getpixel(heatmap_cell_pixel(2, row, column))  # type: ignore[no-any-return]

    green_rgb = tuple(int(VERDICT_COLOURS["healthy"][i : i + 2], 16) for i in (1, 3, 5))
    red_rgb = tuple(int(VERDICT_COLOURS["down"][i : i + 2], 16) for i in (1, 3, 5))
    assert colour("green", 0, 1) == green_rgb and colour("red", 0, 1) == red_rgb  # the cell that differs
    assert colour("red", 1, 0) == green_rgb and colour("red", 0, 0) == green_rgb  # the others do not
    assert ("matplotlib.pyplot" in sys.modules) is pyplot_before  # no pyplot, no global figure state
    text = alt_text(CLUSTERS, red, series)  # type: ignore[arg-type]
    assert text.startswith("Health matrix (from → to): 3 of 4 pairs healthy: cluster-1 → cluster-2 down.")
    assert alt_text(CLUSTERS, healthy, []) == "Health matrix (from → to): 4 of 4 pairs healthy."  # type: ignore[arg-type]
    assert "11-30 02:00 0.20 s; 12-01 02:00 3.50 s" in text
