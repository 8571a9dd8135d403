"""``kubectl exec`` into an agent pod: the binaries, a shell's command lines, curl."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import posixpath
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sandbox.controllers.mcs import CLUSTERSET_SUFFIX, clusterset_address
from sandbox.datapath.facts import _Facts
from sandbox.datapath.links import _Mesh
from sandbox.datapath.services import _frontends, _LazySnapshot, _selects
from sandbox.datapath.state import NGINX_BODY, Clusters, MeshFaults, _get, _ready
from sandbox.store import Obj
from sandbox.versions import facts as version_facts

AGENT_BINARIES = ("cilium", "cilium-dbg", "cilium-health")
SHELLS = ("sh", "bash", "ash", "dash")


@dataclass
class _ExecContext:
    mesh: _Mesh
    src: _Facts
    pod: Obj
    namespace: str
    agent: bool  # exec lands in the cilium-agent container


def _not_found(binary: str) -> tuple[int, bytes, bytes]:
    return (
        127,
        b"",
        (
            f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{binary}": '
            "executable file not found in $PATH: unknown\n"
        ).encode(),
    )


def exec_command(
    clusters: Clusters,
    faults: MeshFaults | None,
    cluster: str,
    namespace: str,
    pod: str,
    container: str | None,
    argv: list[str],
    now: datetime | None = None,
) -> tuple[int, bytes, bytes]:
    """``kubectl exec`` into a pod: agent CLIs in ``cilium-agent``, ``curl`` and ``sh -c`` anywhere."""
    with _collector_paused():
        return _exec(clusters, faults, cluster, namespace, pod, container, argv, now)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while one exec is answered.

    An answer builds tens of thousands of short-lived objects (in an 800-node mesh, the health report
    and its JSON). With the collector on, they outlive its young collections while the answer is being
    built and pile up in the oldest generation, whose full collections walk every object of every
    store: at 16 clusters x 50 nodes that cost more CPU than building the answer. Paused, they are
    freed by reference counting once the answer is done (an exec makes no reference cycles:
    tests/sandbox pins that), and nothing is promoted. What another thread allocates meanwhile is
    collected once the collector runs again.
    """
    if not gc.isenabled():  # paused already (e.g. by an exec on another sandbox's loop thread)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _exec(
    clusters: Clusters,
    faults: MeshFaults | None,
    cluster: str,
    namespace: str,
    pod: str,
    container: str | None,
    argv: list[str],
    now: datetime | None,
) -> tuple[int, bytes, bytes]:
    mesh = _Mesh(clusters, faults, now)
    src = mesh.facts(cluster)
    obj = src.pods_by_key.get((namespace, pod))
    if obj is None:
        return 1, b"", f'Error from server (NotFound): pods "{pod}" not found\n'.encode()
    containers = [str(c.get("name")) for c in _get(obj, "spec", "containers", default=[]) or []]
    if container and containers and container not in containers:
        return 1, b"", f'error: unable to upgrade connection: container not found ("{container}")\n'.encode()
    if not argv:
        return 1, b"", b"error: you must specify at least one command for the container\n"
    labels = _get(obj, "metadata", "labels", default={}) or {}
    agent = labels.get("k8s-app") == "cilium" and (container or "cilium-agent") == "cilium-agent"
    ctx = _ExecContext(mesh, src, obj, namespace, agent)
    return _run(ctx, list(argv), shell=False)


def _run(ctx: _ExecContext, argv: list[str], *, shell: bool) -> tuple[int, bytes, bytes]:
    binary = posixpath.basename(argv[0])
    if binary in SHELLS:
        if len(argv) >= 3 and argv[1] == "-c":
            return _run_line(ctx, argv[2])
        return 0, b"", b""  # an interactive shell without a TTY reads no input here and exits
    if binary == "exec" and len(argv) > 1:
        return _run(ctx, argv[1:], shell=shell)
    if binary == "curl":
        return _curl(ctx, argv[1:])
    if binary == "echo":
        return 0, (" ".join(argv[1:]) + "\n").encode(), b""
    if binary in ("true", "false"):
        return (0 if binary == "true" else 1), b"", b""
    if (
        ctx.agent
        and binary in AGENT_BINARIES
        and not (binary == "cilium-dbg" and not version_facts(ctx.src.ver).cilium_dbg)
    ):
        from sandbox.cilium_cli import run_agent_command  # lazy: written concurrently, imported on use

        node = str(_get(ctx.pod, "spec", "nodeName", default="") or "")
        pod_ready = _ready(ctx.pod)
        snapshot = _LazySnapshot(ctx.mesh, ctx.src, node, ready=pod_ready)
        code, out, err = run_agent_command(snapshot, [binary, *argv[1:]])
        return code, out.encode(), err.encode()
    if shell:
        return 127, b"", f"sh: 1: {argv[0]}: not found\n".encode()
    return _not_found(argv[0])


