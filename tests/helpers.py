"""Helpers shared by test modules (and the bench scripts, which put the checkout on ``sys.path``).

Plain functions and context managers, no fixtures (those live in the conftest files): a temporary Prefect
server, the CLI as a subprocess, ``clustermesh sandbox up`` as a subprocess, polling, an exec in an agent and
the 1.13 ``cilium-health status`` text read independently of the pipeline, and the mesh built with the setup's
domain steps (no Prefect).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes.stream import stream

if TYPE_CHECKING:
    from clustermesh.kube.client import ClusterClient
    from clustermesh.spec import MeshSpec
    from clustermesh.steps.models import ClusterFacts

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- polling


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``fn`` until it returns something truthy; fail saying what was awaited and last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}")


# ---------------------------------------------------------------------------------------- Prefect


@contextmanager
def prefect_test_server(
    home: Path, *, result_storage: bool = True, settings: Mapping[Any, Any] | None = None
) -> Iterator[str]:
    """A temporary Prefect server (``prefect_test_harness``, 120 s to start); yields its API URL.

    PREFECT_HOME is ``home``, the result storage ``home / "storage"`` (unless ``result_storage`` is false),
    analytics are off; ``settings`` are further Prefect settings for the server's lifetime.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    updates: dict[Any, Any] = {PREFECT_HOME: home}
    if result_storage:
        updates[PREFECT_RESULTS_LOCAL_STORAGE_PATH] = home / "storage"
    updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    updates.update(settings or {})
    with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set PREFECT_API_URL"
        yield str(url)


# -------------------------------------------------------------------------------- CLI subprocesses


def cli_environment(
    home: Path,
    prefect_api_url: str,
    *,
    without: Iterable[str] = (),
    without_prefixes: tuple[str, ...] = ("PREFECT_",),
    **extra: str,
) -> dict[str, str]:
    """Environment of a CLI subprocess: this process's, less Prefect's settings, ``without`` and the result key.

    Its own PREFECT_HOME (``home``, created here), the given Prefect API (no temporary server per process),
    no analytics, the checkout on PYTHONPATH, then ``extra``.
    """
    from tasks.results import RESULT_KEY_ENV

    dropped = set(without)
    env = {k: v for k, v in os.environ.items() if not k.startswith(without_prefixes) and k not in dropped}
    env.pop(RESULT_KEY_ENV, None)
    home.mkdir()
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
        CLUSTERMESH_STATE_DIR=str(home.with_name(home.name + "-clustermesh-state")),  # its own locks and records
    )
    env.update(extra)
    return env


