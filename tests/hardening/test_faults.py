"""The real setup flow (and the nightly verification) against sandbox API faults.

Each test prints one row of the reliability table (fault, runs, outcome, retries used); run with ``-s`` to
see them. Retries are read from the Prefect API: every task run's ``run_count`` − 1. Failures the sandbox
injected are counted at the sandbox (500s and dropped connections); those not answered by a task retry
were absorbed inside a step (a wait that polls again, a health probe that looks again).
Mesh health and peers are judged from the outside, with the official ``kubernetes`` client.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from clustermesh.errors import TransientKubeError
from flows.mesh_setup import SetupResult, cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from tests.flows.conftest import (
    Kube,
    ai_versions,
    assert_peers_exactly_once,
    health_problems,
    mesh_spec,
    task_runs_of,
)

NS = "kube-system"
STEP_1_CLUSTER_2 = "1. Check prerequisites of cluster-2"
# The issue asks for "a minute" of API outage. 20 s is chosen for CI time, and because it already exceeds
# the retry budget of a task (delays 1 + 3 + 10 s = 14 s between four attempts): a longer outage would only
# make the failure case certain and cost 40 s more per run. Whether the setup rides out these 20 s depends
# on how long the run takes to reach its fourth attempt (flow start-up, a loaded CI machine), so the test
# accepts both outcomes and checks each strictly: healthy, or a clear failure in step 1 with nothing written
# and a re-run after the outage that is healthy.
OUTAGE_SECONDS = 20.0
TABLE_HEADER = "| fault | runs | outcome | retries used |\n|---|---|---|---|"

# a temporary Prefect server for this module, with PREFECT_HOME and result storage in a temp dir (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("module_prefect_server", "no_result_key")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts what the sandbox's fault guard did: ``500`` answers, ``dropped`` connections, ``503`` (down)."""
    from sandbox import kubeapi

    counts: Counter[str] = Counter()
    drop, deny = kubeapi._Guard._drop, kubeapi._Guard._deny

    def counting_drop(receive: Any) -> bool:
        dropped = bool(drop(receive))
        counts["dropped"] += dropped
        return dropped

    async def counting_deny(self: Any, scope: Any, receive: Any, send: Any, err: Any) -> None:
        counts[str(err.code)] += 1
        await deny(self, scope, receive, send, err)

    monkeypatch.setattr(kubeapi._Guard, "_drop", staticmethod(counting_drop))
    monkeypatch.setattr(kubeapi._Guard, "_deny", counting_deny)
    return counts


# ------------------------------------------------------------------------------------------- helpers


def retries_used(state: Any) -> tuple[int, dict[str, int]]:
    """Total retries of a flow run's task runs, and the run counts of those that needed any."""
    runs = task_runs_of(state.state_details.flow_run_id)
    retried = {name: run.run_count for name, run in runs.items() if run.run_count > 1}
    return sum(count - 1 for count in retried.values()), retried


def report(fault: str, runs: str, outcome: str, retries: str) -> None:
    print(f"\n{TABLE_HEADER}\n| {fault} | {runs} | {outcome} | {retries} |")


@contextmanager
def api_down(sb: Any, cluster: str, seconds: float) -> Iterator[threading.Event]:
    """The cluster's API answers 503 from now until ``seconds`` later (a background timer turns it back on)."""
    ended = threading.Event()

    def back_up() -> None:
        sb.fault("api-down", cluster=cluster, on=False)
        ended.set()

    sb.fault("api-down", cluster=cluster, on=True)
    timer = threading.Timer(seconds, back_up)
    timer.start()
    try:
        yield ended
    finally:
        timer.join()  # the outage is over when the block is left, whatever happened inside


def assert_healthy_setup(result: SetupResult, names: list[str], nodes: int) -> None:
    assert result.health.healthy, result.health.render_text()
    assert result.health.clusters == names
    assert all(c.reachable == c.expected == nodes for c in result.health.cells), result.health.summary()
    assert result.firewall.ok, result.firewall.blocked


# -------------------------------------------------------------------------------------- (a) errors


