"""``clustermesh setup`` as a user runs it: a subprocess against a sandbox served by another subprocess.

The CLI processes get their own PREFECT_HOME and talk to the session's Prefect test server (so none of
them pays for starting a temporary server of its own).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import load_spec
from clustermesh.steps import step1_prerequisites as prerequisites
from clustermesh.steps import step2_4_6_mesh_values as mesh_config
from clustermesh.steps import step3_5_endpoints as endpoints
from sandbox.process import send_fault
from tests.flows.conftest import Kube, ai_versions, assert_peers_exactly_once, cli, key_material, write_edited_yaml
from tests.helpers import sandbox_process as sandbox_up


@dataclass(frozen=True)
class Endpoint:
    name: str
    kubeconfig: Path


class SandboxProcess:
    """``clustermesh sandbox up`` in the background; ``endpoints`` lists its clusters' kubeconfigs."""

    def __init__(self, directory: Path, proc: subprocess.Popen[str]) -> None:
        self.directory = directory
        self.proc = proc
        self.endpoints = [Endpoint(p.stem, p) for p in sorted(directory.glob("cluster-*.kubeconfig"))]

    @property
    def mesh_yaml(self) -> Path:
        return self.directory / "mesh.yaml"


@pytest.fixture
def sandbox_process(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., SandboxProcess]]:
    """``sandbox_process(*options)`` starts ``clustermesh sandbox up`` in the background; stopped after the test."""
    with ExitStack() as running:
        started = count(1)

        def start(*options: str) -> SandboxProcess:
            directory = tmp_path / f"sandbox-{next(started)}"
            proc = running.enter_context(sandbox_up(directory, *options, env=cli_env))
            return SandboxProcess(directory, proc)

        yield start


def enable_first_cluster(mesh_yaml: Path) -> None:
    """Step 2 and 3 by the domain functions: cluster-1 has mesh data (and keys) the plan must not show."""
    spec = load_spec(mesh_yaml)
    first = spec.first
    with open_cluster(first, request_timeout=spec.timeouts.api) as client:
        facts = prerequisites.check_prerequisites(client, first, spec)
        mesh_config.configure_mesh(client, facts, first, spec, step="2. Enable Cluster Mesh", peers=[])
        endpoints.collect_mesh_endpoint(client, facts, spec, want_ca_key=True)


def test_plan_prints_diffs_with_fingerprints_and_no_key_material_and_writes_nothing(
    sandbox_process: Callable[..., SandboxProcess],
    kubes: Callable[[SandboxProcess], dict[str, Kube]],
    cli_env: dict[str, str],
) -> None:
    sb = sandbox_process("--clusters", "2", "--cilium-version", "1.13")
    k = kubes(sb)
    enable_first_cluster(sb.mesh_yaml)
    secrets = key_material(k)
    assert secrets, "cluster-1 should hold its CA and remote-cert keys by now"
    before = ai_versions(k)

    done = cli(cli_env, "setup", "--config", str(sb.mesh_yaml), "--plan")

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "nothing has been written" in out
    assert "== cluster-1: changes" in out and "== cluster-2: changes" in out, out
    assert "sha256:" in out  # cluster-1's certificate, key and CA, shown as fingerprints in cluster-2's diff
    assert "PRIVATE KEY" not in out + done.stderr
    leaked = [s[:16] for s in secrets if s in out or s in done.stderr]
    assert leaked == [], f"key material printed: {leaked}"
    assert ai_versions(k) == before


def test_setup_exits_0_on_a_healthy_mesh_and_a_plan_afterwards_shows_no_change(
    sandbox_process: Callable[..., SandboxProcess],
    kubes: Callable[[SandboxProcess], dict[str, Kube]],
    cli_env: dict[str, str],
) -> None:
    sb = sandbox_process("--clusters", "2", "--cilium-version", "1.16")
    k = kubes(sb)

    done = cli(cli_env, "setup", "--config", str(sb.mesh_yaml))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4 cells healthy" in done.stdout and "\nhealthy" in done.stdout, done.stdout
    assert_peers_exactly_once(k)
    after = ai_versions(k)
    plan = cli(cli_env, "setup", "--config", str(sb.mesh_yaml), "--plan")
    assert plan.returncode == 0, plan.stderr
    assert "== cluster-1: no change" in plan.stdout and "== cluster-2: no change" in plan.stdout, plan.stdout
    assert ai_versions(k) == after


def test_setup_exits_non_zero_when_step_8_finds_the_mesh_unhealthy(
    sandbox_process: Callable[..., SandboxProcess], cli_env: dict[str, str]
) -> None:
    sb = sandbox_process("--clusters", "2", "--cilium-version", "1.16")
    # the control endpoint `clustermesh sandbox fault block-port` calls, without another process start
    send_fault(sb.directory, "block-port", a="cluster-1", b="cluster-2", port="udp/8472")

    def short_health(data: dict[str, Any]) -> None:
        data.setdefault("timeouts", {})["health"] = 1

    config = write_edited_yaml(sb.mesh_yaml, short_health, "short-health.yaml")
    done = cli(cli_env, "setup", "--config", str(config))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "setup failed: mesh not healthy after 1s" in done.stderr, done.stderr


def test_a_bad_spec_exits_2_naming_the_field(tmp_path: Path, cli_env: dict[str, str]) -> None:
    clusters = [
        {"name": f"cluster-{i}", "id": 7, "kubeconfig": {"path": str(tmp_path / f"c{i}.kubeconfig")}} for i in (1, 2)
    ]
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "clusters": clusters}))

    done = cli(cli_env, "setup", "--config", str(config))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "clusters[1].id" in done.stderr and "both use id 7" in done.stderr, done.stderr
    assert "give each cluster its own id" in done.stderr
