"""Managed peers end to end: a real sandbox, the real setup and nightly flows on the session's Prefect server.

The setup records on every ApplicationInstallation the peers it wrote; a peer a person added by hand is
kept and never recorded; a managed peer dropped from the spec stops the next setup before any write,
and the nightly reports the same. Annotations and values are read with the official client only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from clustermesh.errors import PrerequisiteError
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification, verification_result
from tests.flows.conftest import AI, Kube, ai_versions, edited_spec, mesh_spec
from tests.helpers import wait_until

Kubes = Callable[[Any], dict[str, Kube]]
ANNOTATION = "clustermesh.io/managed-peers"
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


def recorded(kube: Kube) -> str | None:
    return ((kube.ai()["metadata"].get("annotations")) or {}).get(ANNOTATION)


def add_hand_made_peer(kube: Kube, name: str) -> None:
    """What a person does in the KKP UI: one more clusters[] entry in the values text, nothing else."""
    ai = kube.ai()
    values = yaml.safe_load(ai["spec"]["valuesBlock"])
    entries = values["clustermesh"]["config"]["clusters"]
    entries.append({"name": name, "address": "", "port": 2379, "ips": ["10.99.0.1"], "enabled": False})
    ai["spec"]["valuesBlock"] = yaml.safe_dump(values, sort_keys=False)
    kube.custom.replace_namespaced_custom_object(*AI, ai)
    wait_until(f"KKP applied the hand-made peer {name}", kube.applied)


def without_cluster_3(data: dict[str, Any]) -> None:
    data["clusters"] = [c for c in data["clusters"] if c["name"] != "cluster-3"]


def test_managed_peers_are_recorded_hand_made_ones_kept_and_a_dropped_member_stops_setup_and_fails_the_nightly(
    sandbox_factory: Callable[..., Any], kubes: Kubes
) -> None:
    # 1.19: a person's entry can be ``enabled: false``, so an address that leads nowhere leaves the mesh healthy
    sb = sandbox_factory(clusters=3, cilium_version="1.19")
    k = kubes(sb)
    first = cluster_mesh_setup(mesh_spec(sb))
    assert first.health.healthy, first.health.render_text()
    assert {name: recorded(kube) for name, kube in k.items()} == {
        "cluster-1": "cluster-2,cluster-3",
        "cluster-2": "cluster-1,cluster-3",
        "cluster-3": "cluster-1,cluster-2",
    }

    # a person adds a peer of their own: the rerun writes nothing, keeps it and does not record it
    add_hand_made_peer(k["cluster-1"], "cluster-9")
    before = ai_versions(k)
    again = cluster_mesh_setup(mesh_spec(sb))
    assert not again.wrote_anything, again.describe()
    assert ai_versions(k) == before
    assert k["cluster-1"].peer_names() == ["cluster-2", "cluster-3", "cluster-9"]
    assert recorded(k["cluster-1"]) == "cluster-2,cluster-3"

    # cluster-3 leaves the spec: the setup stops in step 1, nothing written anywhere, and says where it is
    spec = edited_spec(sb, without_cluster_3)
    with pytest.raises(PrerequisiteError) as info:
        cluster_mesh_setup(spec)
    assert "cluster cluster-3 is a managed peer of cluster-1, cluster-2 but not in the spec" in str(info.value)
    assert "delete the entry named cluster-3" in str(info.value)
    assert ai_versions(k) == before

    # the nightly with that spec reports the same, once, as a failure (the hand-made peer is not part of it)
    state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    result = verification_result(state)
    assert result is not None, f"{state}: {state.result(raise_on_failure=False)!r}"
    about_3 = [f for f in result.findings if "cluster-3" in f.reason and "managed peer" in f.reason]
    assert [(f.level, f.subject, f.clusters) for f in about_3] == [
        ("failure", "cluster-3", ("cluster-1", "cluster-2", "cluster-3"))
    ]
    assert "put cluster-3 back in the spec" in about_3[0].fix
    assert not [f for f in result.findings if "managed peer" in f.reason and "cluster-9" in f.reason]
    assert not [f for f in result.findings if "unknown peer cluster-3" in f.reason]  # not said again per holder
    assert [f.level for f in result.findings if "unknown peer cluster-9" in f.reason] == ["warning"]  # as before
    assert ai_versions(k) == before
