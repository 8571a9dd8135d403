"""kubectl 1.32 against the sandbox API server: what a person debugging the sandbox will type."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from .conftest import KubeServer

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
]

AI_GROUP = "apps.kubermatic.k8c.io"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl(kube_server: KubeServer, tmp_path: Path) -> Kubectl:
    """Run kubectl with a per-test HOME, so no discovery or OpenAPI cache leaks between tests."""
    home = tmp_path / "home"
    home.mkdir()

    def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **(env or {})}
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(kube_server.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def core(kube_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api_client)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"kubectl failed ({result.returncode}): {result.stderr}"
    return result.stdout


def _pod(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "agent", "image": "cilium"}]},
        "status": {"phase": "Running"},
    }


DEPLOYMENT = textwrap.dedent(
    """\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: echo
      namespace: default
    spec:
      replicas: 2
      selector:
        matchLabels: {app: echo}
      template:
        metadata:
          labels: {app: echo}
        spec:
          containers:
          - name: echo
            image: echo:1
            env:
            - {name: A, value: "1"}
            ports:
            - containerPort: 8080
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: echo-config
      namespace: default
    data:
      greeting: hello
    """
)


def test_get_pods_in_all_namespaces_shows_pod_columns(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("kube-system", _pod("cilium-abc"))
    core.create_namespaced_pod("default", _pod("web-0"))
    out = _ok(kubectl("get", "pods", "-A"))
    header = out.splitlines()[0].split()
    assert header == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = {tuple(line.split()[:2]) for line in out.splitlines()[1:]}
    assert {("kube-system", "cilium-abc"), ("default", "web-0")} <= rows


def test_get_secret_as_yaml(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("kube-system", {"metadata": {"name": "cilium-ca"}, "data": {"ca.crt": "Y2E="}})
    doc = yaml.safe_load(_ok(kubectl("get", "secret", "cilium-ca", "-n", "kube-system", "-o", "yaml")))
    assert doc["kind"] == "Secret" and doc["data"] == {"ca.crt": "Y2E="}


def test_apply_twice_creates_then_is_unchanged(kubectl: Kubectl, tmp_path: Path, kube_server: KubeServer) -> None:
    manifest = tmp_path / "echo.yaml"
    manifest.write_text(DEPLOYMENT)
    first = _ok(kubectl("apply", "-f", str(manifest)))
    assert "deployment.apps/echo created" in first and "configmap/echo-config created" in first
    second = _ok(kubectl("apply", "-f", str(manifest)))
    assert "deployment.apps/echo unchanged" in second and "configmap/echo-config unchanged" in second
    manifest.write_text(DEPLOYMENT.replace("image: echo:1", "image: echo:2"))
    third = _ok(kubectl("apply", "-f", str(manifest)))
    assert "deployment.apps/echo configured" in third
    dep = kube_server.loop.call(kube_server.store.get, "apps/v1/deployments", "default", "echo")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "echo:2" and container["env"] == [{"name": "A", "value": "1"}]


def test_server_side_apply(kubectl: Kubectl, kube_server: KubeServer) -> None:
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa-cm\n  namespace: default\ndata:\n  a: '1'\n"
    assert "configmap/ssa-cm serverside-applied" in _ok(kubectl("apply", "--server-side", "-f", "-", stdin=manifest))
    _ok(kubectl("apply", "--server-side", "-f", "-", stdin=manifest.replace("'1'", "'2'")))
    cm = kube_server.loop.call(kube_server.store.get, "v1/configmaps", "default", "ssa-cm")
    assert cm["data"] == {"a": "2"}


def _editor(tmp_path: Path, sed_expr: str) -> dict[str, str]:
    script = tmp_path / "editor.sh"
    script.write_text(f"#!/bin/sh\nsed -i '{sed_expr}' \"$1\"\n")
    script.chmod(0o755)
    return {"KUBE_EDITOR": str(script)}


def test_edit_application_installation(kubectl: Kubectl, tmp_path: Path, kube_server: KubeServer) -> None:
    ai = {
        "apiVersion": f"{AI_GROUP}/v1",
        "kind": "ApplicationInstallation",
        "metadata": {"name": "cilium", "namespace": "kube-system"},
        "spec": {
            "applicationRef": {"name": "cilium", "version": "1.15.16"},
            "values": {"cluster": {"id": 1}},
        },
    }
    _ok(kubectl("apply", "-f", "-", stdin=yaml.safe_dump(ai)))
    listing = _ok(kubectl("get", "appinstall", "-n", "kube-system"))
    assert listing.split()[:5] == ["NAME", "APP", "VERSION", "STATUS", "READY"]
    out = kubectl(
        "edit",
        "applicationinstallation",
        "cilium",
        "-n",
        "kube-system",
        env=_editor(tmp_path, "s/ id: 1$/ id: 7/"),  # not "uid: 1…": UIDs are random
    )
    assert "edited" in _ok(out)
    stored = kube_server.loop.call(
        kube_server.store.get, f"{AI_GROUP}/v1/applicationinstallations", "kube-system", "cilium"
    )
    assert stored["spec"]["values"]["cluster"]["id"] == 7
    assert stored["spec"]["applicationRef"]["version"] == "1.15.16"


def test_edit_deployment_keeps_other_containers(kubectl: Kubectl, tmp_path: Path, kube_server: KubeServer) -> None:
    dep = yaml.safe_load(DEPLOYMENT.split("---")[0])
    dep["metadata"]["name"] = "edited"
    dep["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "side:1"})
    _ok(kubectl("create", "-f", "-", stdin=yaml.safe_dump(dep)))
    out = kubectl("edit", "deployment", "edited", env=_editor(tmp_path, "s/image: side:1/image: side:2/"))
    assert "deployment.apps/edited edited" in _ok(out)
    stored = kube_server.loop.call(kube_server.store.get, "apps/v1/deployments", "default", "edited")
    images = [c["image"] for c in stored["spec"]["template"]["spec"]["containers"]]
    assert images == ["echo:1", "side:2"]


def test_scale_deployment_to_zero(kubectl: Kubectl, kube_server: KubeServer) -> None:
    dep = yaml.safe_load(DEPLOYMENT.split("---")[0])
    dep["metadata"]["name"] = "to-scale"
    _ok(kubectl("apply", "-f", "-", stdin=yaml.safe_dump(dep)))
    assert "deployment.apps/to-scale scaled" in _ok(kubectl("scale", "deployment", "to-scale", "--replicas=0"))
    stored = kube_server.loop.call(kube_server.store.get, "apps/v1/deployments", "default", "to-scale")
    assert stored["spec"]["replicas"] == 0


def test_exec_prints_output_and_propagates_exit_code(
    kubectl: Kubectl, core: client.CoreV1Api, kube_server: KubeServer
) -> None:
    core.create_namespaced_pod("kube-system", _pod("cilium-exec"))
    out = kubectl("exec", "-n", "kube-system", "cilium-exec", "--", "cilium-dbg", "status", "--brief")
    assert _ok(out) == "cilium-dbg status --brief\n"
    assert kube_server.exec_calls[-1] == (
        "kube-system",
        "cilium-exec",
        "agent",
        ["cilium-dbg", "status", "--brief"],
    )
    failed = kubectl("exec", "-n", "kube-system", "cilium-exec", "-c", "agent", "--", "fail", "4")
    assert failed.returncode == 4
    assert "failing with 4" in failed.stderr and "command terminated with exit code 4" in failed.stderr


def test_get_watch_lists_then_stops_at_the_request_timeout(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "kubectl-watch"}})
    core.create_namespaced_config_map("kubectl-watch", {"metadata": {"name": "watched"}, "data": {"a": "b"}})
    out = kubectl("get", "configmaps", "-n", "kubectl-watch", "-w", "--request-timeout=2s")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DATA", "AGE"]
    assert lines[1].split()[:2] == ["watched", "1"]
