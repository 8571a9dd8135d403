"""Read `cilium-health status` of every layout Cilium 1.13+ prints, text or `-o json` (reference/cilium.md §2).

1.19 and 1.20 print the 1.18 layouts (no later change found; tests/fixtures/cilium/README.md).

The command exits 0 even when probes fail, so this is where failures surface. A parser that guessed
would turn a truncated capture or a new layout into a false "all good": anything not read exactly
raises `CiliumOutputError` naming the line (or JSON path) and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from clustermesh.cilium.output_models import HealthNode, HealthStatus
from clustermesh.cilium.output_reading import JsonReader, first_line, load_json, normalise_ip, numbered_lines
from clustermesh.errors import CiliumOutputError

__all__ = ["parse_health"]

HEALTH_COMMAND = "cilium-health status"


def _split_name(name: str) -> tuple[str | None, str]:
    cluster, sep, node = name.partition("/")
    return (cluster, node) if sep else (None, name)


_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")


def _parse_timestamp(text: str) -> datetime | None:
    """RFC 3339 as Go prints it; nanoseconds are cut to what `datetime` holds."""
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip(), count=1))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ health: common

_PROBES = (("icmp", "ICMP"), ("http", "HTTP"))
_JSON_PATH_GROUPS: tuple[tuple[Literal["host", "endpoint"], str], ...] = (
    ("host", "host"),
    ("endpoint", "health-endpoint"),
)


@dataclass
class _Path:
    """One probed address of a node: its ICMP and HTTP results (None = no result printed)."""

    kind: Literal["host", "endpoint"]
    ip: str | None
    secondary: bool = False
    results: dict[str, str | None] = field(default_factory=lambda: {"ICMP": None, "HTTP": None})

    def failures(self) -> list[str]:
        label = f"{self.kind} secondary {self.ip}" if self.secondary else self.kind
        out = []
        for probe, result in self.results.items():
            if result is None:
                out.append(f"{label} {probe}: no result (unknown)")
            elif result != "OK":
                out.append(f"{label} {probe}: {result}")
        return out


@dataclass
class _NodeDraft:
    """What the layout said about one node, collected before the node is built."""

    name: str
    local: bool
    line_no: int
    host_ip: str | None = None
    endpoint_ip: str | None = None
    table_failures: list[str] = field(default_factory=list)
    paths: list[_Path] | None = None
    """None: no detail block for this node (table layouts); [] : a block without any path."""

    def failures(self) -> list[str]:
        out = list(self.table_failures)
        if self.paths is not None:
            if not any(p.kind == "host" and not p.secondary and p.ip for p in self.paths):
                out.append("host: no result (unknown)")
            for path in self.paths:
                if path.ip is not None:
                    out.extend(path.failures())
        return out

    def build(self) -> HealthNode:
        cluster, node = _split_name(self.name)
        failures = self.failures()
        return HealthNode(
            name=self.name,
            cluster=cluster,
            node=node,
            reachable=not failures,
            local=self.local,
            host_ip=self.host_ip,
            endpoint_ip=self.endpoint_ip,
            failures=failures,
        )


# -------------------------------------------------------------------------------------- health: text

_HEALTH_TIME = r"\((?P<ts>[^()]*)\)"
_PROBE_TIME = re.compile(r"Probe time:\s+(?P<ts>\S.*)")
_NODES = re.compile(r"Nodes:")
_SUMMARY = re.compile(
    rf"Cluster health:\s+(?P<ok>[0-9]{{1,9}})/(?P<total>[0-9]{{1,9}}) reachable\s+{_HEALTH_TIME}"
    r"(?:\s+\(Probe interval:\s*(?P<interval>[^()]*?)\))?"
)
_TABLE_HEADER = re.compile(r"\s*Name\s+IP\s+(?:Node|Reachable)\s+Endpoints(?: reachable)?")
_COUNT = r"(?P<{0}ok>[0-9]{{1,9}})/(?P<{0}total>[0-9]{{1,9}})(?: \((?P<{0}unknown>[0-9]{{1,9}}) unknown\))?"
_NAME = r"\s*(?P<name>\S+?)(?P<local> \(localhost\))?"
_COUNT_ROW = re.compile(rf"{_NAME}\s+(?P<ip>\S+)\s+{_COUNT.format('h')}\s+{_COUNT.format('e')}")
_WORD = "reachable|unreachable|unknown|true|false"
_WORD_ROW = re.compile(rf"{_NAME}\s+(?P<ip>\S+)\s+(?P<host>{_WORD})\s+(?P<endpoint>{_WORD})")
_NODE_LINE = re.compile(r"\s+(?P<name>[^\s:]\S*?)(?P<local> \(localhost\))?:")
_PATH_LINE = re.compile(r"\s+(?P<kind>Host|Endpoint|Secondary) connectivity to (?P<ip>\S+):")
_NIL_PATH_LINE = re.compile(r"\s+(?P<kind>Host|Endpoint|Secondary) connectivity:\s+nil")
_PROBE_LINE = re.compile(r"\s+(?P<probe>ICMP to stack|HTTP to agent):\s+(?P<result>\S.*)")
_LAST_PROBED = re.compile(r"\s+\(Last probed: [^()]*\)$")
_OK_RESULT = re.compile(r"OK, RTT=\S+")


class _HealthTextReader:
    """One pass over the text layouts; each line is matched against what may come next."""

    def __init__(self) -> None:
        self.layout: Literal["probe-time", "summary"] | None = None
        self.timestamp: datetime | None = None
        self.summary: tuple[int, int] | None = None
        self.probe_interval: str | None = None
        self.in_table = False
        self.table_header: tuple[int, str] | None = None
        self.table: dict[str, _NodeDraft] = {}
        self.detail: dict[str, _NodeDraft] = {}
        self.node: _NodeDraft | None = None
        self.path: _Path | None = None
        self.last_primary: Literal["host", "endpoint"] = "host"

    def fail(self, line_no: int, line: str, problem: str, expected: str) -> CiliumOutputError:
        return CiliumOutputError(HEALTH_COMMAND, problem, expected=expected, line_no=line_no, line=line)

    def start_layout(self, layout: Literal["probe-time", "summary"], line_no: int, line: str) -> None:
        if self.layout is not None:
            raise self.fail(line_no, line, "a second status header", "one `Probe time:` or `Cluster health:` line")
        self.layout = layout

    def timestamp_of(self, text: str, line_no: int, line: str) -> datetime:
        stamp = _parse_timestamp(text)
        if stamp is None:
            raise self.fail(line_no, line, f"unreadable time {text!r}", "an RFC 3339 timestamp")
        return stamp

    def read(self, text: str) -> HealthStatus:
        for line_no, line in numbered_lines(text):
            self.read_line(line_no, line)
        return self.finish(text)

    def read_line(self, line_no: int, line: str) -> None:
        if m := _PROBE_TIME.fullmatch(line):
            self.start_layout("probe-time", line_no, line)
            self.timestamp = self.timestamp_of(m["ts"], line_no, line)
        elif _NODES.fullmatch(line):
            if self.layout is None:
                self.layout = "probe-time"
            elif self.layout == "summary" or self.detail:
                raise self.fail(line_no, line, "`Nodes:` out of place", "node blocks after `Probe time:`")
            self.in_table = False
        elif m := _SUMMARY.fullmatch(line):
            self.start_layout("summary", line_no, line)
            self.summary = (int(m["ok"]), int(m["total"]))
            if self.summary[0] > self.summary[1]:
                raise self.fail(line_no, line, "more nodes reachable than known", "N/M with N <= M")
            self.timestamp = self.timestamp_of(m["ts"], line_no, line)
            self.probe_interval = m["interval"] or None
        elif self.layout is None:
            raise self.fail(
                line_no,
                line,
                "unknown layout",
                "`Probe time:`, `Nodes:` or `Cluster health:` first (or JSON starting with `{`)",
            )
        elif _TABLE_HEADER.fullmatch(line):
            if self.layout != "summary" or self.table_header is not None or self.detail:
                raise self.fail(line_no, line, "table header out of place", "it once, after `Cluster health:`")
            self.in_table = True
            self.table_header = (line_no, line)
        elif self.in_table and (m := _COUNT_ROW.fullmatch(line) or _WORD_ROW.fullmatch(line)):
            self.table_row(m, line_no, line)
        else:
            self.in_table = False
            self.detail_line(line_no, line)

    def table_row(self, m: re.Match[str], line_no: int, line: str) -> None:
        name = m["name"]
        if name in self.table:
            raise self.fail(line_no, line, f"node {name!r} listed twice", "one row per node")
        ip = m["ip"]
        host_ip = normalise_ip(ip)
        if host_ip is None and ip != "Unavailable":
            raise self.fail(line_no, line, f"{ip!r} is not an IP address", "an IP or `Unavailable`")
        draft = _NodeDraft(name=name, local=bool(m["local"]), line_no=line_no, host_ip=host_ip)
        if "host" in m.re.groupindex:
            for kind in ("host", "endpoint"):
                word = m[kind]
                if word not in ("reachable", "true"):
                    draft.table_failures.append(f"{kind}: {'unreachable' if word == 'false' else word}")
        else:
            for kind, prefix in (("host", "h"), ("endpoint", "e")):
                ok, total = int(m[f"{prefix}ok"]), int(m[f"{prefix}total"])
                unknown = int(m[f"{prefix}unknown"] or 0)
                if ok + unknown > total:
                    raise self.fail(line_no, line, f"{kind} counts do not add up", "ok + unknown <= total")
                if ok != total or unknown:
                    extra = f" ({unknown} unknown)" if unknown else ""
                    draft.table_failures.append(f"{kind}: {ok}/{total} paths reachable{extra}")
        self.table[name] = draft

    def detail_line(self, line_no: int, line: str) -> None:
        if m := _NODE_LINE.fullmatch(line):
            name = m["name"]
            if self.layout == "summary" and (self.table_header is None or self.table):
                raise self.fail(
                    line_no,
                    line,
                    "node block in the summary layout " + ("after table rows" if self.table else "without header"),
                    "either rows or (with --verbose) blocks, after the `Name IP Node Endpoints` header",
                )
            if name in self.detail:
                raise self.fail(line_no, line, f"node {name!r} has two blocks", "one block per node")
            self.node = _NodeDraft(name=name, local=bool(m["local"]), line_no=line_no, paths=[])
            self.detail[name] = self.node
            self.path = None
            return
        if self.node is None or self.node.paths is None:
            raise self.fail(line_no, line, "unknown line", "a node line `  <name>:` or a table row")
        if m := _PATH_LINE.fullmatch(line) or _NIL_PATH_LINE.fullmatch(line):
            self.path_line(m, line_no, line)
        elif m := _PROBE_LINE.fullmatch(line):
            if self.path is None or self.path.ip is None:
                raise self.fail(line_no, line, "probe result outside a path", "`… connectivity to <ip>:` first")
            probe = "ICMP" if m["probe"].startswith("ICMP") else "HTTP"
            if self.path.results[probe] is not None:
                raise self.fail(line_no, line, f"second {probe} result", "one ICMP and one HTTP line per path")
            result = _LAST_PROBED.sub("", m["result"])
            self.path.results[probe] = "OK" if _OK_RESULT.fullmatch(result) else result
        else:
            raise self.fail(line_no, line, "unknown line", "a path line, `ICMP to stack:` or `HTTP to agent:`")

    def path_line(self, m: re.Match[str], line_no: int, line: str) -> None:
        assert self.node is not None and self.node.paths is not None
        raw_kind = m["kind"]
        raw_ip = m.groupdict().get("ip")
        ip = None if raw_ip is None else normalise_ip(raw_ip)
        if raw_ip is not None and ip is None:
            raise self.fail(line_no, line, f"{raw_ip!r} is not an IP address", "an IPv4 or IPv6 address")
        if raw_kind == "Secondary":
            if not self.node.paths:
                raise self.fail(line_no, line, "secondary address first", "`Host`/`Endpoint` path before it")
            path = _Path(kind=self.last_primary, ip=ip, secondary=True)
        else:
            kind: Literal["host", "endpoint"] = "host" if raw_kind == "Host" else "endpoint"
            if any(p.kind == kind and not p.secondary for p in self.node.paths):
                raise self.fail(line_no, line, f"second {kind} path", f"one `{raw_kind} connectivity` line")
            self.last_primary = kind
            path = _Path(kind=kind, ip=ip)
            if kind == "host":
                self.node.host_ip = ip
            else:
                self.node.endpoint_ip = ip
        self.node.paths.append(path)
        self.path = path

    def finish(self, text: str) -> HealthStatus:
        line_no, line = first_line(text)
        if self.layout is None:
            raise self.fail(line_no, line, "empty output", "`cilium-health status` text or JSON")
        if self.table_header is not None and not self.table and not self.detail:
            raise self.fail(*self.table_header, "table header without rows (truncated?)", "one row per node")
        drafts = list(self.table.values()) or list(self.detail.values())
        if self.layout == "summary" and self.detail:
            self.check_verbose_blocks(drafts, line_no, line)
        if self.layout == "probe-time" and not drafts:
            raise self.fail(line_no, line, "no node blocks (truncated?)", "`  <node>:` blocks after `Nodes:`")
        if self.summary is not None:
            reachable, total = self.summary
            if len(drafts) > total:
                raise self.fail(line_no, line, f"{len(drafts)} nodes listed but {total} known", "<= M rows")
            if not drafts and reachable < total:
                raise self.fail(line_no, line, "unreachable nodes counted but none listed (truncated?)", "node rows")
        locals_ = [d for d in drafts if d.local]
        if len(locals_) > 1:
            second = locals_[1]
            raise self.fail(second.line_no, second.name, "two nodes marked (localhost)", "one local node")
        return HealthStatus(
            nodes=[d.build() for d in drafts],
            timestamp=self.timestamp,
            local=locals_[0].name if locals_ else None,
            summary_reachable=None if self.summary is None else self.summary[0],
            summary_total=None if self.summary is None else self.summary[1],
            probe_interval=self.probe_interval,
        )

    def check_verbose_blocks(self, drafts: list[_NodeDraft], line_no: int, line: str) -> None:
        """1.17+ `--verbose`: the summary, the header, then a block per node (no rows) — all of them.

        Verbose prints every node, and in every block a `Host` and an `Endpoint` line (`… nil` when
        there is none), so a capture cut between or inside blocks shows as missing nodes or lines
        instead of passing for a smaller healthy mesh. The summary is Cilium's own count: a node
        without any failure must be among its reachable ones, one with a failing primary probe
        among the others.
        """
        assert self.summary is not None
        reachable, total = self.summary
        for draft in drafts:
            assert draft.paths is not None
            for kind, word in (("host", "Host"), ("endpoint", "Endpoint")):
                if not any(p.kind == kind and not p.secondary for p in draft.paths):
                    raise self.fail(
                        draft.line_no,
                        draft.name,
                        f"node block without its {kind} line (truncated?)",
                        f"`{word} connectivity to <ip>:` or `{word} connectivity: nil` in every verbose block",
                    )
        if len(drafts) != total:
            raise self.fail(
                line_no, line, f"{len(drafts)} node blocks but {total} nodes known (truncated?)", "a block per node"
            )
        clean = sum(1 for d in drafts if not d.failures())
        failing = sum(1 for d in drafts if any(_explicit_failure(p) for p in d.paths or () if not p.secondary))
        if clean > reachable or failing > total - reachable:
            raise self.fail(
                line_no,
                line,
                f"blocks show {clean} nodes without and {failing} with failed probes, summary {reachable}/{total}",
                "blocks that agree with `Cluster health:`",
            )


def _explicit_failure(path: _Path) -> bool:
    """A probe that ran and failed (not one without a result): Cilium counts the node unreachable."""
    return any(result is not None and result != "OK" for result in path.results.values())


# -------------------------------------------------------------------------------------- health: JSON


def _health_from_json(text: str) -> HealthStatus:
    j = JsonReader(HEALTH_COMMAND)
    top = j.obj(load_json(text, HEALTH_COMMAND), "")
    if "nodes" not in top:
        raise j.fail("top level", sorted(top)[:5], "an object with `nodes` (cilium-health status -o json)")
    raw_nodes = j.array(top["nodes"], "nodes")
    if not raw_nodes:
        raise j.fail("nodes", raw_nodes, "at least the local node")
    local_obj = j.opt_obj(top, "local", "")
    local = None if local_obj is None else j.opt_string(local_obj, "name", "local")
    stamp_text = j.opt_string(top, "timestamp", "")
    timestamp = None if stamp_text is None else _parse_timestamp(stamp_text)
    if stamp_text is not None and timestamp is None:
        raise j.fail("timestamp", stamp_text, "an RFC 3339 timestamp")
    interval = top.get("probeInterval")
    if interval is not None and not isinstance(interval, str | int | float):
        raise j.fail("probeInterval", interval, "a duration")

    nodes: list[HealthNode] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_nodes):
        where = f"nodes[{index}]"
        node = j.obj(raw, where)
        name = j.string(node, "name", where)
        if name in seen:
            raise j.fail(f"{where}.name", name, "each node once")
        seen.add(name)
        host_ip, endpoint_ip, failures = _json_paths(j, node, where)
        cluster, bare = _split_name(name)
        nodes.append(
            HealthNode(
                name=name,
                cluster=cluster,
                node=bare,
                reachable=not failures,
                local=name == local,
                host_ip=host_ip,
                endpoint_ip=endpoint_ip,
                failures=failures,
            )
        )
    return HealthStatus(
        nodes=nodes,
        timestamp=timestamp,
        local=local,
        probe_interval=None if interval is None else str(interval),
    )


def _json_paths(j: JsonReader, node: Mapping[str, Any], where: str) -> tuple[str | None, str | None, list[str]]:
    """Host and endpoint IPs of one node and its failures, in the order and words of ``_NodeDraft``.

    The JSON model always names a path's IP, so one pass reads it without drafts: the nightly
    verification parses every node of the mesh once per agent (640,000 at 16 clusters of 50 nodes).
    """
    primaries: dict[str, str] = {}
    failures: list[str] = []
    for kind, key in _JSON_PATH_GROUPS:
        group = j.opt_obj(node, key, where)
        group_where = f"{where}.{key}"
        primary = None if group is None else j.opt_obj(group, "primary-address", group_where)
        if primary is not None:
            primaries[kind] = _json_path(j, primary, kind, False, f"{group_where}.primary-address", failures)
        elif kind == "endpoint" and (old := j.opt_obj(node, "endpoint", where)) is not None:
            primaries[kind] = _json_path(j, old, kind, False, f"{where}.endpoint", failures)  # deprecated copy
        if group is not None:
            for n, sec in enumerate(j.opt_array(group, "secondary-addresses", group_where)):
                sec_where = f"{group_where}.secondary-addresses[{n}]"
                _json_path(j, j.obj(sec, sec_where), kind, True, sec_where, failures)
    if "host" not in primaries:
        failures.insert(0, "host: no result (unknown)")
    return primaries.get("host"), primaries.get("endpoint"), failures


def _json_path(j: JsonReader, obj: Mapping[str, Any], kind: str, sec: bool, where: str, failures: list[str]) -> str:
    """One probed address: its IP, checked; its failing probes appended to ``failures`` (as ``_Path``)."""
    ip = j.ip(obj, "ip", where)
    label = f"{kind} secondary {ip}" if sec else kind
    for key, probe in _PROBES:
        result = j.opt_obj(obj, key, where)
        if result is None:
            failures.append(f"{label} {probe}: no result (unknown)")
            continue
        status = j.opt_string(result, "status", f"{where}.{key}")
        if status is not None and status != "OK":
            failures.append(f"{label} {probe}: {status}")
    return ip


def parse_health(text: str) -> HealthStatus:
    """Parse `cilium-health status` in any layout of Cilium 1.13+ (text or `-o json`).

    The exit code of the command is 0 even when probes fail, so this is where failures surface.
    Raises `CiliumOutputError` for empty, truncated or unknown output; never returns a guess.
    """
    if text.lstrip().startswith("{"):
        return _health_from_json(text)
    return _HealthTextReader().read(text)
