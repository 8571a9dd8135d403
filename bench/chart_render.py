"""How long Helm's engine takes to render each of Cilium's real charts with the pipeline's values.

Run: `uv run --group charts python bench/chart_render.py [charts-dir]` (default `../shared/charts`).
For every `cilium-*.tgz`: one render (chart load, templates, schema check, YAML parse of the output)
with the values the pipeline writes for cluster-1 of a 2-cluster mesh on that line, merged into
KKP-like base values; then the median of 3 renders for two archives.
"""

from __future__ import annotations

import base64
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clustermesh.cilium import SUPPORTED_LINES, profile_for, render_chart  # noqa: E402
from clustermesh.errors import ChartRenderError  # noqa: E402
from clustermesh.spec import from_data  # noqa: E402
from clustermesh.values import PeerEntry, deep_merge, render_mesh_values  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEDIAN_OF = ("1.16.9", "1.19.6")


def _pem_b64(kind: str, seed: str) -> str:
    body = base64.b64encode((seed * 40).encode()).decode()
    return base64.b64encode(f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()).decode()


def values_for(version: str) -> dict[str, Any]:
    line = ".".join(version.split(".")[:2])
    profile = profile_for(line if line in SUPPORTED_LINES else SUPPORTED_LINES[-1])
    spec = from_data(
        {
            "clusters": [
                {"name": "cluster-1", "id": 1, "kubeconfig": {"path": "/k/1"}},
                {"name": "cluster-2", "id": 2, "kubeconfig": {"path": "/k/2"}},
            ]
        }
    )
    peer = PeerEntry(
        name="cluster-2",
        ips=["203.0.113.2"],  # type: ignore[list-item]
        cert=_pem_b64("CERTIFICATE", "cert"),
        key=_pem_b64("EC PRIVATE KEY", "key"),  # type: ignore[arg-type]
        ca_cert=_pem_b64("CERTIFICATE", "ca"),
    )
    ours = render_mesh_values(profile, spec.first, spec, shared_ca=None, peers=[peer])
    base = {
        "k8sServiceHost": "x7k2pq9wzn.example.com",
        "k8sServicePort": 6443,
        "kubeProxyReplacement": "strict" if line == "1.13" else "true",
        "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": ["172.25.0.0/16"]}},
    }
    return deep_merge(base, ours)


def _key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.name.removeprefix("cilium-").removesuffix(".tgz").split("."))


def render_once(archive: Path, values: dict[str, Any]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        objects = render_chart(archive, values)
        outcome = f"{len(objects)} objects"
    except ChartRenderError as exc:
        outcome = f"refused: {exc.problem[:90]}"
    return time.perf_counter() - start, outcome


def main() -> None:
    charts = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "charts"
    archives = sorted(charts.glob("cilium-*.tgz"), key=_key)
    if not archives:
        sys.exit(f"no cilium-*.tgz in {charts}")
    print(f"Python {platform.python_version()} on {platform.machine()}, {len(archives)} charts in {charts}")
    print(f"{'chart':<22} {'render':>9}  result")
    total = 0.0
    for archive in archives:
        seconds, outcome = render_once(archive, values_for(archive.name[7:-4]))
        total += seconds
        print(f"{archive.name:<22} {seconds * 1000:>7.0f}ms  {outcome}")
    print(f"{'all, one render each':<22} {total:>8.2f}s")
    for version in MEDIAN_OF:
        archive = charts / f"cilium-{version}.tgz"
        if archive.is_file():
            values = values_for(version)
            times = [render_once(archive, values)[0] for _ in range(3)]
            print(f"{archive.name:<22} {statistics.median(times) * 1000:>7.0f}ms  median of 3")


if __name__ == "__main__":
    main()