def test_setup_finishes_healthy_while_a_fifth_of_all_api_requests_fail(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], injected: Counter[str]
) -> None:
    sb = sandbox_factory(clusters=3, nodes=2, cilium_version="1.16")
    names = [ep.name for ep in sb.endpoints]
    k = kubes(sb)
    spec = mesh_spec(sb)
    sb.fault("api-errors", rate=0.2)  # every cluster, the whole run: half 500s, half dropped connections

    state = cluster_mesh_setup(spec, return_state=True)

    sb.fault("clear")
    assert state.is_completed(), state
    result = state.result()
    assert_healthy_setup(result, names, nodes=2)
    assert {c.cluster for c in result.changes if c.written} == set(names)
    assert_peers_exactly_once(k)
    assert health_problems(k) == []
    failed = injected["500"] + injected["dropped"]
    assert failed > 0, "the fault injected nothing: the run proves nothing"
    total, retried = retries_used(state)
    assert all(count <= 4 for count in retried.values()), retried  # within the budget: 1 + 3 retries
    report(
        "20% of API requests fail (500 or dropped), 3 clusters",
        "1 setup",
        "healthy mesh (all 9 cells 2/2), peers exact",
        f"{total} task retries {dict(sorted(retried.items()))}; {failed} failed requests "
        f"({injected['500']} × 500, {injected['dropped']} dropped), {failed - total} absorbed inside steps",
    )


def test_nightly_verification_passes_while_a_fifth_of_all_api_requests_fail(
    sandbox_factory: Callable[..., Any], injected: Counter[str]
) -> None:
    sb = sandbox_factory(clusters=3, nodes=2, cilium_version="1.16")
    spec = mesh_spec(sb)
    assert cluster_mesh_setup(spec).health.healthy
    sb.fault("api-errors", rate=0.2)

    state = nightly_mesh_verification(spec, run_drill=False, return_state=True)

    sb.fault("clear")
    result = verification_result(state)
    assert isinstance(result, VerificationResult), state
    total, _ = retries_used(state)
    report(
        "20% of API requests fail, 3 clusters",
        "1 nightly (no drill)",
        result.status,
        f"{total} task retries; {injected['500'] + injected['dropped']} failed requests",
    )
    assert result.status == "PASS", result.describe()


# ------------------------------------------------------------------------------------- (b) latency


