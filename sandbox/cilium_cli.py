"""The simulated Cilium agent CLI: ``cilium``/``cilium-dbg`` and ``cilium-health`` inside an agent pod.

The world hands over an :class:`~sandbox.cilium_model.AgentSnapshot`; this module prints it exactly the
way the agent's CLI of that Cilium version would (1.13 to 1.20), so the pipeline's parsers are tested
against real formats, not against a second copy of their own assumptions.

1.19 and 1.20 (see ``tests/fixtures/cilium/README.md`` for the sources):

- ``cilium status``: from 1.19 the ClusterMesh header has no ``N global-services`` (reference/cilium.md §5;
  a real 1.19.6 capture reads ``ClusterMesh: 0/0 remote clusters ready``); the JSON drops
  ``num-global-services``. Real.
- ``cilium-health status`` (plain, ``--verbose``, ``-o json``): as 1.18. No 1.19/1.20 change was found in
  Cilium's formatter or its golden files; *reconstructed* (no public 1.20 capture found).
- ``cilium service list``: 1.20 keeps the ``ID`` column. Captures from 1.20's development (cilium#44301,
  2026-02; cilium#45871, 2026-05, "latest version") print it; the only printing code without it comes from
  cilium#29055, closed unmerged. reference/cilium.md §2.2 says 1.20 drops it; that is not what the
  evidence shows, so the ID-less layout is printed only on request (``id_column=False``, for parser
  tests). The 1.20 table is *reconstructed* from the 1.18 code plus those captures. The formatting is ported
from Cilium's Go code: ``text/tabwriter`` (column padding and trailing spaces), ``time.Duration``'s
``String()`` (``585.908µs``), ``encoding/json``'s ``MarshalIndent`` and cobra/pflag's error messages.

Public API: :func:`run_agent_command`, plus :func:`go_duration` and :class:`TabWriter` for anyone who
needs the same Go formatting.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson

from sandbox.agentcli.cobra import _Command, _execute, _Flag
from sandbox.agentcli.go import _NS_S, Result, TabWriter, Version, _rfc3339, go_duration
from sandbox.agentcli.health import _format_health_legacy, _format_health_table, _health_json, _HealthView, _local_node
from sandbox.agentcli.services import _format_service_list, _service_json
from sandbox.agentcli.troubleshoot import troubleshoot_clustermesh
from sandbox.cilium_model import (
    AgentSnapshot,
    PeerStatus,
)
from sandbox.versions import LINES
from sandbox.versions import facts as line_facts

__all__ = ["TabWriter", "go_duration", "run_agent_command"]


_GO_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
_GO_JSON_ESCAPES = ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"))
_GO_JSON_LINE_ESCAPES = (("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))


def _go_json(data: Any) -> str:
    """``json.MarshalIndent(data, "", "  ")`` then the two ``Println`` calls of Cilium's ``dumpJSON``.

    go-swagger models list their fields alphabetically, so sorted keys give Go's order; Go escapes
    ``<``, ``>`` and ``&`` (and U+2028, U+2029). ``pkg/command`` prints the JSON and then an empty line
    (visible in real captures such as ``service-list-1.18.json``).

    The models printed here hold strings, integers, booleans, lists and string-keyed objects only (Go
    formats floats unlike Python and orjson alike, and no model has one). orjson writes those exactly as
    ``json.dumps(indent=2, sort_keys=True, ensure_ascii=False)`` would, at a fraction of the cost (a
    health answer of an 800-node mesh is 600 kB); what it refuses (integers beyond 64 bits, subclasses,
    lone surrogates) goes through ``json.dumps``, which either prints it as before or raises as before.
    """
    try:
        raw = orjson.dumps(data, option=_GO_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _go_json_stdlib(data)
    # UTF-8 never has these bytes inside another character; a single byte is found fastest
    for char, escaped in _GO_JSON_ESCAPES:
        if char in raw:
            raw = raw.replace(char, escaped)
    if b"\xe2" in raw:  # the first byte of U+2028 and U+2029 (and of other characters)
        for char, escaped in _GO_JSON_LINE_ESCAPES:
            raw = raw.replace(char, escaped)
    return raw.decode() + "\n\n"


def _go_json_stdlib(data: Any) -> str:
    """``_go_json`` with the standard library's encoder, for data orjson does not take."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text + "\n\n"


