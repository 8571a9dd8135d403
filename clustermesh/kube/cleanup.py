"""What leaving the mesh asks of a cluster beyond the setup's reads and writes, as a mixin of ClusterClient.

Kept apart so ``client.py`` stays one concern per screen: deleting the drill's namespace (only when it is
labelled as the drill's) and listing Services across namespaces (global services on a leaving cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from clustermesh.errors import NotFoundError
from clustermesh.kube.objects import items


class NamespaceCleanup:
    """Methods of :class:`~clustermesh.kube.client.ClusterClient`; they use its request machinery."""

    _core: Any
    _call: Callable[..., Any]
    _get_or_none: Callable[..., dict[str, Any] | None]

    def delete_namespace_if_labelled(self, name: str, labels: Mapping[str, str]) -> str:
        """Delete Namespace ``name`` (and all it holds) only when it carries every label in ``labels``.

        Returns "absent", "not ours" (other labels: left alone) or "deleted".
        """
        current = self._get_or_none(f"namespaces/{name}", self._core.read_namespace, name)
        if current is None:
            return "absent"
        found = (current.get("metadata") or {}).get("labels") or {}
        if any(found.get(key) != value for key, value in labels.items()):
            return "not ours"
        with suppress(NotFoundError):  # deleted in between: the same outcome
            self._call("delete", f"namespaces/{name}", self._core.delete_namespace, name)
        return "deleted"

    def list_services(self) -> list[dict[str, Any]]:
        """Every Service of every namespace."""
        return items(self._call("list", "services", self._core.list_service_for_all_namespaces), "Service", "v1")
