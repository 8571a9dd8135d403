"""README.md's "Run it for real", run as written: the commands are read from the README, not copied here.

Every ```sh block of that section is run in order, each command through ``bash -c`` from the repository root,
with the environment its ``export`` lines build (one environment: the README says to set them in every terminal).
A command whose comment says ``own terminal`` (the server, the worker) is started in the background and the next
command waits until it is up; it is stopped the way the README says, with Ctrl-C (SIGINT to its process group).

Only the README's own placeholders are replaced: the port in ``PREFECT_SERVER_API_PORT`` (a free one), the bot token
``xoxb-…`` and the webhook URL (the Slack test server's), and ``mesh.yaml`` (the sandbox's spec with a Slack
channel). Around the commands, and not in them: PREFECT_HOME in a temp dir (the server's SQLite database goes
there, not into ``~/.prefect``), SLACK_API_URL pointing at tests/slack_server.py, and a 1 s worker poll
(PREFECT_WORKER_QUERY_SECONDS) to keep the test short.

Judged afterwards through the Prefect API and the Slack test server: the eight deployments exist, the nightly ran
from its deployment to a verdict (PASS: the README sets the mesh up first) and its summary reached Slack. Every
process started here is stopped, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import BIN, REPO, Proc, free_port, start, wait_for
from tests.slack_server import DEFAULT_CHANNELS, SlackTestServer

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(900)]

README = REPO / "README.md"
SECTION = "## Run it for real"
CHANNEL = "mesh-alerts"
COMMAND_TIMEOUT = 300.0  # one foreground command (`deploy --all`, a setup run watched to its end)
UP_TIMEOUT = 180.0  # a background command until it is up
STOP_TIMEOUT = 60.0  # Ctrl-C until the process has exited
DEPLOYMENTS = {
    "mesh-setup",
    "mesh-nightly-verification",
    "mesh-failover-drill",
    "mesh-create-clusters",
    "mesh-remove-cluster",
    "mesh-renew-certificates",
    "mesh-rotate-ca",
    "mesh-upgrade-prepare",
}


# ------------------------------------------------------------------------------ reading the README


def section(text: str, heading: str = SECTION) -> str:
    """The README's section under ``heading``, up to the next ``## `` heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[str]:
    """The block's commands: comment lines dropped, backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    assert not pending, f"a continued line ends the block: {pending!r}"
    return out


def readme_commands() -> list[str]:
    found = [c for block in sh_blocks(section(README.read_text())) for c in commands(block)]
    assert found, f"no ```sh blocks under {SECTION!r} in README.md"
    return found


def test_the_section_is_found_and_names_its_placeholders() -> None:
    """Cheap guard (no server): the parser finds the commands, and the placeholders replaced below exist."""
    text = section(README.read_text())
    cmds = readme_commands()
    assert any("prefect server start" in c and "own terminal" in c for c in cmds), cmds
    assert any("prefect worker start" in c and "own terminal" in c for c in cmds), cmds
    assert any("Ctrl-C in the worker's terminal" in c for c in cmds), "how to stop the worker cleanly"
    assert any(c.startswith("export PREFECT_API_URL=") for c in cmds)
    assert cmds.index(next(c for c in cmds if c.startswith("export PREFECT_API_URL="))) < cmds.index(
        next(c for c in cmds if "prefect server start" in c)
    ), "PREFECT_API_URL is exported before the server starts"
    assert any(c.startswith("export PREFECT_SERVER_ANALYTICS_ENABLED=false") for c in cmds)
    for placeholder in ("xoxb-…", "https://hooks.slack.com/services/…", "mesh.yaml", "PREFECT_SERVER_API_PORT=4200"):
        assert placeholder in text, placeholder
    assert "eight deployments" in text


# -------------------------------------------------------------------------------- running it


@dataclass
class Shell:
    """One operator's shell state: the environment the README's exports build, the processes left running."""

    env: dict[str, str]
    overrides: dict[str, str]
    spec: Path
    logdir: Path
    background: list[Proc] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)

    def substitute(self, command: str) -> str:
        """The README's placeholders: ``NAME=value`` of an overridden variable, and the spec path."""
        for name, value in self.overrides.items():
            command = re.sub(rf"(?<![\w$]){name}=\S+", lambda _m, n=name, v=value: f"{n}={shlex.quote(v)}", command)
        return re.sub(r"(?<![\w./-])mesh\.yaml(?![\w.-])", shlex.quote(str(self.spec)), command)

    def run(self, command: str) -> None:
        line = self.substitute(command)
        if line.startswith("export "):
            self.export(line)
        elif "own terminal" in command:
            self.start(line)
        else:
            done = subprocess.run(
                ["bash", "-c", line], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
            )
            self.outputs.append((command, done.stdout + done.stderr))
            assert done.returncode == 0, (
                f"README command exited {done.returncode}:\n  {command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
                + self.tails()
            )
            if stop := re.search(r"Ctrl-C in the (\w+)'s terminal", command):
                self.stop_cleanly(stop.group(1))

    def stop_cleanly(self, name: str) -> None:
        """The README's "Ctrl-C in the <name>'s terminal": it exits at once, saying so, and leaves nothing behind."""
        [proc] = [p for p in self.background if p.name == name and p.popen.poll() is None]
        code = self.interrupt(proc)
        assert code in (0, 130), f"{name} exited {code} after Ctrl-C:\n{proc.tail()}"  # 130: ended by SIGINT
        self.stopped.append(name)

    def export(self, line: str) -> None:
        """``export NAME=value``: bash expands it; an overridden NAME gets the test's value."""
        done = subprocess.run(
            ["bash", "-c", f"{line}\nenv -0"], cwd=REPO, env=self.env, capture_output=True, timeout=30, check=True
        )
        self.env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)

    def start(self, line: str) -> None:
        name = "server" if "server start" in line else "worker" if "worker start" in line else None
        assert name, f"a long-running README command this test cannot tell is up: {line}"
        proc = start(name, ["bash", "-c", line], dict(self.env), self.logdir)
        self.background.append(proc)
        up = self.server_up if name == "server" else self.worker_up
        wait_for(lambda: up() or proc.popen.poll() is not None, UP_TIMEOUT, f"the README's {name} to be up")
        assert proc.popen.poll() is None, f"the README's {name} exited {proc.popen.returncode}:\n{proc.tail()}"

    def server_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.env['PREFECT_API_URL']}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def worker_up(self) -> bool:
        return any("started!" in p.tail(200) for p in self.background if p.name == "worker")

    def tails(self) -> str:
        return "".join(f"\n--- {p.name} log:\n{p.tail(40)}" for p in self.background)

    def interrupt(self, proc: Proc) -> int:
        """Ctrl-C in its terminal: SIGINT to its process group; its exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGINT)
        try:
            return proc.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.stop()
            raise AssertionError(f"{proc.name} still running {STOP_TIMEOUT:g}s after Ctrl-C:\n{proc.tail()}") from None


@pytest.fixture
def slack() -> Iterator[SlackTestServer]:
    with SlackTestServer() as server:
        yield server


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """``clustermesh sandbox up --time-scale 0`` (2 clusters) in the background; its directory."""
    directory = tmp_path / "run"
    proc = start(
        "sandbox",
        [str(BIN / "clustermesh"), "sandbox", "up", "--dir", str(directory), "--time-scale", "0"],
        {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        tmp_path,
    )
    try:
        wait_for(lambda: (directory / "ready").exists() or proc.popen.poll() is not None, UP_TIMEOUT, "sandbox ready")
        assert (directory / "ready").exists(), f"sandbox did not come up:\n{proc.tail()}"
        yield directory
    finally:
        proc.stop()


def operator_env(home: Path, slack: SlackTestServer) -> dict[str, str]:
    """The operator's login environment: no Prefect settings of this test process, the Slack test server's API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SLACK_", "CLUSTERMESH_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "SLACK_API_URL": slack.url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
    )
    return env


