"""KKP references end to end: a sandbox serving the simulated KKP API, the CLI as subprocesses.

The CLI processes talk to one temporary Prefect server for this folder (none pays for an ephemeral
server of its own), with a PREFECT_HOME of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 240


@pytest.fixture(scope="module")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home-kkp")
    with (
        temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set PREFECT_API_URL"
        yield str(url)


@pytest.fixture
def kkp_sandbox(sandbox_factory: Callable[..., Any]) -> Any:
    """An in-process sandbox with the simulated KKP API and no clusters yet."""
    return sandbox_factory(clusters=0, kkp=True, cilium_version="1.16")


@pytest.fixture
def kkp_info(kkp_sandbox: Any) -> dict[str, Any]:
    return json.loads((kkp_sandbox.directory / "kkp.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def cli_env(tmp_path: Path, prefect_api_url: str, kkp_info: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CLUSTERMESH_"))}
    home = tmp_path / "prefect-home"
    home.mkdir()
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
        CLUSTERMESH_KKP_TOKEN=kkp_info["token"],
    )
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clustermesh.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
