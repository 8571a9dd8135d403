"""Fixtures shared by every test group: running sandboxes and clients that talk to them."""

from __future__ import annotations

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
