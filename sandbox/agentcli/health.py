"""``cilium-health status``: the legacy (1.13–1.16) and table (1.17+) formats, and its JSON."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sandbox.agentcli.go import _NS_S, TabWriter, Version, _rfc3339, go_duration
from sandbox.cilium_model import (
    HealthNode,
    HealthReport,
    Probe,
    ProbedPath,
)

# ---------------------------------------------------------------------------------------------------
# cilium-health status
# ---------------------------------------------------------------------------------------------------

_REACHABLE, _UNREACHABLE, _UNKNOWN = "reachable", "unreachable", "unknown"


def _probe_state(probe: Probe) -> str:
    """A probe with neither RTT nor error has not run yet: Cilium has no status object then (unknown)."""
    if probe.error:
        return _UNREACHABLE
    if probe.rtt_ns is None:
        return _UNKNOWN
    return _REACHABLE


def _path_state(path: ProbedPath | None) -> str:
    if path is None:
        return _UNREACHABLE
    state = _REACHABLE
    for probe in (path.icmp, path.http):
        s = _probe_state(probe)
        if s == _UNREACHABLE:
            return _UNREACHABLE
        if s == _UNKNOWN:
            state = _UNKNOWN
    return state


def _node_display_name(node: HealthNode) -> str:
    return node.name if node.cluster == "default" else f"{node.cluster}/{node.name}"


def _node_healthy(node: HealthNode) -> bool:
    """Healthy = no path explicitly unreachable (unknown paths count as healthy, as in Cilium)."""
    if _path_state(node.host) == _UNREACHABLE:
        return False
    return node.endpoint is None or _path_state(node.endpoint) != _UNREACHABLE


def _local_node(report: HealthReport, node_name: str) -> HealthNode | None:
    for node in report.nodes:
        if node.local:
            return node
    for node in report.nodes:
        if node.name == node_name:
            return node
    return None


@dataclass(frozen=True)
class _HealthView:
    """The health report as the formatter walks it: local node first, then the rest sorted by name."""

    report: HealthReport
    local: HealthNode | None
    version: Version

    @property
    def ordered(self) -> list[HealthNode]:
        rest = sorted((n for n in self.report.nodes if n is not self.local), key=_node_display_name)
        return ([self.local] if self.local is not None else []) + rest

    @property
    def healthy(self) -> int:
        return sum(1 for n in self.report.nodes if _node_healthy(n))

    @property
    def timestamp(self) -> str:
        return _rfc3339(self.report.timestamp)

    @functools.cached_property
    def last_probed(self) -> str:  # once per view: every probe of every node prints it from 1.18 on
        return _rfc3339(self.report.last_probed or self.report.timestamp)

    @property
    def probe_interval(self) -> str:
        return go_duration(round(self.report.probe_interval_s * _NS_S))


def _probe_text(probe: Probe) -> str:
    if probe.error:
        return probe.error
    return f"OK, RTT={go_duration(probe.rtt_ns or 0)}"


def _write_path(w: TabWriter, view: _HealthView, name: str, path: ProbedPath | None, verbose: bool) -> None:
    """``Host connectivity to <ip>:`` and its ICMP/HTTP lines; probes never run are left out."""
    indent = "    "
    if path is None:
        if verbose:
            w.write(f"{indent}{name} connectivity:\tnil\n")
        return
    w.write(f"{indent}{name} connectivity to {path.ip}:\n")
    for label, probe in (("ICMP to stack", path.icmp), ("HTTP to agent", path.http)):
        if _probe_state(probe) == _UNKNOWN:
            continue
        line = f"{indent}  {label}:\t{_probe_text(probe)}"
        if view.version >= (1, 18):
            line += f"\t(Last probed: {view.last_probed})"
        w.write(line + "\n")


def _write_node_detail(w: TabWriter, view: _HealthView, node: HealthNode, verbose: bool) -> None:
    local = " (localhost)" if node is view.local else ""
    w.write(f"  {_node_display_name(node)}{local}:\n")
    _write_path(w, view, "Host", node.host, verbose)
    _write_path(w, view, "Endpoint", node.endpoint, verbose)


def _format_health_legacy(w: TabWriter, view: _HealthView, print_all: bool, succinct: bool, verbose: bool) -> None:
    """1.13–1.16 ``FormatHealthStatusResponse``: ``Probe time:`` + detail blocks, or the succinct table."""
    nodes = view.report.nodes
    if succinct and not verbose:
        w.write(f"Cluster health:\t{view.healthy}/{len(nodes)} reachable\t({view.timestamp})\n")
        if print_all or view.healthy < len(nodes):
            w.write("  Name\tIP\tNode\tEndpoints\n")
    else:
        w.write(f"Probe time:\t{view.timestamp}\n")
        w.write("Nodes:\n")
    for node in view.ordered:
        if succinct and not verbose:
            if print_all or not _node_healthy(node):
                local = " (localhost)" if node is view.local else ""
                endpoint = _path_state(node.endpoint) if node.endpoint is not None else _REACHABLE
                host = _path_state(node.host)
                w.write(f"  {_node_display_name(node)}{local}\t{node.host.ip}\t{host}\t{endpoint}\n")
        else:
            _write_node_detail(w, view, node, verbose)


def _path_counts(path: ProbedPath | None) -> str:
    """``reachable/total`` (+ `` (k unknown)``) for one primary address; no path at all is ``0/0``."""
    if path is None:
        return "0/0"
    state = _path_state(path)
    text = f"{1 if state == _REACHABLE else 0}/1"
    return text + (" (1 unknown)" if state == _UNKNOWN else "")


def _format_health_table(w: TabWriter, view: _HealthView, all_nodes: bool, verbose: bool, max_lines: int) -> None:
    """1.17+ ``FormatHealthStatusResponse``: summary, ``Name IP Node Endpoints`` and a row per node."""
    nodes = view.report.nodes
    summary = f"Cluster health:\t{view.healthy}/{len(nodes)} reachable\t({view.timestamp})"
    if view.version >= (1, 18):
        summary += f"\t(Probe interval: {view.probe_interval})"
    w.write(summary + "\n")
    w.write("Name\tIP\tNode\tEndpoints\n")
    printed = 0
    for node in view.ordered:
        if node is not view.local and printed == max_lines:
            break
        if verbose:
            _write_node_detail(w, view, node, verbose)
            printed += 1
        elif all_nodes or not _node_healthy(node):
            local = " (localhost)" if node is view.local else ""
            w.write(
                f"  {_node_display_name(node)}{local}\t{node.host.ip}\t"
                f"{_path_counts(node.host)}\t{_path_counts(node.endpoint)}\n"
            )
            printed += 1
    if len(nodes) - printed - view.healthy > 0:
        w.write("  ...\n")


def _probe_json(probe: Probe, last_probed: str | None) -> dict[str, Any] | None:
    """One probe's status object; None for a probe never run (``_probe_state`` unknown)."""
    if probe.error:
        out: dict[str, Any] = {"status": probe.error}
    elif probe.rtt_ns is None:
        return None
    else:
        out = {"latency": probe.rtt_ns} if probe.rtt_ns else {}
    if last_probed is not None:
        out["lastProbed"] = last_probed
    return out


