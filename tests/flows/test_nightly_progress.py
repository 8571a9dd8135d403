"""While the nightly waits for mesh health, its RUNNING Slack message says what is still missing.

A blocked VXLAN port on the sandbox with a long health timeout: the wait reports progress every few
seconds and stops once the failure has held (the settle rule); the RUNNING message is edited in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.flows.conftest import mesh_spec
from tests.flows.test_nightly import SLACK_ENV, run_nightly
from tests.slack_server import SlackTestServer


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackTestServer]:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    with SlackTestServer() as server:
        monkeypatch.setenv("SLACK_BOT_TOKEN", server.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", server.url)
        yield server


def test_the_running_message_says_what_is_still_missing_while_health_is_awaited(
    meshed: Callable[..., Any], slack: SlackTestServer
) -> None:
    sb = meshed(clusters=2, nodes=2)
    sb.fault("block-port", a="cluster-1", b="cluster-2", port="udp/8472")
    spec = mesh_spec(sb, health=300)

    state, result = run_nightly(spec, run_drill=False)

    assert result.status == "FAIL", result.describe()
    updates = [r["body"] for r in slack.requests if r["path"].endswith("chat.update")]
    running = [u for u in updates if "still waiting" in str(u.get("text", "")) + str(u.get("blocks", ""))]
    assert running, [str(u.get("text"))[:200] for u in updates]
    assert "cluster-1" in str(running[0]) and "cluster-2" in str(running[0]), running[0]
    final = updates[-1]
    assert "still waiting" not in str(final.get("text", "")) + str(final.get("blocks", "")), final
