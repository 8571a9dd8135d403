"""``upgrade-check`` on values alone, with the real charts of ``../shared/charts``: what the target line refuses,
what it silently ignores, which defaults change under unpinned keys, and what the peers' dialers would read;
then the values change that works on both lines (proved by rendering both), or BLOCKING with what to do."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from clustermesh.checks.findings import Finding
from clustermesh.checks.next_line import next_line_findings
from clustermesh.cilium.chart_source import ChartUnavailableError, forget_unreachable, latest_in_line
from clustermesh.cilium.profiles import REMOVED_IN_1_20
from clustermesh.lifecycle.upgrade_check import check_upgrade
from clustermesh.lifecycle.upgrade_values import plan_upgrade_values
from clustermesh.spec import MeshSpec
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.domain.test_chart_check import HelmRepo
from tests.domain.test_profiles_119_120 import _facts, ours
from tests.domain.test_values import mesh
from tests.domain.test_verify import Mesh, make_ca, make_mesh

CHARTS = CHARTS_DIR
pytestmark = [charts_mark(), engine_mark]


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    forget_unreachable()
    yield
    forget_unreachable()


def spec() -> MeshSpec:
    return mesh(chart={"source": str(CHARTS)})


def test_a_clusters_map_is_refused_by_1_18_and_accepted_by_1_19() -> None:
    values = copy.deepcopy(ours("1.18.12"))
    entry = values["clustermesh"]["config"]["clusters"][0]
    values["clustermesh"]["config"]["clusters"] = {"cluster-2": {k: v for k, v in entry.items() if k != "name"}}

    today = check_upgrade(spec(), "cluster-1", "1.18.11", "1.18.12", values)
    upgrade = check_upgrade(spec(), "cluster-1", "1.18.12", "1.19.6", values)

    assert today.blocking
    assert today.refused[0].startswith("clustermesh.config.clusters: ")
    assert "want array" in today.refused[0]
    assert not upgrade.blocking and not upgrade.skipped, upgrade.render_text()
    assert upgrade.ignored == []


def test_the_old_ca_key_on_1_16_1_is_refused_by_1_17() -> None:
    ca = make_ca("old guide CA")
    values = copy.deepcopy(ours("1.16.1"))
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["ca"] = {
        "cert": ca.cert_b64,
        "key": ca.key_b64,
    }

    still = check_upgrade(spec(), "cluster-1", "1.16.0", "1.16.1", values)
    upgrade = check_upgrade(spec(), "cluster-1", "1.16.1", "1.17.18", values)

    assert not still.blocking, still.render_text()
    assert still.ignored == ["clustermesh.apiserver.tls.ca"]  # 1.16.1 renders but does not use it
    assert upgrade.blocking
    assert any("clustermesh.apiserver.tls.ca" in r for r in upgrade.refused), upgrade.refused
    assert "REFUSED clustermesh.apiserver.tls.ca" in upgrade.render_text()


def test_server_cert_leftovers_on_1_19_are_ignored_by_1_20() -> None:
    values = copy.deepcopy(ours("1.19.6"))
    leftover = {"cert": "bGVmdG92ZXI=", "key": SecretStr("bGVmdG92ZXI=").get_secret_value()}
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["server"] = leftover

    upgrade = check_upgrade(spec(), "cluster-1", "1.19.6", "1.20.0", values)

    assert not upgrade.blocking, upgrade.render_text()
    assert upgrade.ignored == ["clustermesh.apiserver.tls.server.cert", "clustermesh.apiserver.tls.server.key"]
    assert all(tuple(k.split(".")) in REMOVED_IN_1_20 for k in upgrade.ignored)
    assert "IGNORED clustermesh.apiserver.tls.server.cert" in upgrade.render_text()


def test_what_the_setup_writes_on_1_19_upgrades_cleanly_to_1_20() -> None:
    upgrade = check_upgrade(spec(), "cluster-1", "1.19.6", "1.20.0", ours("1.19.6"))

    assert not upgrade.blocking and not upgrade.skipped
    assert upgrade.ignored == [] and upgrade.peer_changes == [], upgrade.render_text()
    keys = [n.key for n in upgrade.notes]
    assert keys == ["clustermesh.apiserver.tls.auto.certValidityDuration"]  # 1095 → 365 days, unpinned
    assert upgrade.notes[0].before == "1095 days" and upgrade.notes[0].after == "365 days"


def test_defaults_that_change_are_notes_unless_the_values_pin_them() -> None:
    values = copy.deepcopy(ours("1.18.12"))
    as_written = check_upgrade(spec(), "cluster-1", "1.18.12", "1.19.6", values)
    del values["clustermesh"]["apiserver"]["tls"]["auto"]["method"]  # the setup pins helm on 1.18
    unpinned = check_upgrade(spec(), "cluster-1", "1.18.12", "1.19.6", values)
    values["clustermesh"]["policyDefaultLocalCluster"] = False
    pinned = check_upgrade(spec(), "cluster-1", "1.18.12", "1.19.6", values)

    assert {n.key for n in as_written.notes} == {
        "clustermesh.policyDefaultLocalCluster",
        "clustermesh.apiserver.tls.authMode",
    }
    assert {n.key for n in unpinned.notes} == {n.key for n in as_written.notes} | {
        "clustermesh.apiserver.tls.auto.method"
    }
    assert "clustermesh.policyDefaultLocalCluster" not in {n.key for n in pinned.notes}
    assert not (as_written.blocking or unpinned.blocking or pinned.blocking)


def test_a_peer_the_target_line_no_longer_dials_is_a_warning() -> None:
    """``enabled: false`` on a list entry means nothing to 1.18 (it dials the peer); 1.19 leaves the peer out."""
    values = copy.deepcopy(ours("1.18.12"))
    values["clustermesh"]["config"]["clusters"][0]["enabled"] = False

    upgrade = check_upgrade(spec(), "cluster-1", "1.18.12", "1.19.6", values)

    assert not upgrade.blocking
    assert [(c.peer, c.what, c.before) for c in upgrade.peer_changes] == [("cluster-2", "config", "present")]
    assert "WARNING peer cluster-2: the dialer's config changes" in upgrade.render_text()


def test_the_newest_patch_of_a_line_is_found_in_a_folder() -> None:
    assert latest_in_line(str(CHARTS), "1.19") == "1.19.6"
    assert latest_in_line(str(CHARTS), "1.20") == "1.20.0"
    with pytest.raises(ChartUnavailableError, match="1.21"):
        latest_in_line(str(CHARTS), "1.21")


def test_the_newest_patch_of_a_line_is_read_from_a_repositorys_index_and_a_dead_one_is_said() -> None:
    assert CHARTS is not None
    served = HelmRepo(CHARTS / "cilium-1.16.9.tgz")
    try:
        assert latest_in_line(served.url, "1.16") == "1.16.9"
        with pytest.raises(ChartUnavailableError, match=r"lists no cilium 1\.17\.x"):
            latest_in_line(served.url, "1.17")
        assert served.requests == ["/index.yaml", "/index.yaml"]  # the index only, never an archive
    finally:
        served.close()
    with pytest.raises(ChartUnavailableError, match="cannot reach"):
        latest_in_line(served.url, "1.16")  # the server is gone


def test_no_chart_for_the_target_is_skipped_saying_why() -> None:
    upgrade = check_upgrade(spec(), "cluster-1", "1.19.6", "1.20.9", ours("1.19.6"))

    assert not upgrade.blocking
    assert "cilium-1.20.9.tgz" in upgrade.skipped and "1.20.0" in upgrade.skipped


# ------------------------------------------------------------------------------ the nightly's next-line check


def _next_line(mesh: Mesh) -> list[Finding]:
    """The check with each cluster's facts as step 1 finds them (the fakes' version; no policy listing)."""
    facts = {name: _facts(cluster.cilium, name) for name, cluster in mesh.clusters.items()}
    return next_line_findings(mesh.clusters, facts, mesh.spec)


def test_the_nightly_warns_about_a_key_the_next_line_ignores_naming_cluster_version_and_key() -> None:
    mesh = make_mesh("1.19.6", "1.19.6", cilium={"chart": {"source": str(CHARTS)}})
    values = copy.deepcopy(mesh["cluster-2"].values())
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["enableSecrets"] = True
    mesh["cluster-2"].set_values(values)

    findings = _next_line(mesh)

    warnings = [(f.subject, f.reason) for f in findings if f.level == "warning"]
    assert len(warnings) == 1, warnings
    subject, reason = warnings[0]
    assert subject == "cluster-2" and "clustermesh.apiserver.tls.enableSecrets" in reason and "1.20.0" in reason
    assert [f.subject for f in findings if f.level == "ok"] == ["cluster-1"]


def test_the_nightly_only_notes_what_it_could_not_check(tmp_path: Path) -> None:
    assert CHARTS is not None
    (tmp_path / "cilium-1.16.9.tgz").symlink_to(CHARTS / "cilium-1.16.9.tgz")
    no_next = make_mesh("1.16.9", "1.16.9", cilium={"chart": {"source": str(tmp_path)}})
    no_source = make_mesh("1.16.9", "1.16.9", cilium={"chart": {"source": None}})
    newest = make_mesh("1.20.0", "1.20.0", cilium={"chart": {"source": str(CHARTS)}})

    lacking = _next_line(no_next)
    assert [f.level for f in lacking] == ["ok"]  # said once for both clusters
    assert "cluster-1, cluster-2" in lacking[0].reason and "1.17" in lacking[0].reason
    assert [(f.level, f.reason) for f in _next_line(no_source)] == [("ok", "not checked: cilium.chart.source is empty")]
    assert [f.level for f in _next_line(newest)] == ["ok", "ok"]


@pytest.mark.skipif(shutil.which("helm") is not None, reason="a helm binary is on PATH: nothing to be missing")
def test_a_renderer_setting_to_fix_is_a_warning_not_a_crashed_nightly() -> None:
    mesh = make_mesh("1.19.6", "1.19.6", cilium={"chart": {"source": str(CHARTS), "renderer": "helm"}})

    findings = _next_line(mesh)

    assert [(f.level, f.subject) for f in findings] == [("warning", "cluster-1"), ("warning", "cluster-2")]
    assert "Cilium 1.20.0 (the next line) not checked" in findings[0].reason
    assert "cilium.chart.renderer is 'helm'" in findings[0].reason and "install helm" in findings[0].fix


# ------------------------------------------------------------------------------ values that work on both lines


def test_mcs_api_the_old_way_moves_to_the_key_both_lines_read_and_the_leftover_goes() -> None:
    values = copy.deepcopy(ours("1.19.6"))
    values["clustermesh"]["enableMCSAPISupport"] = True
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["enableSecrets"] = True
    values["bgpControlPlane"] = {"enabled": False}  # a person's own key

    _, plan = plan_upgrade_values(spec(), "cluster-1", "1.19.6", "1.20.0", values)

    assert plan.blocking == [] and plan.writes, plan.render_text()
    fixed = [f.finding for f in plan.fixes]
    assert fixed == ["clustermesh.apiserver.tls.enableSecrets", "clustermesh.enableMCSAPISupport"]
    assert plan.change is not None
    new = plan.change.new_values
    assert new["clustermesh"]["mcsapi"] == {"enabled": True} and "enableMCSAPISupport" not in new["clustermesh"]
    assert "enableSecrets" not in new["clustermesh"]["apiserver"]["tls"]
    assert new["bgpControlPlane"] == {"enabled": False}
    peer_key = values["clustermesh"]["config"]["clusters"][0]["tls"]["key"]
    assert peer_key not in plan.render_text() and "<sha256:" in plan.render_text()  # key material fingerprinted
    again, rerun = plan_upgrade_values(spec(), "cluster-1", "1.19.6", "1.20.0", new)
    assert again.ignored == [] and not rerun.writes and rerun.blocking == []


def test_no_form_valid_on_1_18_and_1_20_is_blocking_and_says_to_upgrade_in_two_hops() -> None:
    values = copy.deepcopy(ours("1.18.12"))
    values["clustermesh"]["enableMCSAPISupport"] = True

    _, plan = plan_upgrade_values(spec(), "cluster-1", "1.18.12", "1.20.0", values)

    assert plan.change is None and not plan.writes
    [blocking] = plan.blocking
    assert blocking.startswith("clustermesh.enableMCSAPISupport: with the change, Cilium 1.18.12 would run differently")
    assert "upgrade in two hops" in blocking and "first to Cilium 1.19" in blocking
    assert plan.notes == ["Cilium upgrades one minor line at a time: upgrade to 1.19 first, then to 1.20.0"]


def test_certificates_from_values_with_tls_auto_off_are_blocking_with_what_to_do() -> None:
    values = copy.deepcopy(ours("1.19.6"))
    tls = values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})
    tls.setdefault("auto", {})["enabled"] = False
    for name in ("server", "admin", "remote"):
        tls[name] = {"cert": "Y2VydA==", "key": "a2V5"}

    check, plan = plan_upgrade_values(spec(), "cluster-1", "1.19.6", "1.20.0", values)

    assert check.blocking and "certs and keys as helm values has been removed" in check.refused[0]
    assert plan.change is None
    [blocking] = plan.blocking
    assert "the Cilium 1.19.6 chart refuses the changed values" in blocking
    assert "missing clustermesh.apiserver.tls.server.cert" in blocking
    assert "tls.auto.enabled is false" in blocking and "clustermesh-apiserver-{server,admin,remote}-cert" in blocking


def test_the_old_ca_key_1_17_refuses_is_removed_where_1_16_1_ignores_it() -> None:
    ca = make_ca("old guide CA")
    values = copy.deepcopy(ours("1.16.1"))
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["ca"] = {
        "cert": ca.cert_b64,
        "key": ca.key_b64,
    }

    check, plan = plan_upgrade_values(spec(), "cluster-1", "1.16.1", "1.17.18", values)

    assert check.blocking  # refused by 1.17 as the values are
    assert [f.finding for f in plan.fixes] == ["clustermesh.apiserver.tls.ca"] and plan.blocking == []
    assert plan.change is not None and "ca" not in plan.change.new_values["clustermesh"]["apiserver"]["tls"]
    assert ca.key_b64 not in plan.render_text()
    fixed = check_upgrade(spec(), "cluster-1", "1.16.1", "1.17.18", plan.change.new_values)
    assert not fixed.blocking and fixed.ignored == []


def test_after_the_upgrade_the_old_mcs_key_is_moved_for_the_line_that_runs() -> None:
    """Already on 1.20 with the old key (MCS-API silently off): the move is proposed, though it changes what runs."""
    values = copy.deepcopy(ours("1.20.0"))
    values["clustermesh"]["enableMCSAPISupport"] = True

    _, plan = plan_upgrade_values(spec(), "cluster-1", "1.20.0", "1.20.0", values)

    assert plan.blocking == [] and [f.finding for f in plan.fixes] == ["clustermesh.enableMCSAPISupport"]
    assert plan.change is not None and plan.change.new_values["clustermesh"]["mcsapi"] == {"enabled": True}
