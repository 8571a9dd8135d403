"""Helm applying a rendered release: ``cilium-config``, the agents' DaemonSet, the clustermesh-apiserver
Deployment and Service (or their removal)."""

from __future__ import annotations

from sandbox.chart import Rendered
from sandbox.controllers.base import APISERVER, CMS, DEPLOYS, DSS, NS, SECRETS, SVCS, SimCluster, _deployment
from sandbox.controllers.certgen import trust_volume
from sandbox.controllers.mcs import mcs_config
from sandbox.datapath.remote_cache import CACHE_TTL_KEY
from sandbox.store import Obj
from sandbox.versions import DEFAULT_GLOBAL_NAMESPACE_KEY, parse_lenient
from sandbox.versions import facts as version_facts

CACHE_TTL_SINCE = (1, 19, 0)
"""``clustermesh.cacheTTL`` reaches cilium-config from this line on (reference/cilium.md §5)."""


class HelmApply:
    """Helm applying a rendered release to the cluster."""

    def _apply(self, c: SimCluster, r: Rendered, *, certgen: bool = True) -> None:
        """Write what the chart renders; certgen follows later (or after the wait, as a hook)."""
        c.current = r
        s = c.store
        self._put_configmap(c, "cilium-config", self._cilium_config(r))
        aliases = [{"ip": ip, "hostnames": [f"{e.name}.mesh.cilium.io"]} for e in r.clusters for ip in e.ips]
        apiserver_aliases = aliases if (r.kvstoremesh and version_facts(r.version).kvstoremesh_host_aliases) else []
        if r.host_aliases is not None:  # a real render: its hostAliases, on the pods that dial the peers
            aliases = [{"ip": ip, "hostnames": [host]} for ip, host in r.host_aliases]
            aliases, apiserver_aliases = ([], aliases) if r.kvstoremesh else (aliases, [])

        def ds(obj: Obj) -> None:
            tspec = obj["spec"]["template"]["spec"]
            if aliases:
                tspec["hostAliases"] = aliases
            else:
                tspec.pop("hostAliases", None)
            tspec["containers"][0]["image"] = f"quay.io/cilium/cilium:v{r.version}"

        s.mutate(DSS, NS, "cilium", ds)
        if r.mesh_enabled:
            self._apply_apiserver(c, r, apiserver_aliases)
            if certgen and r.tls_auto_enabled and r.tls_method in ("helm", "cronJob") and not r.certgen_is_hook:
                # the chart's genSignedCert re-issues the leaves on every render (only with that World option)
                self._schedule_certgen(c, force=self.helm_reissues_on_render and r.tls_method == "helm")
        else:
            for key, name in ((DEPLOYS, APISERVER), (SVCS, APISERVER)):
                cur = s.try_get(key, NS, name)
                if cur is not None:
                    self._delete(c, key, cur)
        self._reconcile_certgen_workloads(c, r)
        self._apply_ca_bundle(c, r)

    def _cilium_config(self, r: Rendered) -> dict[str, str]:
        data = {
            "cluster-name": r.cluster_name,
            "cluster-id": str(r.cluster_id),
            "max-connected-clusters": str(r.max_connected_clusters),
            "kube-proxy-replacement": r.kube_proxy_replacement,
            "ipam": "cluster-pool",
            "cluster-pool-ipv4-cidr": " ".join(r.pod_cidrs),
            "cluster-pool-ipv4-mask-size": str(r.pod_mask_size),
            "identity-allocation-mode": "crd",
            "enable-ipv4": "true",
            "enable-ipv6": "false",
            "enable-health-checking": "true",
            "enable-endpoint-health-checking": "true",
            "enable-hubble": "true",
        }
        if version_facts(r.version).legacy_tunnel_key:
            data["tunnel"] = "vxlan"
        else:
            data["routing-mode"] = "tunnel"
            data["tunnel-protocol"] = "vxlan"
        if r.config_enabled:
            data["clustermesh-config"] = "/var/lib/cilium/clustermesh/"
        if version_facts(r.version).global_namespaces:  # the 1.20 chart renders it always (values default true)
            default_global = (r.values.get("clustermesh") or {}).get("defaultGlobalNamespace", True)
            data[DEFAULT_GLOBAL_NAMESPACE_KEY] = "false" if default_global is False else "true"
        if parse_lenient(r.version) >= CACHE_TTL_SINCE:  # the 1.19+ chart renders it always (default "0s")
            data[CACHE_TTL_KEY] = str((r.values.get("clustermesh") or {}).get("cacheTTL") or "0s")
        data.update(mcs_config(parse_lenient(r.version), r.values))  # clustermesh-enable-mcs-api (1.16+)
        return data

    def _apply_apiserver(self, c: SimCluster, r: Rendered, aliases: list[Obj]) -> None:
        image = f"quay.io/cilium/clustermesh-apiserver:v{r.version}"
        containers: list[Obj] = [
            {
                "name": "etcd",
                "image": image,
                "ports": [{"name": "etcd", "containerPort": 2379, "protocol": "TCP"}],
            },
            {"name": "apiserver", "image": image},
        ]
        if r.kvstoremesh:
            containers.append({"name": "kvstoremesh", "image": image})
        dep = _deployment(
            APISERVER,
            NS,
            {"k8s-app": APISERVER, "app.kubernetes.io/part-of": "cilium"},
            containers,
            r.apiserver_replicas,
        )
        tspec = dep["spec"]["template"]["spec"]
        tspec["volumes"] = [  # ca.crt from the leaf Secret, or from tls.caBundle (certgen's trust_volume)
            trust_volume("etcd-server-secrets", "clustermesh-apiserver-server-cert", r.ca_bundle),
            trust_volume("etcd-admin-client", "clustermesh-apiserver-admin-cert", r.ca_bundle),
        ]
        if aliases:
            tspec["hostAliases"] = aliases
        dep["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        cur = c.store.try_get(DEPLOYS, NS, APISERVER)
        if cur is None:
            c.store.create(DEPLOYS, dep)
        else:

            def fn(obj: Obj) -> None:
                obj["spec"]["replicas"] = dep["spec"]["replicas"]
                obj["spec"]["template"]["spec"] = tspec
                obj["spec"]["strategy"] = dep["spec"]["strategy"]  # the chart's updateStrategy default

            c.store.mutate(DEPLOYS, NS, APISERVER, fn)
        port: Obj = {"name": "apiserver-port", "port": 2379, "protocol": "TCP", "targetPort": 2379}
        if r.service_type in ("NodePort", "LoadBalancer"):
            port["nodePort"] = r.node_port
        svc = c.store.try_get(SVCS, NS, APISERVER)
        if svc is None:
            c.store.create(
                SVCS,
                {
                    "metadata": {
                        "name": APISERVER,
                        "namespace": NS,
                        "labels": {"k8s-app": APISERVER, "app.kubernetes.io/part-of": "cilium"},
                        "annotations": dict(r.service_annotations),
                    },
                    "spec": {
                        "type": r.service_type,
                        "selector": {"k8s-app": APISERVER},
                        "ports": [port],
                        "sessionAffinity": "None",
                        "ipFamilies": ["IPv4"],
                        "ipFamilyPolicy": "SingleStack",
                    },
                    "status": {"loadBalancer": {}},
                },
            )
        else:

            def fn_svc(obj: Obj) -> None:
                obj["spec"]["type"] = r.service_type
                obj["spec"]["ports"] = [port]
                obj["metadata"]["annotations"] = dict(r.service_annotations)
                if r.service_type != "LoadBalancer":
                    obj["status"] = {"loadBalancer": {}}

            c.store.mutate(SVCS, NS, APISERVER, fn_svc)

    def _put_configmap(self, c: SimCluster, name: str, data: dict[str, str]) -> None:
        if c.store.try_get(CMS, NS, name) is None:
            c.store.create(CMS, {"metadata": {"name": name, "namespace": NS}, "data": data})
        else:
            c.store.mutate(CMS, NS, name, lambda o: o.__setitem__("data", data))

    def _put_secret(self, c: SimCluster, name: str, data: dict[str, str], type_: str) -> None:
        if c.store.try_get(SECRETS, NS, name) is None:
            c.store.create(
                SECRETS,
                {
                    "metadata": {
                        "name": name,
                        "namespace": NS,
                        "labels": {"app.kubernetes.io/part-of": "cilium"},
                    },
                    "type": type_,
                    "data": data,
                },
            )
        else:

            def fn(o: Obj) -> None:
                o["data"] = data
                o["type"] = type_

            c.store.mutate(SECRETS, NS, name, fn)
