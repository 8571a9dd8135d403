"""MCS-API objects of a cluster (``multicluster.x-k8s.io/v1alpha1``): a ServiceExport written, a ServiceImport read.

Uses the client's request plumbing (``_call``: errors translated, reads retried) from inside the kube room, as
``policies`` does; :class:`~clustermesh.kube.client.ClusterClient` is at its size limit. A cluster that does not
serve the CRDs answers 404 on the kind: that is an error naming the CRDs, not "no ServiceImport".
"""

from __future__ import annotations

from typing import Any, Literal

from clustermesh.errors import NotFoundError
from clustermesh.kube.client import FIELD_MANAGER, ClusterClient
from clustermesh.kube.objects import as_object

__all__ = ["MCS_API_VERSION", "apply_service_export", "get_service_import"]

MCS_GROUP = "multicluster.x-k8s.io"
MCS_VERSION = "v1alpha1"
MCS_API_VERSION = f"{MCS_GROUP}/{MCS_VERSION}"


def _get(client: ClusterClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    custom = client._custom  # noqa: SLF001 - the kube room's own plumbing
    try:
        answer = client._call(  # noqa: SLF001
            "get",
            f"{namespace}/{plural}.{MCS_GROUP}/{name}",
            custom.get_namespaced_custom_object,
            MCS_GROUP,
            MCS_VERSION,
            namespace,
            plural,
            name,
        )
    except NotFoundError:
        return None
    return as_object(answer)


def get_service_import(client: ClusterClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The ServiceImport ``namespace/name`` as the server holds it; None when there is none (yet)."""
    return _get(client, "serviceimports", namespace, name)


def apply_service_export(client: ClusterClient, namespace: str, name: str) -> Literal["created", "unchanged"]:
    """Export the Service ``namespace/name`` (a ServiceExport of the same name); an existing export is kept."""
    if _get(client, "serviceexports", namespace, name) is not None:
        return "unchanged"
    body = {
        "apiVersion": MCS_API_VERSION,
        "kind": "ServiceExport",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "clustermesh-drill"},
        },
    }
    client._call(  # noqa: SLF001
        "create",
        f"{namespace}/serviceexports.{MCS_GROUP}",
        client._custom.create_namespaced_custom_object,  # noqa: SLF001
        MCS_GROUP,
        MCS_VERSION,
        namespace,
        "serviceexports",
        body,
        field_manager=FIELD_MANAGER,
    )
    return "created"
