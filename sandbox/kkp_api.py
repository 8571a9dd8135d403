"""A simulated KKP REST API: the endpoints the pipeline uses, with KKP's shapes and errors.

``POST|GET /api/v2/projects/{p}/clusters``, ``GET …/clusters/{c}``, ``GET …/clusters/{c}/health`` and
``GET …/clusters/{c}/kubeconfig`` (``application/octet-stream``), behind a bearer token. Errors are
KKP's ``errorResponse``: ``{"error": {"code": N, "message": "…"}}``. Request and response shapes follow
kubermatic/dashboard ``modules/api/cmd/kubermatic-api/swagger.json`` (``tests/contracts``).

Creating a cluster hands the request to a provisioner (the sandbox): it starts a new simulated user
cluster with the requested Cilium version and pod CIDR and returns its admin kubeconfig. Every
exchange is recorded (``KkpState.exchanges``) so tests can check both sides against the contract.
One fault: ``KkpState.fail_kubeconfig_requests(n)`` answers the next n kubeconfig requests 503;
``kubeconfig_requests`` and ``kubeconfig_503s`` count what was asked and what was refused.

The sandbox imports nothing of the pipeline: this validation is written from KKP's documented
behaviour (reference/kkp.md §3, §5), not shared with the code it tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CNI_TYPES = ("canal", "cilium", "none")
PROXY_MODES = ("ipvs", "iptables", "ebpf", "nftables")
CILIUM_LINES = ("1.13", "1.14", "1.15", "1.16", "1.17", "1.18", "1.19")
DEFAULT_PODS = "172.25.0.0/16"
DEFAULT_SERVICES = "10.240.16.0/20"
HEALTH_FIELDS = (
    "apiserver",
    "applicationController",
    "cloudProviderInfrastructure",
    "controller",
    "etcd",
    "machineController",
    "operatingSystemManager",
    "scheduler",
    "userClusterControllerManager",
)
PROVISION_SECONDS = 20.0  # simulated seconds until a new cluster's control plane is up
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


@dataclass
class KkpRecord:
    """One cluster as the simulated KKP keeps it."""

    id: str
    name: str
    created: str
    spec: dict[str, Any]
    annotations: dict[str, str]
    labels: dict[str, str]
    credential: str | None
    ready_at: float
    url: str = ""
    kubeconfig: str = ""

    def api_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "creationTimestamp": self.created,
            "type": "kubernetes",
            "annotations": dict(self.annotations),
            "labels": dict(self.labels),
            "spec": json.loads(json.dumps(self.spec)),
            "status": {"version": self.spec.get("version", ""), "url": self.url},
        }
        if self.credential:
            obj["credential"] = self.credential
        return obj


@dataclass
class Exchange:
    method: str
    path: str
    request: Any
    status: int
    response: Any
    content_type: str


Provisioner = Callable[[KkpRecord], Awaitable[None]]


@dataclass
class KkpState:
    """The simulated KKP: one project, its clusters, and every exchange seen."""

    token: str
    project: str
    datacenters: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"sandbox-dc": ("bringyourown", "fake")})
    time_scale: float = 1.0
    seed: int = 0
    clusters: dict[str, KkpRecord] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)
    disable_admin_kubeconfig: bool = False
    kubeconfig_failures: int = 0
    """Fault: how many of the next kubeconfig requests are answered 503, as a busy or restarting KKP API does."""
    kubeconfig_requests: int = 0
    """Kubeconfig requests seen (authenticated, any cluster), the failed ones included."""
    kubeconfig_503s: int = 0
    """Kubeconfig requests answered 503 by the ``kubeconfig_failures`` fault."""
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"kkp:{self.seed}")

    def fail_kubeconfig_requests(self, count: int) -> None:
        """Answer the next ``count`` kubeconfig requests with 503 (0 clears the fault)."""
        if count < 0:
            raise ValueError(f"cannot fail {count} requests")
        self.kubeconfig_failures = count

    def new_id(self) -> str:
        while True:
            cid = "".join(self._rng.choice(ID_ALPHABET) for _ in range(10))
            if cid not in self.clusters:
                return cid


class KkpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_project_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(10))


def create_kkp_app(state: KkpState, provision: Provisioner) -> Starlette:
    """The Starlette app; ``provision`` starts the user cluster of a new record (sets url, kubeconfig)."""

    async def handle(request: Request) -> Response:
        body: Any = None
        try:
            _auth(state, request)
            project = request.path_params["project"]
            if project != state.project:
                raise KkpError(404, f'projects.kubermatic.k8c.io "{project}" not found')
            cid = request.path_params.get("cluster")
            what = request.path_params.get("what")
            if cid is None and request.method == "POST":
                body = await _json_body(request)
                record = _new_record(state, body)
                await provision(record)
                state.clusters[record.id] = record
                return _reply(state, request, body, 201, record.api_object())
            if cid is None:
                return _reply(state, request, body, 200, [r.api_object() for r in state.clusters.values()])
            record = state.clusters.get(cid)
            if record is None:
                raise KkpError(404, f'clusters.kubermatic.k8c.io "{cid}" not found')
            if what is None:
                return _reply(state, request, body, 200, record.api_object())
            if what == "health":
                return _reply(state, request, body, 200, _health(state, record))
            if what == "kubeconfig":
                state.kubeconfig_requests += 1
                if state.kubeconfig_failures > 0:
                    state.kubeconfig_failures -= 1
                    state.kubeconfig_503s += 1
                    raise KkpError(503, "the KKP API is temporarily unavailable, try again later")
                if state.disable_admin_kubeconfig:
                    raise KkpError(403, "admin kubeconfig is disabled for this datacenter")
                data = record.kubeconfig.encode()
                state.exchanges.append(
                    Exchange(request.method, request.url.path, None, 200, data, "application/octet-stream")
                )
                return Response(
                    data,
                    media_type="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename=kubeconfig-admin-{record.id}"},
                )
            raise KkpError(404, "not found")
        except KkpError as exc:
            return _reply(state, request, body, exc.code, {"error": {"code": exc.code, "message": exc.message}})

    base = "/api/v2/projects/{project}/clusters"
    return Starlette(
        routes=[
            Route(base, handle, methods=["GET", "POST"]),
            Route(base + "/{cluster}", handle, methods=["GET"]),
            Route(base + "/{cluster}/{what}", handle, methods=["GET"]),
        ]
    )


def _reply(state: KkpState, request: Request, body: Any, status: int, payload: Any) -> JSONResponse:
    state.exchanges.append(Exchange(request.method, request.url.path, body, status, payload, "application/json"))
    return JSONResponse(payload, status_code=status)


def _auth(state: KkpState, request: Request) -> None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer ") or not secrets.compare_digest(header[7:].strip(), state.token):
        raise KkpError(401, "invalid bearer token")


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise KkpError(400, "unable to decode request body: invalid JSON") from None


def _health(state: KkpState, record: KkpRecord) -> dict[str, str]:
    status = "HealthStatusUp" if time.monotonic() >= record.ready_at else "HealthStatusProvisioning"
    return {name: status for name in HEALTH_FIELDS}


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KkpError(400, f"{where} must be an object")
    return value


def _new_record(state: KkpState, body: Any) -> KkpRecord:
    """Validate a CreateClusterSpec as KKP would, apply KKP's defaults, and make the record."""
    if not isinstance(body, dict):
        raise KkpError(400, "unable to decode request body: expected a CreateClusterSpec object")
    cluster = _obj(body.get("cluster"), "cluster")
    name = cluster.get("name")
    if not isinstance(name, str) or not name.strip():
        raise KkpError(400, "invalid cluster: the name is required")
    spec = _obj(cluster.get("spec"), "cluster.spec")
    version = spec.get("version")
    match = SEMVER.match(version) if isinstance(version, str) else None
    if match is None:
        raise KkpError(400, f"invalid cluster: spec.version {version!r} is not a semantic version")
    if not (1, 29) <= (int(match.group(1)), int(match.group(2))) <= (1, 34):
        raise KkpError(400, f"invalid cluster: unsupported version {version}: use 1.29 to 1.34")
    cloud = _obj(spec.get("cloud"), "cluster.spec.cloud")
    dc = cloud.get("dc")
    if dc not in state.datacenters:
        raise KkpError(400, f'invalid cluster: datacenter "{dc}" not found')
    providers = [k for k in cloud if k not in ("dc", "providerName")]
    if len(providers) != 1:
        raise KkpError(400, f"invalid cloud spec: exactly one provider must be set, got {sorted(providers)}")
    if providers[0] not in state.datacenters[dc]:
        raise KkpError(400, f'invalid cloud spec: provider "{providers[0]}" does not match datacenter "{dc}"')
    cni = _obj(spec.get("cniPlugin"), "cluster.spec.cniPlugin") or {"type": "cilium", "version": "1.19.4"}
    cni_type = cni.get("type")
    if cni_type not in CNI_TYPES:
        raise KkpError(400, f"invalid cluster: spec.cniPlugin.type: Unsupported value: {cni_type!r}")
    cni_version = str(cni.get("version") or "")
    vm = SEMVER.match(cni_version)
    if cni_type == "cilium" and (vm is None or f"{vm.group(1)}.{vm.group(2)}" not in CILIUM_LINES):
        raise KkpError(
            400, f'invalid cluster: spec.cniPlugin.version: CNI plugin version "{cni_version}" is not supported'
        )
    net = json.loads(json.dumps(_obj(spec.get("clusterNetwork"), "cluster.spec.clusterNetwork")))
    proxy = net.setdefault("proxyMode", "ipvs")
    if proxy not in PROXY_MODES:
        raise KkpError(400, f"invalid cluster: spec.clusterNetwork.proxyMode: Unsupported value: {proxy!r}")
    if proxy == "ebpf" and cni_type == "canal":
        raise KkpError(400, "invalid cluster: spec.clusterNetwork.proxyMode: ebpf is not supported with canal")
    if net.setdefault("konnectivityEnabled", True) is not True:
        raise KkpError(400, "invalid cluster: spec.clusterNetwork.konnectivityEnabled: false is not supported")
    pods = _cidrs(net, "pods", DEFAULT_PODS)
    services = _cidrs(net, "services", DEFAULT_SERVICES)
    families = {ipaddress.ip_network(c).version for c in pods}
    net.setdefault("ipFamily", "IPv4+IPv6" if families == {4, 6} else "IPv4")
    if net["ipFamily"] == "IPv4" and 6 in families:
        raise KkpError(400, "invalid cluster: IPv6 pod CIDR given with ipFamily IPv4")
    for block in (pods, services):
        if sum(1 for c in block if ipaddress.ip_network(c).version == 4) != 1:
            raise KkpError(400, "invalid cluster: exactly one IPv4 CIDR block is required per network range")
    net.setdefault("nodeCidrMaskSizeIPv4", 24)
    net.setdefault("dnsDomain", "cluster.local")
    net.setdefault("nodeLocalDNSCacheEnabled", True)
    out_spec = json.loads(json.dumps(spec))
    out_spec["cniPlugin"] = {"type": cni_type, "version": cni_version}
    out_spec["clusterNetwork"] = net
    out_spec.setdefault("exposeStrategy", "NodePort")
    annotations = _obj(cluster.get("annotations"), "cluster.annotations")
    labels = _obj(cluster.get("labels"), "cluster.labels")
    return KkpRecord(
        id=state.new_id(),
        name=name,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        spec=out_spec,
        annotations={str(k): str(v) for k, v in annotations.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        credential=cluster.get("credential") if isinstance(cluster.get("credential"), str) else None,
        ready_at=time.monotonic() + PROVISION_SECONDS * state.time_scale,
    )


def _cidrs(net: dict[str, Any], key: str, default: str) -> list[str]:
    ranges = _obj(net.get(key), f"cluster.spec.clusterNetwork.{key}")
    blocks = ranges.get("cidrBlocks") or [default]
    if not isinstance(blocks, list) or not blocks:
        raise KkpError(400, f"invalid cluster: spec.clusterNetwork.{key}.cidrBlocks must be a list")
    out = []
    for block in blocks:
        try:
            out.append(str(ipaddress.ip_network(str(block), strict=True)))
        except ValueError:
            raise KkpError(
                400, f"invalid cluster: spec.clusterNetwork.{key}.cidrBlocks: invalid CIDR {block!r}"
            ) from None
    net[key] = {"cidrBlocks": out}
    return out
