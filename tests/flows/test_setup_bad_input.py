"""Bad input gets a clear error naming the field or the cluster, the value and the fix, before anything is written."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clustermesh.errors import EndpointError, PrerequisiteError, SpecError, TransientKubeError
from clustermesh.spec import load_spec
from flows.mesh_setup import cluster_mesh_setup
from sandbox.pki import make_ca
from tests.flows.conftest import (
    AI,
    NS,
    REMOTE_CERT,
    ai_versions,
    edited_spec,
    mesh_spec,
    task_runs_of,
)
from tests.sandbox.conftest import write_kubeconfig

Kubes = Callable[[Any], dict[str, Any]]


# ---------------------------------------------------------------------------- spec validation


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections but is never answered: shows whether anything tried to connect."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def spec_file(tmp_path: Path, listener: socket.socket, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A two-cluster spec whose kubeconfigs point at ``listener`` (a usable kubeconfig: CA, token)."""
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    ca = make_ca("bad-input-test-ca")
    clusters = []
    for i in (1, 2):
        path = write_kubeconfig(tmp_path / f"cluster-{i}.kubeconfig", url, ca.cert_pem, f"token-{i}-0123456789")
        clusters.append({"name": f"cluster-{i}", "id": i, "kubeconfig": {"path": str(path)}})
    data: dict[str, Any] = {"name": "bad", "clusters": clusters}
    edit(data)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(index: int, field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["clusters"][index][field] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (_set(1, "id", 1), "clusters[1].id", ["IDs must be unique", "clusters[0] and clusters[1]", "own id"]),
        (_set(1, "name", "cluster-1"), "clusters[1].name", ["names must be unique", "'cluster-1'", "own name"]),
        (_set(0, "id", 0), "clusters[0].id", ["greater than or equal to 1", "(got: 0)", "limit 1"]),
        (_set(0, "id", 256), "clusters[0].id", ["id 256", "max_connected_clusters 255", "use an id in 1..255"]),
    ],
    ids=["duplicate-id", "duplicate-name", "id-0", "id-256"],
)
def test_an_invalid_spec_is_refused_with_field_and_fix_before_any_cluster_is_contacted(
    tmp_path: Path, listener: socket.socket, edit: Callable[[dict[str, Any]], None], field: str, words: list[str]
) -> None:
    path = spec_file(tmp_path, listener, edit)

    with pytest.raises(SpecError) as info:
        load_spec(path)

    assert [p.field for p in info.value.problems] == [field]
    text = str(info.value)
    assert str(path) in text
    for word in words:
        assert word in text, text
    assert info.value.problems[0].fix
    assert not contacted(listener)


def test_invalid_parameters_fail_the_flow_before_any_cluster_is_contacted(
    tmp_path: Path, listener: socket.socket
) -> None:
    """Deployment parameters arrive as data, not through load_spec: the flow's validation refuses them."""
    path = spec_file(tmp_path, listener, _set(1, "id", 1))
    data = yaml.safe_load(path.read_text())

    state = cluster_mesh_setup(data, return_state=True)

    assert state.is_failed()
    assert "both use id 1" in str(state.message) or "both use id 1" in repr(state.data), state.message
    assert task_runs_of(state.state_details.flow_run_id) == {}
    assert not contacted(listener)


# ------------------------------------------------------------------------------ cluster state


def test_overlapping_pod_cidrs_are_refused_in_step_1_naming_both_clusters_and_nothing_is_written(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16", overlap_pod_cidrs=True)
    k = kubes(sb)
    before = ai_versions(k)
    # the sandbox's mesh.yaml says what the clusters have: the spec check alone already refuses it
    with pytest.raises(SpecError) as spec_info:
        mesh_spec(sb)
    assert [p.field for p in spec_info.value.problems] == ["clusters[1].pod_cidrs[0]"]
    assert "172.25.0.0/16" in str(spec_info.value)

    def unchecked(data: dict[str, Any]) -> None:  # a spec that does not list pod CIDRs: step 1 finds them
        for cluster in data["clusters"]:
            cluster.pop("pod_cidrs", None)

    with pytest.raises(PrerequisiteError) as info:
        cluster_mesh_setup(edited_spec(sb, unchecked))

    message = str(info.value)
    for word in ("cluster-1", "cluster-2", "172.25.0.0/16", "overlap"):
        assert word in message, message
    assert ai_versions(k) == before


def test_an_unreachable_cluster_fails_after_retries_naming_the_cluster_and_nothing_is_written(
    sandbox_factory: Callable[..., Any], kubes: Kubes, listener: socket.socket
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    before = ai_versions(k)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kubeconfig = Path(sb.directory) / "cluster-2.kubeconfig"
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed}"
    moved = Path(sb.directory) / "cluster-2-moved.kubeconfig"
    moved.write_text(yaml.safe_dump(config))

    def point_elsewhere(data: dict[str, Any]) -> None:
        data["clusters"][1]["kubeconfig"]["path"] = str(moved)

    state = cluster_mesh_setup(edited_spec(sb, point_elsewhere), return_state=True)  # retries: 1 + 3 + 10 s

    assert state.is_failed()
    with pytest.raises(TransientKubeError) as info:
        state.result()
    message = str(info.value)
    assert "cluster 'cluster-2'" in message and str(closed) in message, message
    runs = task_runs_of(state.state_details.flow_run_id)
    assert runs["1. Check prerequisites of cluster-2"].run_count == 4
    assert ai_versions(k) == before


def test_a_cluster_without_the_cilium_application_installation_is_refused_in_step_1(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    k["cluster-2"].custom.delete_namespaced_custom_object(*AI)
    before = k["cluster-1"].ai_version()

    with pytest.raises(PrerequisiteError) as info:
        cluster_mesh_setup(mesh_spec(sb))

    message = str(info.value)
    assert "cluster 'cluster-2'" in message and "ApplicationInstallation kube-system/cilium" in message, message
    assert "CNI cilium" in message  # the fix
    assert k["cluster-1"].ai_version() == before


def test_a_remote_certificate_that_does_not_match_its_key_is_refused(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16")
    k = kubes(sb)
    spec = mesh_spec(sb, certificates=1.0)
    assert cluster_mesh_setup(spec).health.healthy
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stranger_b64 = base64.b64encode(stranger).decode()
    k["cluster-2"].core.patch_namespaced_secret(REMOTE_CERT, NS, {"data": {"tls.key": stranger_b64}})
    assert k["cluster-2"].secret_data(REMOTE_CERT)["tls.key"] == stranger_b64
    before = ai_versions(k)

    with pytest.raises(EndpointError) as info:
        cluster_mesh_setup(spec)

    message = str(info.value)
    assert "cluster 'cluster-2'" in message and "does not match its key" in message, message
    assert f"Secret {NS}/{REMOTE_CERT}" in message
    assert stranger_b64 not in message and "PRIVATE KEY" not in message
    assert ai_versions(k) == before  # steps 2 and 4 had nothing to change; step 6 was never reached
