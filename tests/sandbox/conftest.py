"""Fixtures for the sandbox API server: one real HTTPS server per test module, and clients for it."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from sandbox.httpserver import LoopThread, RunningServer, start_https_server
from sandbox.kubeapi import ApiFaults, ExecHandler, ExecResult, create_app
from sandbox.pki import issue, make_ca
from sandbox.resources import builtin_types
from sandbox.store import Store

KUBE_NAMESPACES = ("default", "kube-system", "kube-public", "team-a", "team-b")


@dataclass
class KubeServer:
    """A running sandbox API server and what a client needs to reach it."""

    loop: LoopThread
    store: Store
    server: RunningServer
    token: str
    ca_pem: bytes
    ca_file: Path
    kubeconfig: Path
    faults: ApiFaults
    exec_calls: list[tuple[str, str, str, list[str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"


def echo_exec_handler(calls: list[tuple[str, str, str, list[str]]]) -> ExecHandler:
    """Echo argv on stdout; ``fail N …`` exits with N and writes to stderr instead."""

    def handler(namespace: str, pod: str, container: str, argv: list[str]) -> ExecResult:
        calls.append((namespace, pod, container, list(argv)))
        if argv and argv[0] == "fail":
            return ExecResult(int(argv[1]), b"", f"failing with {argv[1]}\n".encode())
        return ExecResult(0, (" ".join(argv) + "\n").encode())

    return handler


def write_kubeconfig(path: Path, url: str, ca_pem: bytes, token: str) -> Path:
    """A kubeconfig with CA data and a token user, as the sandbox writes for each cluster."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sandbox",
                "cluster": {"server": url, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": "sandbox-admin", "user": {"token": token}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox-admin"}}],
        "current-context": "sandbox",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    """A real HTTPS API server on 127.0.0.1 with a fresh store, CA and token, for one test module."""
    tmp = tmp_path_factory.mktemp("kube-server")
    ca = make_ca("sandbox-test-ca")
    serving = issue(ca, "kube-apiserver", dns_names=("localhost",), ip_addresses=("127.0.0.1",), client=False)
    (tmp / "tls.crt").write_bytes(serving.cert_pem)
    (tmp / "tls.key").write_bytes(serving.key_pem)
    (tmp / "ca.crt").write_bytes(ca.cert_pem)
    token = secrets.token_hex(16)
    store = Store()
    store.register(builtin_types())
    for ns in KUBE_NAMESPACES:
        store.create("v1/namespaces", {"metadata": {"name": ns}, "status": {"phase": "Active"}})
    faults = ApiFaults(seed=7)
    calls: list[tuple[str, str, str, list[str]]] = []
    app = create_app(store, token=token, exec_handler=echo_exec_handler(calls), faults=faults)
    loop = LoopThread().start()
    server = loop.run(start_https_server(app, certfile=str(tmp / "tls.crt"), keyfile=str(tmp / "tls.key")), timeout=30)
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", f"https://127.0.0.1:{server.port}", ca.cert_pem, token)
    yield KubeServer(loop, store, server, token, ca.cert_pem, tmp / "ca.crt", kubeconfig, faults, calls)
    loop.run(server.stop(), timeout=30)
    loop.stop()


@pytest.fixture
def kube_api_client(kube_server: KubeServer) -> Iterator[k8s_client.ApiClient]:
    """An official-client ApiClient configured from the server's kubeconfig."""
    api = k8s_config.new_client_from_config(config_file=str(kube_server.kubeconfig))
    yield api
    api.close()
