"""One client per cluster per run: opened once on first use (threads included), not kept when opening fails."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import yaml

from clustermesh.errors import KkpTransientError
from clustermesh.kube import ClusterClient, ClusterSessions
from clustermesh.spec import ClusterSpec


def entry(name: str, path: str = "/nonexistent/kubeconfig") -> ClusterSpec:
    return ClusterSpec.model_validate({"name": name, "id": int(name[-1]), "kubeconfig": {"path": path}})


def kubeconfig(server: str) -> str:
    return yaml.safe_dump(
        {
            "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": ""}}],
            "users": [{"name": "u", "user": {"token": "t0ken-value"}}],
        }
    )


class Opener:
    """Real clients from kubeconfig text (nothing is contacted); counts calls and can fail the first ones."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures
        self.opened: list[ClusterClient] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()

    def __call__(self, cluster: ClusterSpec) -> ClusterClient:
        with self.lock:
            self.calls.append(cluster.name)
            if self.failures:
                self.failures -= 1
                raise KkpTransientError("p", cluster.name, "Service Unavailable", status=503)
        self.gate.wait(5)  # let every thread pile up on the first use
        client = ClusterClient.from_kubeconfig_text(
            kubeconfig(f"https://{cluster.name}.invalid:6443"), context=None, cluster_name=cluster.name
        )
        self.opened.append(client)
        return client


def test_each_cluster_is_opened_once_however_many_threads_ask_at_once() -> None:
    opener = Opener()
    sessions = ClusterSessions(opener)
    wanted = [entry("cluster-1"), entry("cluster-2")] * 16
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        futures = [pool.submit(sessions.client, e) for e in wanted]
        opener.gate.set()
        got = [f.result() for f in futures]
    assert sorted(opener.calls) == ["cluster-1", "cluster-2"]
    assert sessions.opened == 2
    assert {c.cluster_name: id(c) for c in got} == {c.cluster_name: id(c) for c in opener.opened}
    sessions.close()


def test_a_failed_opening_is_not_remembered_and_the_next_use_opens_again() -> None:
    opener = Opener(failures=1)
    opener.gate.set()
    sessions = ClusterSessions(opener)
    with pytest.raises(KkpTransientError):
        sessions.client(entry("cluster-1"))
    client = sessions.client(entry("cluster-1"))
    assert client.cluster_name == "cluster-1"
    assert opener.calls == ["cluster-1", "cluster-1"] and sessions.opened == 1
    sessions.close()


class Closable:
    def __init__(self, name: str) -> None:
        self.cluster_name = name
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_close_closes_every_client_once_and_later_uses_are_refused() -> None:
    made: list[Closable] = []

    def open_client(cluster: ClusterSpec) -> Any:
        made.append(Closable(cluster.name))
        return cast(ClusterClient, made[-1])

    with ClusterSessions(open_client) as sessions:
        sessions.client(entry("cluster-1"))
        sessions.client(entry("cluster-2"))
        sessions.client(entry("cluster-1"))
    sessions.close()
    assert [(c.cluster_name, c.closed) for c in made] == [("cluster-1", 1), ("cluster-2", 1)]
    with pytest.raises(RuntimeError, match="closed"):
        sessions.client(entry("cluster-1"))


def test_another_reference_under_the_same_name_is_not_served_the_open_client() -> None:
    opener = Opener()
    opener.gate.set()
    sessions = ClusterSessions(opener)
    sessions.client(entry("cluster-1", "/a/kubeconfig"))
    other = entry("cluster-1", "/b/kubeconfig")
    assert sessions.matches(entry("cluster-1", "/a/kubeconfig")) and sessions.matches(entry("cluster-2"))
    assert not sessions.matches(other)
    with pytest.raises(ValueError, match="another reference"):
        sessions.client(other)
    sessions.close()