def _path_json(path: ProbedPath, last_probed: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"ip": path.ip}
    icmp, http = _probe_json(path.icmp, last_probed), _probe_json(path.http, last_probed)
    if icmp is not None:
        out["icmp"] = icmp
    if http is not None:
        out["http"] = http
    return out


def _health_json(view: _HealthView) -> dict[str, Any]:
    """The ``HealthStatusResponse`` model; ``endpoint`` is the deprecated copy of the health endpoint."""
    last_probed = view.last_probed if view.version >= (1, 18) else None  # 1.18+ on every probe
    nodes: list[dict[str, Any]] = []
    for node in view.report.nodes:
        item: dict[str, Any] = {
            "name": _node_display_name(node),
            "host": {"primary-address": _path_json(node.host, last_probed), "secondary-addresses": []},
        }
        if node.endpoint is not None:
            endpoint = _path_json(node.endpoint, last_probed)  # printed twice, built once
            item["endpoint"] = endpoint
            item["health-endpoint"] = {"primary-address": endpoint, "secondary-addresses": []}
        nodes.append(item)
    out: dict[str, Any] = {"nodes": nodes, "timestamp": view.timestamp}
    if view.local is not None:
        out["local"] = {"name": _node_display_name(view.local)}
    if view.version >= (1, 18):
        out["probeInterval"] = view.probe_interval
    return out