# ---------------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------------


def _parse_version(raw: str) -> Version:
    """``"1.16.2"``, ``"v1.18.0-rc.1"`` → ``(1, 16)``; the minor line decides every format (unreadable: the newest)."""
    text = raw.strip().lstrip("vV")
    parts = text.split(".")
    try:
        major = int(parts[0])
        minor = int("".join(ch for ch in parts[1] if ch.isdigit()) or 0) if len(parts) > 1 else 0
    except ValueError:
        return max(LINES)
    return (major, minor)


def _agent_binary(version: Version) -> str:
    """The agent CLI's own name (cobra prints it in usage and errors); ``cilium`` is a link from 1.15."""
    return "cilium-dbg" if version >= (1, 15) else "cilium"


# ---------------------------------------------------------------------------------------------------
# cilium status
# ---------------------------------------------------------------------------------------------------

_ETCD_VERSION = {
    13: "3.5.7",
    14: "3.5.9",
    15: "3.5.12",
    16: "3.5.14",
    17: "3.5.17",
    18: "3.6.1",
    19: "3.6.4",
    20: "3.6.5",
}


def _commit(snapshot: AgentSnapshot) -> str:
    return hashlib.sha1(snapshot.cilium_version.encode()).hexdigest()[:8]


def _time_since(when: datetime | None, now: datetime) -> str:
    """Cilium's ``timeSince``: ``never`` or the age truncated to seconds, e.g. ``2m3s ago``."""
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    seconds = max(0, int((now - when).total_seconds()))
    return f"{go_duration(seconds * _NS_S)} ago"


def _peer_status_text(peer: PeerStatus, version: Version) -> str:
    if not peer.ready:
        return peer.error or "Waiting for initial connection to be established"
    etcd = _ETCD_VERSION.get(version[1], "3.5.17")
    return (
        f"etcd: 1/1 connected, leases=0, lock leases=0, has-quorum=true: "
        f"https://{peer.name}.mesh.cilium.io:2379 - {etcd} (Leader)"
    )


def _clustermesh_lines(snapshot: AgentSnapshot, version: Version, all_clusters: bool) -> list[str]:
    """The ``ClusterMesh:`` header and, per peer (not-ready only unless ``--all-clusters``), its details."""
    peers = snapshot.peers
    ready = sum(1 for p in peers if p.ready)
    what = "remote clusters ready" if version >= (1, 16) else "clusters ready"
    header = f"ClusterMesh:\t{ready}/{len(peers)} {what}"
    if _prints_global_services(version):
        header += f", {snapshot.global_services} global-services"
    lines = [header + "\n"]
    now = snapshot.health.timestamp
    kvstoremesh = "true" if version >= (1, 16) else "false"
    for peer in peers:
        if peer.ready and not all_clusters:
            continue
        readiness = "ready" if peer.ready else "not-ready"
        last = _time_since(peer.last_failure, now)
        if version < (1, 14):
            lines.append(
                f"   {peer.name}: {readiness}, {peer.num_nodes} nodes, {peer.num_identities} identities, "
                f"{peer.num_services} services, {peer.num_failures} failures (last: {last})\n"
            )
            lines.append(f"   └  {_peer_status_text(peer, version)}\n")
            continue
        counts = (
            f"   {peer.name}: {readiness}, {peer.num_nodes} nodes, {peer.num_endpoints} endpoints, "
            f"{peer.num_identities} identities, {peer.num_services} services, "
        )
        if version >= (1, 17):
            counts += "0 MCS-API service exports, "
        word = "reconnections" if version >= (1, 16) else "failures"
        lines.append(f"{counts}{peer.num_failures} {word} (last: {last})\n")
        lines.append(f"   └  {_peer_status_text(peer, version)}\n")
        exports = ", service-exports=disabled" if version >= (1, 17) else ""
        if peer.ready:
            config = (
                f"expected=true, retrieved=true, cluster-id={peer.cluster_id}, "
                f"kvstoremesh={kvstoremesh}, sync-canaries=true{exports}"
            )
        else:
            config = "expected=unknown, retrieved=unknown"
        lines.append(f"   └  remote configuration: {config}\n")
        synced = "true" if peer.ready else "false"
        lines.append(
            f"   └  synchronization status: nodes={synced}, endpoints={synced}, "
            f"identities={synced}, services={synced}{exports}\n"
        )
    return lines


