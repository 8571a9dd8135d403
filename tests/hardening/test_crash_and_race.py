"""Crash-resume and concurrency of the setup, against a real sandbox and a real, temporary Prefect server.

Crash-resume kills the ``clustermesh setup`` PROCESS (SIGKILL, no cleanup of any kind) at chosen points and
runs it again; afterwards the mesh must be healthy and every cluster's values must list each peer exactly
once. The pipeline is never patched: kill points are found from the outside.

- At step boundaries: a watch on every cluster's ``cilium`` ApplicationInstallation (official client) sees
  each values write (a new ``metadata.generation``) and the process is killed right after it. The runs are
  chained on one sandbox: each run is killed right after its first write, so consecutive runs cut the
  setup after write 1 (step 2), 2-3 (step 4) and 4-6 (step 6). Steps 4 and 6 write in parallel, so a run
  may land more than one write before it dies; which cuts happened is printed (e.g. [1, 3, 4]). The last
  run is not killed and must finish what is left.
- In the middle of a write: with the sandbox's API latency fault on (0.3 s), the sandbox's request guard is
  watched for the setup's PUT of the installation, and the process is killed while that PUT waits in the
  latency, at a seeded random point in the first third of the window. Kill points, chained on one sandbox:
  a step 2 PUT (cluster-1), then a step 4 PUT (cluster-2 or -3, its twin in flight beside it), then a
  step 6 PUT. The sandbox drops a PUT whose client died before it was read; a real API server may apply
  it. The rerun must converge either way; which one happened is printed.

Concurrency: two ``clustermesh setup`` of one mesh on one machine never overlap (the second waits for the
CLI's lock on the mesh, saying so); from two machines (two CLI state folders) they run one after the other
under the mesh's global concurrency limit, which the CLI creates; a setup racing ``kubectl edit`` of the
same installation re-reads on 409 and keeps the human's unrelated change.

Every CLI process creates the limit ``mesh-sandbox`` on the module's server if it is missing; a process
killed while holding its slot keeps it until the lease expires (minutes, and never on a test server, which
runs no lease service), so the crash tests delete the limit after each kill (the next setup creates it).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch

from tests.flows.conftest import AI, Kube, assert_peers_exactly_once, health_problems, mesh_spec
from tests.helpers import ROOT, cli_environment, prefect_test_server, wait_until

MESH_LIMIT = "mesh-sandbox"  # mesh_lock_name() of the sandbox's mesh.yaml (name: sandbox)
AI_PATH = "/apis/apps.kubermatic.k8c.io/v1/namespaces/kube-system/applicationinstallations/cilium"
WRITES_OF_A_FRESH_SETUP = 6  # 3 clusters: step 2 once, step 4 twice, step 6 three times
WAIT = 90.0  # generous bound on every wait below; a test fails with what it saw, never on a timing

pytestmark = pytest.mark.usefixtures("no_result_key")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One temporary Prefect server for the module; CLI subprocesses reach it through PREFECT_API_URL.

    A denied concurrency slot is retried after at most 1 s (the default cap is 30 s), so a setup held off by
    the mesh limit starts soon after the holder finished.
    """
    from prefect.settings import PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS as SLOT_WAIT

    home = tmp_path_factory.mktemp("prefect-home-crash-race")
    with prefect_test_server(home, settings={SLOT_WAIT: 1.0}) as url:
        yield url


@pytest.fixture
def cli_env(tmp_path: Path, prefect_api: str) -> dict[str, str]:
    """Environment of the CLI subprocesses: the module's Prefect server, a PREFECT_HOME and a CLI state folder
    (the mesh locks) of the test's own."""
    return cli_environment(tmp_path / "prefect-home-cli", prefect_api, CLUSTERMESH_STATE_DIR=str(tmp_path / "state"))


