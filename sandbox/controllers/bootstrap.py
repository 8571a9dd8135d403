"""A fresh user cluster as KKP leaves it: namespaces, nodes, kube-dns, the operator, the agents' DaemonSet,
the ``cilium`` ApplicationInstallation and the first release."""

from __future__ import annotations

import ipaddress
import random
import uuid
from typing import Any

import yaml

from sandbox.controllers.base import (
    AI_KEY,
    CMS,
    DEPLOYS,
    DSS,
    EPS,
    MESH_SECRET,
    NODES,
    NS,
    SVCS,
    SimCluster,
    _condition,
    _deployment,
    _rand,
    _release,
    _set_node_cidr,
    deep_merge,
)
from sandbox.store import Obj, now_rfc3339


class Bootstrap:
    """A fresh user cluster as KKP leaves it, with Cilium installed."""

    def _bootstrap(self, c: SimCluster, n_nodes: int) -> None:
        s = c.store
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            s.create(
                "v1/namespaces",
                {
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
            s.create("v1/serviceaccounts", {"metadata": {"name": "default", "namespace": ns}})
        md = f"{c.kkp_id}-worker-{_rand(c.rng, 6)}"
        ms_hash = "".join(c.rng.choice("0123456789abcdef") for _ in range(10))
        for k in range(n_nodes):
            name = f"{md}-{ms_hash}-{_rand(c.rng, 5)}"
            c.nodes.append(name)
            s.create(NODES, self._node(c, k, name))
        s.create(
            SVCS,
            {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.240.16.1",
                    "clusterIPs": ["10.240.16.1"],
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                    "sessionAffinity": "None",
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            },
        )
        s.create(
            EPS,
            {
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [
                    {
                        "addresses": [{"ip": f"198.51.100.{c.index}"}],
                        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                    }
                ],
            },
        )
        s.create(
            SVCS,
            {
                "metadata": {
                    "name": "kube-dns",
                    "namespace": NS,
                    "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.240.16.10",
                    "clusterIPs": ["10.240.16.10"],
                    "selector": {"k8s-app": "kube-dns"},
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                        {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                    ],
                    "sessionAffinity": "None",
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            },
        )
        s.create(
            DEPLOYS,
            _deployment(
                "coredns",
                NS,
                {"k8s-app": "kube-dns"},
                [
                    {
                        "name": "coredns",
                        "image": "registry.k8s.io/coredns/coredns:v1.11.1",
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                        ],
                    }
                ],
                replicas=2,
            ),
        )
        s.create(
            DEPLOYS,
            _deployment(
                "cilium-operator",
                NS,
                {"io.cilium/app": "operator", "name": "cilium-operator"},
                [
                    {
                        "name": "cilium-operator",
                        "image": f"quay.io/cilium/operator-generic:v{c.cilium_version}",
                    }
                ],
                replicas=1,
                host_network=True,
            ),
        )
        s.create(DSS, self._agent_daemonset(c))
        values = self._initial_values(c)
        rendered = self.renderer.render(c.cilium_version, values)
        c.current = c.deployed = rendered
        s.create(
            CMS,
            {"metadata": {"name": "cilium-config", "namespace": NS}, "data": self._cilium_config(rendered)},
        )
        s.create(AI_KEY, self._initial_ai(c, values))
        c.handled_generation = 1
        for node in s.list(NODES):
            self._create_agent_pod(c, node, ready=True)
        self._reconcile_workloads(c, immediate=True)
        self._reconcile_services(c)
        self._reconcile_endpoints(c)
        self._update_daemonset_status(c)
        c.agent_fingerprint = self._agent_fingerprint(c)

    def _node_slice(self, c: SimCluster, k: int) -> tuple[str, str, str]:
        net = ipaddress.ip_network(c.pod_cidr, strict=False)
        prefix = max(24, net.prefixlen)
        subnets = net.subnets(new_prefix=prefix) if prefix > net.prefixlen else iter([net])
        slice_ = net
        for i, sub in enumerate(subnets):
            slice_ = sub
            if i == k:
                break
        hosts = list(slice_.hosts())
        r = random.Random(f"{self.seed}:{c.index}:{k}:{slice_}")
        health = str(hosts[r.randrange(2, len(hosts))]) if len(hosts) > 3 else str(hosts[-1])
        host = str(hosts[0])
        return str(slice_), health, host

    def _node(self, c: SimCluster, k: int, name: str) -> Obj:
        slice_, health, host = self._node_slice(c, k)
        ip = f"10.{c.index}.0.{k + 2}"
        node: Obj = {
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    "x-kubernetes.io/distribution": "ubuntu",
                },
                "annotations": {
                    "cluster.k8s.io/machine": f"kube-system/{name}",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"providerID": f"kubevirt://{name}"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now_rfc3339(),
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
                "capacity": {"cpu": "2", "memory": "4025836Ki", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "3923436Ki", "pods": "110"},
                "nodeInfo": {
                    # the official client (37.x) requires these three, as a kubelet always reports them
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, f"machine.{name}").hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"system.{name}")),
                    "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"boot.{name}")),
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "osImage": "Ubuntu 22.04.4 LTS",
                    "kernelVersion": "5.15.0-107-generic",
                    "kubeletVersion": "v1.29.4",
                    "kubeProxyVersion": "v1.29.4",
                    "containerRuntimeVersion": "containerd://1.7.16",
                },
            },
        }
        _set_node_cidr(node, slice_, health, host)
        return node

    def _initial_values(self, c: SimCluster) -> dict[str, Any]:
        defaults = {
            "envoy": {"enabled": False},
            "hubble": {
                "relay": {"enabled": True},
                "ui": {"enabled": True},
                "tls": {"auto": {"method": "cronJob"}},
            },
            "operator": {"replicas": 1, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        }
        return deep_merge(defaults, self._enforced(c))

    def _enforced(self, c: SimCluster) -> dict[str, Any]:
        """The keys KKP owns and overwrites on every reconcile (reference/kkp.md §2)."""
        return {
            "cni": {"exclusive": False},
            "kubeProxyReplacement": "strict" if self.kkp <= (2, 25) else "true",
            "k8sServiceHost": c.api_host,
            "k8sServicePort": c.api_port,
            "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": [c.pod_cidr], "clusterPoolIPv4MaskSize": 24}},
        }

    def _initial_ai(self, c: SimCluster, values: dict[str, Any]) -> Obj:
        spec: dict[str, Any] = {
            "applicationRef": {"name": "cilium", "version": c.cilium_version},
            "namespace": {"name": NS, "create": False},
            "deployOptions": {"helm": {"wait": True, "timeout": "10m0s", "atomic": self.kkp >= (2, 27)}},
            "reconciliationInterval": "1h0m0s",
        }
        if self.kkp >= (2, 25):
            spec["values"] = {}
            spec["valuesBlock"] = yaml.safe_dump(values, sort_keys=True)
        else:
            spec["values"] = values
        now = now_rfc3339()
        return {
            "metadata": {
                "name": "cilium",
                "namespace": NS,
                "labels": {"apps.kubermatic.k8c.io/managed-by": "kkp", "apps.kubermatic.k8c.io/type": "cni"},
                "finalizers": ["kubermatic.k8c.io/cleanup-application-installation"],
            },
            "spec": spec,
            "status": {
                "method": "helm",
                "applicationVersion": {
                    "version": c.cilium_version,
                    "template": {
                        "source": {
                            "helm": {
                                "chartName": "cilium",
                                "chartVersion": c.cilium_version,
                                "url": "oci://quay.io/kubermatic/helm-charts",
                            }
                        }
                    },
                },
                "conditions": {
                    "ManifestsRetrieved": _condition("True", "DownloadSourceSuccessful", "", 1, now),
                    "Ready": _condition("True", "InstallationSuccessful", "", 1, now),
                },
                "helmRelease": _release(1, "deployed", "Install complete", now, now),
            },
        }

    def _agent_daemonset(self, c: SimCluster) -> Obj:
        labels = {
            "k8s-app": "cilium",
            "app.kubernetes.io/name": "cilium-agent",
            "app.kubernetes.io/part-of": "cilium",
        }
        return {
            "metadata": {"name": "cilium", "namespace": NS, "labels": dict(labels)},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "cilium"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}},
                "template": {
                    "metadata": {"labels": dict(labels), "annotations": {}},
                    "spec": {
                        "hostNetwork": True,
                        "serviceAccountName": "cilium",
                        "priorityClassName": "system-node-critical",
                        "containers": [
                            {
                                "name": "cilium-agent",
                                "image": f"quay.io/cilium/cilium:v{c.cilium_version}",
                                "command": ["cilium-agent"],
                                "args": ["--config-dir=/tmp/cilium/config-map"],
                                "ports": [
                                    {
                                        "name": "health",
                                        "containerPort": 4240,
                                        "hostPort": 4240,
                                        "protocol": "TCP",
                                    }
                                ],
                                "volumeMounts": [
                                    {
                                        "name": "clustermesh-secrets",
                                        "mountPath": "/var/lib/cilium/clustermesh",
                                    }
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "clustermesh-secrets",
                                "projected": {
                                    "sources": [
                                        {"secret": {"name": MESH_SECRET, "optional": True}},
                                        {
                                            "secret": {
                                                "name": "clustermesh-apiserver-remote-cert",
                                                "optional": True,
                                            }
                                        },
                                    ]
                                },
                            }
                        ],
                    },
                },
            },
            "status": {},
        }