def _prints_global_services(version: Version) -> bool:
    """``N global-services`` in ``cilium status`` (text and JSON): gone from 1.19 on."""
    return line_facts((version[0], version[1], 0)).global_services_in_status


def _kpr_disabled(mode: str) -> bool:
    return mode.lower() in {"false", "disabled"}


def _pod_cidr(snapshot: AgentSnapshot) -> str:
    local = _local_node(snapshot.health, snapshot.node_name)
    ip = (local.endpoint.ip if local and local.endpoint else None) or (local.host.ip if local else "10.0.0.1")
    if ":" in ip:
        return ip.rsplit(":", 1)[0] + ":/64"
    return ".".join(ip.split(".")[:3]) + ".0/24"


def _identity_range(cluster_id: int) -> tuple[int, int]:
    if cluster_id == 0:
        return 256, 65535
    return cluster_id << 16, (cluster_id << 16) + 65535


def _format_status(snapshot: AgentSnapshot, version: Version, all_clusters: bool, all_health: bool) -> str:
    """``cilium status``: one tabwriter(2, 0, 3) for the agent's components, ClusterMesh and health."""
    w = TabWriter(2, 0, 3)
    local = _local_node(snapshot.health, snapshot.node_name)
    host_ip = local.host.ip if local else "10.0.0.1"
    ver = snapshot.cilium_version.lstrip("v")
    w.write("KVStore:\tOk\tDisabled\n")
    w.write("Kubernetes:\tOk\t1.29 (v1.29.4) [linux/amd64]\n")
    w.write(
        'Kubernetes APIs:\t["EndpointSliceOrEndpoint", "cilium/v2::CiliumClusterwideNetworkPolicy", '
        '"cilium/v2::CiliumEndpoint", "cilium/v2::CiliumNetworkPolicy", "cilium/v2::CiliumNode", '
        '"core/v1::Namespace", "core/v1::Pods", "core/v1::Service", "networking.k8s.io/v1::NetworkPolicy"]\n'
    )
    kpr = snapshot.kube_proxy_replacement
    devices = "" if _kpr_disabled(kpr) else f"[eth0 {host_ip} (Direct Routing)]"
    w.write(f"KubeProxyReplacement:\t{kpr}\t{devices}\n")
    w.write("Host firewall:\tDisabled\n")
    if version >= (1, 14):
        w.write("CNI Chaining:\tnone\n")
    w.write(f"Cilium:\tOk   {ver} (v{ver}-{_commit(snapshot)})\n")
    w.write("NodeMonitor:\tListening for events on 4 CPUs with 64x4096 of shared memory\n")
    w.write("Cilium health daemon:\tOk\t\n")
    endpoints = 2 + sum(1 for n in snapshot.health.nodes if n.endpoint is not None)
    w.write(f"IPAM:\tIPv4: {endpoints}/254 allocated from {_pod_cidr(snapshot)}, \n")
    if snapshot.mesh_enabled:
        for line in _clustermesh_lines(snapshot, version, all_clusters):
            w.write(line)
    if version >= (1, 14):
        w.write("IPv4 BIG TCP:\tDisabled\n")
        w.write("IPv6 BIG TCP:\tDisabled\n")
    w.write("BandwidthManager:\tDisabled\n")
    if version >= (1, 14):
        w.write("Routing:\tNetwork: Tunnel [vxlan]\tHost: Legacy\n")
    else:
        w.write("Host Routing:\tLegacy\n")
    if version >= (1, 16):
        w.write("Attach Mode:\tLegacy TC\n")
    if version >= (1, 17):
        w.write("Device Mode:\tveth\n")
    w.write("Masquerading:\tIPTables [IPv4: Enabled, IPv6: Disabled]\n")
    w.write("Controller Status:\t42/42 healthy\n")
    envoy = ", Envoy: external" if version >= (1, 16) else (", Envoy: embedded" if version >= (1, 14) else "")
    router = _pod_cidr(snapshot).rsplit(".", 1)[0] + ".1" if "." in _pod_cidr(snapshot) else host_ip
    w.write(f"Proxy Status:\tOK, ip {router}, 0 redirects active on ports 10000-20000{envoy}\n")
    low, high = _identity_range(snapshot.cluster_id)
    w.write(f"Global Identity Range:\tmin {low}, max {high}\n")
    w.write("Hubble:\tOk\tCurrent/Max Flows: 4095/4095 (100.00%), Flows/s: 3.52\tMetrics: Disabled\n")
    w.write("Encryption:\tDisabled\t\n")
    view = _HealthView(snapshot.health, local, version)
    if version >= (1, 17):
        _format_health_table(w, view, all_nodes=all_health, verbose=False, max_lines=0 if all_health else 10)
    else:
        # 1.13–1.16: the succinct table, only unhealthy nodes unless --all-health
        _format_health_legacy(w, view, print_all=all_health, succinct=True, verbose=False)
    return w.getvalue()