def _run_line(ctx: _ExecContext, line: str) -> tuple[int, bytes, bytes]:
    """A tiny ``sh -c``: commands joined by ``;``, ``&&`` and ``||``; pipes and redirections are refused."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        return 2, b"", f"sh: 1: Syntax error: {exc}\n".encode()
    commands: list[tuple[str, list[str]]] = []  # (operator before it, argv)
    op: str = ";"
    cur: list[str] = []
    for tok in tokens:
        if tok in (";", "&&", "||"):
            commands.append((op, cur))
            op, cur = tok, []
        elif tok in ("|", "&", ">", ">>", "<") or set(tok) <= set(";&|"):
            return (
                2,
                b"",
                f"sh: pipes, redirections and background jobs are not simulated: {line!r}\n".encode(),
            )
        else:
            cur.append(tok)
    commands.append((op, cur))
    code, out, err = 0, b"", b""
    for op, argv in commands:
        if not argv:
            continue
        if (op == "&&" and code != 0) or (op == "||" and code == 0):
            continue
        code, o, e = _run(ctx, argv, shell=True)
        out += o
        err += e
    return code, out, err


# ---- curl ---------------------------------------------------------------------------------------------

_CURL_VALUE_LONG = {
    "--max-time",
    "--connect-timeout",
    "--output",
    "--write-out",
    "--header",
    "--request",
    "--data",
    "--data-raw",
    "--retry",
    "--retry-delay",
    "--retry-max-time",
    "--user-agent",
    "--resolve",
    "--cacert",
    "--cert",
    "--key",
    "--user",
    "--url",
}
_CURL_FLAG_LONG = {
    "--silent",
    "--show-error",
    "--fail",
    "--insecure",
    "--location",
    "--verbose",
    "--include",
    "--head",
    "--no-progress-meter",
    "--http1.1",
    "--compressed",
    "--fail-with-body",
    "--ipv4",
}
_CURL_VALUE_SHORT = set("owmHXdAuEe")
_CURL_FLAG_SHORT = set("sSfkLviI4")


@dataclass
class _CurlArgs:
    url: str = ""
    silent: bool = False
    show_error: bool = False
    fail: bool = False
    head: bool = False
    output: str | None = None
    write_out: str | None = None
    max_time: float | None = None
    connect_timeout: float | None = None


def _curl_unknown(option: str) -> bytes:
    return f"curl: option {option}: is unknown\ncurl: try 'curl --help' for more information\n".encode()


def _parse_curl(args: list[str]) -> _CurlArgs | tuple[int, bytes, bytes]:
    parsed = _CurlArgs()

    def value(name: str, val: str) -> tuple[int, bytes, bytes] | None:
        if name in ("--max-time", "-m", "--connect-timeout"):
            try:
                seconds = float(val)
            except ValueError:
                return 2, b"", f"curl: option {name}: expected a proper numerical parameter\n".encode()
            if name == "--connect-timeout":
                parsed.connect_timeout = seconds
            else:
                parsed.max_time = seconds
        elif name in ("--output", "-o"):
            parsed.output = val
        elif name in ("--write-out", "-w"):
            parsed.write_out = val
        elif name == "--url":
            parsed.url = val
        return None

    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, val = arg.partition("=")
            if name in _CURL_VALUE_LONG:
                if not eq:
                    i += 1
                    if i >= len(args):
                        return 2, b"", f"curl: option {name}: requires parameter\n".encode()
                    val = args[i]
                err = value(name, val)
                if err:
                    return err
            elif name in _CURL_FLAG_LONG:
                parsed.silent |= name == "--silent"
                parsed.show_error |= name == "--show-error"
                parsed.fail |= name in ("--fail", "--fail-with-body")
                parsed.head |= name == "--head"
            else:
                return 2, b"", _curl_unknown(name)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in _CURL_VALUE_SHORT:
                    rest = arg[j + 1 :]
                    if not rest:
                        i += 1
                        if i >= len(args):
                            return 2, b"", f"curl: option -{ch}: requires parameter\n".encode()
                        rest = args[i]
                    err = value(f"-{ch}", rest)
                    if err:
                        return err
                    break
                if ch not in _CURL_FLAG_SHORT:
                    return 2, b"", _curl_unknown(f"-{ch}")
                parsed.silent |= ch == "s"
                parsed.show_error |= ch == "S"
                parsed.fail |= ch == "f"
                parsed.head |= ch == "I"
                j += 1
        elif not parsed.url:
            parsed.url = arg
        i += 1
    if not parsed.url:
        return 2, b"", b"curl: no URL specified\ncurl: try 'curl --help' for more information\n"
    return parsed


def _write_out(fmt: str | None, code: int, ip: str, port: int, url: str, exit_code: int) -> bytes:
    if fmt is None:
        return b""
    variables = {
        "http_code": f"{code:03d}",
        "response_code": f"{code:03d}",
        "remote_ip": ip,
        "remote_port": str(port) if ip else "",
        "url_effective": url,
        "exitcode": str(exit_code),
        "time_total": "0.002310" if code else "0.000000",
    }
    text = re.sub(r"%\{([a-z_]+)\}", lambda m: variables.get(m.group(1), ""), fmt)
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").encode()


def _curl(ctx: _ExecContext, args: list[str]) -> tuple[int, bytes, bytes]:
    parsed = _parse_curl(args)
    if isinstance(parsed, tuple):
        return parsed
    url = urlsplit(parsed.url if "://" in parsed.url else f"http://{parsed.url}")
    host = url.hostname or ""
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return 3, b"", b"curl: (3) URL using bad/illegal format or missing URL\n"
    show_err = parsed.show_error or not parsed.silent

    def fail(code: int, message: str, ip: str = "") -> tuple[int, bytes, bytes]:
        out = _write_out(parsed.write_out, 0, ip, port, parsed.url, code)
        return code, out, (f"curl: ({code}) {message}\n".encode() if show_err else b"")

    ip = _resolve(ctx, host)
    if ip is None:
        return fail(6, f"Could not resolve host: {host}")
    verdict = _reach(ctx, ip, port)
    if verdict == "refused":
        return fail(7, f"Failed to connect to {host} port {port} after 0 ms: Couldn't connect to server", ip)
    if verdict == "timeout":
        limits = [t for t in (parsed.connect_timeout, parsed.max_time) if t is not None]
        ms = int(min(limits) * 1000) if limits else 300_000
        return fail(28, f"Connection timed out after {ms} milliseconds", ip)
    body = b"" if parsed.output is not None else _http_body(parsed.head)
    return 0, body + _write_out(parsed.write_out, 200, ip, port, parsed.url, 0), b""


def _http_body(head: bool) -> bytes:
    headers = (
        "HTTP/1.1 200 OK\r\nServer: nginx/1.16.1\r\nContent-Type: text/html\r\n"
        f"Content-Length: {len(NGINX_BODY)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return headers.encode() if head else NGINX_BODY.encode()


def _resolve(ctx: _ExecContext, host: str) -> str | None:
    """Cluster DNS as seen from the pod: service names (short, ``<ns>``, ``.svc``, ``.svc.cluster.local``)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    if name.endswith(CLUSTERSET_SUFFIX):  # MCS-API: the ServiceImport's address (CoreDNS's multicluster plugin)
        return clusterset_address(ctx.mesh.states[ctx.src.name].store, name)
    for suffix in (".svc.cluster.local", ".svc"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = name.split(".")
    if len(parts) == 1:
        key = (ctx.namespace, parts[0])
    elif len(parts) == 2:
        key = (parts[1], parts[0])
    else:
        return None
    svc = ctx.src.services_by_key.get(key)
    if svc is None:
        return None
    cluster_ip = str(_get(svc, "spec", "clusterIP", default="") or "")
    if cluster_ip and cluster_ip != "None":
        return cluster_ip
    # headless: DNS answers with the ready pods' addresses
    selector = _get(svc, "spec", "selector", default={}) or {}
    for pod in ctx.src.pods_by_ns.get(key[0], []):
        if selector and _selects(selector, pod) and _ready(pod) and _get(pod, "status", "podIP"):
            return str(pod["status"]["podIP"])
    return None


def _reach(ctx: _ExecContext, ip: str, port: int) -> str:
    """``ok``, ``refused`` (a frontend without backends) or ``timeout`` for a TCP connect from the pod."""
    mesh, src = ctx.mesh, ctx.src
    node = str(_get(ctx.pod, "spec", "nodeName", default="") or "")
    node_ips = src.node_ips
    for fe in _frontends(mesh, src, node):
        e = fe.entry
        any_node = e.type == "NodePort" and e.frontend_ip == "0.0.0.0" and ip in node_ips
        if (e.frontend_ip != ip and not any_node) or e.frontend_port != port or e.protocol != "TCP":
            continue
        active = [b for b in fe.backends if b.backend.state == "active"]
        if not active:
            return "refused"
        chosen = [b for b in active if b.backend.preferred] or active
        usable = [b for b in chosen if b.local or mesh.datapath_ok(src, b.cluster, b.node)]
        return "ok" if usable else "timeout"
    # not a service frontend: maybe a pod, here or in a connected cluster
    pod = src.pods_by_ip.get(ip)
    if pod is not None:
        return "ok" if _ready(pod) else "refused"
    for dst in mesh.connected_peers(src, node):
        pod = dst.pods_by_ip.get(ip)
        if pod is not None:
            dst_node = _get(pod, "spec", "nodeName")
            if not mesh.datapath_ok(src, dst, str(dst_node) if dst_node else None):
                return "timeout"
            return "ok" if _ready(pod) else "refused"
    return "timeout"