def test_setup_finishes_healthy_when_every_api_request_takes_a_second(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = sandbox_factory(clusters=2, nodes=2, cilium_version="1.16")
    names = [ep.name for ep in sb.endpoints]
    k = kubes(sb)
    spec = mesh_spec(sb)
    sb.fault("api-latency", seconds=1.0)  # every request, exec handshakes included

    state = cluster_mesh_setup(spec, return_state=True)

    sb.fault("clear")
    assert state.is_completed(), state
    assert_healthy_setup(state.result(), names, nodes=2)
    assert_peers_exactly_once(k)
    assert health_problems(k) == []
    total, retried = retries_used(state)
    report("1 s latency on every API request, 2 clusters", "1 setup", "healthy mesh", f"{total} {retried or ''}")


# ------------------------------------------------------------------------------------ (c) API down


def test_a_cluster_api_down_for_20s_is_ridden_out_or_fails_step_1_clearly_and_nightly_names_it(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = sandbox_factory(clusters=2, nodes=2, cilium_version="1.16")
    names = [ep.name for ep in sb.endpoints]
    k = kubes(sb)
    before = ai_versions(k)
    spec = mesh_spec(sb)

    with api_down(sb, "cluster-2", OUTAGE_SECONDS) as ended:
        state = cluster_mesh_setup(spec, return_state=True)
        setup_outlived_outage = ended.is_set()
    rows: list[tuple[str, str, str]] = []

    runs = task_runs_of(state.state_details.flow_run_id)
    step1 = runs[STEP_1_CLUSTER_2]
    assert step1.run_count >= 2, "the first attempt of step 1 met the outage and must have been retried"
    if state.is_completed():
        assert setup_outlived_outage, "a completed setup must have waited for cluster-2 to come back"
        assert_healthy_setup(state.result(), names, nodes=2)
        rows.append(("setup", "healthy: rode out the outage", f"{step1.run_count - 1} (step 1 of cluster-2)"))
    else:
        # The budget ran out before the API came back: a clear error, in step 1, before any write.
        assert state.is_failed(), state
        with pytest.raises(TransientKubeError) as info:
            state.result()
        message = str(info.value)
        assert "cluster-2" in message and "503" in message and "retrying is safe" in message, message
        assert step1.run_count == 4 and step1.state.is_failed(), (step1.run_count, step1.state)
        assert not any(name.startswith(("2.", "4.", "6.")) for name in runs), sorted(runs)
        assert ai_versions(k) == before
        rows.append(("setup", f"FAILED in step 1: {message[:90]}…; nothing written", "3 (budget spent)"))
        rerun = cluster_mesh_setup(spec, return_state=True)  # the outage is over
        assert rerun.is_completed(), rerun
        assert_healthy_setup(rerun.result(), names, nodes=2)
        rows.append(("setup re-run after the outage", "healthy", str(retries_used(rerun)[0])))
    assert_peers_exactly_once(k)
    assert health_problems(k) == []

    # The nightly verification during the same kind of outage: PASS, or FAIL naming the cluster and the cause.
    with api_down(sb, "cluster-2", OUTAGE_SECONDS):
        during = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    night = verification_result(during)
    assert isinstance(night, VerificationResult), during
    if night.status == "PASS":
        rows.append(("nightly during the outage", "PASS", str(retries_used(during)[0])))
    else:
        assert night.status == "FAIL" and during.is_failed(), (night.status, during)
        failures = [f for f in night.findings if f.level == "failure"]
        assert failures and all(f.subject == "cluster-2" for f in failures), night.describe()
        assert all("503" in f.reason and f.fix for f in failures), night.describe()
        rows.append(("nightly during the outage", f"FAIL: {failures[0].reason[:80]}…", str(retries_used(during)[0])))
    after = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    passed = verification_result(after)
    assert isinstance(passed, VerificationResult) and passed.status == "PASS", after
    rows.append(("nightly after the outage", "PASS", str(retries_used(after)[0])))

    print(f"\n{TABLE_HEADER}")
    for run, outcome, retries in rows:
        print(f"| cluster-2 API down (503) for {OUTAGE_SECONDS:g} s | {run} | {outcome} | {retries} |")


# ------------------------------------------------------------------------------ (d) agent restarts


def _restart_agents(kube: Kube) -> None:
    """What ``kubectl rollout restart ds/cilium`` does: a new template annotation, so every agent restarts."""
    stamp = datetime.now(UTC).isoformat()
    body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
    k8s.AppsV1Api(kube.api).patch_namespaced_daemon_set("cilium", NS, body)


def _restart_counts(kube: Kube) -> dict[str, int]:
    pods = kube.core.list_namespaced_pod(NS, label_selector="k8s-app=cilium").items
    return {p.spec.node_name: sum(cs.restart_count for cs in p.status.container_statuses or []) for p in pods}


def test_nightly_verification_passes_when_agents_restart_while_it_probes_health(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # time_scale 0.05: an agent restart (20 s simulated) takes about a second
    sb = sandbox_factory(clusters=2, nodes=2, cilium_version="1.16", time_scale=0.05)
    k = kubes(sb)
    spec = mesh_spec(sb)
    assert cluster_mesh_setup(spec).health.healthy
    restarts_before = {name: _restart_counts(kube) for name, kube in k.items()}

    # Observe, at the sandbox, `cilium-health` answered by an agent that is restarting (pod not Ready).
    import sandbox.server as sandbox_server

    seen: Counter[str] = Counter()
    hit_restarting = threading.Event()
    real_exec = sandbox_server.exec_command

    def observed_exec(states: Any, faults: Any, cluster: str, namespace: str, pod: str, *rest: Any) -> Any:
        argv = rest[-1]
        if argv and Path(str(argv[0])).name == "cilium-health":
            store = next(s.store for s in states if s.name == cluster)
            obj = store.try_get("v1/pods", namespace, pod) or {}
            conditions = (obj.get("status") or {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            seen["ready" if ready else "restarting"] += 1
            if not ready:
                hit_restarting.set()
        return real_exec(states, faults, cluster, namespace, pod, *rest)

    monkeypatch.setattr(sandbox_server, "exec_command", observed_exec)

    # Keep restarting the agents of every cluster until the health check has met restarting agents.
    stop = threading.Event()
    restarts = Counter[str]()

    def restarter() -> None:
        for _ in range(240):  # a bound, should the nightly never probe health
            for name, kube in k.items():
                _restart_agents(kube)
                restarts[name] += 1
            if hit_restarting.is_set() or stop.wait(0.5):
                return

    thread = threading.Thread(target=restarter, name="agent-restarter")
    thread.start()
    try:
        state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    finally:
        stop.set()
        thread.join()

    result = verification_result(state)
    assert isinstance(result, VerificationResult), state
    assert hit_restarting.is_set(), f"the health check never met a restarting agent: {dict(seen)}"
    assert result.status == "PASS", result.describe()
    assert result.health is not None and result.health.healthy, result.health
    assert all(c.reachable == c.expected == 2 for c in result.health.cells), result.health.summary()
    after = {name: _restart_counts(kube) for name, kube in k.items()}
    for name, counts in after.items():
        assert all(counts[node] > restarts_before[name][node] for node in counts), (name, counts)
    total, retried = retries_used(state)
    report(
        "cilium agents restarting (rollout restart, ~1 s each) during the nightly, 2 clusters",
        "1 nightly (no drill)",
        f"{result.status}; health waited: {seen['restarting']} probes met restarting agents, "
        f"{seen['ready']} ready; {sum(restarts.values())} rollout restarts",
        f"{total} {retried or ''}",
    )
