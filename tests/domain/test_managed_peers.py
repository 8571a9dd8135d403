"""Managed peers: what the setup records as its own ``clusters[]`` entries, and the rule built on it.

A peer the pipeline wrote is recorded on the ApplicationInstallation; a peer a person added by hand never
is, so it never counts. A managed peer the spec no longer lists stops the setup, naming where it is.
"""

from __future__ import annotations

from typing import Any

import pytest

from clustermesh.errors import PrerequisiteError
from clustermesh.steps.membership import (
    MANAGED_PEERS_ANNOTATION,
    managed_peers,
    managed_peers_after_write,
    recorded_managed_peers,
    refuse_unlisted_managed_peers,
    unlisted_managed_peers,
)
from clustermesh.steps.models import ClusterFacts


def ai(recorded: str | None) -> dict[str, Any]:
    annotations = {} if recorded is None else {MANAGED_PEERS_ANNOTATION: recorded}
    return {"metadata": {"name": "cilium", "annotations": annotations}, "spec": {}}


def values(*names: str) -> dict[str, Any]:
    entries = [{"name": n, "address": "", "port": 2379, "ips": ["10.0.0.1"]} for n in names]
    return {"clustermesh": {"config": {"enabled": True, "clusters": entries}}}


def facts(name: str, managed: list[str], configured: list[str] | None = None) -> ClusterFacts:
    return ClusterFacts(
        name=name,
        id=int(name.rsplit("-", 1)[1]),
        kubernetes_version="v1.31.0",
        cilium_version="1.16.5",
        detected_cilium_version="1.16.5",
        profile_line="1.16",
        values_field="valuesBlock",
        kube_proxy_replacement="true",
        pod_cidrs=["172.25.0.0/16"],
        nodes=1,
        current_cluster_name=name,
        current_cluster_id=int(name.rsplit("-", 1)[1]),
        mesh_enabled=True,
        peers_configured=configured if configured is not None else managed,
        managed_peers=managed,
    )


# ------------------------------------------------------------------------------ what a write records


def test_a_first_write_records_exactly_the_peers_it_wrote_not_the_hand_added_ones() -> None:
    written = values("cluster-1", "cluster-9")  # cluster-9 was there before, added by a person

    assert managed_peers_after_write(ai(None), written, ["cluster-1"]) == "cluster-1"


def test_a_later_write_keeps_earlier_peers_whose_entries_are_still_there() -> None:
    """Step 4 wrote cluster-1; step 6 writes cluster-1 and cluster-3: all recorded, sorted, once."""
    now = values("cluster-3", "cluster-1", "hand")

    after = managed_peers_after_write(ai("cluster-1"), now, ["cluster-3", "cluster-1"])
    assert after == "cluster-1,cluster-3"


def test_a_recorded_peer_whose_entry_is_gone_is_dropped_from_the_record() -> None:
    assert managed_peers_after_write(ai("cluster-1,cluster-3"), values("cluster-1"), ["cluster-1"]) == "cluster-1"


def test_a_write_without_peers_and_without_a_record_records_nothing() -> None:
    assert managed_peers_after_write(ai(None), values("hand"), []) == ""


# ------------------------------------------------------------------------------ what step 1 reads


def test_only_recorded_peers_whose_entry_is_still_present_are_managed() -> None:
    """A person deleting the entry of a peer takes it out of the pipeline's hands."""
    assert managed_peers(ai("cluster-2,cluster-3"), values("cluster-2", "hand")) == ["cluster-2"]
    assert managed_peers(ai(None), values("cluster-2")) == []


def test_managed_peers_are_read_from_the_map_form_too() -> None:
    in_map = {"clustermesh": {"config": {"clusters": {"cluster-2": {"ips": ["10.0.0.2"]}, "hand": {"enabled": False}}}}}

    assert managed_peers(ai("cluster-2,hand-never-written"), in_map) == ["cluster-2"]


@pytest.mark.parametrize("raw", [" cluster-3 , cluster-2,,", "cluster-2,cluster-3,cluster-2"])
def test_the_record_is_read_sorted_and_unique_whatever_its_spacing(raw: str) -> None:
    assert recorded_managed_peers(ai(raw)) == ["cluster-2", "cluster-3"]


def test_an_annotation_that_is_not_text_records_nothing() -> None:
    odd = {"metadata": {"annotations": {MANAGED_PEERS_ANNOTATION: 3}}}

    assert recorded_managed_peers(odd) == []


# ------------------------------------------------------------------------------ the rule


def test_a_managed_peer_missing_from_the_spec_stops_the_setup_naming_it_and_its_holders() -> None:
    spec_members = [facts("cluster-2", ["cluster-1", "cluster-3"]), facts("cluster-1", ["cluster-2", "cluster-3"])]

    with pytest.raises(PrerequisiteError) as info:
        refuse_unlisted_managed_peers(spec_members)

    message = str(info.value)
    assert info.value.cluster == "cluster-3"
    assert "cluster cluster-3 is a managed peer of cluster-1, cluster-2 but not in the spec" in message
    assert "put cluster-3 back in the spec" in message
    assert "delete the entry named cluster-3 from clustermesh.config.clusters" in message
    assert "nothing was written" in message


def test_every_missing_managed_peer_is_named() -> None:
    with pytest.raises(PrerequisiteError) as info:
        refuse_unlisted_managed_peers([facts("cluster-1", ["cluster-3", "cluster-4"])])

    assert "cluster-3 is a managed peer of cluster-1" in str(info.value)
    assert "cluster-4 is a managed peer of cluster-1" in str(info.value)


def test_managed_peers_the_spec_still_lists_are_fine() -> None:
    refuse_unlisted_managed_peers([facts("cluster-1", ["cluster-2"]), facts("cluster-2", ["cluster-1"])])


def test_a_hand_added_peer_never_counts_as_managed() -> None:
    """cluster-9 is configured in cluster-1 (a person added it) but not recorded: no refusal."""
    members = [
        facts("cluster-1", ["cluster-2"], configured=["cluster-2", "cluster-9"]),
        facts("cluster-2", ["cluster-1"]),
    ]

    refuse_unlisted_managed_peers(members)
    assert unlisted_managed_peers(members, ["cluster-1", "cluster-2"]) == {}


def test_a_spec_member_that_failed_step_1_is_still_a_member() -> None:
    """The nightly judges with the facts it has: a member without facts is not 'missing from the spec'."""
    found = [facts("cluster-1", ["cluster-2", "cluster-3"])]

    assert unlisted_managed_peers(found, ["cluster-1", "cluster-2", "cluster-3"]) == {}
    assert unlisted_managed_peers(found, ["cluster-1", "cluster-2"]) == {"cluster-3": ["cluster-1"]}
