"""What the nightly's picture costs: importing matplotlib once, then drawing the health heat map and the
failover chart of 14 nights for 2, 4 and 16 clusters (clustermesh/notify/pictures.py), and the PNG's size.

Run: `uv run python bench/nightly_picture.py` (needs the plots group: `uv sync --group plots`). The first
import of matplotlib in a fresh home also builds its font cache; run twice to see the steady figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clustermesh.notify.history import PairVerdict, pair_key  # noqa: E402
from clustermesh.notify.pictures import render_picture  # noqa: E402

NIGHTS = 14
REPEAT = 3


def main() -> None:
    started = time.perf_counter()
    import matplotlib.figure  # noqa: F401 - the import the nightly pays once per process

    print(f"import matplotlib: {time.perf_counter() - started:.2f} s")
    now = datetime.now(UTC)
    series = [(now - timedelta(days=NIGHTS - k), 0.2 + 0.01 * k) for k in range(NIGHTS + 1)]
    for n in (2, 4, 16):
        clusters = [f"cluster-{i + 1}" for i in range(n)]
        pairs: dict[str, PairVerdict] = {pair_key(s, d): "healthy" for s in clusters for d in clusters}
        pairs[pair_key(clusters[0], clusters[-1])] = "down"
        times, size = [], 0
        for _ in range(REPEAT):
            t = time.perf_counter()
            size = len(render_picture("bench", clusters, pairs, series, median=0.25))
            times.append(time.perf_counter() - t)
        median_ms = statistics.median(times) * 1000
        print(f"{n:>2} clusters, {NIGHTS} nights: {median_ms:.0f} ms (median of {REPEAT}), PNG {size / 1024:.0f} KiB")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load {load:.1f}")


if __name__ == "__main__":
    main()
