"""The agents and kvstoremesh: the ``cilium-clustermesh`` / ``cilium-kvstoremesh`` Secrets, one agent pod per
node, restarts when their configuration changes, the DaemonSet's status."""

from __future__ import annotations

import copy

from sandbox.chart import mesh_secret_data
from sandbox.controllers.base import (
    AGENT_RESTART,
    CMS,
    DSS,
    KVSTOREMESH_SECRET,
    MESH_SECRET,
    NODES,
    NS,
    PODS,
    SECRETS,
    SimCluster,
    _digest,
    _get,
    _hash_name,
    _mark_running,
    _node_ip,
    _owner,
    _owner_kind,
    _pod_ready,
    _pod_status,
    _rand,
    _set_ready,
)
from sandbox.store import Obj, now_rfc3339


class Agents:
    """The agents and kvstoremesh: the mesh Secrets, one agent pod per node, restarts, the DaemonSet's status."""

    def _reconcile_mesh_secret(self, c: SimCluster) -> None:
        r = c.current
        if r is None:
            return
        if r.mesh_secrets is not None:  # a real render: the Secrets it rendered, verbatim, and no others
            for name in (MESH_SECRET, KVSTOREMESH_SECRET):
                if name in r.mesh_secrets:
                    self._put_secret(c, name, dict(r.mesh_secrets[name]), "Opaque")
                elif (cur := c.store.try_get(SECRETS, NS, name)) is not None:
                    self._delete(c, SECRETS, cur)
            return
        if not r.config_enabled:
            for name in (MESH_SECRET, KVSTOREMESH_SECRET):
                cur = c.store.try_get(SECRETS, NS, name)
                if cur is not None:
                    self._delete(c, SECRETS, cur)
            return
        ca_sec = c.store.try_get(SECRETS, NS, "cilium-ca")
        local_ca = str(_get(ca_sec, "data", "ca.crt", default=""))
        remote = _get(c.store.try_get(SECRETS, NS, "clustermesh-apiserver-remote-cert"), "data", default={}) or {}
        data = mesh_secret_data(r, local_ca, remote)
        self._put_secret(c, MESH_SECRET, data, "Opaque")
        if r.kvstoremesh:
            self._put_secret(c, KVSTOREMESH_SECRET, data, "Opaque")
        else:
            cur = c.store.try_get(SECRETS, NS, KVSTOREMESH_SECRET)
            if cur is not None:
                self._delete(c, SECRETS, cur)

    def _agent_fingerprint(self, c: SimCluster) -> str:
        """What makes every agent restart at once: the agent configuration (``cilium-config``).

        The mesh Secret is not part of it: agents watch the files it mounts and reconnect to a changed
        peer on their own (Cilium's clustermesh config watcher), so adding, removing or re-keying a peer
        restarts nothing. A changed pod template (hostAliases of a new peer, a new image) is the
        DaemonSet's rolling update (``_roll_agents``), node by node.
        """
        cm = c.store.try_get(CMS, NS, "cilium-config")
        return _digest([_get(cm, "data", default={})])

    def _create_agent_pod(self, c: SimCluster, node: Obj, *, ready: bool) -> None:
        ds = c.store.get(DSS, NS, "cilium")
        tmpl = ds["spec"]["template"]
        name = f"cilium-{_rand(c.rng, 5)}"
        while c.store.try_get(PODS, NS, name) is not None:
            name = f"cilium-{_rand(c.rng, 5)}"
        ip = _node_ip(node)
        labels = dict(tmpl["metadata"].get("labels") or {})
        labels["controller-revision-hash"] = _hash_name(tmpl)
        labels["pod-template-generation"] = str(ds["metadata"].get("generation", 1))
        spec = copy.deepcopy(tmpl["spec"])
        spec["nodeName"] = node["metadata"]["name"]
        pod: Obj = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": labels,
                "annotations": dict(tmpl["metadata"].get("annotations") or {}),
                "ownerReferences": [_owner("DaemonSet", ds)],
            },
            "spec": spec,
            "status": _pod_status(spec, ip, ip, ready=ready, restarts=0),
        }
        c.store.create(PODS, pod)
        c.pod_seq[(NS, name)] = c.seq = c.seq + 1

    def _reconcile_agents(self, c: SimCluster) -> None:
        ds = c.store.try_get(DSS, NS, "cilium")
        if ds is None:
            return
        nodes = {n["metadata"]["name"]: n for n in c.store.list(NODES)}
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        seen: set[str] = set()
        for p in agents:
            node = p["spec"].get("nodeName")
            if node not in nodes or node in seen:
                self._delete(c, PODS, p)
            else:
                seen.add(node)
        missing = [n for name, n in nodes.items() if name not in seen]
        for node in missing:
            self._create_agent_pod(c, node, ready=False)
        fp = self._agent_fingerprint(c)
        if fp != c.agent_fingerprint:
            c.agent_fingerprint = fp
            self._restart_agents(c, ds)
        elif missing:
            self._schedule_agents_ready(c)
        else:
            self._roll_agents(c, ds)  # a rolling update in progress goes on as agents become ready
        self._update_daemonset_status(c)

    def _restart_agents(self, c: SimCluster, ds: Obj) -> None:
        """Agents pick up the new mesh configuration by restarting: not ready for ~20 s.

        A new image (a Cilium upgrade) is a DaemonSet rolling update instead: ``_roll_agents``.
        """
        tmpl = ds["spec"]["template"]
        image = tmpl["spec"]["containers"][0]["image"]
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        if any(p["spec"]["containers"][0].get("image") != image for p in agents):
            self._roll_agents(c, ds)
            return
        for p in agents:
            self._restart_pod(c, p["metadata"]["name"], tmpl)
        self._schedule_agents_ready(c)

    def _restart_pod(self, c: SimCluster, name: str, tmpl: Obj) -> None:
        now = now_rfc3339()

        def fn(pod: Obj) -> None:
            spec = copy.deepcopy(tmpl["spec"])
            spec["nodeName"] = pod["spec"].get("nodeName")
            pod["spec"] = spec
            pod["metadata"]["labels"]["controller-revision-hash"] = _hash_name(tmpl)
            st = pod.setdefault("status", {})
            _set_ready(st, False, now)
            for cs in st.get("containerStatuses", []):
                cs["lastState"] = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
                cs["restartCount"] = int(cs.get("restartCount", 0)) + 1
                cs["ready"] = False
                cs["state"] = {"running": {"startedAt": now}}
                cs["image"] = tmpl["spec"]["containers"][0]["image"]

        c.store.mutate(PODS, NS, name, fn)

    def _roll_agents(self, c: SimCluster, ds: Obj) -> None:
        """One step of a DaemonSet rolling update: restart old-revision agents, at most
        ``updateStrategy.rollingUpdate.maxUnavailable`` (default 1) not ready at a time, by node name."""
        tmpl = ds["spec"]["template"]
        hash_ = _hash_name(tmpl)
        agents = sorted(
            (p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"),
            key=lambda p: str(p["spec"].get("nodeName")),
        )
        stale = [p for p in agents if p["metadata"]["labels"].get("controller-revision-hash") != hash_]
        if not stale:
            return
        budget = _max_unavailable(ds, len(agents)) - sum(1 for p in agents if not _pod_ready(p))
        batch = stale[: max(0, budget)]
        for p in batch:
            self._restart_pod(c, p["metadata"]["name"], tmpl)
        if batch:
            self._schedule_agents_ready(c)

    def _schedule_agents_ready(self, c: SimCluster) -> None:
        def ready() -> None:
            now = now_rfc3339()
            for p in c.store.list(PODS, NS):
                if _owner_kind(p) == "DaemonSet" and not _pod_ready(p):
                    c.store.mutate(PODS, NS, p["metadata"]["name"], lambda pod: _mark_running(pod, now))

        self._after(c, ("agents-ready",), AGENT_RESTART, ready, replace=True)

    def _update_daemonset_status(self, c: SimCluster) -> None:
        ds = c.store.try_get(DSS, NS, "cilium")
        if ds is None:
            return
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        want = len(c.store.list(NODES))
        ready = sum(1 for p in agents if _pod_ready(p))
        hash_ = _hash_name(ds["spec"]["template"])
        updated = sum(1 for p in agents if p["metadata"]["labels"].get("controller-revision-hash") == hash_)
        status = {
            "currentNumberScheduled": len(agents),
            "desiredNumberScheduled": want,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if want - ready:
            status["numberUnavailable"] = want - ready
        c.store.mutate(DSS, NS, "cilium", lambda o: o.__setitem__("status", status))


def _max_unavailable(ds: Obj, pods: int) -> int:
    """The DaemonSet's ``maxUnavailable`` (a number or a percentage of the pods, rounded down), at least 1."""
    value = _get(ds, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable", default=1)
    text = str(value).strip()
    try:
        count = pods * int(text[:-1]) // 100 if text.endswith("%") else int(text)
    except ValueError:
        count = 1
    return max(1, count)
