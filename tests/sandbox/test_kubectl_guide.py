"""The KKP guide's own kubectl commands (kubectl 1.32) against a running sandbox.

``kubectl edit`` runs with ``KUBE_EDITOR`` set to a small Python script that merges the guide's
snippet into the ApplicationInstallation, as a person would in their editor.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.helpers import health_nodes
from tests.helpers import wait_until as poll_until

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
]

NGINX_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
spec:
  selector:
    matchLabels:
      app: nginx
  replicas: 2
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.16.1
        ports:
        - containerPort: 80
"""

NGINX_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  labels:
    app: nginx
  name: nginx-deployment
  annotations:
    io.cilium/global-service: "true"
    io.cilium/service-affinity: "local"
spec:
  type: LoadBalancer
  ports:
  - port: 80
    protocol: TCP
    targetPort: 80
  selector:
    app: nginx
"""

EDITOR = textwrap.dedent(
    '''\
    """KUBE_EDITOR: deep-merge the JSON in $GUIDE_SNIPPET into the ApplicationInstallation's values."""
    import json, os, sys
    import yaml

    def merge(base, overlay):
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    path = sys.argv[-1]
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    snippet = json.loads(os.environ["GUIDE_SNIPPET"])
    spec = doc["spec"]
    if spec.get("valuesBlock"):
        values = yaml.safe_load(spec["valuesBlock"]) or {}
        merge(values, snippet)
        spec["valuesBlock"] = yaml.safe_dump(values)
    else:
        values = spec.get("values") or {}
        merge(values, snippet)
        spec["values"] = values
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)
    '''
)

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``tests.helpers.wait_until`` polling every 0.1 s (each poll here may start a kubectl process)."""
    return poll_until(what, fn, timeout, interval=0.1)


@pytest.fixture
def kubectl_in(tmp_path: Path) -> Callable[[Path], Kubectl]:
    """``kubectl_in(kubeconfig)(*args)`` runs kubectl 1.32 with a per-test HOME and that KUBECONFIG."""
    home = tmp_path / "home"
    home.mkdir()
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR)

    def bind(kubeconfig: Path) -> Kubectl:
        def run(
            *args: str, snippet: dict[str, Any] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "KUBECONFIG": str(kubeconfig),
                "KUBE_EDITOR": f"{shlex.quote(sys.executable)} {shlex.quote(str(editor))}",
            }
            if snippet is not None:
                env["GUIDE_SNIPPET"] = json.dumps(snippet)
            return subprocess.run(
                ["kubectl", *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )

        return run

    return bind


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"kubectl {result.args[1:]} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def ai_field(kubectl: Kubectl, jsonpath: str) -> str:
    """``kubectl get ApplicationInstallation cilium -n kube-system -o jsonpath=<jsonpath>``."""
    return ok(kubectl("get", "ApplicationInstallation", "cilium", "-n", "kube-system", "-o", f"jsonpath={jsonpath}"))


def ai_applied(kubectl: Kubectl) -> str | None:
    """Generation, Ready status and its observedGeneration, once Ready is True for this generation."""
    out = ai_field(
        kubectl,
        "{.metadata.generation} {.status.conditions.Ready.status} {.status.conditions.Ready.observedGeneration}",
    )
    gen, status, observed = (out.split() + ["", "", ""])[:3]
    return out if status == "True" and gen == observed else None


def edit_values(kubectl: Kubectl, snippet: dict[str, Any]) -> int:
    """``kubectl edit ApplicationInstallation cilium -n kube-system`` + the snippet; the new generation."""
    before = int(ai_field(kubectl, "{.metadata.generation}"))
    out = ok(kubectl("edit", "ApplicationInstallation", "cilium", "-n", "kube-system", snippet=snippet))
    assert "applicationinstallation.apps.kubermatic.k8c.io/cilium edited" in out, out
    applied = wait_until("the edited ApplicationInstallation to be Ready", lambda: ai_applied(kubectl))
    generation = int(applied.split()[0])
    assert generation == before + 1
    return generation


def secret_yaml(kubectl: Kubectl, name: str) -> dict[str, str] | None:
    """``kubectl get secret <name> -n kube-system -o yaml``: its decoded-once data, or None if missing."""
    result = kubectl("get", "secret", name, "-n", "kube-system", "-o", "yaml")
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    return yaml.safe_load(result.stdout)["data"]  # type: ignore[no-any-return]


def external_ip(kubectl: Kubectl, service: str, namespace: str = "kube-system") -> str | None:
    """The EXTERNAL-IP column of ``kubectl get svc``, once it is an address (not ``<pending>``)."""
    result = kubectl("get", "svc", service, "-n", namespace)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    lines = result.stdout.splitlines()
    header, row = lines[0], lines[1]
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert columns["TYPE"] == "LoadBalancer", columns
    try:
        ipaddress.ip_address(columns["EXTERNAL-IP"])
    except ValueError:
        return None
    return columns["EXTERNAL-IP"]


def cilium_pod(kubectl: Kubectl) -> str:
    return ok(
        kubectl(
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=cilium",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        )
    )


def agent_exec(kubectl: Kubectl, *argv: str) -> subprocess.CompletedProcess[str]:
    """``kubectl exec cilium-<id> -n kube-system -- <argv>``; agents restart on changes, so look it up."""
    return kubectl("exec", cilium_pod(kubectl), "-n", "kube-system", "--", *argv)


def issued_by(cert_b64: str, ca_b64: str) -> bool:
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_b64))
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_b64))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, x509.InvalidSignature):
        return False
    return True


def step_2(name: str, cluster_id: int) -> dict[str, Any]:
    """The guide's step-2 snippet."""
    return {
        "cluster": {"name": name, "id": cluster_id},
        "clustermesh": {
            "useAPIServer": True,
            "config": {"enabled": True},
            "apiserver": {"tls": {"auto": {"method": "cronJob"}}, "service": {"type": "LoadBalancer"}},
        },
    }


def peer_snippet(
    name: str, cluster_id: int | None, peer: str, ip: str, remote: dict[str, str], ca: dict[str, str]
) -> dict[str, Any]:
    """The guide's step-4 / step-6 snippet: one peer, its remote cert, and cluster 1's CA."""
    snippet: dict[str, Any] = {
        "clustermesh": {
            "useAPIServer": True,
            "config": {
                "enabled": True,
                "clusters": [
                    {
                        "name": peer,
                        "address": "",
                        "port": 2379,
                        "ips": [ip],
                        "tls": {"cert": remote["tls.crt"], "key": remote["tls.key"]},
                    }
                ],
            },
            "apiserver": {
                "tls": {"auto": {"method": "cronJob"}, "ca": {"cert": ca["ca.crt"], "key": ca["ca.key"]}},
                "service": {"type": "LoadBalancer"},
            },
        }
    }
    if cluster_id is not None:
        snippet["cluster"] = {"name": name, "id": cluster_id}
    return snippet


def service_backends(output: str, frontend: str) -> list[str] | None:
    """Backend cells of the row for ``frontend`` in ``cilium service list`` (None if the row is absent)."""
    backends: list[str] | None = None
    for line in output.splitlines()[1:]:
        cells = [c.strip() for c in re.split(r"\s{2,}", line.strip())]
        if re.match(r"^\d+\s", line):
            if backends is not None:
                break
            if cells[1] == frontend:
                backends = [c for c in cells[3:] if c]
        elif backends is not None and line.strip():
            backends.append(line.strip())
    return backends


# ---- one cluster: steps 2, 3 and 8 ------------------------------------------------------------------


def test_kubectl_edit_enables_the_mesh_and_step_3_data_appears(
    sandbox_factory: Callable[..., Any], kubectl_in: Callable[[Path], Kubectl]
) -> None:
    sb = sandbox_factory(clusters=1, cilium_version="1.13")
    kubectl = kubectl_in(sb.endpoints[0].kubeconfig)

    generation = edit_values(kubectl, step_2("cluster-1", 1))
    ai = json.loads(ok(kubectl("get", "ApplicationInstallation", "cilium", "-n", "kube-system", "-o", "json")))
    assert ai["metadata"]["generation"] == generation
    values = ai["spec"]["values"]
    assert values["cluster"] == {"name": "cluster-1", "id": 1}
    assert values["clustermesh"]["apiserver"]["service"]["type"] == "LoadBalancer"
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"]  # KKP's keys kept

    ca = wait_until("secret cilium-ca", lambda: secret_yaml(kubectl, "cilium-ca"))
    assert {"ca.crt", "ca.key"} <= set(ca)
    assert b"BEGIN CERTIFICATE" in base64.b64decode(ca["ca.crt"])
    ip = wait_until("an EXTERNAL-IP for clustermesh-apiserver", lambda: external_ip(kubectl, "clustermesh-apiserver"))
    assert ipaddress.ip_address(ip)
    remote = wait_until(
        "clustermesh-apiserver-remote-cert", lambda: secret_yaml(kubectl, "clustermesh-apiserver-remote-cert")
    )
    assert {"tls.crt", "tls.key"} <= set(remote)
    assert issued_by(remote["tls.crt"], ca["ca.crt"])

    health = wait_until(
        "cilium-health to name nodes cluster-1/…",
        lambda: (
            (r := agent_exec(kubectl, "cilium-health", "status")).returncode == 0
            and "Nodes:" in r.stdout
            and all(n.startswith("cluster-1/") for n in health_nodes(r.stdout))
            and r.stdout
        ),
    )
    nodes = health_nodes(health)
    assert len(nodes) == 2, health
    assert all(len(p) == 4 and all(x.startswith("OK") for x in p) for p in nodes.values()), health


def test_cilium_dbg_is_not_in_the_113_agent_and_kubectl_says_so(
    sandbox_factory: Callable[..., Any], kubectl_in: Callable[[Path], Kubectl]
) -> None:
    sb = sandbox_factory(clusters=1, cilium_version="1.13", nodes=1)
    kubectl = kubectl_in(sb.endpoints[0].kubeconfig)
    result = agent_exec(kubectl, "cilium-dbg", "status")
    assert result.returncode == 127, (result.returncode, result.stderr)
    assert "command terminated with exit code 127" in result.stderr
    assert "cilium-dbg" in result.stderr
    assert agent_exec(kubectl, "cilium", "status").returncode == 0  # the 1.13 name works


# ---- two clusters: the whole guide, then the failover example ------------------------------------


def test_the_guide_with_kubectl_meshes_two_clusters_and_fails_over(
    sandbox_factory: Callable[..., Any], kubectl_in: Callable[[Path], Kubectl], tmp_path: Path
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.13")
    k1, k2 = (kubectl_in(ep.kubeconfig) for ep in sb.endpoints)

    # 2.–3. cluster 1
    edit_values(k1, step_2("cluster-1", 1))
    ca1 = wait_until("cilium-ca in cluster-1", lambda: secret_yaml(k1, "cilium-ca"))
    ip1 = wait_until("EXTERNAL-IP in cluster-1", lambda: external_ip(k1, "clustermesh-apiserver"))
    remote1 = wait_until("remote cert in cluster-1", lambda: secret_yaml(k1, "clustermesh-apiserver-remote-cert"))
    # 4.–5. cluster 2, pointing at cluster 1, with cluster 1's CA
    edit_values(k2, peer_snippet("cluster-2", 2, "cluster-1", ip1, remote1, ca1))
    ip2 = wait_until("EXTERNAL-IP in cluster-2", lambda: external_ip(k2, "clustermesh-apiserver"))
    assert ip2 != ip1
    remote2 = wait_until(
        "cluster-2's remote cert issued by cluster-1's CA",
        lambda: (
            (s := secret_yaml(k2, "clustermesh-apiserver-remote-cert")) and issued_by(s["tls.crt"], ca1["ca.crt"]) and s
        ),
    )
    # 6. cluster 1 points at cluster 2
    edit_values(k1, peer_snippet("cluster-1", None, "cluster-2", ip2, remote2, ca1))
    # 8. every node of both clusters, all probes OK, in both clusters
    for kubectl in (k1, k2):
        health = wait_until(
            "cilium-health to show 4 healthy nodes of both clusters",
            lambda kubectl=kubectl: (
                (r := agent_exec(kubectl, "cilium-health", "status")).returncode == 0
                and len(nodes := health_nodes(r.stdout)) == 4
                and all(len(p) == 4 and all(x.startswith("OK") for x in p) for p in nodes.values())
                and r.stdout
            ),
        )
        assert {n.split("/")[0] for n in health_nodes(health)} == {"cluster-1", "cluster-2"}

    # The example application, in both clusters, as the guide writes it.
    (tmp_path / "deployment.yaml").write_text(NGINX_DEPLOYMENT)
    (tmp_path / "service.yaml").write_text(NGINX_SERVICE)
    for kubectl in (k1, k2):
        out = ok(kubectl("apply", "-f", str(tmp_path / "deployment.yaml")))
        assert "deployment.apps/nginx-deployment created" in out
        out = ok(kubectl("apply", "-f", str(tmp_path / "service.yaml")))
        assert "service/nginx-deployment created" in out
        wait_until(
            "2 nginx pods Running",
            lambda kubectl=kubectl: ok(kubectl("get", "pods", "-l", "app=nginx")).count("Running") == 2,
        )
    cluster_ip = ok(k1("get", "svc", "nginx-deployment", "-o", "jsonpath={.spec.clusterIP}"))
    frontend = f"{cluster_ip}:80"

    def backends() -> list[str] | None:
        result = agent_exec(k1, "cilium", "service", "list", "--clustermesh-affinity")
        assert result.returncode == 0, result.stderr
        return service_backends(result.stdout, frontend)

    both = wait_until("4 backends for the global service in cluster-1", lambda: (b := backends()) and len(b) == 4 and b)
    preferred = [b for b in both if b.endswith("(preferred)")]
    assert len(preferred) == 2 and all("=> 172.25." in b for b in preferred), both
    assert sum("=> 172.26." in b for b in both) == 2, both

    out = ok(k1("scale", "deployment", "nginx-deployment", "--replicas=0"))
    assert "deployment.apps/nginx-deployment scaled" in out
    gone = wait_until(
        "no nginx pods in cluster-1",
        lambda: (r := k1("get", "pods", "-l", "app=nginx")).returncode == 0 and "No resources found" in r.stderr and r,
    )
    assert gone.stdout.strip() == ""
    remote_only = wait_until(
        "only cluster-2's backends in cluster-1", lambda: (b := backends()) is not None and len(b) == 2 and b
    )
    assert all("=> 172.26." in b and "(preferred)" not in b for b in remote_only), remote_only
    # cluster 2 still serves from its own pods
    assert ok(k2("get", "pods", "-l", "app=nginx")).count("Running") == 2