def _status_json(snapshot: AgentSnapshot, version: Version) -> dict[str, Any]:
    """A trimmed ``StatusResponse``: the parts a mesh check reads, with Go's omitempty on zero values."""
    ver = snapshot.cilium_version.lstrip("v")
    out: dict[str, Any] = {
        "cilium": {"msg": f"{ver} (v{ver}-{_commit(snapshot)})", "state": "Ok"},
        "cluster": {"ciliumHealth": {"state": "Ok"}},
        "kube-proxy-replacement": {"mode": snapshot.kube_proxy_replacement},
        "kubernetes": {"msg": "1.29 (v1.29.4) [linux/amd64]", "state": "Ok"},
        "kvstore": {"msg": "Disabled", "state": "Ok"},
    }
    if snapshot.mesh_enabled:
        clusters: list[dict[str, Any]] = []
        for peer in snapshot.peers:
            item: dict[str, Any] = {"name": peer.name, "status": _peer_status_text(peer, version)}
            numbers = {
                "num-nodes": peer.num_nodes,
                "num-identities": peer.num_identities,
                "num-shared-services": peer.num_services,
                "num-failures": peer.num_failures,
            }
            if version >= (1, 14):
                numbers["num-endpoints"] = peer.num_endpoints
            item.update({k: v for k, v in numbers.items() if v})
            if peer.ready:
                item["ready"] = True
            if peer.last_failure is not None:
                item["last-failure"] = _rfc3339(peer.last_failure)
            if version >= (1, 14):
                if peer.ready:
                    item["connected"] = True
                    config: dict[str, Any] = {"required": True, "retrieved": True, "sync-canaries": True}
                    if peer.cluster_id:
                        config["cluster-id"] = peer.cluster_id
                    if version >= (1, 16):
                        config["kvstoremesh"] = True
                    item["config"] = config
                    item["synced"] = {"endpoints": True, "identities": True, "nodes": True, "services": True}
                else:
                    item["synced"] = {}
            clusters.append(item)
        mesh: dict[str, Any] = {"clusters": clusters}
        if snapshot.global_services and _prints_global_services(version):
            mesh["num-global-services"] = snapshot.global_services
        out["cluster-mesh"] = mesh
    return out


