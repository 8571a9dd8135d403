"""A cluster that is deleted and created again under the same name (issue 14, "re-created cluster"): its
Cilium comes back as KKP installs it on a fresh cluster, with no mesh, no certificates of its own yet and,
once the mesh is enabled again, a new CA and a new LoadBalancer address. Its nodes, API endpoint and
kubeconfig stay (the spec still reaches it the same way); its peers still hold the old endpoint and CA."""

from __future__ import annotations

from typing import Any

import yaml

from sandbox.controllers.base import (
    AI_KEY,
    APISERVER,
    DEPLOYS,
    KVSTOREMESH_SECRET,
    LEAF_SECRETS,
    MESH_SECRET,
    NS,
    PODS,
    SECRETS,
    SVCS,
    SimCluster,
    _get,
)
from sandbox.store import Obj

WIPED_SECRETS = ("cilium-ca", "clustermesh-apiserver-ca-cert", *LEAF_SECRETS, MESH_SECRET, KVSTOREMESH_SECRET)


class Recreate:
    """``recreate_cluster``: the cluster is gone and back, as new, under its old name."""

    def recreate_cluster(self, cluster: SimCluster | str | int) -> dict[str, Any]:
        """Wipe ``cluster``'s Cilium mesh state: values back to KKP's defaults (no mesh, no annotations), its CA,
        certificates, mesh Secrets and clustermesh-apiserver gone, and its LoadBalancer address retired (the
        next clustermesh-apiserver gets another). Returns the retired address (None when it had none)."""
        world: Any = self
        c: SimCluster = world.cluster(cluster)
        if c.store.try_get(AI_KEY, NS, "cilium") is None:
            raise KeyError(f"{c.name} has no cilium ApplicationInstallation in {NS}")
        old_address = world._lb_ip(c)
        if old_address is not None:
            if len(c.lb_pool) < 2:
                raise ValueError(f"{c.name}: no LoadBalancer address left to give a re-created cluster")
            c.lb_pool = [ip for ip in c.lb_pool if ip != old_address]
        if c.certgen_timer is not None:
            c.certgen_timer.cancel()
            c.certgen_timer = None
        values = world._initial_values(c)
        c.store.mutate(AI_KEY, NS, "cilium", lambda ai: _fresh_installation(ai, values))
        for key, name in [(SECRETS, s) for s in WIPED_SECRETS] + [(DEPLOYS, APISERVER), (SVCS, APISERVER)]:
            if (obj := c.store.try_get(key, NS, name)) is not None:
                world._delete(c, key, obj)
        for pod in [p for p in c.store.list(PODS) if _apiserver_pod(p)]:
            world._delete(c, PODS, pod)  # its Endpoints follow the Service (the endpoints controller)
        world._kick(c)
        return {"ok": True, "cluster": c.name, "retired_address": old_address}


def _fresh_installation(ai: Obj, values: dict[str, Any]) -> None:
    """The ApplicationInstallation as KKP creates it: its default values, no annotations of ours."""
    ai["metadata"].pop("annotations", None)
    spec = ai["spec"]
    if "valuesBlock" in spec:
        spec["valuesBlock"] = yaml.safe_dump(values, sort_keys=True)
        spec["values"] = {}
    else:
        spec["values"] = values


def _apiserver_pod(pod: Obj) -> bool:
    refs = _get(pod, "metadata", "ownerReferences", default=[])
    return bool(refs) and refs[0].get("name") == APISERVER
