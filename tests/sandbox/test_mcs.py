"""The sandbox's MCS-API model (sandbox/controllers/mcs.py) on a 2-cluster 1.19 mesh, through the official client.

A ServiceExport makes a ServiceImport only in members whose cilium-config turns MCS-API on, listing the members
that export; behind the import's address every agent lists the exporting members' backends;
``<svc>.<ns>.svc.clusterset.local`` answers with that address; an export removed takes its member out again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.stream import stream

from tests.flows.conftest import AI, Kube
from tests.helpers import build_mesh, wait_until

NS = "shop"
MCS = ("multicluster.x-k8s.io", "v1alpha1", NS)
WAIT = 60.0


def turn_mcs_on(k: Kube) -> None:
    """What the setup writes on 1.19 with ``cilium.mcs_api: true``, written here by hand on one member."""
    ai = k.ai()
    values = yaml.safe_load(ai["spec"]["valuesBlock"]) or {}
    values.setdefault("clustermesh", {})["mcsapi"] = {"enabled": True}
    ai["spec"]["valuesBlock"] = yaml.safe_dump(values, sort_keys=False)
    k.custom.replace_namespaced_custom_object(*AI, ai)
    wait_until("cilium-config with MCS-API on", lambda: mcs_config(k) == "true", timeout=WAIT)


def mcs_config(k: Kube) -> str | None:
    return (k.core.read_namespaced_config_map("cilium-config", "kube-system").data or {}).get(
        "clustermesh-enable-mcs-api"
    )


def deploy_cart(k: Kube) -> None:
    """Namespace ``shop``, one ``cart`` backend and its Service (not global: MCS-API alone shares it)."""
    k.core.create_namespace({"metadata": {"name": NS}})
    labels = {"app": "cart"}
    container = {"name": "nginx", "image": "nginx:1.16.1", "ports": [{"containerPort": 80}]}
    k8s.AppsV1Api(k.api).create_namespaced_deployment(
        NS,
        {
            "metadata": {"name": "cart"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
    )
    k.core.create_namespaced_service(
        NS, {"metadata": {"name": "cart"}, "spec": {"selector": labels, "ports": [{"port": 80}]}}
    )
    wait_until("a Ready cart backend", lambda: cart_ips(k), timeout=WAIT)


def cart_ips(k: Kube) -> set[str]:
    pods = k.core.list_namespaced_pod(NS, label_selector="app=cart").items
    return {p.status.pod_ip for p in pods if p.status.pod_ip and p.status.phase == "Running"}


def export(k: Kube) -> None:
    body = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "cart"}}
    k.custom.create_namespaced_custom_object(*MCS, "serviceexports", body)


def imported(k: Kube) -> tuple[list[str], str | None] | None:
    """(members listed, address) of the ServiceImport ``cart``; None when there is none."""
    found = k.custom.list_namespaced_custom_object(*MCS, "serviceimports")["items"]
    if not found:
        return None
    [item] = found
    ips = item["spec"].get("ips") or []
    return sorted(c["cluster"] for c in item["status"]["clusters"]), (ips[0] if ips else None)


def backends_behind(k: Kube, address: str) -> set[str]:
    """Backend IPs every agent lists for ``address`` (``cilium-dbg service list -o json``)."""
    agreed: set[str] | None = None
    for pod in k.agent_pods():
        seen: set[str] = set()
        for svc in json.loads(k.exec(pod, ["cilium-dbg", "service", "list", "-o", "json"])):
            spec = svc.get("spec") or {}
            if (spec.get("frontend-address") or {}).get("ip") == address:
                seen |= {str(b.get("ip")) for b in spec.get("backend-addresses") or []}
        agreed = seen if agreed is None else agreed & seen
    return agreed or set()


def curl_from_cart(k: Kube, url: str) -> str:
    pod = k.core.list_namespaced_pod(NS, label_selector="app=cart").items[0].metadata.name
    own = Kube(k.kubeconfig)
    try:
        out = stream(
            k8s.CoreV1Api(own.api).connect_get_namespaced_pod_exec,
            pod,
            NS,
            command=["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            stderr=False,
            stdin=False,
            stdout=True,
            tty=False,
        )
    finally:
        own.close()
    return str(out).strip()


def test_an_export_is_imported_by_every_member_with_mcs_api_on_and_serves_every_exporting_member(
    sandbox_factory: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.19")
    _spec, clients, _facts = build_mesh(sb, 60)
    for c in clients.values():
        c.close()
    k = kubes(sb)
    one, two = k["cluster-1"], k["cluster-2"]
    assert mcs_config(one) == mcs_config(two) == "false"  # the 1.19 chart renders the key, off by default
    for kube in (one, two):
        deploy_cart(kube)
    turn_mcs_on(one)

    export(one)
    first = wait_until("cluster-1's ServiceImport with an address", lambda: (imported(one) or [[], None])[1])
    assert imported(one) == (["cluster-1"], first)
    assert imported(two) is None  # MCS-API off in cluster-2: nothing imported there

    turn_mcs_on(two)
    wait_until("cluster-2's ServiceImport", lambda: (imported(two) or [[], None])[1], timeout=WAIT)
    [members, address] = imported(two) or ([], None)
    assert members == ["cluster-1"] and address is not None
    wait_until("cluster-1's backend behind cluster-2's import", lambda: backends_behind(two, address), timeout=WAIT)
    assert backends_behind(two, address) == cart_ips(one)  # cluster-2 does not export: only cluster-1 serves
    assert curl_from_cart(two, f"http://cart.{NS}.svc.clusterset.local/") == "200"

    export(two)
    everyone = cart_ips(one) | cart_ips(two)
    wait_until("both behind cluster-2's import", lambda: backends_behind(two, address) == everyone, timeout=WAIT)
    assert imported(one) == (["cluster-1", "cluster-2"], first)
    assert imported(two) == (["cluster-1", "cluster-2"], address)
    assert backends_behind(one, first) == everyone

    k8s.CustomObjectsApi(one.api).delete_namespaced_custom_object(*MCS, "serviceexports", "cart")
    wait_until("cluster-1 gone from the imports", lambda: imported(two) == (["cluster-2"], address), timeout=WAIT)
    assert imported(one) == (["cluster-2"], first)
    wait_until("only cluster-2's backend left", lambda: backends_behind(one, first) == cart_ips(two), timeout=WAIT)
