"""Running the setup again: after success, after a failure at a step, after a crash between steps; and caching.

A second run of a finished setup must write nothing; a run that failed at a step must converge once
the cause is gone; a cached endpoint must never be served once the cluster's certificates changed,
and what the cache keeps of them is sealed and private.
"""

from __future__ import annotations

import base64
import json
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes

from clustermesh.errors import (
    InstallFailedError,
    MeshUnhealthyError,
    PrerequisiteError,
    TransientKubeError,
    WaitTimeoutError,
)
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec
from clustermesh.steps import step1_prerequisites as prerequisites
from clustermesh.steps import step2_4_6_mesh_values as mesh_config
from clustermesh.steps.step7_reachability import UDP_8472_PATH, FirewallReport
from flows.mesh_setup import SetupResult, cluster_mesh_setup
from tests.flows.conftest import (
    AI,
    REMOTE_CERT,
    ai_versions,
    assert_peers_exactly_once,
    health_problems,
    key_material,
    mesh_spec,
    task_runs_of,
)
from tests.helpers import wait_until

Kubes = Callable[[Any], dict[str, Any]]


def run_state(spec: Any) -> Any:
    """The flow's final state (not raised), so its task runs can be read from the Prefect API."""
    return cluster_mesh_setup(spec, return_state=True)


def task_run(state: Any, prefix: str) -> Any:
    runs = task_runs_of(state.state_details.flow_run_id)
    found = [run for name, run in runs.items() if name.startswith(prefix)]
    assert len(found) == 1, f"task runs starting with {prefix!r}: {sorted(runs)}"
    return found[0]


def cert_fingerprint(cert_b64: str) -> str:
    """``sha256:`` + first 12 hex of the DER's SHA-256, computed here (the pipeline's format)."""
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_b64))
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()[:12]


def endpoint_of(result: SetupResult, cluster: str) -> dict[str, object]:
    return next(e for e in result.endpoints if e["cluster"] == cluster)


# --------------------------------------------------------------------------------- second runs


@pytest.mark.parametrize("cilium_version", ["1.13", "1.16"])
def test_a_second_run_of_a_finished_setup_writes_nothing(
    sandbox_factory: Callable[..., Any], kubes: Kubes, cilium_version: str
) -> None:
    sb = sandbox_factory(clusters=3, cilium_version=cilium_version)
    k = kubes(sb)
    spec = mesh_spec(sb)
    first = cluster_mesh_setup(spec)
    assert first.health.healthy and first.wrote_anything
    before = ai_versions(k)

    second = cluster_mesh_setup(spec)

    assert second.health.healthy, second.health.render_text()
    assert [(c.cluster, c.step, c.written, c.changed) for c in second.changes] == [
        (c.cluster, c.step, False, False) for c in first.changes
    ]
    assert not second.wrote_anything
    assert "nothing written" in second.describe()
    assert "nothing written" not in first.describe()
    assert ai_versions(k) == before
    assert_peers_exactly_once(k)


