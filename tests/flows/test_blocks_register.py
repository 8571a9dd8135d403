"""``clustermesh blocks register`` asks Slack about the token and the channel before the first night.

The session's Prefect test server stores the blocks; the Slack-compatible test server answers
``auth.test`` / ``conversations.list`` / ``conversations.info`` over real HTTP (slack-sdk, no mocks).
What was saved is read back from the Prefect API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh.errors import RegistrationError
from clustermesh.spec import MeshSpec
from deployments.blocks import SLACK_TOKEN_BLOCK, SPEC_VARIABLE, kubeconfig_block_name, register
from tests.slack_server import SlackTestServer

SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "CLUSTERMESH_RESULT_KEY")


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackTestServer]:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)
    with SlackTestServer() as server:
        monkeypatch.setenv("SLACK_API_URL", server.url)
        yield server


def spec_with(tmp_path: Path, name: str, slack: dict[str, Any] | None) -> MeshSpec:
    """A two-cluster spec whose kubeconfigs are files (register stores them as Secret blocks)."""
    clusters = []
    for i in (1, 2):
        path = tmp_path / f"{name}-{i}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": f"c{i}", "cluster": {"server": f"https://127.0.0.1:{6440 + i}"}}],
                    "users": [{"name": f"u{i}", "user": {"token": f"kube-token-{i}"}}],
                    "contexts": [{"name": f"cluster-{i}", "context": {"cluster": f"c{i}", "user": f"u{i}"}}],
                    "current-context": f"cluster-{i}",
                }
            )
        )
        clusters.append({"name": f"cluster-{i}", "id": i, "kubeconfig": {"path": str(path)}})
    data: dict[str, Any] = {"name": name, "clusters": clusters}
    if slack is not None:
        data["notify"] = {"slack": slack}
    return MeshSpec.model_validate(data)


def saved_blocks(*names: str) -> set[str]:
    """Which of these Secret blocks exist on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = set()
    with get_client(sync_client=True) as prefect:
        for name in names:
            try:
                prefect.read_block_document_by_name(name, block_type_slug="secret")
            except ObjectNotFound:
                continue
            found.add(name)
    return found


def variable(name: str) -> Any:
    from prefect.variables import Variable

    return Variable.get(name, default=None)


def test_a_good_token_and_channel_are_checked_registered_and_reported(
    slack: SlackTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    spec = spec_with(tmp_path, "good-mesh", {"channel": "#mesh-alerts"})

    out = register(spec, webhook_env=None, set_default_spec=False)

    assert out.slack_token_block == SLACK_TOKEN_BLOCK
    assert out.slack == "token accepted (workspace clustermesh-test, bot mesh-bot); channel #mesh-alerts is C0123456789"
    assert "Slack: token accepted" in out.render() and slack.token not in out.render()
    assert out.snippet["notify"]["slack"] == {"channel": "#mesh-alerts", "token_block": SLACK_TOKEN_BLOCK}
    assert {r["path"] for r in slack.requests} == {"/api/auth.test", "/api/conversations.list"}
    assert slack.messages == [], "checking posts nothing"


def test_a_channel_from_slack_channel_lands_in_the_registered_spec(
    slack: SlackTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' way (SLACK_BOT_TOKEN, SLACK_CHANNEL) gives the nightly a channel: no "a bot token needs a channel"."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("SLACK_CHANNEL", "C0123456789")
    spec = spec_with(tmp_path, "env-mesh", None)

    out = register(spec, webhook_env=None)

    slack_section = {"channel": "C0123456789", "token_block": SLACK_TOKEN_BLOCK}
    assert out.snippet["notify"]["slack"] == slack_section
    assert variable(f"{SPEC_VARIABLE}-env-mesh")["notify"]["slack"] == slack_section
    assert MeshSpec.model_validate(out.snippet).notify.slack is not None


@pytest.mark.parametrize(
    ("case", "env", "slack_section", "words"),
    [
        (
            "refused token",
            {"SLACK_BOT_TOKEN": "xoxb-revoked-or-mistyped"},
            {"channel": "#mesh-alerts"},
            ("Slack refused the bot token in SLACK_BOT_TOKEN (invalid_auth)", "OAuth & Permissions"),
        ),
        (
            "unknown channel",
            {"SLACK_BOT_TOKEN": "{token}"},
            {"channel": "#no-such-channel"},
            ("#no-such-channel", "channel_not_found", "notify.slack.channel", "/invite @mesh-bot"),
        ),
        (
            "unknown channel ID",
            {"SLACK_BOT_TOKEN": "{token}"},
            {"channel": "C0NOSUCH00"},
            ("C0NOSUCH00", "channel_not_found"),
        ),
        (
            "a token without a channel",
            {"SLACK_BOT_TOKEN": "{token}"},
            None,
            ("no Slack channel", "notify: {slack: {channel:", "SLACK_CHANNEL"),
        ),
    ],
)
def test_a_bad_token_or_channel_is_refused_before_anything_is_saved(
    case: str,
    env: dict[str, str],
    slack_section: dict[str, Any] | None,
    words: tuple[str, ...],
    slack: SlackTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(token=slack.token))
    mesh = "refused-" + case.replace(" ", "-").lower()
    spec = spec_with(tmp_path, mesh, slack_section)

    with pytest.raises(RegistrationError) as refused:
        register(spec, webhook_env=None)

    message = str(refused.value)
    for word in words:
        assert word in message, (word, message)
    assert "nothing registered" in message
    assert slack.token not in message and "xoxb-revoked-or-mistyped" not in message
    assert saved_blocks(*(kubeconfig_block_name(mesh, c) for c in ("cluster-1", "cluster-2"))) == set()
    assert variable(f"{SPEC_VARIABLE}-{mesh}") is None
    assert slack.messages == []


def test_an_unreachable_slack_is_a_note_and_registration_goes_on(
    slack: SlackTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine may not reach Slack while the workers do: say so, do not refuse."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    slack.stop()
    spec = spec_with(tmp_path, "offline-mesh", {"channel": "#mesh-alerts"})

    out = register(spec, webhook_env=None, set_default_spec=False)

    assert out.slack is None
    assert any("could not reach Slack at 127.0.0.1" in n for n in out.notes), out.notes
    assert saved_blocks(kubeconfig_block_name("offline-mesh", "cluster-1")) == {
        kubeconfig_block_name("offline-mesh", "cluster-1")
    }


def test_a_utf16_kubeconfig_is_refused_naming_the_cluster_and_the_fix_without_echoing_it(
    tmp_path: Path, slack: SlackTestServer
) -> None:
    """What a PowerShell `>` redirect writes: refused before anything is saved, the token nowhere in the error."""
    spec = spec_with(tmp_path, "utf16", None)
    path = Path(spec.clusters[1].kubeconfig.path)  # type: ignore[union-attr,arg-type]
    path.write_bytes(path.read_text().encode("utf-16"))

    with pytest.raises(RegistrationError) as info:
        register(spec, slack_token_env=None, result_key_env=None, webhook_env=None)

    message = str(info.value)
    assert "cluster-2" in message and "UTF-16" in message and "UTF-8" in message, message
    assert "kube-token-2" not in message
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert (
        saved_blocks(kubeconfig_block_name("utf16", "cluster-1"), kubeconfig_block_name("utf16", "cluster-2")) == set()
    )
