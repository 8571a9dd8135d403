"""The Deployment controller and the kubelet: pods per Deployment, their IPs from the node's slice,
gates (missing Secrets), rollouts and the Deployment's status."""

from __future__ import annotations

import copy
import ipaddress

from sandbox.controllers.base import (
    APISERVER,
    DEPLOYS,
    NODES,
    NS,
    POD_START,
    PODS,
    SECRETS,
    SimCluster,
    _get,
    _hash_name,
    _node_ip,
    _owner,
    _owner_kind,
    _pod_ready,
    _pod_status,
    _rand,
    _set_waiting,
    _start_pod,
)
from sandbox.store import Obj, now_rfc3339


class Workloads:
    """The Deployment controller and the kubelet: pods per Deployment and the Deployment's status."""

    def _gate(self, c: SimCluster, deploy: Obj) -> str | None:
        """Why a pod of this Deployment cannot start yet (None: it can)."""
        if deploy["metadata"]["name"] == APISERVER and deploy["metadata"].get("namespace") == NS:
            for name in ("clustermesh-apiserver-admin-cert", "clustermesh-apiserver-server-cert"):
                if c.store.try_get(SECRETS, NS, name) is None:
                    volume = "etcd-admin-client" if "admin" in name else "etcd-server-secrets"
                    return f'MountVolume.SetUp failed for volume "{volume}" : secret "{name}" not found'
        return None

    def _reconcile_workloads(self, c: SimCluster, *, immediate: bool = False) -> None:
        deploys = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in c.store.list(DEPLOYS)}
        by_owner: dict[tuple[str, str], list[Obj]] = {}
        for p in c.store.list(PODS):
            if _owner_kind(p) != "Deployment":
                continue
            key = (p["metadata"]["namespace"], p["metadata"]["ownerReferences"][0]["name"])
            if key not in deploys:
                self._delete(c, PODS, p)  # garbage collection
                continue
            by_owner.setdefault(key, []).append(p)
        nodes = c.store.list(NODES)
        for key, d in deploys.items():
            self._reconcile_deployment(c, d, by_owner.get(key, []), nodes, immediate)

    def _reconcile_deployment(self, c: SimCluster, d: Obj, pods: list[Obj], nodes: list[Obj], immediate: bool) -> None:
        ns = d["metadata"]["namespace"]
        replicas = int(_get(d, "spec", "replicas", default=1))
        tmpl = _get(d, "spec", "template", default={}) or {}
        hash_ = _hash_name(tmpl)
        live = [p for p in pods if p["metadata"].get("labels", {}).get("pod-template-hash") == hash_]
        # a new template replaces the old pods; a RollingUpdate with maxUnavailable 0 (the chart's
        # clustermesh-apiserver) keeps them until the new ones are ready
        surge = str(_get(d, "spec", "strategy", "rollingUpdate", "maxUnavailable", default="")) in ("0", "0%")
        new_ready = sum(1 for p in live if _pod_ready(p))
        for p in pods:
            if p not in live and not (surge and _pod_ready(p) and new_ready < replicas):
                self._delete(c, PODS, p)
        live.sort(key=lambda p: c.pod_seq.get((ns, p["metadata"]["name"]), 0))
        while len(live) > replicas:
            victim = live.pop()  # newest first
            self._delete(c, PODS, victim)
        gate = self._gate(c, d)
        host_network = bool(_get(tmpl, "spec", "hostNetwork", default=False))
        for _ in range(len(live), replicas):
            if not nodes:
                break
            load = {n["metadata"]["name"]: 0 for n in nodes}
            for p in live:
                if p["spec"].get("nodeName") in load:
                    load[p["spec"]["nodeName"]] += 1
            node = min(nodes, key=lambda n: load[n["metadata"]["name"]])  # spread round-robin
            live.append(self._create_pod(c, d, hash_, node, ready=immediate and gate is None))
        now = now_rfc3339()
        for p in live:
            pname = p["metadata"]["name"]
            if _pod_ready(p) or (ns, pname) not in c.started_pods:
                continue
            node = next((n for n in nodes if n["metadata"]["name"] == p["spec"].get("nodeName")), None)
            if node is None:
                continue
            if gate is not None:
                c.store.mutate(PODS, ns, pname, lambda pod, g=gate: _set_waiting(pod, g))
                continue
            ip = _node_ip(node) if host_network else (p["status"].get("podIP") or self._alloc_ip(c, node))
            c.store.mutate(PODS, ns, pname, lambda pod, ip=ip, node=node: _start_pod(pod, ip, _node_ip(node), now))
        self._update_deployment_status(c, d, hash_)

    def _create_pod(self, c: SimCluster, d: Obj, hash_: str, node: Obj, *, ready: bool) -> Obj:
        ns, dname = d["metadata"]["namespace"], d["metadata"]["name"]
        tmpl = _get(d, "spec", "template", default={}) or {}
        name = f"{dname}-{hash_}-{_rand(c.rng, 5)}"
        while c.store.try_get(PODS, ns, name) is not None:
            name = f"{dname}-{hash_}-{_rand(c.rng, 5)}"
        labels = dict(_get(tmpl, "metadata", "labels", default={}) or {})
        labels["pod-template-hash"] = hash_
        spec = copy.deepcopy(tmpl.get("spec") or {})
        spec["nodeName"] = node["metadata"]["name"]
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("restartPolicy", "Always")
        host_ip = _node_ip(node)
        if ready:
            ip = host_ip if spec.get("hostNetwork") else self._alloc_ip(c, node)
            status = _pod_status(spec, ip, host_ip, ready=True, restarts=0)
        else:
            status = {
                "phase": "Pending",
                "hostIP": host_ip,
                "qosClass": "BestEffort",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
            }
        pod: Obj = {
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": dict(_get(tmpl, "metadata", "annotations", default={}) or {}),
                "ownerReferences": [_owner("Deployment", d)],
            },
            "spec": spec,
            "status": status,
        }
        c.seq += 1
        c.pod_seq[(ns, name)] = c.seq
        created = c.store.create(PODS, pod, ns)
        if not ready:
            key = (ns, name)
            self._after(c, ("pod-start", ns, name), POD_START, lambda: c.started_pods.add(key))
        return created

    def _alloc_ip(self, c: SimCluster, node: Obj) -> str:
        cidr = _get(node, "spec", "podCIDR")
        if not cidr:
            return _node_ip(node)
        net = ipaddress.ip_network(cidr, strict=False)
        ann = node["metadata"].get("annotations") or {}
        used = {ann.get("network.cilium.io/ipv4-health-ip"), ann.get("network.cilium.io/ipv4-cilium-host")}
        used |= {p["status"].get("podIP") for p in c.store.list(PODS) if p.get("status")}
        hosts = list(net.hosts())
        for _ in range(64):
            cand = str(hosts[c.rng.randrange(1, len(hosts))])
            if cand not in used:
                return cand
        for h in hosts[1:]:
            if str(h) not in used:
                return str(h)
        return str(hosts[-1])

    def _update_deployment_status(self, c: SimCluster, d: Obj, hash_: str) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        pods = [
            p
            for p in c.store.list(PODS, ns)
            if _owner_kind(p) == "Deployment" and p["metadata"]["ownerReferences"][0]["name"] == name
        ]
        replicas = int(_get(d, "spec", "replicas", default=1))
        ready = sum(1 for p in pods if _pod_ready(p))
        updated = sum(1 for p in pods if p["metadata"]["labels"].get("pod-template-hash") == hash_)
        available = ready >= replicas

        def fn(obj: Obj) -> None:
            old = obj.get("status") or {}
            old_conds = {cd["type"]: cd for cd in old.get("conditions", [])}
            now = now_rfc3339()

            def cond(type_: str, ok: bool, reason: str, message: str) -> Obj:
                prev = old_conds.get(type_)
                status = "True" if ok else "False"
                if prev and prev.get("status") == status and prev.get("reason") == reason:
                    return prev
                return {
                    "type": type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }

            st: Obj = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": len(pods),
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    cond(
                        "Available",
                        available,
                        "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                        "Deployment has minimum availability."
                        if available
                        else "Deployment does not have minimum availability.",
                    ),
                    cond(
                        "Progressing",
                        True,
                        "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                        f'ReplicaSet "{name}-{hash_}" has successfully progressed.'
                        if available
                        else f'ReplicaSet "{name}-{hash_}" is progressing.',
                    ),
                ],
            }
            if len(pods) - ready > 0:
                st["unavailableReplicas"] = len(pods) - ready
            obj["status"] = st

        c.store.mutate(DEPLOYS, ns, name, fn)
