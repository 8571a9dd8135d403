"""The drill's workloads: their names and labels, the undo annotation, and the manifests of the guide's example.

A global nginx (``BACKEND``) behind the Service ``SERVICE`` in every cluster, and a curl pod (``CLIENT``)
to send requests through it from inside the cluster.
"""

from __future__ import annotations

from typing import Any

from clustermesh.cilium.profiles import CiliumProfile
from clustermesh.spec import DrillSettings

PART_OF = {"app.kubernetes.io/part-of": "clustermesh-drill"}
BACKEND = "clustermesh-drill-backend"
CLIENT = "clustermesh-drill-client"
SERVICE = "clustermesh-drill"
CLIENT_IMAGE = "curlimages/curl:8.10.1"
CLIENT_CONTAINER = "client"
ORIGINAL_REPLICAS_ANNOTATION = "clustermesh.io/drill-original-replicas"
"""Written before a drill scales a backend Deployment, removed once the count is back: the undo record."""
APPLIED_REPLICAS_ANNOTATION = "clustermesh.io/drill-replicas"
"""The replica count the drill itself last gave its backend: another count there is a person's, and kept."""
FAILOVER_REPLICAS = 0
APISERVER = "clustermesh-apiserver"
APISERVER_NS = "kube-system"
"""The mesh control plane the cluster-loss drill scales to :data:`FAILOVER_REPLICAS`, recorded like a backend."""
NAMESPACE_GLOBAL_ANNOTATION = "clustermesh.cilium.io/global"
"""Cilium 1.20+: a Service is global only in a global namespace; with ``clustermesh.defaultGlobalNamespace:
false`` only namespaces annotated ``"true"`` are. The drill's namespace always says so on those lines."""
"""What a failover scales the backend to: a recorded backend still at this count shows the drill's hand."""


def drill_manifests(
    settings: DrillSettings, profile: CiliumProfile, *, backend_replicas: int | None = None, applied: int | None = None
) -> list[dict[str, Any]]:
    """Namespace, backend and client Deployments, and the global Service of the guide's example.

    The backend gets ``backend_replicas`` (default ``settings.replicas``); ``applied`` is the count the
    drill itself gave it last (:data:`APPLIED_REPLICAS_ANNOTATION`, default the count given now).
    """
    ns = settings.namespace
    replicas = settings.replicas if backend_replicas is None else backend_replicas
    return [
        _namespace(ns, profile),
        _backend_deployment(settings, replicas, replicas if applied is None else applied),
        _client_deployment(ns),
        _global_service(settings, profile),
    ]


def _namespace(name: str, profile: CiliumProfile) -> dict[str, Any]:
    """The drill's namespace; global (:data:`NAMESPACE_GLOBAL_ANNOTATION`) where the line has global namespaces.

    Older lines do not read the annotation, and leaving it off keeps their namespace as it always was.
    """
    metadata: dict[str, Any] = {"name": name, "labels": dict(PART_OF)}
    if profile.global_namespaces:
        metadata["annotations"] = {NAMESPACE_GLOBAL_ANNOTATION: "true"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def _backend_deployment(settings: DrillSettings, replicas: int, applied: int) -> dict[str, Any]:
    """``replicas`` web servers on ``settings.port``, Ready once they answer ``/``."""
    backend_labels = {"app": BACKEND, **PART_OF}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": BACKEND,
            "namespace": settings.namespace,
            "labels": backend_labels,
            "annotations": {APPLIED_REPLICAS_ANNOTATION: str(applied)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": BACKEND}},
            "template": {
                "metadata": {"labels": backend_labels},
                "spec": {
                    "containers": [
                        {
                            "name": "backend",
                            "image": settings.image,
                            "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": settings.port},
                                "periodSeconds": 2,
                            },
                        }
                    ]
                },
            },
        },
    }


def _client_deployment(namespace: str) -> dict[str, Any]:
    """One idle curl pod: the probes are exec'd in it."""
    client_labels = {"app": CLIENT, **PART_OF}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CLIENT, "namespace": namespace, "labels": client_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": CLIENT}},
            "template": {
                "metadata": {"labels": client_labels},
                "spec": {
                    "containers": [{"name": CLIENT_CONTAINER, "image": CLIENT_IMAGE, "command": ["sleep", "infinity"]}]
                },
            },
        },
    }


def _global_service(settings: DrillSettings, profile: CiliumProfile) -> dict[str, Any]:
    """The Service over the backends, global (and with the spec's affinity) in the profile's annotations."""
    annotations = {**profile.global_annotations(), **profile.affinity_annotations(settings.affinity)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE,
            "namespace": settings.namespace,
            "labels": {"app": BACKEND, **PART_OF},
            "annotations": annotations,
        },
        "spec": {
            "type": settings.service_type,
            "selector": {"app": BACKEND},
            "ports": [{"name": "http", "port": settings.port, "targetPort": settings.port, "protocol": "TCP"}],
        },
    }
