"""Fixtures shared by every test group: running sandboxes, clients that talk to them, a Prefect server per module."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Keep kubectl's and the DynamicClient's caches out of the user's home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def find_shared() -> Path | None:
    """The project's ``shared/`` folder sits beside the checkout (CI lays it there too)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared"
        if (candidate / "fixtures" / "cilium").is_dir():
            return candidate
    return None


CHARTS_DIR: Path | None = None if (_shared := find_shared()) is None else _shared / "charts"
"""``../shared/charts``: Cilium's packaged charts, for the tests that render with the real chart."""

engine_mark = pytest.mark.skipif(
    importlib.util.find_spec("helm_python") is None,
    reason="helm-python-sdk (Helm's engine) not installed: uv sync --group charts",
)


def charts_mark(archive: str = "cilium-*.tgz") -> pytest.MarkDecorator:
    """Skip unless ``../shared/charts`` holds ``archive`` (a file name or a glob)."""
    found = CHARTS_DIR is not None and any(CHARTS_DIR.glob(archive))
    return pytest.mark.skipif(not found, reason="shared/charts (Cilium's chart archives) not found")


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start sandboxes in-process (instant by default); every one is stopped after the test."""
    from sandbox.server import Sandbox

    started: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        options.setdefault("time_scale", 0.0)
        directory = tmp_path / f"sandbox-{len(started) + 1}"
        sb = Sandbox(directory, **options)
        sb.start()
        started.append(sb)
        return sb

    yield make
    for sb in reversed(started):
        sb.stop()


def kube_client(kubeconfig: Path) -> Any:
    """An official ``kubernetes`` ApiClient for one sandbox kubeconfig (verified TLS, bearer token)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``), keep each test file on one worker, in order.

    Modules start their own Prefect test servers and sandboxes as module- or session-scoped
    fixtures; spreading one module's tests over workers (or interleaving modules) would start them
    again and again and nest Prefect's settings contexts out of order. Files that share session
    fixtures name a common group themselves (the e2e suite: ``xdist_group("e2e")``).
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.fixture(scope="session", autouse=True)
def _private_clustermesh_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """CLI processes started by tests keep their state (session server record, mesh lock files) in the test
    session's own folder: a developer's running `clustermesh server` or lock never reaches a test, nor the reverse.
    Tests that need a folder of their own still pass CLUSTERMESH_STATE_DIR explicitly."""
    previous = os.environ.get("CLUSTERMESH_STATE_DIR")
    os.environ["CLUSTERMESH_STATE_DIR"] = str(tmp_path_factory.mktemp("clustermesh-state"))
    yield
    if previous is None:
        os.environ.pop("CLUSTERMESH_STATE_DIR", None)
    else:
        os.environ["CLUSTERMESH_STATE_DIR"] = previous


@pytest.fixture(scope="module", autouse=True)
def _forget_prefect_concurrency_services() -> Iterator[None]:
    """Each module starts without Prefect's per-process concurrency-slot services from an earlier module.

    Prefect keeps one slot-acquisition service per set of limit names per process, holding a client bound to
    the API it first talked to (``prefect.concurrency.services``). A module with its own test server that
    takes the same limit (``mesh-sandbox``) would otherwise ask the previous module's server, which does not
    know the limit: the full suite failed where the module alone passed. Production processes talk to one
    API, so this only matters to a test process that starts several servers.
    """
    from prefect.concurrency.services import (
        ConcurrencySlotAcquisitionService,
        ConcurrencySlotAcquisitionWithLeaseService,
    )

    for service in (ConcurrencySlotAcquisitionService, ConcurrencySlotAcquisitionWithLeaseService):
        service.drain_all()
    yield


@pytest.fixture(scope="module")
def module_prefect_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server for one test module, with PREFECT_HOME and result storage in a temp dir.

    Not autouse: a module that wants one says ``pytestmark = pytest.mark.usefixtures("module_prefect_server")``
    (tests/flows has one server for the whole session instead). Yields the server's API URL.
    """
    from tests.helpers import prefect_test_server

    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    with prefect_test_server(tmp_path_factory.mktemp(f"prefect-home-{name}")) as url:
        yield url


@pytest.fixture
def no_result_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caching of endpoint results is off (CLUSTERMESH_RESULT_KEY unset) unless the test sets a key itself."""
    from tasks.results import RESULT_KEY_ENV

    monkeypatch.delenv(RESULT_KEY_ENV, raising=False)


@pytest.fixture
def kubes() -> Iterator[Callable[[Any], dict[str, Any]]]:
    """``kubes(sb)`` → {cluster name: Kube (tests/flows/conftest.py)} for every endpoint of a sandbox (in-process
    or not: anything with ``endpoints`` of ``name`` and ``kubeconfig``); every client is closed after the test."""
    from tests.flows.conftest import Kube

    opened: list[Kube] = []

    def make(sb: Any) -> dict[str, Kube]:
        out = {ep.name: Kube(ep.kubeconfig) for ep in sb.endpoints}
        opened.extend(out.values())
        return out

    yield make
    for k in opened:
        k.close()