# ---------------------------------------------------------------------------------------------------
# The two CLIs
# ---------------------------------------------------------------------------------------------------


def _output_flag(version: Version) -> _Flag:
    usage = "json| yaml| jsonpath='{}'" if version >= (1, 14) else "json| jsonpath='{}'"
    return _Flag("output", usage, "o", takes_value=True)


def _unsupported_output(fmt: str) -> Result:
    """Only ``json`` is simulated; Cilium's own printer failure is silent, so say why on stderr."""
    return 1, "", f"couldn't find output printer for {fmt!r} (the simulated agent prints only json)\n"


def _health_status(snapshot: AgentSnapshot, version: Version, opts: dict[str, Any], args: list[str]) -> Result:
    local = _local_node(snapshot.health, snapshot.node_name)
    view = _HealthView(snapshot.health, local, version)
    output = opts.get("output", "")
    if output:
        if output != "json":
            return _unsupported_output(output)
        return 0, _go_json(_health_json(view)), ""
    w = TabWriter(2, 0, 3)
    verbose = bool(opts.get("verbose"))
    if version >= (1, 17):
        _format_health_table(w, view, all_nodes=True, verbose=verbose, max_lines=0)
    else:
        _format_health_legacy(w, view, print_all=True, succinct=bool(opts.get("succinct")), verbose=verbose)
    return 0, w.getvalue(), ""


@functools.cache
def _health_cli(version: Version) -> _Command:
    """The ``cilium-health`` command tree of one version, built once: the runners get the snapshot."""
    root = _Command(
        "cilium-health",
        "Cilium Health Client",
        persistent=(
            _Flag("debug", "Enable debug messages", "D"),
            _Flag("host", "URI to cilium-health server API", "H", takes_value=True),
            _Flag(
                "log-driver",
                "Logging endpoints to use for example syslog",
                takes_value=True,
                value_name="strings",
            ),
            _Flag("log-opt", "Log driver options for cilium-health", takes_value=True, value_name="map"),
        ),
    )
    return root.add(
        _Command(
            "status",
            "Display cilium connectivity to other nodes",
            aliases=("connectivity",),
            flags=(
                _Flag("probe", "Synchronously probe connectivity status"),
                _Flag("succinct", "Print the result succinctly (one node per line)"),
                _Flag("verbose", "Print more information in results"),
                _output_flag(version),
            ),
            run=_health_status,
        )
    )


def _service_list(snapshot: AgentSnapshot, version: Version, opts: dict[str, Any], args: list[str]) -> Result:
    output = opts.get("output", "")
    if output:
        if output != "json":
            return _unsupported_output(output)
        return 0, _go_json([_service_json(s, version) for s in snapshot.services]), ""
    return 0, _format_service_list(snapshot.services, version, bool(opts.get("clustermesh-affinity"))), ""


def _agent_status(snapshot: AgentSnapshot, version: Version, opts: dict[str, Any], args: list[str]) -> Result:
    output = opts.get("output", "")
    if output:
        if output != "json":
            return _unsupported_output(output)
        return 0, _go_json(_status_json(snapshot, version)), ""
    if opts.get("brief"):
        return 0, "OK\n", ""
    verbose = bool(opts.get("verbose"))
    all_clusters = verbose or bool(opts.get("all-clusters"))
    all_health = verbose or bool(opts.get("all-health"))
    return 0, _format_status(snapshot, version, all_clusters, all_health), ""


def _show_version(snapshot: AgentSnapshot, version: Version, opts: dict[str, Any], args: list[str]) -> Result:
    ver = snapshot.cilium_version.lstrip("v")
    line = f"{ver} {_commit(snapshot)} 2025-01-01T00:00:00+00:00 go version go1.23.4 linux/amd64"
    return 0, f"Client: {line}\nDaemon: {line}\n", ""


