"""Leave end to end: a real 3-cluster sandbox, the real setup, removal and nightly flows on the session's Prefect.

cluster-3 leaves: its entry goes from cluster-1 and cluster-2 (and from their managed-peers record), a
peer a person added by hand on cluster-1 stays, cluster-3's drill namespace goes, and the nightly on a
spec of cluster-1 and cluster-2 does not fail; a rerun writes nothing. Then cluster-2, its API down,
is removed from cluster-1 all the same. Values and annotations are read with the official client only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from typer.testing import CliRunner

from cli.app import app
from clustermesh.errors import PrerequisiteError
from clustermesh.lifecycle.leave import plan_member
from flows.mesh_remove import mesh_remove_cluster
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification, verification_result
from tests.flows.conftest import Kube, ai_versions, edited_spec, mesh_spec
from tests.flows.test_managed_peers import SLACK_ENV, add_hand_made_peer, recorded, without_cluster_3

Kubes = Callable[[Any], dict[str, Kube]]
DRILL_LABELS = {"app.kubernetes.io/part-of": "clustermesh-drill"}


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


def namespaces(kube: Kube) -> set[str]:
    return {ns.metadata.name for ns in kube.core.list_namespace().items}


def only_cluster_1_and_2(data: dict[str, Any]) -> None:
    without_cluster_3(data)


def test_a_cluster_leaves_managed_entries_go_hand_added_stay_rerun_writes_nothing_and_a_dead_one_is_removed(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    sb = sandbox_factory(clusters=3, cilium_version="1.19")
    k = kubes(sb)
    spec = mesh_spec(sb)
    assert cluster_mesh_setup(spec).health.healthy
    add_hand_made_peer(k["cluster-1"], "cluster-9")
    drill_ns = spec.drill.namespace
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=drill_ns, labels=DRILL_LABELS))
    k["cluster-3"].core.create_namespace(body)
    only_on_3 = client.V1Service(
        metadata=client.V1ObjectMeta(name="only-on-3", annotations={"service.cilium.io/global": "true"}),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]),
    )
    k["cluster-3"].core.create_namespaced_service("default", only_on_3)

    # the command: --plan shows the plan and writes nothing; without a terminal it asks for --yes, writes nothing
    mesh_yaml = str(Path(sb.directory) / "mesh.yaml")
    before = ai_versions(k)
    shown = CliRunner().invoke(app, ["remove", "--config", mesh_yaml, "--cluster", "cluster-3", "--plan"])
    assert shown.exit_code == 0, shown.output
    assert "cluster-1: the managed entry for cluster-3 is removed" in shown.output
    assert "-      name: cluster-3" in shown.output and "BEGIN" not in shown.output, shown.output  # fingerprints only
    assert "cluster-3 is the only member defining global service default/only-on-3" in shown.output
    refused = CliRunner().invoke(app, ["remove", "--config", mesh_yaml, "--cluster", "cluster-3"])
    assert refused.exit_code == 2 and "pass --yes" in refused.output, refused.output
    assert ai_versions(k) == before

    with pytest.raises(PrerequisiteError, match="--cluster cluster-7 is not a cluster of mesh"):
        mesh_remove_cluster(spec, "cluster-7")

    result = mesh_remove_cluster(spec, "cluster-3", disable_in_removed=True)
    assert result.wrote_anything, result.describe()
    assert k["cluster-1"].peer_names() == ["cluster-2", "cluster-9"]  # the hand-added peer stays
    assert k["cluster-2"].peer_names() == ["cluster-1"]
    assert (recorded(k["cluster-1"]), recorded(k["cluster-2"])) == ("cluster-2", "cluster-1")
    assert k["cluster-3"].peer_names() == []  # --disable-in-removed: cluster-3 connects to no managed peer
    assert drill_ns not in namespaces(k["cluster-3"])
    assert [n for n in result.notes if "global service" in n] == [
        "cluster-3 is the only member defining global service default/only-on-3: once it leaves, the mesh has no "
        "backends for it (move them to a remaining member first if it is still used)"
    ]
    assert result.status in ("PASS", "WARN"), result.describe()
    assert not [f for f in result.findings if f.level == "failure"], result.describe()

    before = ai_versions(k)
    again = mesh_remove_cluster(spec, "cluster-3", disable_in_removed=True)
    assert not again.wrote_anything, again.describe()
    assert ai_versions(k) == before

    # the user drops cluster-3 from the spec: the nightly of the rest does not fail and says nothing of it
    rest = edited_spec(sb, only_cluster_1_and_2)
    state = nightly_mesh_verification(rest, run_drill=False, return_state=True)
    verdict = verification_result(state)
    assert verdict is not None and verdict.status != "FAIL", verdict.describe() if verdict else state
    assert not [f for f in verdict.findings if "cluster-3" in f"{f.subject} {f.reason}"], verdict.describe()

    # cluster-2 dies; it is removed from cluster-1 all the same (and its own values are left, with a note)
    sb.fault("api-down", cluster="cluster-2", on=True)
    try:
        dead = mesh_remove_cluster(rest, "cluster-2", disable_in_removed=True)
    finally:
        sb.fault("clear")
    assert k["cluster-1"].peer_names() == ["cluster-9"]
    assert recorded(k["cluster-1"]) == ""
    assert [c.cluster for c in dead.changes if c.written] == ["cluster-1"]
    assert any("cluster-2 unreachable" in note for note in dead.notes), dead.notes
    assert k["cluster-2"].peer_names() == ["cluster-1"]  # nothing reached the dead cluster


def test_the_map_form_stays_a_map_and_only_a_managed_entry_is_planned_for_removal() -> None:
    values = {
        "cluster": {"name": "cluster-1", "id": 1},
        "clustermesh": {"config": {"clusters": {"cluster-2": {"port": 2379}, "cluster-3": {"port": 2379}}}},
    }
    ai = {
        "metadata": {"annotations": {"clustermesh.io/managed-peers": "cluster-2,cluster-3"}},
        "spec": {"valuesBlock": yaml.safe_dump(values)},
    }
    member = plan_member("cluster-1", ai, "cluster-3")
    assert member.change is not None
    assert member.change.new_values["clustermesh"]["config"]["clusters"] == {"cluster-2": {"port": 2379}}
    assert member.change.new_values["cluster"] == values["cluster"]

    ai["metadata"]["annotations"]["clustermesh.io/managed-peers"] = "cluster-2"  # cluster-3 added by hand
    by_hand = plan_member("cluster-1", ai, "cluster-3")
    assert (by_hand.holds_entry, by_hand.managed, by_hand.change) == (True, False, None)
    assert "added by hand" in by_hand.describe("cluster-3")
