"""What renewing certificates asks of a cluster, as a mixin of ClusterClient: its clock, certgen's CronJob and Jobs.

Kept apart so ``client.py`` stays one concern per screen. The cluster's clock is the HTTP ``Date`` of one
cheap ``GET /version``: certificate expiry is judged at the time the cluster itself lives at.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from kubernetes import client as k8s

from clustermesh.kube.objects import as_object, items

FIELD_MANAGER = "clustermesh"


class BatchAndClock:
    """Methods of :class:`~clustermesh.kube.client.ClusterClient`; they use its request machinery."""

    _api: Any
    _version: Any
    request_timeout: float
    _call: Callable[..., Any]
    _translated: Callable[..., Any]
    _get_or_none: Callable[..., dict[str, Any] | None]

    def server_time(self) -> dt.datetime:
        """The cluster's own clock: the ``Date`` header of ``GET /version``; local UTC now when it has none
        (or one that does not parse)."""

        def send() -> str | None:
            response = self._version.get_code(_preload_content=False, _request_timeout=self.request_timeout)
            try:
                headers = getattr(response, "headers", None)  # urllib3 2: .headers (getheader is deprecated)
                header = headers.get("Date") if headers is not None else response.getheader("Date")
                return str(header) if header else None
            finally:
                response.release_conn()

        header = self._translated("get", "/version", send)
        if header:
            try:
                parsed = parsedate_to_datetime(header)
            except (TypeError, ValueError):
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed.astimezone(dt.UTC)
        return dt.datetime.now(dt.UTC)

    def _batch(self) -> Any:
        return k8s.BatchV1Api(self._api)

    def get_cronjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(
            f"{namespace}/cronjobs/{name}", self._batch().read_namespaced_cron_job, name, namespace
        )

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"{namespace}/jobs/{name}", self._batch().read_namespaced_job, name, namespace)

    def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        answer = self._call(
            "list",
            f"{namespace}/jobs (labelSelector {label_selector!r})",
            self._batch().list_namespaced_job,
            namespace,
            label_selector=label_selector,
        )
        return items(answer, "Job", "batch/v1")

    def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create a Job (a name taken already is :class:`~clustermesh.errors.AlreadyExistsError`)."""
        meta = manifest.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        created = self._call(
            "create",
            f"{namespace}/jobs/{name}",
            self._batch().create_namespaced_job,
            namespace,
            dict(manifest),
            field_manager=FIELD_MANAGER,
        )
        return as_object(created)
