"""``clustermesh upgrade-check`` and the nightly's next-line warning on a real sandbox mesh (Cilium 1.19).

The mesh is set up by the real flow with the pipeline's chart check reading ``../shared/charts``; the CLI
runs as a subprocess. What the setup wrote upgrades to 1.20.0 with nothing blocking or ignored; after a person
adds a key 1.20 no longer reads to cluster-2's values, the check names it and so does the nightly, as a
warning about cluster-2 and the next line's version; ``--yes`` writes the values that work on both lines, after
which nothing is ignored any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh.cilium.chart_source import forget_unreachable
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from tests.conftest import CHARTS_DIR, charts_mark, engine_mark
from tests.flows.conftest import AI, cli, edited_spec
from tests.helpers import wait_until

CHARTS = CHARTS_DIR
pytestmark = [charts_mark("cilium-1.20.0.tgz"), engine_mark]
REMOVED_KEY = "clustermesh.apiserver.tls.enableSecrets"


@pytest.fixture(autouse=True)
def _fresh_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CLUSTERMESH_STATE_DIR", str(tmp_path / "state"))
    forget_unreachable()
    yield
    forget_unreachable()


def add_removed_key(kube: Any) -> None:
    """A person sets a key the 1.20 chart no longer reads (1.19 still does) in cluster-2's values."""
    ai = kube.ai()
    values = yaml.safe_load(ai["spec"]["valuesBlock"])
    values["clustermesh"].setdefault("apiserver", {}).setdefault("tls", {})["enableSecrets"] = True
    ai["spec"]["valuesBlock"] = yaml.safe_dump(values)
    kube.custom.replace_namespaced_custom_object(*AI, ai)
    wait_until("the sandbox's KKP applies the hand edit", kube.applied)


def test_upgrade_check_on_a_1_19_mesh_and_the_nightly_warning(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Any]], cli_env: dict[str, str]
) -> None:
    assert CHARTS is not None
    sb = sandbox_factory(clusters=2, nodes=1, cilium_version="1.19")
    spec = edited_spec(sb, lambda data: data.setdefault("cilium", {}).update(chart={"source": str(CHARTS)}))
    config = str(Path(sb.directory) / "edited.yaml")
    assert cluster_mesh_setup(spec).health.healthy

    clean = cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0", "--format", "json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["blocking"] is False and [c["cluster"] for c in report["clusters"]] == ["cluster-1", "cluster-2"]
    for cluster in report["clusters"]:
        assert (cluster["refused"], cluster["ignored"], cluster["peer_changes"], cluster["skipped"]) == ([], [], [], "")

    add_removed_key(kubes(sb)["cluster-2"])
    named = cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0")
    assert named.returncode == 0, "an ignored key does not block the upgrade: " + named.stdout + named.stderr
    cluster_2 = named.stdout.split("cluster-2:", 1)[1]
    assert f"IGNORED {REMOVED_KEY}" in cluster_2
    assert "IGNORED" not in named.stdout.split("cluster-2:", 1)[0]
    only = cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0", "--cluster", "cluster-1")
    assert only.returncode == 0 and "cluster-2" not in only.stdout, only.stdout + only.stderr

    state = nightly_mesh_verification(spec, run_drill=False, return_state=True)
    result = verification_result(state)
    assert isinstance(result, VerificationResult), state
    warnings = [f for f in result.findings if f.level == "warning"]
    assert [(f.subject, REMOVED_KEY in f.reason, "1.20.0" in f.reason) for f in warnings] == [
        ("cluster-2", True, True)
    ], warnings
    assert result.status == "WARN"
    assert "upgrade-check --to 1.20.0 --cluster cluster-2 --yes" in warnings[0].fix

    wrote = cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0", "--yes")
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    assert "cluster-2: written" in wrote.stdout and "cluster-1: written" not in wrote.stdout, wrote.stdout
    after = json.loads(cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0", "--format", "json").stdout)
    assert [c["ignored"] for c in after["clusters"]] == [[], []] and after["plan"]["changing"] == [], after


def test_unknown_cluster_and_version_are_bad_input(
    sandbox_factory: Callable[..., Any], cli_env: dict[str, str]
) -> None:
    assert CHARTS is not None
    sb = sandbox_factory(clusters=2, nodes=1, cilium_version="1.19")
    edited_spec(sb, lambda data: data.setdefault("cilium", {}).update(chart={"source": str(CHARTS)}))
    config = str(Path(sb.directory) / "edited.yaml")

    wrong_cluster = cli(cli_env, "upgrade-check", "--config", config, "--to", "1.20.0", "--cluster", "cluster-9")
    wrong_version = cli(cli_env, "upgrade-check", "--config", config, "--to", "2.0.0")

    assert wrong_cluster.returncode == 2 and "cluster-9" in wrong_cluster.stderr
    assert "cluster-1, cluster-2" in wrong_cluster.stderr
    assert wrong_version.returncode == 2 and "2.0.0" in wrong_version.stderr