@pytest.fixture
def setups(cli_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``setups(sb, **env)`` starts ``clustermesh setup --config <sandbox>/mesh.yaml`` (``env`` added to the
    CLI's environment); leftovers are killed."""
    started: list[subprocess.Popen[str]] = []

    def start(sb: Any, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.app", "setup", "--config", str(Path(sb.directory) / "mesh.yaml")],
            cwd=ROOT,
            env={**cli_env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@dataclass(frozen=True)
class Write:
    """One values write seen by the watch: the installation's generation went up."""

    cluster: str
    generation: int
    peers: tuple[str, ...]
    at: float  # time.monotonic() when the watch event arrived
    wall: datetime  # the same moment, to compare with the flow runs' times


class ValuesWrites:
    """Watches every cluster's ``cilium`` ApplicationInstallation (official client) and records each write.

    A write is an event with a higher ``metadata.generation`` than seen before; KKP's status updates
    leave the generation alone and are ignored.
    """

    def __init__(self, kubes: dict[str, Kube]) -> None:
        self.writes: list[Write] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._generation = {name: k.ai_version()[1] for name, k in kubes.items()}
        self._threads = [
            threading.Thread(target=self._watch, args=(name, k), daemon=True, name=f"watch-{name}")
            for name, k in kubes.items()
        ]
        for t in self._threads:
            t.start()

    def _watch(self, cluster: str, kube: Kube) -> None:
        group, version, namespace, plural, _name = AI
        rv = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    kube.custom.list_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    resource_version=rv or None,
                    timeout_seconds=1,
                ):
                    obj = event["object"]
                    meta = obj.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or rv)
                    if meta.get("name") != "cilium" or event["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    generation = int(meta.get("generation", 0))
                    with self._changed:
                        # one write per generation step (a re-listed stream may skip one)
                        for missed in range(self._generation[cluster] + 1, generation + 1):
                            self._generation[cluster] = missed
                            entries = ((obj["spec"].get("values") or {}).get("clustermesh") or {}).get("config") or {}
                            peers = tuple(str(e.get("name")) for e in entries.get("clusters") or [])
                            self.writes.append(Write(cluster, missed, peers, time.monotonic(), datetime.now(UTC)))
                        self._changed.notify_all()
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a broken or expired stream is re-opened with a fresh list
                rv = ""
                if not self._stop.is_set():
                    time.sleep(0.05)
            finally:
                w.stop()

    def count(self) -> int:
        with self._changed:
            return len(self.writes)

    def generation(self, cluster: str) -> int:
        with self._changed:
            return self._generation[cluster]

    def wait_for(self, count: int, proc: subprocess.Popen[str] | None = None) -> bool:
        """Until ``count`` writes were seen (True), or ``proc`` ended first (False)."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while len(self.writes) < count:
                if proc is not None and proc.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    raise AssertionError(f"expected {count} values writes within {WAIT:g}s, saw {self.writes}")
                self._changed.wait(0.05)
            return True

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


@pytest.fixture
def values_writes() -> Iterator[Callable[[dict[str, Kube]], ValuesWrites]]:
    started: list[ValuesWrites] = []

    def start(kubes: dict[str, Kube]) -> ValuesWrites:
        started.append(ValuesWrites(kubes))
        return started[-1]

    yield start
    for w in started:
        w.stop()


@dataclass(frozen=True)
class Request:
    cluster: str
    method: str
    path: str
    kubectl: bool
    at: float


@pytest.fixture
def api_requests(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], queue.Queue[Request]]:
    """``api_requests(sb)``: every request reaching the in-process sandbox's API, as it ARRIVES (before any
    injected latency), in a queue. Observation only: the request then goes on unchanged.
    """
    from sandbox import kubeapi

    sinks: dict[str, tuple[str, queue.Queue[Request]]] = {}
    original = kubeapi._Guard.__call__

    async def observed(self: Any, scope: Any, receive: Any, send: Any) -> None:
        sink = sinks.get(self.token)
        if sink is not None and scope["type"] == "http":
            agent = dict(scope.get("headers") or []).get(b"user-agent", b"").decode("latin-1")
            sink[1].put(Request(sink[0], scope["method"], scope["path"], agent.startswith("kubectl"), time.monotonic()))
        await original(self, scope, receive, send)

    monkeypatch.setattr(kubeapi._Guard, "__call__", observed)

    def attach(sb: Any) -> queue.Queue[Request]:
        q: queue.Queue[Request] = queue.Queue()
        for ep in sb.endpoints:
            sinks[ep.token] = (ep.name, q)
        return q

    return attach


# ------------------------------------------------------------------------------------------- helpers


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=WAIT * 2)
    return proc.returncode, out


def kill(proc: subprocess.Popen[str]) -> float:
    """SIGKILL: no finally blocks, no Prefect state hooks, no lease release. Returns when it is dead.

    The slot it held of ``mesh-sandbox`` is dropped with the limit (see the module docstring).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    killed_at = time.monotonic()
    with get_client(sync_client=True) as prefect, suppress(ObjectNotFound):
        prefect.delete_global_concurrency_limit_by_name(MESH_LIMIT)
    return killed_at


def assert_no_duplicate_or_lost_peers(kubes: dict[str, Kube], before: dict[str, set[str]]) -> dict[str, set[str]]:
    """After a crash: no cluster lists a peer twice, and no peer written earlier has disappeared."""
    now: dict[str, set[str]] = {}
    for name, k in kubes.items():
        peers = Counter(k.peer_names())
        assert all(n == 1 for n in peers.values()), f"{name}: duplicate peers {dict(peers)}"
        assert name not in peers, f"{name} lists itself as a peer"
        assert before.get(name, set()) <= set(peers), f"{name}: lost peers {before[name] - set(peers)}"
        now[name] = set(peers)
    return now


def assert_converged(kubes: dict[str, Kube], code: int, out: str) -> None:
    assert code == 0, f"setup rerun exited {code}:\n{out[-3000:]}"
    assert_peers_exactly_once(kubes)
    assert health_problems(kubes) == []
    assert all(k.applied() for k in kubes.values()), "an installation is not applied for its generation"


def setup_runs_since(since: datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as prefect:
        return list(
            prefect.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["cluster-mesh-setup"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            )
        )


def task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        return list(prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))


# ------------------------------------------------------------------------------------- crash-resume


def test_setup_killed_right_after_each_values_write_converges_when_run_again(
    sandbox_factory: Callable[..., Any],
    kubes: Callable[[Any], dict[str, Kube]],
    values_writes: Callable[[dict[str, Kube]], ValuesWrites],
    setups: Callable[[Any], subprocess.Popen[str]],
) -> None:
    sb = sandbox_factory(clusters=3, nodes=2)
    k = kubes(sb)
    writes = values_writes(k)
    peers: dict[str, set[str]] = {}
    killed_after: list[int] = []  # how many writes the mesh had when each run was killed

    while writes.count() < WRITES_OF_A_FRESH_SETUP:
        seen = writes.count()
        proc = setups(sb)
        assert writes.wait_for(seen + 1, proc), f"the run ended before writing anything:\n{finish(proc)[1][-3000:]}"
        kill(proc)
        killed_after.append(writes.count())
        peers = assert_no_duplicate_or_lost_peers(k, peers)

    code, out = finish(setups(sb))

    assert_converged(k, code, out)
    # each write step was cut: after step 2 (write 1), inside or after step 4 (2-3), inside step 6 (4-6)
    assert killed_after[0] == 1 and {2, 3} & set(killed_after) and {4, 5, 6} & set(killed_after), killed_after
    # idempotent across crashes: nothing was written twice
    assert writes.count() == WRITES_OF_A_FRESH_SETUP, writes.writes
    assert Counter(w.cluster for w in writes.writes) == {name: 2 for name in k}, writes.writes
    print(f"\nkilled right after values write(s) {killed_after} of {WRITES_OF_A_FRESH_SETUP}; rerun converged")


IN_FLIGHT_LATENCY = 0.3  # seconds every API request waits in the sandbox before it is handled
SEED = 20240611


@dataclass(frozen=True)
class InFlightKill:
    """Kill while the setup's PUT to a cluster whose installation is at ``generation`` waits in the sandbox.

    The latency fault goes on once the mesh has ``writes_before`` writes (the earlier steps run at full
    speed), so the targeted PUT certainly arrives while it is on.
    """

    step: str
    clusters: tuple[str, ...]
    generation: int
    writes_before: int


IN_FLIGHT_KILLS = (
    InFlightKill("step 2", ("cluster-1",), 1, 0),
    InFlightKill("step 4", ("cluster-2", "cluster-3"), 1, 1),
    InFlightKill("step 6", ("cluster-1", "cluster-2", "cluster-3"), 2, 3),
)


def test_setup_killed_with_a_values_write_in_flight_converges_when_run_again(
    sandbox_factory: Callable[..., Any],
    kubes: Callable[[Any], dict[str, Kube]],
    values_writes: Callable[[dict[str, Kube]], ValuesWrites],
    setups: Callable[[Any], subprocess.Popen[str]],
    api_requests: Callable[[Any], queue.Queue[Request]],
) -> None:
    sb = sandbox_factory(clusters=3, nodes=2)
    k = kubes(sb)
    writes = values_writes(k)
    requests = api_requests(sb)
    rng = random.Random(SEED)
    peers: dict[str, set[str]] = {}
    outcomes: list[str] = []

    for target in IN_FLIGHT_KILLS:
        while not requests.empty():
            requests.get_nowait()
        proc = setups(sb)
        latency_on = False
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, f"the run ended before its {target.step} PUT:\n{finish(proc)[1][-3000:]}"
            assert time.monotonic() < deadline, f"no {target.step} PUT within {WAIT:g}s; writes {writes.writes}"
            if not latency_on and writes.count() >= target.writes_before:
                sb.fault("api-latency", seconds=IN_FLIGHT_LATENCY)
                latency_on = True
            try:
                r = requests.get(timeout=0.02)
            except queue.Empty:
                continue
            if (
                latency_on
                and r.method == "PUT"
                and r.path == AI_PATH
                and not r.kubectl
                and r.cluster in target.clusters
                and writes.generation(r.cluster) == target.generation
            ):
                break
        time.sleep(rng.uniform(0, IN_FLIGHT_LATENCY / 3))  # a seeded point inside the PUT's wait
        assert writes.generation(r.cluster) == target.generation, "the PUT was handled before the kill"
        killed_at = kill(proc)
        sb.fault("clear")
        time.sleep(IN_FLIGHT_LATENCY * 2)  # a PUT the sandbox still held lands now, or is dropped
        landed = [f"{w.cluster}@{w.generation}" for w in writes.writes if w.at > killed_at]
        outcomes.append(f"{target.step} PUT to {r.cluster}: landed after the kill {landed or 'none'}")
        peers = assert_no_duplicate_or_lost_peers(k, peers)

    code, out = finish(setups(sb))

    assert_converged(k, code, out)
    # idempotent across crashes: no cluster's values were written more often than a fresh setup writes them
    assert Counter(w.cluster for w in writes.writes) == {name: 2 for name in k}, writes.writes
    print("\nkilled with a values PUT in flight: " + "; ".join(outcomes))


# -------------------------------------------------------------------------------------- concurrency


def run_span(run: Any) -> tuple[datetime, datetime]:
    """From the flow run's start to its end, as the Prefect server recorded them."""
    assert run.start_time is not None and run.end_time is not None, run
    return run.start_time, run.end_time


def test_two_cli_setups_of_one_mesh_on_one_machine_never_overlap_the_second_waits_and_says_so(
    sandbox_factory: Callable[..., Any],
    kubes: Callable[[Any], dict[str, Kube]],
    values_writes: Callable[[dict[str, Kube]], ValuesWrites],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Both start while the test holds the mesh's lock (as a third command would), so both certainly wait."""
    from cli.meshlock import hold_mesh

    sb = sandbox_factory(clusters=3, nodes=2)
    k = kubes(sb)
    writes = values_writes(k)
    since = datetime.now(UTC)
    outputs = [tmp_path / "setup-1.out", tmp_path / "setup-2.out"]
    procs: list[subprocess.Popen[str]] = []
    try:
        with hold_mesh(Path(cli_env["CLUSTERMESH_STATE_DIR"]), "sandbox", "test", wait_seconds=0, say=print):
            for out in outputs:
                with out.open("w") as sink:
                    argv = [sys.executable, "-m", "cli.app", "setup", "--config", str(Path(sb.directory) / "mesh.yaml")]
                    procs.append(subprocess.Popen(argv, cwd=ROOT, env=cli_env, stdout=sink, stderr=subprocess.STDOUT))

            def both_waiting() -> bool:
                assert all(p.poll() is None for p in procs), [o.read_text()[-2000:] for o in outputs]
                return all("mesh sandbox is busy: `clustermesh test`" in o.read_text() for o in outputs)

            wait_until("both setups to wait for the mesh", both_waiting, timeout=WAIT, interval=0.1)
            assert writes.count() == 0, f"a setup wrote while the mesh was held: {writes.writes}"
        codes = [p.wait(timeout=WAIT * 2) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    texts = [o.read_text() for o in outputs]
    assert codes == [0, 0], [t[-3000:] for t in texts]
    runs = sorted(setup_runs_since(since), key=lambda r: r.start_time)
    assert len(runs) == 2, runs
    (first_start, first_end), (second_start, _) = run_span(runs[0]), run_span(runs[1])
    # one after the other: the second run began after the first had ended, and every write fell in the first
    assert first_end <= second_start, f"overlap: {runs[0].name} until {first_end}, {runs[1].name} from {second_start}"
    assert writes.count() == WRITES_OF_A_FRESH_SETUP, writes.writes
    assert all(first_start <= w.wall <= first_end for w in writes.writes), (first_start, first_end, writes.writes)
    assert sum("nothing written" in t for t in texts) == 1, [t[-1500:] for t in texts]
    assert_peers_exactly_once(k)


def test_setups_from_two_machines_run_one_after_the_other_under_the_limit_the_cli_creates(
    sandbox_factory: Callable[..., Any],
    kubes: Callable[[Any], dict[str, Kube]],
    values_writes: Callable[[dict[str, Kube]], ValuesWrites],
    setups: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Two CLI state folders play two machines: their lock files do not meet, the server's limit does.

    Nobody created ``mesh-sandbox`` on the server: the first command does. The sandbox is slowed down so that
    the first setup is still running when the second one's flow run starts.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    sb = sandbox_factory(clusters=3, nodes=2, time_scale=0.3)
    k = kubes(sb)
    writes = values_writes(k)
    since = datetime.now(UTC)
    with get_client(sync_client=True) as prefect, suppress(Exception):
        prefect.delete_global_concurrency_limit_by_name(MESH_LIMIT)
    first = setups(sb, CLUSTERMESH_STATE_DIR=str(tmp_path / "machine-1"))
    assert writes.wait_for(1, first), f"the first setup ended before writing:\n{finish(first)[1][-3000:]}"
    second = setups(sb, CLUSTERMESH_STATE_DIR=str(tmp_path / "machine-2"))

    def both_running() -> bool:
        assert second.poll() is None, f"the second setup ended early:\n{finish(second)[1][-3000:]}"
        return len([r for r in setup_runs_since(since) if r.state_type == StateType.RUNNING]) == 2

    wait_until("the second setup's flow run RUNNING beside the first", both_running, timeout=WAIT, interval=0.1)
    results = [finish(first), finish(second)]

    for code, out in results:
        assert code == 0, out[-3000:]
        assert "is busy" not in out, out[-3000:]  # no lock file in common
    with get_client(sync_client=True) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(MESH_LIMIT).limit == 1  # the CLI created it
    runs = sorted(setup_runs_since(since), key=lambda r: r.start_time)
    assert len(runs) == 2 and all(r.state_type == StateType.COMPLETED for r in runs), runs
    tasks = [task_runs(run.id) for run in runs]
    assert all(len(t) >= 14 for t in tasks), [[x.name for x in t] for t in tasks]  # the whole setup ran in both
    first_end = max(t.end_time for t in tasks[0])
    second_begin = min(t.start_time for t in tasks[1])
    assert first_end <= second_begin, (
        f"the setups overlapped: the first until {first_end}, the second from {second_begin}"
    )
    assert writes.count() == WRITES_OF_A_FRESH_SETUP, writes.writes
    assert results[1][1].count("nothing written") == 1, results[1][1][-1500:]
    assert_peers_exactly_once(k)
    assert health_problems(k) == []


EDITOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    import yaml

    path, control = Path(sys.argv[-1]), Path(sys.argv[-2])
    obj = yaml.safe_load(path.read_text())
    values = obj["spec"].setdefault("values", {})
    values["extraUserKey"] = "keep-me"
    values["userEdits"] = int(values.get("userEdits", 0)) + 1
    if (control / "hold").exists():  # the first edit waits, editor open, until the test says "save now"
        (control / "armed").touch()
        deadline = time.monotonic() + 60
        while not (control / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        (control / "hold").unlink()
    else:
        time.sleep(0.1)  # a human takes a moment before saving
    path.write_text(yaml.safe_dump(obj))
    """
)


class KubectlEditLoop:
    """``kubectl edit`` of the cilium installation, again and again, by a 'human' adding unrelated keys."""

    def __init__(self, kubeconfig: Path, home: Path, control: Path) -> None:
        editor = control / "editor.py"
        editor.write_text(EDITOR)
        (control / "hold").touch()
        self.env = {**os.environ, "HOME": str(home), "KUBE_EDITOR": f"{sys.executable} {editor} {control}"}
        self.kubeconfig = kubeconfig
        self.saved = 0
        self.conflicts = 0  # kubectl's own 409s ("the object has been modified")
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubectl-edit")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(
                ["kubectl", "--kubeconfig", str(self.kubeconfig), "edit", "-n", "kube-system",
                 "applicationinstallations.apps.kubermatic.k8c.io/cilium"],
                env=self.env, capture_output=True, text=True, timeout=WAIT, check=False,
            )  # fmt: skip
            if done.returncode == 0 and "edited" in done.stdout:
                self.saved += 1
            elif "the object has been modified" in done.stderr:
                self.conflicts += 1
            else:
                self.failures.append(f"{done.returncode}: {done.stdout} {done.stderr}"[:500])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)


RACE_LATENCY = 0.5  # the setup's PUT waits this long in the sandbox: the human saves meanwhile


def open_gate_at_the_setups_put(
    sb: Any, requests: queue.Queue[Request], control: Path, opened: threading.Event
) -> None:
    """When the setup's PUT of cluster-1's installation arrives, lift the latency and let the editor save."""
    target = sb.endpoints[0]
    while not opened.is_set():
        try:
            r = requests.get(timeout=0.1)
        except queue.Empty:
            continue
        if r.cluster == target.name and r.method == "PUT" and r.path == AI_PATH and not r.kubectl:
            sb.fault("api-latency", cluster=target.name, seconds=0)
            (control / "go").touch()
            opened.set()


def test_setup_racing_kubectl_edit_rereads_on_409_and_keeps_the_human_change(
    sandbox_factory: Callable[..., Any],
    kubes: Callable[[Any], dict[str, Kube]],
    api_requests: Callable[[Any], queue.Queue[Request]],
    tmp_path: Path,
) -> None:
    """The human's save lands between the setup's GET and PUT of cluster-1 (step 2), deterministically.

    The first ``kubectl edit`` keeps its editor open. When the setup's PUT arrives at cluster-1's API (it
    then waits there, latency fault on), the latency is turned off and the editor saves: kubectl's PATCH
    is handled first, so the setup's PUT carries a stale resourceVersion and gets 409. ``kubectl edit`` then
    keeps editing in a loop for the whole setup.
    """
    from flows.mesh_setup import cluster_mesh_setup

    sb = sandbox_factory(clusters=3, nodes=2)
    k = kubes(sb)
    requests = api_requests(sb)
    target = sb.endpoints[0]
    control, home = tmp_path / "editor", tmp_path / "home"
    control.mkdir()
    home.mkdir()
    human = KubectlEditLoop(Path(target.kubeconfig), home, control)
    gate_opened = threading.Event()
    try:

        def editor_open() -> bool:
            assert not human.failures, human.failures
            return (control / "armed").exists()

        wait_until("kubectl edit to open the editor", editor_open, timeout=WAIT, interval=0.02)
        sb.fault("api-latency", cluster=target.name, seconds=RACE_LATENCY)
        gate = threading.Thread(target=open_gate_at_the_setups_put, args=(sb, requests, control, gate_opened))
        gate.daemon = True
        gate.start()

        state = cluster_mesh_setup(mesh_spec(sb), return_state=True)
    finally:
        gate_opened.set()
        human.stop()

    assert state.is_completed(), state
    result = state.result()
    assert result.health.healthy, result.health.render_text()
    step2 = next(c for c in result.changes if c.cluster == target.name and c.step.startswith("2."))
    assert step2.written and step2.conflicts_retried >= 1, step2
    assert not human.failures, human.failures
    values = k[target.name].values()
    assert values.get("extraUserKey") == "keep-me", values
    # every one of the human's saves survived: the setup never wrote back values older than a save
    assert values.get("userEdits") == human.saved >= 2, (values.get("userEdits"), human.saved)
    assert_peers_exactly_once(k)
    assert health_problems(k) == []
    retried = {f"{c.step}": c.conflicts_retried for c in result.changes if c.conflicts_retried}
    print(f"\nkubectl edit saved {human.saved} times ({human.conflicts} kubectl 409s); setup 409s retried: {retried}")