@functools.cache
def _agent_cli(version: Version) -> _Command:
    """The ``cilium``/``cilium-dbg`` command tree of one version, built once: the runners get the snapshot."""
    name = _agent_binary(version)
    root = _Command(
        name,
        "CLI for interacting with the local Cilium Agent",
        persistent=(
            _Flag("config", f"Config file (default is $HOME/.{name}.yaml)", takes_value=True),
            _Flag("debug", "Enable debug messages", "D"),
            _Flag("host", "URI to server-side API", "H", takes_value=True),
        ),
    )
    service = _Command("service", "Manage services & loadbalancers").add(
        _Command(
            "list",
            "List services",
            aliases=("ls",),
            flags=(
                _Flag("clustermesh-affinity", "Print clustermesh affinity if available"),
                _output_flag(version),
            ),
            run=_service_list,
        )
    )
    status_cmd = _Command(
        "status",
        "Display status of daemon",
        flags=(
            _Flag("all-addresses", "Show all allocated addresses, not just count"),
            _Flag("all-clusters", "Show all clusters"),
            _Flag("all-controllers", "Show all controllers, not just failing"),
            _Flag("all-health", "Show all health status, not just failing"),
            _Flag("all-nodes", "Show all nodes, not just localhost"),
            _Flag("all-redirects", "Show all redirects"),
            _Flag("brief", "Only print a one-line status message"),
            _Flag("verbose", "Equivalent to --all-addresses --all-controllers --all-nodes --all-redirects"),
            _Flag(
                "timeout",
                "Sets the timeout to use when querying for health",
                takes_value=True,
                value_name="duration",
            ),
            _output_flag(version),
        ),
        run=_agent_status,
    )
    version_cmd = _Command("version", "Print version information", run=_show_version)
    root.add(service, status_cmd, version_cmd)
    if version >= (1, 14):  # cilium#32336; patches before the backport answer "unknown command" themselves
        root.add(_troubleshoot_cmd(name, version))
    return root


def _troubleshoot_cmd(binary: str, version: Version) -> _Command:
    etcd = _ETCD_VERSION.get(version[1], "3.5.17")
    return _Command("troubleshoot", "Run troubleshooting utilities to check control-plane connectivity").add(
        _Command(
            "clustermesh",
            "Troubleshoot connectivity towards remote clusters",
            flags=(
                _Flag("clustermesh-config", "Path to the ClusterMesh configuration directory", takes_value=True),
                _Flag("timeout", "Timeout when checking connectivity to a given cluster", takes_value=True),
                _Flag("without-service-resolution", "Disable k8s service to IP resolution through the k8s client"),
            ),
            run=lambda snap, ver, opts, args: troubleshoot_clustermesh(
                snap, ver, opts, args, binary=binary, etcd_version=etcd
            ),
        )
    )


def _not_found(executable: str) -> Result:
    """What kubectl exec shows when the container has no such binary (the runtime's message)."""
    return (
        127,
        "",
        "OCI runtime exec failed: exec failed: unable to start container process: "
        f'exec: "{executable}": executable file not found in $PATH: unknown\n',
    )


def run_agent_command(snapshot: AgentSnapshot, argv: list[str]) -> tuple[int, str, str]:
    """Run one command in the agent container and return (exit code, stdout, stderr).

    ``argv[0]`` is the executable as exec'd (a path is fine): ``cilium`` on every version,
    ``cilium-dbg`` from 1.15 on, ``cilium-health`` always. Anything else is not in the container.
    """
    if not argv:
        return _not_found("")
    executable = argv[0].rsplit("/", 1)[-1]
    version = _parse_version(snapshot.cilium_version)
    if executable == "cilium-health":
        return _execute(_health_cli(version), argv[1:], snapshot, version)
    if executable == "cilium" or (executable == "cilium-dbg" and version >= (1, 15)):
        return _execute(_agent_cli(version), argv[1:], snapshot, version)
    return _not_found(argv[0])
