"""The KKP guide, done by hand against the sandbox with the official client only (no pipeline code).

If the sandbox lets this pass, a person following the guide would succeed; if a step is left out,
the sandbox must show the failure the way Cilium would.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from cryptography import x509
from kubernetes import client

from tests.conftest import kube_client
from tests.helpers import agent_exec, health_nodes, wait_until

GROUP, VERSION, PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Cluster:
    def __init__(self, kubeconfig: Any) -> None:
        self.kubeconfig = kubeconfig
        self.api = kube_client(kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def edit_values(self, snippet: dict[str, Any]) -> None:
        """`kubectl edit appinstall cilium -n kube-system` + the snippet (KKP 2.22: spec.values)."""
        ai = self.custom.get_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium")
        ai["spec"]["values"] = deep_merge(ai["spec"].get("values") or {}, snippet)
        self.custom.replace_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium", ai)

    def applied(self) -> bool:
        ai = self.custom.get_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium")
        ready = (ai.get("status", {}).get("conditions") or {}).get("Ready", {})
        return bool(ready.get("status") == "True" and ready.get("observedGeneration") == ai["metadata"]["generation"])

    def install_failure(self) -> str | None:
        """KKP's message while the installation's Ready condition is False."""
        ai = self.custom.get_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL, "cilium")
        ready = (ai.get("status", {}).get("conditions") or {}).get("Ready", {})
        return str(ready.get("message")) if ready.get("status") == "False" else None

    def secret(self, name: str) -> dict[str, str] | None:
        try:
            return self.core.read_namespaced_secret(name, "kube-system").data
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def lb_ip(self) -> str | None:
        try:
            svc = self.core.read_namespaced_service("clustermesh-apiserver", "kube-system")
        except client.ApiException:
            return None
        ingress = (svc.status.load_balancer and svc.status.load_balancer.ingress) or []
        return ingress[0].ip if ingress else None

    def cilium_health(self) -> str:
        pods = self.core.list_namespaced_pod("kube-system", label_selector="k8s-app=cilium").items
        own = kube_client(self.kubeconfig)  # exec gets its own ApiClient (reference/kube-api.md §7)
        try:
            return agent_exec(client.CoreV1Api(own), pods[0].metadata.name, ["cilium-health", "status"], stderr=True)
        finally:
            own.close()


def issued_by(cert_b64: str, ca_b64: str) -> bool:
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_b64))
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_b64))
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def enable_cluster_1(c1: Cluster) -> None:
    c1.edit_values(
        {
            "cluster": {"name": "cluster-1", "id": 1},
            "clustermesh": {
                "useAPIServer": True,
                "config": {"enabled": True},
                "apiserver": {"tls": {"auto": {"method": "cronJob"}}, "service": {"type": "LoadBalancer"}},
            },
        }
    )
    wait_until("cluster-1 applied", c1.applied)


def peer_entry(name: str, ip: str, remote: dict[str, str] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "address": "", "port": 2379, "ips": [ip]}
    if remote is not None:
        entry["tls"] = {"cert": remote["tls.crt"], "key": remote["tls.key"]}
    return entry


def run_guide(sandbox_factory: Callable[..., Any], *, leave_out_remote_cert: bool) -> tuple[Cluster, Cluster]:
    sb = sandbox_factory(clusters=2, cilium_version="1.13")
    c1, c2 = (Cluster(ep.kubeconfig) for ep in sb.endpoints)

    # 2. Enable Cluster Mesh in cluster 1
    enable_cluster_1(c1)
    # 3. Retrieve cluster 1's CA, apiserver IP and remote cert
    ca1 = wait_until("cilium-ca in cluster-1", lambda: c1.secret("cilium-ca"))
    ip1 = wait_until("clustermesh-apiserver IP in cluster-1", c1.lb_ip)
    remote1 = wait_until("remote cert in cluster-1", lambda: c1.secret("clustermesh-apiserver-remote-cert"))
    shared_ca = {"cert": ca1["ca.crt"], "key": ca1["ca.key"]}
    # 4. Enable Cluster Mesh in cluster 2, pointing at cluster 1, with cluster 1's CA
    c2.edit_values(
        {
            "cluster": {"name": "cluster-2", "id": 2},
            "clustermesh": {
                "useAPIServer": True,
                "config": {
                    "enabled": True,
                    "clusters": [peer_entry("cluster-1", ip1, None if leave_out_remote_cert else remote1)],
                },
                "apiserver": {
                    "tls": {"auto": {"method": "cronJob"}, "ca": shared_ca},
                    "service": {"type": "LoadBalancer"},
                },
            },
        }
    )
    if leave_out_remote_cert:  # the chart refuses the entry: cluster 2 never applies
        wait_until("cluster-2 install failed", c2.install_failure)
        return c1, c2
    wait_until("cluster-2 applied", c2.applied)
    # 5. Retrieve cluster 2's data: its remote cert must be issued by the shared CA
    ip2 = wait_until("clustermesh-apiserver IP in cluster-2", c2.lb_ip)
    remote2 = wait_until(
        "cluster-2 remote cert issued by cluster-1's CA",
        lambda: (s := c2.secret("clustermesh-apiserver-remote-cert")) and issued_by(s["tls.crt"], ca1["ca.crt"]) and s,
    )
    # 6. Point cluster 1 at cluster 2
    c1.edit_values(
        {
            "clustermesh": {
                "config": {"enabled": True, "clusters": [peer_entry("cluster-2", ip2, remote2)]},
                "apiserver": {"tls": {"auto": {"method": "cronJob"}, "ca": shared_ca}},
            }
        }
    )
    wait_until("cluster-1 applied again", c1.applied)
    return c1, c2


def all_ok(health: str, expected_nodes: int) -> bool:
    nodes = health_nodes(health)
    return len(nodes) == expected_nodes and all(
        len(p) == 4 and all(r.startswith("OK") for r in p) for p in nodes.values()
    )


def test_the_guide_done_by_hand_gives_a_healthy_mesh(sandbox_factory: Callable[..., Any]) -> None:
    c1, c2 = run_guide(sandbox_factory, leave_out_remote_cert=False)
    # 8. cilium-health status in both clusters: agents restart after the change, so poll
    for c in (c1, c2):
        health = wait_until(
            "every node of both clusters OK", lambda c=c: (h := c.cilium_health()) and all_ok(h, 4) and h
        )
        assert {n.split("/")[0] for n in health_nodes(health)} == {"cluster-1", "cluster-2"}, health


def test_leaving_out_the_remote_cert_breaks_the_mesh(sandbox_factory: Callable[..., Any]) -> None:
    """Step 4 without cluster 1's remote certificate: the 1.13 chart reads ``.tls.key`` of the entry, so the
    render fails (as the real chart's does, tests/contracts/test_chart_conformance.py) and cluster 2's
    installation reports it instead of deploying a mesh that could never connect."""
    _, c2 = run_guide(sandbox_factory, leave_out_remote_cert=True)
    message = c2.install_failure()
    assert message is not None and "nil pointer evaluating interface {}.key" in message, message
    assert c2.secret("cilium-clustermesh") is None
