"""KKP references end to end: `clusters create`, `setup`, `verify` from an empty sandbox KKP; idempotency;
existing clusters that cannot join are reported, not modified; bad input fails clearly and creates nothing.

Judged from outside the pipeline: the simulated KKP's records and recorded exchanges (checked against
KKP's swagger), the user clusters through the official ``kubernetes`` client.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clustermesh.errors import PrerequisiteError
from clustermesh.kkp import api as kkp
from clustermesh.kkp import clusters
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import MeshSpec, from_data
from clustermesh.steps import step1_prerequisites as prerequisites
from tests.contracts.test_kkp_contract import exchange_problems
from tests.flows.conftest import Kube, assert_peers_exactly_once, health_problems
from tests.kkp.conftest import cli


def spec_data(sb: Any) -> dict[str, Any]:
    return dict(yaml.safe_load((sb.directory / "mesh-kkp.yaml").read_text()))


def write_spec(tmp_path: Path, data: dict[str, Any], name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def posts(sb: Any) -> int:
    return sum(1 for ex in sb.kkp_state.exchanges if ex.method == "POST" and ex.status == 201)


def precreate(sb: Any, name: str, *, proxy_mode: str | None, pods: str | None) -> str:
    """A cluster made by someone else (e.g. in the KKP dashboard), straight through the API."""
    network: dict[str, Any] = {}
    if proxy_mode:
        network["proxyMode"] = proxy_mode
    if pods:
        network["pods"] = {"cidrBlocks": [pods]}
    body = {
        "cluster": {
            "name": name,
            "spec": {
                "version": "1.32.4",
                "cloud": {"dc": "sandbox-dc", "bringyourown": {}},
                "cniPlugin": {"type": "cilium", "version": "1.16.9"},
                "clusterNetwork": network,
            },
        }
    }
    state = sb.kkp_state
    ca = ssl.create_default_context(cafile=str(sb.directory / "kkp-ca.crt"))
    answer = httpx.post(
        f"{sb.kkp_url}/api/v2/projects/{state.project}/clusters",
        json=body,
        headers={"Authorization": f"Bearer {state.token}"},
        verify=ca,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest.fixture
def kubes_by_kkp_name(tmp_path: Path) -> Iterator[Any]:
    opened: list[Kube] = []

    def make(sb: Any) -> dict[str, Kube]:
        out = {}
        for record in sb.kkp_state.clusters.values():
            path = tmp_path / f"judge-{record.name}.kubeconfig"
            path.write_text(record.kubeconfig)
            path.chmod(0o600)
            out[record.name] = Kube(path)
        opened.extend(out.values())
        return out

    yield make
    for k in opened:
        k.close()


# ------------------------------------------------------------------------------------ the way in


def test_from_an_empty_kkp_create_setup_and_verify_end_with_a_healthy_mesh(
    kkp_sandbox: Any, cli_env: dict[str, str], kubes_by_kkp_name: Any
) -> None:
    sb = kkp_sandbox
    config = str(sb.directory / "mesh-kkp.yaml")
    spec = yaml.safe_load(Path(config).read_text())
    assert all(set(c) == {"name", "id", "kkp"} for c in spec["clusters"]), "only KKP references in the spec"

    created = cli(cli_env, "clusters", "create", "--config", config)
    assert created.returncode == 0, created.stderr[-3000:]
    records = {r.name: r for r in sb.kkp_state.clusters.values()}
    assert sorted(records) == ["cluster-1", "cluster-2"]
    pods = []
    for record in records.values():
        net = record.spec["clusterNetwork"]
        assert record.spec["cniPlugin"] == {"type": "cilium", "version": "1.16.9"}
        assert (net["proxyMode"], net["konnectivityEnabled"]) == ("ebpf", True)
        pods.append(ipaddress.ip_network(net["pods"]["cidrBlocks"][0]))
    assert not pods[0].overlaps(pods[1])
    ids = sorted(records[n].id for n in records)

    again = cli(cli_env, "clusters", "create", "--config", config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every cluster already existed" in again.stdout
    assert posts(sb) == 2 and sorted(r.id for r in sb.kkp_state.clusters.values()) == ids

    setup = cli(cli_env, "setup", "--config", config)
    assert setup.returncode == 0, setup.stderr[-3000:]
    kubes = kubes_by_kkp_name(sb)
    assert_peers_exactly_once(kubes)
    assert health_problems(kubes) == []

    verify = cli(cli_env, "verify", "--no-drill", "--config", config)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]

    assert exchange_problems(sb.kkp_state.exchanges) == []
    secrets = [sb.kkp_state.token, *(ep.token for ep in sb.endpoints)]
    for run in (created, again, setup, verify):
        assert not any(s in run.stdout + run.stderr for s in secrets)
    assert not list(sb.directory.glob("*.kubeconfig")), "KKP mode writes no kubeconfig"
    stored = [p for p in Path(cli_env["PREFECT_HOME"]).rglob("*") if p.is_file()]
    assert not any(s.encode() in p.read_bytes() for p in stored for s in secrets), "a credential was stored"


# ------------------------------------------------------------------------ existing clusters that cannot join


def test_existing_clusters_with_overlapping_pods_or_wrong_proxy_mode_are_reported_not_modified(
    kkp_sandbox: Any, cli_env: dict[str, str]
) -> None:
    sb = kkp_sandbox
    precreate(sb, "cluster-1", proxy_mode=None, pods=None)  # the dashboard's defaults: ipvs, 172.25.0.0/16
    precreate(sb, "cluster-2", proxy_mode="ebpf", pods=None)
    before = copy.deepcopy({cid: r.api_object() for cid, r in sb.kkp_state.clusters.items()})

    run = cli(cli_env, "clusters", "create", "--config", str(sb.directory / "mesh-kkp.yaml"))

    assert run.returncode == 1
    assert "proxy mode is 'ipvs'" in run.stderr
    assert "pod CIDR 172.25.0.0/16 overlaps 172.25.0.0/16 of cluster-1" in run.stderr
    assert "these settings cannot be changed after creation: create a new cluster" in run.stderr
    assert posts(sb) == 2, "nothing was created"
    assert {cid: r.api_object() for cid, r in sb.kkp_state.clusters.items()} == before


def test_step_1_refuses_a_kkp_cluster_whose_object_says_ipvs_though_the_user_cluster_looks_fine(
    kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = kkp_sandbox
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", sb.kkp_state.token)
    wrong = precreate(sb, "cluster-1", proxy_mode="iptables", pods="172.27.0.0/16")
    precreate(sb, "cluster-2", proxy_mode="ebpf", pods="172.28.0.0/16")
    spec = from_data(spec_data(sb))

    with open_cluster(spec.cluster("cluster-2")) as client:
        facts = prerequisites.check_prerequisites(client, spec.cluster("cluster-2"), spec)
    assert facts.pod_cidrs == ["172.28.0.0/16"]
    with open_cluster(spec.cluster("cluster-1")) as client, pytest.raises(PrerequisiteError) as caught:
        prerequisites.check_prerequisites(client, spec.cluster("cluster-1"), spec)
    assert f"KKP cluster {wrong}" in str(caught.value) and "proxy mode is 'iptables'" in str(caught.value)


# ------------------------------------------------------------------------------------------ bad input


def _spec(sb: Any, edit: Any) -> MeshSpec:
    data = spec_data(sb)
    edit(data)
    return from_data(data)


def test_an_unknown_project_is_named_with_its_fix(kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", kkp_sandbox.kkp_state.token)

    def edit(d: dict[str, Any]) -> None:
        for c in d["clusters"]:
            c["kkp"]["project"] = "nosuchproject"

    with pytest.raises(kkp.KkpProjectNotFoundError) as caught:
        clusters.plan_user_clusters(_spec(kkp_sandbox, edit))
    assert "nosuchproject" in str(caught.value) and "project ID shown in the KKP dashboard" in str(caught.value)


def test_a_wrong_token_is_a_401_that_never_shows_the_token(kkp_sandbox: Any, cli_env: dict[str, str]) -> None:
    env = dict(cli_env, CLUSTERMESH_KKP_TOKEN="wrong-token-0123456789")
    run = cli(env, "clusters", "create", "--plan", "--config", str(kkp_sandbox.directory / "mesh-kkp.yaml"))
    assert run.returncode == 1
    assert "HTTP 401" in run.stderr and "check the KKP API token" in run.stderr
    assert "wrong-token-0123456789" not in run.stdout + run.stderr
    assert kkp_sandbox.kkp_state.clusters == {}


def test_a_missing_token_env_var_is_named_before_anything_is_sent(
    kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLUSTERMESH_KKP_TOKEN", raising=False)
    with pytest.raises(kkp.KkpTokenError, match="CLUSTERMESH_KKP_TOKEN"):
        clusters.plan_user_clusters(from_data(spec_data(kkp_sandbox)))
    assert kkp_sandbox.kkp_state.exchanges == []


def test_cluster_ids_that_do_not_exist_are_named_when_creating_and_when_connecting(
    kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", kkp_sandbox.kkp_state.token)
    spec = _spec(kkp_sandbox, lambda d: d["clusters"][1]["kkp"].update(cluster_id="doesnotexist"))
    with pytest.raises(kkp.KkpClusterNotFoundError) as caught:
        clusters.plan_user_clusters(spec)
    assert "doesnotexist" in str(caught.value) and "cluster-2" in str(caught.value)
    with pytest.raises(kkp.KkpClusterNotFoundError, match="doesnotexist"):
        open_cluster(spec.cluster("cluster-2"))
    assert kkp_sandbox.kkp_state.clusters == {}


def test_a_pool_too_small_fails_before_any_cluster_is_created(
    kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", kkp_sandbox.kkp_state.token)
    precreate(kkp_sandbox, "someone-elses", proxy_mode="ebpf", pods="172.26.0.0/16")  # not in the mesh: ignored
    spec = _spec(kkp_sandbox, lambda d: d["kkp"].update(pod_cidr_pool=["172.25.0.0/16"]))
    with pytest.raises(kkp.KkpPoolExhaustedError) as caught:
        clusters.plan_user_clusters(spec)
    assert "1 free entry" in str(caught.value) and "2 new cluster(s)" in str(caught.value)
    assert [r.name for r in kkp_sandbox.kkp_state.clusters.values()] == ["someone-elses"]


def test_the_pool_skips_ranges_the_mesh_already_uses(kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", kkp_sandbox.kkp_state.token)
    precreate(kkp_sandbox, "cluster-2", proxy_mode="ebpf", pods="172.25.0.0/16")
    plan = clusters.plan_user_clusters(from_data(spec_data(kkp_sandbox)))
    assert [(c.name, c.action, c.pod_cidr) for c in plan.clusters] == [
        ("cluster-1", "create", "172.26.0.0/16"),
        ("cluster-2", "reuse", "172.25.0.0/16"),
    ]


def test_a_spec_entry_needs_exactly_one_of_kubeconfig_and_kkp(kkp_sandbox: Any) -> None:
    from clustermesh.errors import SpecError

    data = spec_data(kkp_sandbox)
    data["clusters"][0]["kubeconfig"] = {"path": "/tmp/x"}
    with pytest.raises(SpecError, match="exactly one of kubeconfig or kkp"):
        from_data(data)
    del data["clusters"][0]["kubeconfig"], data["clusters"][0]["kkp"]
    with pytest.raises(SpecError, match="exactly one of kubeconfig or kkp"):
        from_data(data)
    assert json.dumps(spec_data(kkp_sandbox)).count("token_env") == 2
