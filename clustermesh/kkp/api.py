"""A small client for the KKP REST API endpoints the pipeline uses, and the errors they turn into.

Endpoints (kubermatic/dashboard ``modules/api/cmd/kubermatic-api/swagger.json``; shapes pinned by
``tests/contracts``): ``POST|GET /api/v2/projects/{p}/clusters`` (createClusterV2, listClustersV2),
``GET …/clusters/{c}`` (getClusterV2), ``GET …/clusters/{c}/health`` (getClusterHealthV2) and
``GET …/clusters/{c}/kubeconfig`` (getClusterKubeconfigV2, ``application/octet-stream``).

The bearer token is resolved from its reference (Prefect Secret block or env var) when a client is
made and lives only in the client's headers: it is never logged, put in an error or returned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from clustermesh.errors import (
    KkpApiError,
    KkpClusterNotFoundError,
    KkpForbiddenError,
    KkpImmutableSettingsError,
    KkpInvalidRequestError,
    KkpPoolExhaustedError,
    KkpProjectNotFoundError,
    KkpTokenError,
    KkpTransientError,
    KkpUnauthorizedError,
)
from clustermesh.spec import ClusterSpec, KkpRef

SecretLoader = Callable[[str], str]

HEALTH_UP = "HealthStatusUp"
# Components a new cluster needs before anything is built on it; applicationController installs Cilium (§2).
REQUIRED_HEALTH = (
    "apiserver",
    "controller",
    "etcd",
    "scheduler",
    "machineController",
    "userClusterControllerManager",
    "applicationController",
    "cloudProviderInfrastructure",
)

__all__ = [
    "HEALTH_UP",
    "REQUIRED_HEALTH",
    "KkpApiError",
    "KkpClient",
    "KkpCluster",
    "KkpClusterNotFoundError",
    "KkpForbiddenError",
    "KkpImmutableSettingsError",
    "KkpInvalidRequestError",
    "KkpPoolExhaustedError",
    "KkpProjectNotFoundError",
    "KkpTokenError",
    "KkpTransientError",
    "KkpUnauthorizedError",
    "client_for",
    "find_cluster",
    "health_problems",
    "resolve_token",
]


@dataclass(frozen=True)
class KkpCluster:
    """What the pipeline reads from a KKP ``Cluster``: identity and the settings fixed at creation."""

    id: str
    name: str
    cni_type: str
    cni_version: str
    proxy_mode: str
    konnectivity: bool | None
    pod_cidrs: tuple[str, ...]
    service_cidrs: tuple[str, ...]
    kubernetes_version: str
    url: str
    datacenter: str
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> KkpCluster:
        spec = _obj(data.get("spec"))
        cni = _obj(spec.get("cniPlugin"))
        net = _obj(spec.get("clusterNetwork"))
        status = _obj(data.get("status"))
        konnectivity = net.get("konnectivityEnabled")
        return cls(
            id=str(data.get("id") or ""),
            name=str(data.get("name") or ""),
            cni_type=str(cni.get("type") or ""),
            cni_version=str(cni.get("version") or ""),
            # KKP's default is never ebpf (§3): an unset proxyMode means ipvs
            proxy_mode=str(net.get("proxyMode") or "ipvs"),
            konnectivity=konnectivity if isinstance(konnectivity, bool) else None,
            pod_cidrs=tuple(str(c) for c in _obj(net.get("pods")).get("cidrBlocks") or []),
            service_cidrs=tuple(str(c) for c in _obj(net.get("services")).get("cidrBlocks") or []),
            kubernetes_version=str(spec.get("version") or status.get("version") or ""),
            url=str(status.get("url") or ""),
            datacenter=str(_obj(spec.get("cloud")).get("dc") or ""),
            annotations={str(k): str(v) for k, v in _obj(data.get("annotations")).items()},
        )

    def describe(self) -> str:
        return (
            f"{self.name} ({self.id}): CNI {self.cni_type} {self.cni_version}, proxy mode {self.proxy_mode}, "
            f"pods {', '.join(self.pod_cidrs) or 'none'}"
        )


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class KkpClient:
    """One KKP API and project; bearer-token auth; JSON in, :class:`KkpCluster` and our errors out."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        project: str,
        ca_file: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.project = project
        verify: Any = True
        if ca_file is not None:
            import ssl

            try:
                verify = ssl.create_default_context(cafile=os.path.expanduser(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise KkpTokenError(
                    project,
                    None,
                    f"cannot read the KKP CA bundle {ca_file} ({type(exc).__name__})",
                    fix="check clusters[].kkp.ca_file: a PEM file of the CA that signed the KKP API's certificate",
                ) from None
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KkpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- endpoints ------------------------------------------------------------------------------

    def list_clusters(self) -> list[KkpCluster]:
        data = self._json("GET", self._clusters_path(), None)
        if not isinstance(data, list):
            raise KkpTransientError(self.project, None, "the cluster list is not a JSON array")
        return [KkpCluster.from_api(item) for item in data if isinstance(item, dict)]

    def get_cluster(self, cluster_id: str) -> KkpCluster:
        data = self._json("GET", f"{self._clusters_path()}/{cluster_id}", None, cluster=cluster_id)
        return KkpCluster.from_api(_obj(data))

    def create_cluster(self, body: dict[str, Any]) -> KkpCluster:
        name = str(_obj(body.get("cluster")).get("name") or "")
        data = self._json("POST", self._clusters_path(), body, cluster=name or None)
        return KkpCluster.from_api(_obj(data))

    def health(self, cluster_id: str) -> dict[str, str]:
        data = self._json("GET", f"{self._clusters_path()}/{cluster_id}/health", None, cluster=cluster_id)
        return {str(k): str(v) for k, v in _obj(data).items()}

    def kubeconfig(self, cluster_id: str) -> str:
        """The admin kubeconfig as text, in memory only (never logged, never written)."""
        response = self._send("GET", f"{self._clusters_path()}/{cluster_id}/kubeconfig", None, cluster_id)
        text: str | None = None
        # raised below, outside the handler: the decode error's ``object`` is the whole kubeconfig
        with contextlib.suppress(UnicodeDecodeError):
            text = response.content.decode("utf-8")
        if text is None:
            raise KkpTransientError(self.project, cluster_id, "the kubeconfig KKP returned is not UTF-8 text")
        return text

    # ---- plumbing -------------------------------------------------------------------------------

    def _clusters_path(self) -> str:
        return f"/api/v2/projects/{self.project}/clusters"

    def _json(self, method: str, path: str, body: Any, *, cluster: str | None = None) -> Any:
        response = self._send(method, path, body, cluster)
        try:
            return response.json()
        except ValueError:
            pass  # raised below, outside the handler: a JSONDecodeError holds the whole body in ``doc``
        raise KkpTransientError(
            self.project, cluster, f"{method} {path} returned no JSON (HTTP {response.status_code})"
        )

    def _send(self, method: str, path: str, body: Any, cluster: str | None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise KkpTransientError(self.project, cluster, f"{method} {path} timed out") from None
        except httpx.TransportError as exc:
            raise KkpTransientError(
                self.project, cluster, f"{method} {self.api_url}{path} failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            raise self._error(response, cluster)
        return response

    def _error(self, response: httpx.Response, cluster: str | None) -> KkpApiError:
        status = response.status_code
        message = ""
        try:
            payload = response.json()
            message = str(_obj(_obj(payload).get("error")).get("message") or "")
        except ValueError:
            pass
        message = (message or response.reason_phrase or "no message")[:500]
        if status == 401:
            return KkpUnauthorizedError(self.project, cluster, message, status=status)
        if status == 403:
            return KkpForbiddenError(self.project, cluster, message, status=status)
        if status == 404:
            if "project" in message.lower() or cluster is None:
                return KkpProjectNotFoundError(self.project, None, message, status=status)
            return KkpClusterNotFoundError(self.project, cluster, message, status=status)
        if status in (400, 409, 422):
            return KkpInvalidRequestError(self.project, cluster, message, status=status)
        if status == 429 or status >= 500:
            return KkpTransientError(self.project, cluster, message, status=status)
        return KkpApiError(self.project, cluster, message, status=status)


def resolve_token(ref: KkpRef, *, load_secret: SecretLoader | None = None) -> str:
    """The bearer token from its reference; errors name the reference, never a value."""
    if ref.token_env is not None:
        token = os.environ.get(ref.token_env, "").strip()
        if not token:
            raise KkpTokenError(
                ref.project,
                None,
                f"environment variable {ref.token_env} (KKP API token) is not set",
                fix=f"export {ref.token_env}=<KKP token> on the machine running the flow",
            )
        return token
    assert ref.token_block is not None
    if load_secret is None:
        raise KkpTokenError(
            ref.project,
            None,
            f"the KKP token is in Prefect Secret block {ref.token_block!r}, which needs Prefect",
            fix="run through the flows (clustermesh setup / clusters create), or reference the token by token_env",
        )
    token = load_secret(ref.token_block).strip()
    if not token:
        raise KkpTokenError(
            ref.project, None, f"Prefect Secret block {ref.token_block!r} is empty", fix="store the KKP token in it"
        )
    return token


def client_for(
    cluster: ClusterSpec,
    *,
    load_secret: SecretLoader | None = None,
    timeout: float = 30.0,
) -> KkpClient:
    """A client for the KKP API and project that ``cluster`` references."""
    ref = cluster.kkp
    if ref is None:
        raise ValueError(f"cluster {cluster.name!r} is referenced by kubeconfig, not through KKP")
    token = resolve_token(ref, load_secret=load_secret)
    return KkpClient(ref.api_url, token, project=ref.project, ca_file=ref.ca_file, timeout=timeout)


def find_cluster(api: KkpClient, cluster: ClusterSpec, *, listing: list[KkpCluster] | None = None) -> KkpCluster:
    """The KKP cluster of a spec entry: by ``cluster_id``, else the one cluster named like the entry."""
    ref = cluster.kkp
    assert ref is not None
    if ref.cluster_id is not None:
        try:
            return api.get_cluster(ref.cluster_id)
        except KkpClusterNotFoundError as exc:
            raise KkpClusterNotFoundError(
                ref.project,
                ref.cluster_id,
                f"no cluster with ID {ref.cluster_id} for mesh entry {cluster.name!r} ({exc.problem})",
                status=exc.status,
            ) from None
    found = lookup_by_name(api, cluster.name, listing=listing)
    if found is None:
        raise KkpClusterNotFoundError(
            ref.project,
            cluster.name,
            f"no cluster named {cluster.name!r} in the project",
            fix="create it with `clustermesh clusters create --config <mesh.yaml>`, or set clusters[].kkp.cluster_id",
        )
    return found


def lookup_by_name(api: KkpClient, name: str, *, listing: list[KkpCluster] | None = None) -> KkpCluster | None:
    """The project's cluster named ``name``; None when there is none, an error when several share it."""
    clusters = listing if listing is not None else api.list_clusters()
    matches = [c for c in clusters if c.name == name]
    if len(matches) > 1:
        raise KkpInvalidRequestError(
            api.project,
            name,
            f"{len(matches)} clusters are named {name!r} ({', '.join(c.id for c in matches)})",
            fix="set clusters[].kkp.cluster_id to the one the mesh should use",
        )
    return matches[0] if matches else None


def health_problems(health: Mapping[str, str]) -> list[str]:
    """Required components that are not up, as ``name=status`` (empty when the cluster is healthy)."""
    return [f"{k}={health.get(k, 'missing')}" for k in REQUIRED_HEALTH if health.get(k) != HEALTH_UP]