def test_a_setup_interrupted_after_step_2_converges_without_duplicate_peers(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """The process died after writing step 2 in cluster-1: a new run picks up from the cluster's state."""
    sb = sandbox_factory(clusters=3, cilium_version="1.16")
    k = kubes(sb)
    spec = mesh_spec(sb)
    first = spec.first
    with open_cluster(first, request_timeout=spec.timeouts.api) as client:
        facts = prerequisites.check_prerequisites(client, first, spec)
        step2 = mesh_config.configure_mesh(
            client, facts, first, spec, step="2. Enable Cluster Mesh in cluster-1", peers=[]
        )
    assert step2.written
    after_step2 = ai_versions(k)["cluster-1"]

    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    redo = next(c for c in result.changes if c.step.startswith("2."))
    assert (redo.cluster, redo.written) == ("cluster-1", False)
    assert ai_versions(k)["cluster-1"] != after_step2  # step 6 still added the peers
    assert_peers_exactly_once(k)
    assert health_problems(k) == []


# ----------------------------------------------------------------------- failures at a step


def test_a_loadbalancer_that_never_gets_an_address_fails_the_run_naming_the_service(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """KKP installs with Helm --wait, which waits for the LoadBalancer: step 4 fails, and says why."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    sb.fault("lb-never", cluster="cluster-2", on=True)

    with pytest.raises(InstallFailedError) as info:
        cluster_mesh_setup(mesh_spec(sb, load_balancer=1.0))

    message = str(info.value)
    assert "cluster-2" in message and "Service kube-system/clustermesh-apiserver" in message, message
    assert "Helm --wait" in message
    # step 6 was not reached: cluster-1 points at no peer whose address does not exist
    assert k["cluster-1"].peer_names() == []


def kkp_gave_up_on_cluster_2_then_its_address_came(sb: Any, k: dict[str, Any]) -> MeshSpec:
    """A setup whose step 4 in cluster-2 ran out on a LoadBalancer with no address until KKP gave up
    (InstallationFailedRetriesExceeded); then the address fault is lifted. Returns the spec it ran with."""
    sb.fault("lb-never", cluster="cluster-2", on=True)
    spec = mesh_spec(sb, load_balancer=1.0)
    with pytest.raises(InstallFailedError):
        cluster_mesh_setup(spec)
    wait_until(
        "KKP gives up on cluster-2's installation",
        lambda: (
            (k["cluster-2"].ai().get("status") or {}).get("conditions", {}).get("Ready", {}).get("reason")
            == "InstallationFailedRetriesExceeded"
        ),
    )
    sb.fault("lb-never", cluster="cluster-2", on=False)
    return spec


def test_a_rerun_converges_once_the_loadbalancer_gets_its_address(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """KKP gave up on the pipeline's own values (Helm --wait ran out on the pending LoadBalancer,
    InstallationFailedRetriesExceeded): once the address exists, the rerun makes KKP install them again."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    spec = kkp_gave_up_on_cluster_2_then_its_address_came(sb, k)

    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    assert_peers_exactly_once(k)
    retried = [c for c in result.changes if c.install_retried]
    assert [c.cluster for c in retried] == ["cluster-2"], result.describe()
    assert "asked it to install them again" in result.describe()


def test_a_failing_installation_whose_values_a_person_changed_is_still_refused(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """Only values the pipeline wrote are retried: after a hand edit, step 1 refuses and writes nothing."""
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    spec = kkp_gave_up_on_cluster_2_then_its_address_came(sb, k)
    ai = k["cluster-2"].ai()
    ai["metadata"]["annotations"]["clustermesh.io/values-sha256"] = "sha256:" + "0" * 64  # not what is there now
    k["cluster-2"].custom.replace_namespaced_custom_object(*AI, ai)
    before = ai_versions(k)

    with pytest.raises(PrerequisiteError, match="InstallationFailedRetriesExceeded"):
        cluster_mesh_setup(spec)

    assert ai_versions(k) == before


def test_without_helm_wait_a_missing_address_times_out_in_step_5_naming_the_service_then_converges(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """KKP 2.22 with deployOptions.helm.wait off: the install succeeds, step 5's own wait times out."""
    sb = sandbox_factory(clusters=2, cilium_version="1.13")
    k = kubes(sb)
    ai = k["cluster-2"].ai()
    ai["spec"]["deployOptions"] = {"helm": {"wait": False, "atomic": False, "timeout": "10m0s"}}
    k["cluster-2"].custom.replace_namespaced_custom_object(*AI, ai)
    wait_until("KKP applied the deploy options", lambda: k["cluster-2"].applied())
    sb.fault("lb-never", cluster="cluster-2", on=True)
    spec = mesh_spec(sb, load_balancer=1.0)

    with pytest.raises(WaitTimeoutError) as info:
        cluster_mesh_setup(spec)
    message = str(info.value)
    assert "cluster-2" in message and "Service kube-system/clustermesh-apiserver" in message, message
    assert "timed out after 1s" in message
    assert k["cluster-1"].peer_names() == [] and k["cluster-2"].peer_names() == ["cluster-1"]

    sb.fault("clear")
    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    assert_peers_exactly_once(k)
    assert health_problems(k) == []


def test_an_api_that_stays_down_fails_the_run_after_retries_and_writes_nothing(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    before = ai_versions(k)
    sb.fault("api-down", cluster="cluster-2", on=True)
    spec = mesh_spec(sb)

    state = run_state(spec)  # waits out the retry delays (1 + 3 + 10 s)

    assert state.is_failed()
    with pytest.raises(TransientKubeError) as info:
        state.result()
    assert "cluster-2" in str(info.value) and "503" in str(info.value), str(info.value)
    step1 = task_run(state, "1. Check prerequisites of cluster-2")
    assert step1.state.is_failed() and step1.run_count == 4, (step1.state, step1.run_count)
    sb.fault("clear")
    assert ai_versions(k) == before

    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    assert_peers_exactly_once(k)


def test_a_blocked_vxlan_port_fails_step_8_and_step_7_names_it_then_an_open_port_converges(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    spec = mesh_spec(sb, health=1.0)

    state = run_state(spec)

    assert state.is_failed()
    with pytest.raises(MeshUnhealthyError) as info:
        state.result()
    matrix = info.value.matrix
    assert not matrix.healthy
    assert not matrix.cell("cluster-1", "cluster-2").healthy or not matrix.cell("cluster-2", "cluster-1").healthy
    assert matrix.cell("cluster-1", "cluster-1").healthy and matrix.cell("cluster-2", "cluster-2").healthy
    report = task_run(state, "7. Check node reachability").state.result()
    assert isinstance(report, FirewallReport)
    blocked = {(b.src_cluster, b.dst_cluster, b.what) for b in report.blocked}
    assert blocked and {what for _, _, what in blocked} == {UDP_8472_PATH}, blocked
    assert {frozenset((src, dst)) for src, dst, _ in blocked} == {frozenset(("cluster-1", "cluster-2"))}
    assert health_problems(k), "the independent check must see the blocked port too"

    sb.fault("unblock-port", a="cluster-1", b="cluster-2", port="udp/8472")
    result = cluster_mesh_setup(spec)

    assert result.health.healthy, result.health.render_text()
    assert result.firewall.ok and not result.wrote_anything
    assert health_problems(k) == []


# ----------------------------------------------------------------------------------- caching


def test_a_rotated_ca_is_read_again_and_an_unchanged_endpoint_is_a_cache_hit(
    sandbox_factory: Callable[..., Any], kubes: Kubes, result_key: bytes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    spec = mesh_spec(sb)
    first = cluster_mesh_setup(spec)
    assert first.health.healthy
    old_ca = k["cluster-1"].secret_data(REMOTE_CERT)["ca.crt"]
    assert endpoint_of(first, "cluster-1")["ca_cert"] == cert_fingerprint(old_ca) + "…"

    sb.fault("rotate-ca", cluster="cluster-1")
    new_ca = wait_until("cluster-1's cilium-ca rotated", lambda: k["cluster-1"].secret_data("cilium-ca")["ca.crt"])
    assert new_ca != old_ca
    wait_until(
        "certgen to re-issue cluster-1's remote cert by the new CA",
        lambda: k["cluster-1"].secret_data(REMOTE_CERT)["ca.crt"] == new_ca,
    )

    second_state = run_state(spec)
    second: SetupResult = second_state.result()

    assert endpoint_of(second, "cluster-1")["ca_cert"] == cert_fingerprint(new_ca) + "…"
    assert endpoint_of(second, "cluster-1")["ca_cert"] != endpoint_of(first, "cluster-1")["ca_cert"]
    assert task_run(second_state, "3. Retrieve Cluster Mesh data").state.name != "Cached"
    assert second.health.healthy, second.health.render_text()

    third_state = run_state(spec)
    third: SetupResult = third_state.result()

    assert task_run(third_state, "3. Retrieve Cluster Mesh data").state.name == "Cached"
    assert task_run(third_state, "5. Retrieve Cluster Mesh data").state.name == "Cached"
    assert third.endpoints == second.endpoints
    assert not third.wrote_anything and third.health.healthy
    assert_peers_exactly_once(k)


def test_cached_endpoints_are_encrypted_and_owner_only(
    sandbox_factory: Callable[..., Any], kubes: Kubes, result_key: bytes, prefect_storage: Path
) -> None:
    existing = {p for p in prefect_storage.rglob("*") if p.is_file()} if prefect_storage.exists() else set()
    sb = sandbox_factory(clusters=2, cilium_version="1.13")  # shared CA: step 3 also reads the CA's key
    k = kubes(sb)
    state = run_state(mesh_spec(sb))
    assert state.is_completed()
    assert task_run(state, "3. Retrieve Cluster Mesh data").state.name == "Completed"

    secrets = key_material(k)
    assert len(secrets) > 6, "expected the remote, server and CA keys of both clusters"
    files = [p for p in prefect_storage.rglob("*") if p.is_file() and p not in existing]
    sealed = []
    for path in files:
        raw = path.read_bytes()
        assert b"PRIVATE KEY" not in raw, path
        assert not any(s.encode() in raw for s in secrets), f"key material in clear in {path}"
        record = json.loads(raw)
        if record["metadata"]["serializer"]["type"] != "fernet-pickle":
            payload = base64.b64decode(record["result"])  # pickle's own base64, or JSON
            assert not any(s.encode() in payload for s in secrets), f"key material in the payload of {path}"
        else:
            sealed.append(path)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is {oct(path.stat().st_mode)}"
            plain = base64.b64decode(Fernet(result_key).decrypt(record["result"].encode()))  # pickle's base64
            assert any(s.encode() in plain for s in secrets), "the sealed record should hold the keys"
    assert len(sealed) == 2, f"one sealed record per endpoint (steps 3 and 5), got {len(sealed)} of {len(files)}"


def test_a_partial_write_says_which_clusters_were_written_before_the_failure(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    """Step 4 fails in cluster-2 (no LoadBalancer address) while cluster-3's step 4 succeeds: the error says so."""
    sb = sandbox_factory(clusters=3, cilium_version="1.16")
    sb.fault("lb-never", cluster="cluster-2", on=True)
    spec = mesh_spec(sb, load_balancer=1.0)

    with pytest.raises(InstallFailedError) as info:
        cluster_mesh_setup(spec)

    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Written in this run before the failure: cluster-1 (2. Enable Cluster Mesh)" in notes, notes
    assert "cluster-3 (4. Enable Cluster Mesh)" in notes and "cluster-2 (" not in notes, notes
    assert "A rerun continues safely" in notes
    restored = pickle.loads(pickle.dumps(info.value))
    assert restored.__notes__ == info.value.__notes__  # the note survives the trip through Prefect's results