def run_cli(env: Mapping[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m cli.app *args`` in the checkout, output captured; never raises on its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------------------- a sandbox in a process


def sandbox_argv(directory: Path, *options: str) -> list[str]:
    """``clustermesh sandbox up --dir directory --time-scale 0 *options`` (an instant sandbox)."""
    return [
        sys.executable,
        "-m",
        "cli.app",
        "sandbox",
        "up",
        "--dir",
        str(directory),
        "--time-scale",
        "0",
        *options,
    ]


def wait_for_ready(
    proc: subprocess.Popen[Any],
    directory: Path,
    *,
    within: float | None,
    poll: float,
    error: Callable[[str], BaseException] = AssertionError,
) -> None:
    """Until the sandbox writes ``directory / "ready"``; ``error`` if it exits first (with what it printed)
    or, with ``within``, if that many seconds pass."""
    deadline = None if within is None else time.monotonic() + within
    while not (directory / "ready").exists():
        if proc.poll() is not None:
            raise error(f"sandbox exited with {proc.returncode}: {_printed(proc)}")
        if deadline is not None and time.monotonic() > deadline:
            raise error(f"sandbox not ready within {within:g} s")
        time.sleep(poll)


def _printed(proc: subprocess.Popen[Any]) -> str:
    """What a finished process wrote to the one pipe it was given (stdout, else stderr)."""
    pipe = proc.stdout or proc.stderr
    out = pipe.read() if pipe else ""
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out)


@contextmanager
def sandbox_process(directory: Path, *options: str, env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    """An instant sandbox (``sandbox_argv``) in the background, once ready (60 s at most); stopped on exit.

    Its output goes to one pipe, shown if it exits early; on exit it is terminated, and killed if it has not
    stopped after 20 s.
    """
    proc = subprocess.Popen(
        sandbox_argv(directory, *options),
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_ready(proc, directory, within=60, poll=0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------- the agents


def agent_exec(core: Any, pod: str, command: list[str], *, stderr: bool) -> str:
    """``command`` in the ``cilium-agent`` container of ``pod`` (kube-system), through the official client.

    ``core`` is a ``CoreV1Api``; the exec stream takes over its ApiClient, so give it one of its own.
    """
    return str(
        stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            "kube-system",
            container="cilium-agent",
            command=command,
            stderr=stderr,
            stdin=False,
            stdout=True,
            tty=False,
        )
    )


def health_nodes(output: str) -> dict[str, list[str]]:
    """``cilium-health status`` (1.13 layout): node → its four probe results (parsed here, independent of the
    pipeline)."""
    nodes: dict[str, list[str]] = {}
    current: str | None = None
    for line in output.splitlines():
        m = re.match(r"^  (\S+?)( \(localhost\))?:$", line)
        if m:
            current = m.group(1)
            nodes[current] = []
        elif current and re.match(r"^\s+(ICMP to stack|HTTP to agent):", line):
            nodes[current].append(line.split(":", 1)[1].strip())
    return nodes


# ---------------------------------------------------------------------- a mesh by the domain steps


def build_mesh(sb: Any, drill_timeout: float) -> tuple[MeshSpec, dict[str, ClusterClient], dict[str, ClusterFacts]]:
    """Steps 1–6 of the guide with the domain functions, in the order flows/mesh_setup.py runs them (no Prefect).

    Returns the sandbox's ``mesh.yaml`` as a MeshSpec (with the drill's ``timeout`` replaced), an open
    ClusterClient per cluster (the caller closes them) and every cluster's ClusterFacts.
    """
    from clustermesh.cilium.profiles import profile_for
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.spec import load_spec
    from clustermesh.steps import step1_prerequisites as prerequisites
    from clustermesh.steps import step2_4_6_mesh_values as mesh_config
    from clustermesh.steps import step3_5_endpoints as endpoints
    from clustermesh.steps.models import MeshEndpoint

    spec = load_spec(Path(sb.directory) / "mesh.yaml")
    spec = spec.model_copy(update={"drill": spec.drill.model_copy(update={"timeout": drill_timeout})})
    clients = {c.name: open_cluster(c, request_timeout=spec.timeouts.api) for c in spec.clusters}
    try:
        facts = {c.name: prerequisites.check_prerequisites(clients[c.name], c, spec) for c in spec.clusters}
        first, others = spec.first, spec.others
        shared = spec.cilium.resolve(profile_for(facts[first.name].profile_line)).ca_mode == "shared"
        mesh_config.configure_mesh(clients[first.name], facts[first.name], first, spec, step="2", peers=[])
        first_ep = endpoints.collect_mesh_endpoint(clients[first.name], facts[first.name], spec, want_ca_key=shared)
        ca = first_ep.shared_ca() if shared else None
        for c in others:
            mesh_config.configure_mesh(
                clients[c.name], facts[c.name], c, spec, step="4", peers=[first_ep.peer_entry()], shared_ca=ca
            )
        eps: dict[str, MeshEndpoint] = {first.name: first_ep}
        for c in others:
            eps[c.name] = endpoints.collect_mesh_endpoint(
                clients[c.name],
                facts[c.name],
                spec,
                want_ca_key=False,
                expected_ca=first_ep.ca_cert if shared else None,
            )
        for c in spec.clusters:
            peers = [eps[o.name].peer_entry() for o in spec.clusters if o.name != c.name]
            mesh_config.configure_mesh(clients[c.name], facts[c.name], c, spec, step="6", peers=peers, shared_ca=ca)
    except BaseException:
        for client in clients.values():
            client.close()
        raise
    return spec, clients, facts


PROGRESS = "mesh health after "
"""How the health wait's progress lines begin in a run's log."""


class ProgressLines(logging.Handler):
    """The health wait's progress lines as the task logs them; ``on_first`` runs at the first one."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.on_first = on_first

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(PROGRESS):
            self.lines.append(message)
            if len(self.lines) == 1 and self.on_first is not None:
                self.on_first()
