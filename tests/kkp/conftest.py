"""KKP references end to end: a sandbox serving the simulated KKP API, the CLI as subprocesses.

The CLI processes talk to one temporary Prefect server for this folder (none pays for an ephemeral
server of its own), with a PREFECT_HOME of their own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_environment, prefect_test_server, run_cli

CLI_TIMEOUT = 240


@pytest.fixture(scope="module")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_test_server(tmp_path_factory.mktemp("prefect-home-kkp"), result_storage=False) as url:
        yield url


@pytest.fixture
def kkp_sandbox(sandbox_factory: Callable[..., Any]) -> Any:
    """An in-process sandbox with the simulated KKP API and no clusters yet."""
    return sandbox_factory(clusters=0, kkp=True, cilium_version="1.16")


@pytest.fixture
def kkp_info(kkp_sandbox: Any) -> dict[str, Any]:
    return json.loads((kkp_sandbox.directory / "kkp.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def cli_env(tmp_path: Path, prefect_api_url: str, kkp_info: dict[str, Any]) -> dict[str, str]:
    return cli_environment(
        tmp_path / "prefect-home",
        prefect_api_url,
        without_prefixes=("PREFECT_", "CLUSTERMESH_"),
        CLUSTERMESH_KKP_TOKEN=kkp_info["token"],
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, timeout=CLI_TIMEOUT)
