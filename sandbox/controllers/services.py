"""Services: ClusterIPs and nodePorts, the LoadBalancer provider, Endpoints and EndpointSlices."""

from __future__ import annotations

import copy
import json
from typing import Any

from sandbox.controllers.base import (
    APISERVER,
    EPS,
    LB_DELAY,
    NS,
    PODS,
    SLICES,
    SVCS,
    SimCluster,
    _alloc_cluster_ip,
    _alloc_node_port,
    _get,
    _hash_name,
    _pod_ready,
    _resolve_port,
)
from sandbox.store import Obj


class Services:
    """Services: ClusterIPs, nodePorts, LoadBalancer addresses, Endpoints and EndpointSlices."""

    def _reconcile_services(self, c: SimCluster) -> None:
        svcs = c.store.list(SVCS)
        used_ips = {s["spec"].get("clusterIP") for s in svcs}
        used_ports = {p.get("nodePort") for s in svcs for p in s["spec"].get("ports", [])}
        lb_used = {ing.get("ip") for s in svcs for ing in _get(s, "status", "loadBalancer", "ingress", default=[])}
        for s in svcs:
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            spec = s["spec"]
            type_ = spec.get("type") or "ClusterIP"
            patch: dict[str, Any] = {}
            if type_ != "ExternalName" and not spec.get("clusterIP"):
                ip = _alloc_cluster_ip(f"{ns}/{name}", used_ips)
                used_ips.add(ip)
                patch["clusterIP"] = ip
            ports = copy.deepcopy(spec.get("ports") or [])
            if type_ in ("NodePort", "LoadBalancer"):
                for p in ports:
                    if not p.get("nodePort"):
                        p["nodePort"] = _alloc_node_port(f"{ns}/{name}/{p.get('port')}", used_ports)
                        used_ports.add(p["nodePort"])
            for p in ports:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            if ports != (spec.get("ports") or []):
                patch["ports"] = ports
            if patch:

                def fn(obj: Obj, patch: dict[str, Any] = patch) -> None:
                    obj["spec"].update(patch)
                    if "clusterIP" in patch:
                        obj["spec"]["clusterIPs"] = [patch["clusterIP"]]
                    obj["spec"].setdefault("type", "ClusterIP")
                    obj.setdefault("status", {"loadBalancer": {}})

                c.store.mutate(SVCS, ns, name, fn)
            ingress = _get(s, "status", "loadBalancer", "ingress", default=[])
            has_free = any(ip not in lb_used for ip in c.lb_pool)
            if type_ == "LoadBalancer" and not ingress and not c.lb_never and has_free:
                self._after(c, ("lb", ns, name), LB_DELAY, lambda ns=ns, name=name: self._assign_lb(c, ns, name))
            elif type_ != "LoadBalancer" and ingress:
                c.store.mutate(SVCS, ns, name, lambda o: o.__setitem__("status", {"loadBalancer": {}}))

    def _assign_lb(self, c: SimCluster, ns: str, name: str) -> None:
        if c.lb_never:
            return
        svc = c.store.try_get(SVCS, ns, name)
        if svc is None or svc["spec"].get("type") != "LoadBalancer":
            return
        if _get(svc, "status", "loadBalancer", "ingress"):
            return
        used = {
            ing.get("ip")
            for s in c.store.list(SVCS)
            for ing in _get(s, "status", "loadBalancer", "ingress", default=[])
        }
        free = [ip for ip in c.lb_pool if ip not in used]
        if not free:
            return
        ip = free[0]
        c.store.mutate(
            SVCS,
            ns,
            name,
            lambda o: o.__setitem__("status", {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}),
        )

    def _lb_ip(self, c: SimCluster) -> str | None:
        svc = c.store.try_get(SVCS, NS, APISERVER)
        ingress = _get(svc, "status", "loadBalancer", "ingress", default=[]) if svc else []
        return ingress[0].get("ip") if ingress else None

    def _reconcile_endpoints(self, c: SimCluster) -> None:
        svcs = c.store.list(SVCS)
        pods = c.store.list(PODS)
        wanted: set[tuple[str, str]] = set()
        for s in svcs:
            sel = s["spec"].get("selector")
            if not sel:
                continue
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            wanted.add((ns, name))
            matching = [
                p
                for p in pods
                if p["metadata"]["namespace"] == ns
                and all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
                and p.get("status", {}).get("podIP")
            ]
            self._write_endpoints(c, s, matching)
        for ns, name in sorted(c.managed_endpoints - wanted):
            for key in (EPS, SLICES):
                for obj in c.store.list(key, ns):
                    owner = obj["metadata"].get("labels", {}).get("kubernetes.io/service-name")
                    if (key == EPS and obj["metadata"]["name"] == name) or (key == SLICES and owner == name):
                        self._delete(c, key, obj)
            c.managed_endpoints.discard((ns, name))

    def _write_endpoints(self, c: SimCluster, svc: Obj, pods: list[Obj]) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        c.managed_endpoints.add((ns, name))
        subsets: dict[str, Obj] = {}
        slice_endpoints: list[Obj] = []
        slice_ports: list[Obj] = []
        for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
            ports = [
                {
                    "name": sp.get("name", ""),
                    "port": _resolve_port(sp, p),
                    "protocol": sp.get("protocol", "TCP"),
                }
                for sp in svc["spec"].get("ports", [])
            ]
            ports = [{k: v for k, v in pt.items() if v != "" or k != "name"} for pt in ports]
            ready = _pod_ready(p)
            addr = {
                "ip": p["status"]["podIP"],
                "nodeName": p["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": p["metadata"]["name"],
                    "uid": p["metadata"]["uid"],
                },
            }
            sub = subsets.setdefault(json.dumps(ports, sort_keys=True), {"ports": ports})
            sub.setdefault("addresses" if ready else "notReadyAddresses", []).append(addr)
            slice_ports = ports
            slice_endpoints.append(
                {
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "nodeName": p["spec"].get("nodeName"),
                    "targetRef": addr["targetRef"],
                }
            )
        labels = dict(svc["metadata"].get("labels") or {})
        ep: Obj = {
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "subsets": list(subsets.values()),
        }
        cur = c.store.try_get(EPS, ns, name)
        if cur is None:
            c.store.create(EPS, ep)
        else:

            def fn(o: Obj) -> None:
                o["subsets"] = ep["subsets"]
                o["metadata"]["labels"] = labels

            c.store.mutate(EPS, ns, name, fn)
        slice_name = f"{name}-{_hash_name([ns, name], 5)}"
        slice_labels = dict(labels)
        slice_labels["kubernetes.io/service-name"] = name
        slice_labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
        body = {
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports or [],
        }
        if c.store.try_get(SLICES, ns, slice_name) is None:
            c.store.create(SLICES, {"metadata": {"name": slice_name, "namespace": ns, "labels": slice_labels}, **body})
        else:

            def fn2(o: Obj) -> None:
                o.update(body)
                o["metadata"]["labels"] = slice_labels

            c.store.mutate(SLICES, ns, slice_name, fn2)
