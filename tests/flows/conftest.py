"""The setup flow against real sandboxes and a real, temporary Prefect server.

One Prefect test harness serves the whole session, with PREFECT_HOME and the result storage in a
temp dir of this session: a cached result from an earlier session can never make a test pass.
Checks that judge the pipeline (mesh health, peers in the values) read the sandbox with the official
``kubernetes`` client and parse what they need here, never through the pipeline's own parsers.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from kubernetes import client

from clustermesh.spec import MeshSpec, load_spec
from tasks.results import RESULT_KEY_ENV
from tests.conftest import kube_client
from tests.helpers import agent_exec, cli_environment, prefect_test_server, run_cli

NS = "kube-system"
AI = ("apps.kubermatic.k8c.io", "v1", NS, "applicationinstallations", "cilium")
REMOTE_CERT = "clustermesh-apiserver-remote-cert"
CLI_TIMEOUT = 180


# ---------------------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="session", autouse=True)
def prefect_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary Prefect server for the session; yields the (session-private) result storage dir."""
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_test_server(home):
        yield home / "storage"


@pytest.fixture
def prefect_api_url(prefect_storage: Path) -> str:
    """The harness server's API URL, for CLI subprocesses (spares each one a temporary server)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness did not set PREFECT_API_URL"
    return str(url)


@pytest.fixture(autouse=True)
def _no_result_key(no_result_key: None) -> None:
    """Caching of endpoint results is off unless a test asks for ``result_key`` (tests/conftest.py)."""


@pytest.fixture
def result_key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A fresh Fernet key in CLUSTERMESH_RESULT_KEY: endpoint results are cached, encrypted."""
    key = Fernet.generate_key()
    monkeypatch.setenv(RESULT_KEY_ENV, key.decode())
    return key


@pytest.fixture
def cli_env(tmp_path: Path, prefect_api_url: str) -> dict[str, str]:
    """Environment of CLI subprocesses: their own PREFECT_HOME, the session's test server as API, no result key."""
    return cli_environment(tmp_path / "prefect-home", prefect_api_url)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``clustermesh *args`` as a subprocess (at most CLI_TIMEOUT seconds)."""
    return run_cli(env, *args, timeout=CLI_TIMEOUT)


def task_runs_of(flow_run_id: Any) -> dict[str, Any]:
    """Task runs of one flow run by name (e.g. "3. Retrieve Cluster Mesh data from cluster-1")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


# ---------------------------------------------------------------------------------- meshed sandboxes


@pytest.fixture
def meshed(sandbox_factory: Callable[..., Any]) -> Callable[..., Any]:
    """``meshed(**options)``: a sandbox (Cilium 1.16 unless ``cilium_version`` says otherwise) meshed by the
    real ``cluster_mesh_setup`` flow (healthy, checked)."""
    from flows.mesh_setup import cluster_mesh_setup

    def make(**options: Any) -> Any:
        options.setdefault("cilium_version", "1.16")
        sb = sandbox_factory(**options)
        result = cluster_mesh_setup(mesh_spec(sb))
        assert result.health.healthy, result.health.render_text()
        return sb

    return make


# ------------------------------------------------------------------------------------------ specs


def mesh_spec(sb: Any, **timeouts: float) -> MeshSpec:
    """The sandbox's own ``mesh.yaml`` as a MeshSpec, with some timeouts (seconds) replaced."""
    spec = load_spec(Path(sb.directory) / "mesh.yaml")
    if timeouts:
        spec = spec.model_copy(update={"timeouts": spec.timeouts.model_copy(update=timeouts)})
    return spec


def edited_spec(sb: Any, edit: Callable[[dict[str, Any]], None], name: str = "edited.yaml") -> MeshSpec:
    """Load the sandbox's ``mesh.yaml`` after ``edit`` changed its data (written beside it as ``name``)."""
    path = write_edited_yaml(Path(sb.directory) / "mesh.yaml", edit, name)
    return load_spec(path)


def write_edited_yaml(source: Path, edit: Callable[[dict[str, Any]], None], name: str) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = source.parent / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------- reading the sandbox directly


