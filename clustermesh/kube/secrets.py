"""Writing Secrets, as a mixin of ClusterClient: what a CA rotation asks of a cluster beyond reading.

A write carries the resourceVersion it read (a concurrent change gives :class:`ConflictError`, never an
overwrite); creating one that exists gives :class:`AlreadyExistsError`. Secret data never enters a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from clustermesh.errors import NotFoundError
from clustermesh.kube.objects import as_object

MANAGER = "clustermesh"


class SecretWrites:
    """Methods of :class:`~clustermesh.kube.client.ClusterClient`; they use its request machinery."""

    _core: Any
    _call: Callable[..., Any]

    def write_secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str],
        *,
        resource_version: str | None,
        annotations: Mapping[str, str] | None = None,
        secret_type: str = "Opaque",
    ) -> dict[str, Any]:
        """Create Secret ``name`` (``resource_version`` None) or replace it as read at ``resource_version``.

        ``data`` holds base64 strings; labels of the replaced Secret are kept, ``annotations`` are merged in.
        """
        target = f"{namespace}/secrets/{name}"
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = dict(annotations)
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": secret_type}
        body["data"] = dict(data)
        if resource_version is None:
            created = self._call(
                "create", target, self._core.create_namespaced_secret, namespace, body, field_manager=MANAGER
            )
            return as_object(created)
        current = as_object(self._call("get", target, self._core.read_namespaced_secret, name, namespace))
        current_meta = current.get("metadata") or {}
        meta["labels"] = current_meta.get("labels") or {}
        meta["annotations"] = {**(current_meta.get("annotations") or {}), **(annotations or {})}
        meta["resourceVersion"] = resource_version
        body["type"] = current.get("type") or secret_type
        replaced = self._call(
            "replace", target, self._core.replace_namespaced_secret, name, namespace, body, field_manager=MANAGER
        )
        return as_object(replaced)

    def delete_secret(self, namespace: str, name: str) -> bool:
        """Delete Secret ``name``; False when it was already gone."""
        with suppress(NotFoundError):
            self._call("delete", f"{namespace}/secrets/{name}", self._core.delete_namespaced_secret, name, namespace)
            return True
        return False
