"""What ``sandbox up --charts DIR`` (KKP rendering the real Cilium charts) costs at start, vs the built-in renderer.

Run: ``uv run python bench/sandbox_real_charts.py [--charts ../shared/charts] [--cilium-version 1.16]
[--clusters 2,16] [--rounds 3]``.

For each cluster count, in the same run and alternating, a real ``Sandbox`` (HTTPS API servers, files,
controllers, ``time_scale`` 0) is started until ``ready`` and stopped again, once with the built-in renderer
and once with Helm's engine rendering ``cilium-<version>.tgz`` from the folder. Prints the median start time
of each, the ratio, and how many times Helm's engine ran (one render per cluster: each has its own pod CIDR,
so the per-(version, values) cache only helps when the same values come back).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.real_chart import ChartRenderer  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402


def start_once(clusters: int, version: str, charts: Path | None) -> tuple[float, int]:
    """Seconds from ``Sandbox.start()`` to ready, and the Helm renders it took (0 for the built-in)."""
    with tempfile.TemporaryDirectory(prefix="bench-real-charts-") as tmp:
        sb = Sandbox(Path(tmp), clusters=clusters, cilium_version=version, time_scale=0.0, charts=charts)
        start = time.perf_counter()
        sb.start()
        elapsed = time.perf_counter() - start
        renderer = sb.world.renderer if sb.world is not None else None
        renders = renderer.renders if isinstance(renderer, ChartRenderer) else 0
        sb.stop()
    return elapsed, renders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charts", type=Path, default=ROOT.parent / "shared" / "charts")
    parser.add_argument("--cilium-version", default="1.16")
    parser.add_argument("--clusters", default="2,16", help="comma-separated cluster counts")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not any(args.charts.glob("cilium-*.tgz")):
        sys.exit(f"no cilium-*.tgz in {args.charts}: pass --charts DIR")
    print(f"python {platform.python_version()} on {platform.machine()}, Cilium {args.cilium_version}, {args.charts}")
    print(f"{'clusters':>8}  {'built-in s':>10}  {'real charts s':>13}  {'ratio':>6}  {'helm renders':>12}")
    for n in (int(x) for x in args.clusters.split(",")):
        builtin: list[float] = []
        real: list[float] = []
        renders = 0
        for _ in range(args.rounds):  # alternating, so drift on a shared machine hits both alike
            builtin.append(start_once(n, args.cilium_version, None)[0])
            seconds, renders = start_once(n, args.cilium_version, args.charts)
            real.append(seconds)
        b, r = statistics.median(builtin), statistics.median(real)
        print(f"{n:>8}  {b:>10.2f}  {r:>13.2f}  {r / b:>5.1f}x  {renders:>12}")


if __name__ == "__main__":
    main()
