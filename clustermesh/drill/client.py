"""What the drill needs of a cluster client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from clustermesh.kube import ExecOutput


class DrillClient(Protocol):
    """What the drill needs of a cluster client; ``ClusterClient`` has it, test fakes too."""

    def create_or_replace(self, manifest: Mapping[str, Any]) -> Any: ...

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...

    def patch_deployment_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...

    def list_pods(
        self, namespace: str, label_selector: str, field_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput: ...
