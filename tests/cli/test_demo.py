"""``clustermesh demo`` as a newcomer runs it: no server, on a machine that cannot reach the internet.

The machine without internet is played by proxies that lead nowhere (loopback is exempt): anything that
tried to phone home would fail and say so. The environment even asks for analytics; the demo turns them off.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli import server
from tests.cli.test_server_cli import environment, processes_with
from tests.helpers import run_cli

pytestmark = pytest.mark.timeout(600)

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens


def test_the_demo_lists_each_change_once_and_phones_nobody(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = environment(
        tmp_path,
        state,
        HTTP_PROXY=NOWHERE,
        HTTPS_PROXY=NOWHERE,
        NO_PROXY="127.0.0.1,localhost",
        PREFECT_SERVER_ANALYTICS_ENABLED="true",
    )
    env.pop("DO_NOT_TRACK", None)

    done = run_cli(env, "demo", timeout=540)

    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "PASS: mesh sandbox" in done.stdout, done.stdout
    changes = re.findall(r"^\s+([246]\. .+ in cluster-\d): cluster-\d: ", out, re.MULTILINE)
    assert len(changes) == 4 and len(set(changes)) == 4, changes  # steps 2, 4 and 6 (twice), each listed once
    assert "telemetry" not in out.lower() and "analytics" not in out.lower(), out[-4000:]
    assert "Traceback" not in out and "ERROR" not in out, out[-4000:]
    assert processes_with(f"PREFECT_HOME={state}") == []
    assert list((state / server.TEMPORARY_NAME).iterdir()) == []
