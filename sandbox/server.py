"""Runs a sandbox: N simulated KKP user clusters, each a Kubernetes API over HTTPS on 127.0.0.1.

One event loop (in a background thread) holds every cluster's store, the world's controllers and one
uvicorn server per cluster, so every API call and controller step is atomic without locks. A small
HTTP control endpoint (plain HTTP on loopback, bearer token) injects and clears faults.

Files written to the sandbox directory:

- ``cluster-<i>.kubeconfig``: verified TLS (the cluster's own CA) and a bearer token;
- ``mesh.yaml``: a mesh spec for these clusters, ready for ``clustermesh setup --config``;
- ``sandbox.json``: ports, control URL and token, pid;
- ``ready``: written last, once every API answers.

With ``kkp=True`` (``clustermesh sandbox up --kkp``) a simulated KKP REST API is served too
(``sandbox/kkp_api.py``, HTTPS with its own CA, bearer token), usually with zero clusters to start:
creating a cluster there starts a new simulated user cluster. Extra files: ``kkp.json`` (URL, token,
project), ``kkp-ca.crt`` and ``mesh-kkp.yaml`` (a spec whose clusters are KKP references only).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox import pki
from sandbox.chart import ChartError
from sandbox.httpserver import LoopThread, start_https_server
from sandbox.kkp_api import KkpRecord, KkpState, create_kkp_app, new_project_id
from sandbox.kubeapi import ApiFaults, ExecResult, create_app
from sandbox.mesh import ClusterState, MeshFaults, exec_command
from sandbox.process import SandboxError as SandboxError  # re-exported: the error of a Sandbox's options
from sandbox.process import read_info
from sandbox.real_chart import ChartRenderer
from sandbox.resources import builtin_types
from sandbox.store import Store
from sandbox.versions import default_kkp_for_line, line_names
from sandbox.world import World

CILIUM_LINES = line_names()  # "1.13" … "1.20" (sandbox.versions.LINES)
# The oldest KKP release that ships each Cilium line as its default (reference/kkp.md §2).
DEFAULT_KKP_FOR_LINE = default_kkp_for_line()
FAULT_KINDS = (
    "block-port",
    "unblock-port",
    "lb-never",
    "certgen-delay",
    "api-errors",
    "api-latency",
    "api-down",
    "expire-certs",
    "rotate-ca",
    "pod-cidr",
    "clear",
)


@dataclass
class ClusterEndpoint:
    name: str
    index: int
    store: Store
    token: str
    ca: pki.KeyPair
    faults: ApiFaults
    port: int = 0
    kubeconfig: Path | None = None
    server: Any = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _line(version: str) -> str:
    v = version.lstrip("v")
    parts = v.split(".")
    if len(parts) < 2 or f"{parts[0]}.{parts[1]}" not in CILIUM_LINES:
        raise SandboxError(
            f"--cilium-version {version!r} is not supported: use one of {', '.join(CILIUM_LINES)} "
            "(optionally with a patch, e.g. 1.16.9)"
        )
    return f"{parts[0]}.{parts[1]}"


@dataclass
class Sandbox:
    """A running sandbox. Use as a context manager, or ``start()`` / ``stop()``."""

    directory: Path
    clusters: int = 2
    cilium_version: str = "1.13"
    nodes: int = 2
    time_scale: float = 1.0
    kkp_version: str | None = None
    overlap_pod_cidrs: bool = False
    seed: int = 0
    kkp: bool = False
    kkp_spec_clusters: int = 2
    kkp_state: KkpState | None = None
    kkp_port: int = 0
    charts: Path | None = None  # a folder of cilium-<version>.tgz: KKP renders the real charts (else the built-in)
    helm_reissues_on_render: bool = True  # tls.auto.method helm: each KKP render re-issues the leaves (World's)
    _kkp_server: Any = None
    _kkp_ca: pki.KeyPair | None = None
    endpoints: list[ClusterEndpoint] = field(default_factory=list)
    mesh_faults: MeshFaults = field(default_factory=MeshFaults)
    control_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    control_port: int = 0
    world: World | None = None
    _loop: LoopThread | None = None
    _control: Any = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not (0 if self.kkp else 1) <= self.clusters <= 64:
            raise SandboxError(f"--clusters {self.clusters} is out of range: use 1 to 64")
        if self.kkp and not 2 <= self.kkp_spec_clusters <= 64:
            raise SandboxError(f"{self.kkp_spec_clusters} clusters for mesh-kkp.yaml: use 2 to 64")
        if not 1 <= self.nodes <= 200:
            raise SandboxError(f"--nodes {self.nodes} is out of range: use 1 to 200")
        if self.time_scale < 0:
            raise SandboxError(f"--time-scale {self.time_scale} is negative: use 0 (instant) or more")
        line = _line(self.cilium_version)
        self.kkp_version = self.kkp_version or DEFAULT_KKP_FOR_LINE[line]
        if self.charts is not None:
            try:
                ChartRenderer(self.charts).archive(_concrete(self.cilium_version))
            except ChartError as exc:
                raise SandboxError(f"--charts: {exc.message}") from None

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "ready").unlink(missing_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="clustermesh-sandbox-tls-")
        self._loop = LoopThread()
        self._loop.start()
        try:
            self._loop.run(self._start_async())
            self._write_files()
            self._wait_ready()
            (self.directory / "ready").write_text("ready\n")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # uvicorn reports keep-alive connections it cuts at shutdown as errors; they are expected here
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        if self._loop is not None:
            try:
                self._loop.run(self._stop_async())
            finally:
                self._loop.stop()
                self._loop = None
        (self.directory / "ready").unlink(missing_ok=True)
        info = self.directory / "sandbox.json"
        if info.exists() and read_info(self.directory).get("pid") == os.getpid():
            info.unlink()  # a stale file would send `down` or `fault` to a pid that is no longer ours
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _start_async(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        world = World(
            cilium_version=self.cilium_version,
            kkp_version=self.kkp_version or "2.22",
            time_scale=self.time_scale,
            seed=self.seed,
            charts=self.charts,
            helm_reissues_on_render=self.helm_reissues_on_render,
        )
        self.world = world
        for i in range(1, self.clusters + 1):
            pod_cidr = "172.25.0.0/16" if (self.overlap_pod_cidrs and i == 2) else None
            await self._start_cluster(i, pod_cidr)
        world.start(loop)
        control = Starlette(
            routes=[
                Route("/faults", self._control_faults, methods=["POST", "GET"]),
                Route("/upgrade", self._control_upgrade, methods=["POST"]),
                Route("/calendar", self._control_calendar, methods=["POST"]),
            ]
        )
        self._control = await _start_http_server(control)
        self.control_port = self._control.port
        if self.kkp:
            await self._start_kkp()

    async def _start_cluster(self, i: int, pod_cidr: str | None, cilium_version: str | None = None) -> ClusterEndpoint:
        """One simulated user cluster: its store in the world, its CA, token and HTTPS API server."""
        assert self.world is not None and self._tmp is not None
        tmp = Path(self._tmp.name)
        store = Store()
        store.register(builtin_types())
        sim = self.world.add_cluster(store, index=i, nodes=self.nodes, pod_cidr=pod_cidr, cilium_version=cilium_version)
        ca = pki.make_ca(f"{sim.name}-apiserver-ca")
        serving = pki.issue(ca, "kube-apiserver", dns_names=("localhost",), ip_addresses=("127.0.0.1",), client=False)
        certfile, keyfile = tmp / f"{sim.name}.crt", tmp / f"{sim.name}.key"
        certfile.write_bytes(serving.cert_pem)
        keyfile.write_bytes(serving.key_pem)
        keyfile.chmod(0o600)
        ep = ClusterEndpoint(
            name=sim.name,
            index=i,
            store=store,
            token=secrets.token_urlsafe(32),
            ca=ca,
            faults=ApiFaults(seed=self.seed + i),
        )
        app = create_app(
            store,
            token=ep.token,
            exec_handler=self._exec_handler(sim.name),
            faults=ep.faults,
        )
        # no uvicorn Date header: the API sends its own, at the World's calendar time
        ep.server = await start_https_server(app, certfile=str(certfile), keyfile=str(keyfile), date_header=False)
        ep.port = ep.server.port
        self.endpoints.append(ep)
        return ep

    # ---- the simulated KKP API (kkp=True) -------------------------------------------------------

    async def _start_kkp(self) -> None:
        assert self._tmp is not None
        tmp = Path(self._tmp.name)
        self._kkp_ca = pki.make_ca("sandbox-kkp-api-ca")
        serving = pki.issue(
            self._kkp_ca, "kkp-api", dns_names=("localhost",), ip_addresses=("127.0.0.1",), client=False
        )
        certfile, keyfile = tmp / "kkp-api.crt", tmp / "kkp-api.key"
        certfile.write_bytes(serving.cert_pem)
        keyfile.write_bytes(serving.key_pem)
        keyfile.chmod(0o600)
        self.kkp_state = KkpState(
            token=secrets.token_urlsafe(32), project=new_project_id(), time_scale=self.time_scale, seed=self.seed
        )
        app = create_kkp_app(self.kkp_state, self._provision_kkp_cluster)
        self._kkp_server = await start_https_server(app, certfile=str(certfile), keyfile=str(keyfile))
        self.kkp_port = self._kkp_server.port

    async def _provision_kkp_cluster(self, record: KkpRecord) -> None:
        """KKP created a cluster: start a simulated user cluster with its Cilium version and pod CIDR."""
        net = record.spec.get("clusterNetwork") or {}
        pods = [c for c in (net.get("pods") or {}).get("cidrBlocks") or [] if ":" not in c]
        cni = record.spec.get("cniPlugin") or {}
        assert self.world is not None  # index taken before any await: concurrent creates differ
        index = max((c.index for c in self.world.clusters), default=0) + 1
        ep = await self._start_cluster(index, pods[0] if pods else None, str(cni.get("version") or "") or None)
        record.url = ep.url
        record.kubeconfig = yaml.safe_dump(self.kubeconfig(ep), sort_keys=False)

    @property
    def kkp_url(self) -> str:
        return f"https://127.0.0.1:{self.kkp_port}"

    async def _stop_async(self) -> None:
        import asyncio

        # together: each server may wait its graceful-shutdown second for idle keep-alive clients
        await asyncio.gather(*(ep.server.stop() for ep in self.endpoints if ep.server is not None))
        for ep in self.endpoints:
            ep.server = None
        if self._kkp_server is not None:
            await self._kkp_server.stop()
            self._kkp_server = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        if self.world is not None and hasattr(self.world, "stop"):
            self.world.stop()

    def _exec_handler(self, cluster: str) -> Any:
        def handle(namespace: str, pod: str, container: str, argv: list[str]) -> ExecResult:
            assert self.world is not None
            states = [ClusterState(c.name, c.store) for c in self.world.clusters]
            code, out, err = exec_command(states, self.mesh_faults, cluster, namespace, pod, container, argv)
            return ExecResult(code, out, err)

        return handle

    # ---- files ----------------------------------------------------------------------------------

    def kubeconfig(self, ep: ClusterEndpoint) -> dict[str, Any]:
        import base64

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": ep.name,
                    "cluster": {
                        "server": ep.url,
                        "certificate-authority-data": base64.b64encode(ep.ca.cert_pem).decode(),
                    },
                }
            ],
            "users": [{"name": f"{ep.name}-admin", "user": {"token": ep.token}}],
            "contexts": [
                {"name": ep.name, "context": {"cluster": ep.name, "user": f"{ep.name}-admin"}},
            ],
            "current-context": ep.name,
        }

    def _write_files(self) -> None:
        assert self.world is not None
        mesh_clusters = []
        for ep, sim in zip(self.endpoints, self.world.clusters, strict=True):
            path = self.directory / f"{ep.name}.kubeconfig"
            _write_private(path, yaml.safe_dump(self.kubeconfig(ep), sort_keys=False))
            ep.kubeconfig = path
            mesh_clusters.append(
                {
                    "name": ep.name,
                    "id": ep.index,
                    "kubeconfig": {"path": str(path.resolve()), "context": ep.name},
                    "pod_cidrs": [str(sim.pod_cidr)],
                }
            )
        mesh = {
            "name": "sandbox",
            "clusters": mesh_clusters,
            "cilium": {"service_type": "LoadBalancer"},
        }
        if self.time_scale < 1:
            # simulated delays are shorter than real ones: look more often than the 2 s default
            mesh["timeouts"] = {"poll_interval": 0.2}
        header = (
            "# A mesh spec for the sandbox in this folder (written by `clustermesh sandbox up`).\n"
            "# Run: clustermesh setup --config " + str((self.directory / "mesh.yaml").resolve()) + "\n"
        )
        if mesh_clusters:
            (self.directory / "mesh.yaml").write_text(header + yaml.safe_dump(mesh, sort_keys=False))
        if self.kkp:
            self._write_kkp_files()
        info = {
            "pid": os.getpid(),
            "cilium_version": self.cilium_version,
            "kkp_version": self.kkp_version,
            "time_scale": self.time_scale,
            "charts": str(Path(self.charts).resolve()) if self.charts else None,
            "control_url": f"http://127.0.0.1:{self.control_port}",
            "control_token": self.control_token,
            "clusters": [
                {"name": ep.name, "port": ep.port, "url": ep.url, "kubeconfig": str(ep.kubeconfig)}
                for ep in self.endpoints
            ],
        }
        _write_private(self.directory / "sandbox.json", json.dumps(info, indent=2) + "\n")

    def _write_kkp_files(self) -> None:
        assert self.kkp_state is not None and self._kkp_ca is not None
        ca_path = self.directory / "kkp-ca.crt"
        ca_path.write_bytes(self._kkp_ca.cert_pem)
        info = {
            "url": self.kkp_url,
            "token": self.kkp_state.token,
            "project": self.kkp_state.project,
            "datacenter": "sandbox-dc",
            "ca_file": str(ca_path.resolve()),
            "token_env": KKP_TOKEN_ENV,
        }
        _write_private(self.directory / "kkp.json", json.dumps(info, indent=2) + "\n")
        ref = {
            "api_url": self.kkp_url,
            "project": self.kkp_state.project,
            "token_env": KKP_TOKEN_ENV,
            "ca_file": str(ca_path.resolve()),
        }
        mesh: dict[str, Any] = {
            "name": "sandbox-kkp",
            "clusters": [
                {"name": f"cluster-{i}", "id": i, "kkp": dict(ref)} for i in range(1, self.kkp_spec_clusters + 1)
            ],
            "kkp": {
                "datacenter": "sandbox-dc",
                "provider": "bringyourown",
                "kubernetes_version": "1.32.4",
                "cilium_version": _concrete(self.cilium_version),
            },
            "cilium": {"service_type": "LoadBalancer"},
        }
        if self.time_scale < 1:
            mesh["timeouts"] = {"poll_interval": 0.2}
        path = (self.directory / "mesh-kkp.yaml").resolve()
        header = (
            "# A mesh spec whose clusters are KKP references (written by `clustermesh sandbox up --kkp`).\n"
            f"# export {KKP_TOKEN_ENV}=<token from kkp.json>, then:\n"
            f"#   clustermesh clusters create --config {path}\n"
            f"#   clustermesh setup --config {path}\n"
        )
        (self.directory / "mesh-kkp.yaml").write_text(header + yaml.safe_dump(mesh, sort_keys=False))

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """Every API answers /version over verified TLS with its token."""
        deadline = time.monotonic() + timeout
        for ep in self.endpoints:
            ctx = ssl.create_default_context(cadata=ep.ca.cert_pem.decode())
            while True:
                req = urllib.request.Request(ep.url + "/version", headers={"Authorization": f"Bearer {ep.token}"})
                try:
                    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise SandboxError(f"{ep.name} did not answer on {ep.url} within {timeout}s: {exc}") from exc
                    time.sleep(0.05)

    # ---- faults ---------------------------------------------------------------------------------

    def endpoint(self, name: str) -> ClusterEndpoint:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        raise SandboxError(f"no cluster named {name!r}: the sandbox has {', '.join(e.name for e in self.endpoints)}")

    def fault(self, kind: str, **args: Any) -> dict[str, Any]:
        """Inject or clear a fault. Runs on the loop thread; returns what was done."""
        assert self._loop is not None
        return self._loop.call(self._apply_fault, kind, args)  # type: ignore[no-any-return]

    def _apply_fault(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.world is not None
        if kind not in FAULT_KINDS:
            raise SandboxError(f"unknown fault {kind!r}: use one of {', '.join(FAULT_KINDS)}")
        cluster = args.get("cluster")
        if kind in ("block-port", "unblock-port"):
            a, b, what = args["a"], args["b"], args["port"]
            self.endpoint(a), self.endpoint(b)
            (self.mesh_faults.block if kind == "block-port" else self.mesh_faults.unblock)(a, b, what)
        elif kind == "lb-never":
            self.world.set_lb_never(self.endpoint(cluster).name, bool(args.get("on", True)))
        elif kind == "certgen-delay":
            self.world.set_certgen_delay(self.endpoint(cluster).name, float(args["seconds"]))
        elif kind == "expire-certs":
            self.world.expire_certificates(self.endpoint(cluster).name)
        elif kind == "rotate-ca":
            self.world.rotate_ca(self.endpoint(cluster).name)
        elif kind == "pod-cidr":
            self.world.set_pod_cidr(self.endpoint(cluster).name, str(args["cidr"]))
        elif kind == "api-errors":
            for ep in self._targets(cluster):
                ep.faults.error_rate = float(args.get("rate", 0.2))
        elif kind == "api-latency":
            for ep in self._targets(cluster):
                ep.faults.latency_s = float(args.get("seconds", 1.0))
                ep.faults.latency_only = str(args.get("only") or "")
        elif kind == "api-down":
            for ep in self._targets(cluster):
                ep.faults.down = bool(args.get("on", True))
        elif kind == "clear":
            self.mesh_faults.clear()
            for ep in self.endpoints:
                ep.faults.error_rate, ep.faults.latency_s, ep.faults.down = 0.0, 0.0, False
                ep.faults.latency_only = ""
                self.world.set_lb_never(ep.name, False)
        return {"ok": True, "fault": kind, **{k: v for k, v in args.items()}}

    def upgrade(self, cluster: str, version: str) -> dict[str, Any]:
        """KKP's upgrade of one cluster's Cilium (``World.upgrade_cilium``). Runs on the loop thread."""
        assert self._loop is not None
        return self._loop.call(self._apply_upgrade, cluster, version)  # type: ignore[no-any-return]

    def _apply_upgrade(self, cluster: str, version: str) -> dict[str, Any]:
        assert self.world is not None
        name = self.endpoint(cluster).name
        line = ".".join(_concrete(version).split(".")[:2])
        if line not in CILIUM_LINES:
            raise SandboxError(
                f"--to {version!r}: the sandbox serves Cilium {', '.join(CILIUM_LINES)}; "
                "pass one of them, optionally with a patch (1.19.4)"
            )
        if self.charts is not None:
            try:
                ChartRenderer(self.charts).archive(_concrete(version))
            except ChartError as exc:
                raise SandboxError(f"--to {version!r}: {exc.message}") from None
        was = self.world.cluster(name).cilium_version
        to = self.world.upgrade_cilium(name, version)
        return {"ok": True, "cluster": name, "from": was, "to": to}

    async def _control_upgrade(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.control_token}":
            return JSONResponse({"ok": False, "error": "missing or wrong control token"}, status_code=401)
        body = await request.json()
        try:
            return JSONResponse(self._apply_upgrade(str(body["cluster"]), str(body["version"])))
        except (SandboxError, KeyError, ValueError) as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)

    def advance_calendar(self, days: float) -> dict[str, Any]:
        """Move the certificates' calendar on by ``days`` (``World.advance_calendar``). Runs on the loop thread."""
        assert self._loop is not None
        return self._loop.call(self._apply_calendar, days)  # type: ignore[no-any-return]

    def _apply_calendar(self, days: float) -> dict[str, Any]:
        assert self.world is not None
        offset = self.world.advance_calendar(float(days))  # ValueError: negative
        return {"ok": True, "offset_days": offset, "now": self.world.calendar.now().isoformat()}

    async def _control_calendar(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.control_token}":
            return JSONResponse({"ok": False, "error": "missing or wrong control token"}, status_code=401)
        try:
            return JSONResponse(self._apply_calendar(float((await request.json())["advance_days"])))
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"ok": False, "error": f"advance_days: {exc}"}, status_code=400)

    def _targets(self, cluster: str | None) -> list[ClusterEndpoint]:
        return [self.endpoint(cluster)] if cluster else list(self.endpoints)

    async def _control_faults(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.control_token}":
            return JSONResponse({"ok": False, "error": "missing or wrong control token"}, status_code=401)
        if request.method == "GET":
            return JSONResponse({"ok": True, "kinds": list(FAULT_KINDS)})
        body = await request.json()
        try:
            kind = body.pop("kind")
            return JSONResponse(self._apply_fault(kind, body))
        except (SandboxError, KeyError, ValueError) as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)


KKP_TOKEN_ENV = "CLUSTERMESH_KKP_TOKEN"


def _concrete(version: str) -> str:
    from sandbox.world import concrete_version

    return concrete_version(version)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (kubeconfigs and the control token are credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


async def _start_http_server(app: Starlette) -> Any:
    import asyncio

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    class Running:
        def __init__(self) -> None:
            self.task = asyncio.ensure_future(_serve(server))
            self.port = 0

        async def stop(self) -> None:
            server.should_exit = True
            await self.task

    async def _serve(srv: uvicorn.Server) -> None:
        await srv.serve()

    running = Running()
    while not server.started:
        if running.task.done():
            running.task.result()
        await asyncio.sleep(0.01)
    running.port = server.servers[0].sockets[0].getsockname()[1]
    return running
