"""One session per cluster per run: each kubeconfig is read (or fetched from KKP) once per flow run.

Counted from outside the pipeline: kubeconfig file opens through an audit hook (``open`` events on the
kubeconfig paths, nothing patched), KKP kubeconfig requests by the sandbox's KKP API itself. The setup
and the nightly (with the drill as its subflow) run for real on the sandbox and the session's Prefect server.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clustermesh.spec import load_spec
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification
from tests.flows.conftest import mesh_spec, task_runs_of
from tests.kkp.test_kkp_flow import precreate


class FileOpens:
    """Counts ``open`` audit events on watched paths; the hook stays (it cannot be removed) but idles after."""

    _installed: FileOpens | None = None

    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not args or not isinstance(args[0], str | os.PathLike):
            return
        path = os.fspath(args[0])
        if path in self.watched:
            with self._lock:
                self.counts[path] += 1

    def taken(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self.counts)
            self.counts.clear()
        return counts


@pytest.fixture
def file_opens() -> Iterator[FileOpens]:
    if FileOpens._installed is None:
        FileOpens._installed = FileOpens()
        installed = FileOpens._installed
        sys.addaudithook(lambda event, args: installed.hook(event, args))
    counter = FileOpens._installed
    yield counter
    counter.watched.clear()
    counter.counts.clear()


def test_setup_and_nightly_read_each_kubeconfig_once_per_run(
    sandbox_factory: Callable[..., Any], file_opens: FileOpens, result_key: bytes
) -> None:
    # with a result key every cache policy is on, including the endpoint steps' (their observe connects too)
    sb = sandbox_factory(clusters=3, cilium_version="1.16")
    spec = mesh_spec(sb)
    paths = {c.name: str(Path(c.kubeconfig.path).expanduser()) for c in spec.clusters if c.kubeconfig}
    assert len(paths) == 3
    file_opens.watched.update(paths.values())

    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    assert file_opens.taken() == {path: 1 for path in paths.values()}

    again = cluster_mesh_setup(spec)  # a rerun is a new run: its own sessions, one read per cluster again
    assert not again.wrote_anything
    assert file_opens.taken() == {path: 1 for path in paths.values()}

    state = nightly_mesh_verification(spec, run_drill=True, return_state=True)

    verdict = state.result(raise_on_failure=False)
    assert verdict.status == "PASS", verdict.describe()
    assert verdict.drill is not None and verdict.drill.status == "passed"
    # the drill runs as the nightly's subflow and borrows the nightly's clients
    assert file_opens.taken() == {path: 1 for path in paths.values()}


def kubeconfig_requests(sb: Any, since: int) -> Counter[str]:
    """KKP kubeconfig requests answered 200 since exchange ``since``, by KKP cluster ID."""
    return Counter(
        ex.path.rsplit("/", 2)[1]
        for ex in sb.kkp_state.exchanges[since:]
        if ex.path.endswith("/kubeconfig") and ex.status == 200
    )


def test_kkp_kubeconfigs_are_fetched_once_per_run_and_a_503_is_retried(
    sandbox_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandbox_factory(clusters=0, kkp=True, cilium_version="1.16")
    kkp = sb.kkp_state
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", kkp.token)
    ids = {
        precreate(sb, "cluster-1", proxy_mode="ebpf", pods="172.27.0.0/16"),
        precreate(sb, "cluster-2", proxy_mode="ebpf", pods="172.28.0.0/16"),
    }
    spec = load_spec(sb.directory / "mesh-kkp.yaml")

    # KKP busy when step 1 first opens the clusters: the cache key of each step-1 task and then its body
    # meet a 503 (4 refusals for 2 clusters), so each first attempt fails and only a task retry can go on
    kkp.fail_kubeconfig_requests(4)
    since = len(kkp.exchanges)
    state = cluster_mesh_setup(spec, return_state=True)

    result = state.result()
    assert result.health.healthy, result.health.render_text()
    assert kkp.kubeconfig_503s == 4 and kkp.kubeconfig_failures == 0
    assert kubeconfig_requests(sb, since) == dict.fromkeys(ids, 1), "one kubeconfig per cluster for the run"
    assert kkp.kubeconfig_requests == 4 + 2
    step1 = [run for name, run in task_runs_of(state.state_details.flow_run_id).items() if name.startswith("1. Check")]
    assert sum(max(run.run_count - 1, 0) for run in step1) >= 1, "a step-1 task was retried after the 503"

    since, before = len(kkp.exchanges), kkp.kubeconfig_requests
    again = cluster_mesh_setup(spec)

    assert again.health.healthy and not again.wrote_anything
    assert kubeconfig_requests(sb, since) == dict.fromkeys(ids, 1)
    assert kkp.kubeconfig_requests - before == 2