def finished_runs(api_url: str, deployment: str) -> tuple[list[Any], set[str]]:
    """The deployment's runs that have ended (not the schedule's future ones), and every deployment's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))
        deployments = {d.name for d in client.read_deployments()}
    return [r for r in runs if r.state is not None and r.state.is_final()], deployments


@pytest.mark.skipif(shutil.which("uv") is None, reason="the README's commands start with `uv run`; uv is not on PATH")
def test_the_readme_run_it_for_real_commands_work_as_written(
    tmp_path: Path, sandbox: Path, slack: SlackTestServer
) -> None:
    spec = yaml.safe_load((sandbox / "mesh.yaml").read_text())
    spec["notify"] = {"slack": {"channel": f"#{CHANNEL}"}}
    spec_path = tmp_path / "mesh.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    home = tmp_path / "prefect-home"
    home.mkdir()
    shell = Shell(
        env=operator_env(home, slack),
        overrides={
            "PREFECT_SERVER_API_PORT": str(free_port()),
            "SLACK_BOT_TOKEN": slack.token,
            "CLUSTERMESH_ALERT_WEBHOOK_URL": slack.webhook_url,
        },
        spec=spec_path,
        logdir=tmp_path,
    )
    started = time.monotonic()
    try:
        for command in readme_commands():
            shell.run(command)
        ran_for = time.monotonic() - started

        api_url = shell.env["PREFECT_API_URL"]
        assert api_url == f"http://127.0.0.1:{shell.overrides['PREFECT_SERVER_API_PORT']}/api"
        nightlies, deployments = finished_runs(api_url, "mesh-nightly-verification")
        assert deployments == DEPLOYMENTS
        [nightly] = nightlies
        assert (nightly.state.name, nightly.state.message) == ("Completed", "verification PASS"), nightly.state
        assert nightly.parameters == {"spec_variable": "clustermesh-spec", "run_drill": True}
        summaries = [
            m
            for m in slack.messages
            if m.get("thread_ts") is None and m["via"] == "api" and "PASSED" in (m.get("text") or "")
        ]
        assert summaries and summaries[-1]["channel"] == DEFAULT_CHANNELS[CHANNEL], slack.messages
        assert spec["name"] in summaries[-1]["text"] + yaml.safe_dump(summaries[-1].get("blocks"))

        # the worker was stopped the README's way (pool paused, nothing running, Ctrl-C); the server stops on Ctrl-C
        assert shell.stopped == ["worker"], shell.stopped
        assert "stopped!" in next(p for p in shell.background if p.name == "worker").tail(5)
        shell.stop_cleanly("server")
        print(f"\nthe README's commands ran in {ran_for:.0f} s")
    finally:
        for proc in shell.background:
            proc.stop()