class Kube:
    """One sandbox cluster through the official client only (no pipeline code)."""

    def __init__(self, kubeconfig: Path | str) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.api = kube_client(self.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    def ai(self) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(*AI))

    def applied(self) -> bool:
        """KKP reports the current generation applied (Ready=True for it)."""
        ai = self.ai()
        ready = ((ai.get("status") or {}).get("conditions") or {}).get("Ready") or {}
        return ready.get("status") == "True" and ready.get("observedGeneration") == ai["metadata"]["generation"]

    def ai_version(self) -> tuple[str, int]:
        meta = self.ai()["metadata"]
        return str(meta["resourceVersion"]), int(meta["generation"])

    def values(self) -> dict[str, Any]:
        """The Helm values, from ``values`` (KKP < 2.25) or the YAML text of ``valuesBlock``."""
        spec = self.ai()["spec"]
        block = spec.get("valuesBlock")
        if isinstance(block, str) and block.strip():
            return dict(yaml.safe_load(block) or {})
        return dict(spec.get("values") or {})

    def peer_names(self) -> list[str]:
        entries = ((self.values().get("clustermesh") or {}).get("config") or {}).get("clusters") or []
        return [str(e.get("name")) for e in entries]

    def secret_data(self, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_secret(name, NS).data or {})
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def node_names(self) -> list[str]:
        return sorted(n.metadata.name for n in self.core.list_node().items)

    def agent_pods(self) -> list[str]:
        pods = self.core.list_namespaced_pod(NS, label_selector="k8s-app=cilium").items
        return sorted(p.metadata.name for p in pods if p.status.phase == "Running")

    def exec(self, pod: str, command: list[str]) -> str:
        own = kube_client(self.kubeconfig)  # exec gets its own ApiClient (reference/kube-api.md §7)
        try:
            return agent_exec(client.CoreV1Api(own), pod, command, stderr=False)
        finally:
            own.close()


def ai_versions(kubes: dict[str, Kube]) -> dict[str, tuple[str, int]]:
    """(resourceVersion, generation) of every cluster's cilium ApplicationInstallation."""
    return {name: k.ai_version() for name, k in kubes.items()}


def assert_peers_exactly_once(kubes: dict[str, Kube]) -> None:
    """Every cluster's values list every other cluster as a peer, once, and nothing else."""
    for name, k in kubes.items():
        peers = Counter(k.peer_names())
        expected = Counter(n for n in kubes if n != name)
        assert peers == expected, f"{name}: peers in clustermesh.config.clusters are {dict(peers)}"


def _probe_ok(path: dict[str, Any] | None) -> bool:
    """A probed address is OK when ICMP and HTTP both answered with a latency and no error status."""
    if not path:
        return False
    return all(
        isinstance(path.get(p), dict) and "status" not in path[p] and path[p].get("latency") for p in ("icmp", "http")
    )


def health_problems(kubes: dict[str, Kube]) -> list[str]:
    """What ``cilium-health status -o json`` in every agent of every cluster shows wrong; [] = healthy.

    Every node of every cluster must be listed by every agent (as ``cluster/node``), with its host and
    health endpoint both answering ICMP and HTTP. Parsed here, independently of the pipeline.
    """
    nodes = {name: k.node_names() for name, k in kubes.items()}
    problems: list[str] = []
    for name, k in kubes.items():
        pods = k.agent_pods()
        if len(pods) != len(nodes[name]):
            problems.append(f"{name}: {len(pods)} running agents for {len(nodes[name])} nodes")
        for pod in pods:
            report = json.loads(k.exec(pod, ["cilium-health", "status", "-o", "json"]))
            listed = {str(n["name"]): n for n in report.get("nodes") or []}
            for cluster, names in nodes.items():
                for node in names:
                    entry = listed.get(f"{cluster}/{node}")
                    if entry is None:
                        problems.append(f"{name}/{pod}: {cluster}/{node} not listed")
                        continue
                    host = (entry.get("host") or {}).get("primary-address")
                    endpoint = (entry.get("health-endpoint") or {}).get("primary-address")
                    if not (_probe_ok(host) and _probe_ok(endpoint)):
                        problems.append(f"{name}/{pod}: {cluster}/{node} not OK: {json.dumps(entry)[:300]}")
            expected = sum(len(v) for v in nodes.values())
            if len(listed) != expected:
                problems.append(f"{name}/{pod}: lists {len(listed)} nodes, the mesh has {expected}")
    return problems


def key_material(kubes: dict[str, Kube]) -> list[str]:
    """Every private key the sandbox holds for the mesh, as stored (base64) and as PEM body lines."""
    found: list[str] = []
    for k in kubes.values():
        for secret in (REMOTE_CERT, "cilium-ca", "clustermesh-apiserver-server-cert"):
            data = k.secret_data(secret) or {}
            for field in ("tls.key", "ca.key"):
                if data.get(field):
                    found.append(data[field])
                    pem = base64.b64decode(data[field]).decode()
                    found.extend(line for line in pem.splitlines() if len(line) >= 40 and "-----" not in line)
    return found
