"""Read what Cilium agents print: `cilium-health status` and `cilium service list`, every version 1.13+.

The pipeline decides from these outputs whether a mesh is healthy and where failover traffic goes, so a
parser that guesses would turn a truncated capture or a new layout into a false "all good". Every
function here either returns exactly what the output says or raises `CiliumOutputError` naming the
command, the line (or JSON path) and what was expected. Layouts per version: reference/cilium.md §2.

Only `re`, `json` and `ipaddress`; one pass over the lines, so 100,000 backends stay cheap.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from clustermesh.errors import CiliumOutputError

__all__ = [
    "Backend",
    "HealthNode",
    "HealthStatus",
    "Service",
    "parse_health",
    "parse_service_list",
]

HEALTH_COMMAND = "cilium-health status"
SERVICE_COMMAND = "cilium service list"


# --------------------------------------------------------------------------------------------- models


class HealthNode(BaseModel):
    """One node as seen by the local agent's health prober."""

    model_config = ConfigDict(frozen=True)

    name: str
    """As Cilium prints it (`cluster-1/node-a`), without the ` (localhost)` marker."""
    cluster: str | None
    """Part before `/`; None when Cilium prints no prefix (cluster named `default`)."""
    node: str
    reachable: bool
    """Every probed path OK; unknown or missing results count as not reachable."""
    local: bool
    host_ip: str | None
    endpoint_ip: str | None
    failures: list[str]
    """One entry per failing path, e.g. `endpoint ICMP: Connection timed out`."""


class HealthStatus(BaseModel):
    """The whole `cilium-health status` answer of one agent."""

    model_config = ConfigDict(frozen=True)

    nodes: list[HealthNode]
    """Nodes as listed. The succinct layout omits healthy nodes, so compare with `summary_total`."""
    timestamp: datetime | None
    local: str | None
    """Name of the node the command ran on."""
    summary_reachable: int | None = None
    """`N` of the `Cluster health: N/M reachable` line (succinct, 1.17+ layouts); None otherwise."""
    summary_total: int | None = None
    """`M` of that line: how many nodes the agent knows, listed or not."""
    probe_interval: str | None = None
    """1.18+: `(Probe interval: …)` / JSON `probeInterval`, as printed."""

    @property
    def lists_every_node(self) -> bool:
        """False when the layout left healthy nodes out (succinct, summary-only)."""
        return self.summary_total is None or len(self.nodes) >= self.summary_total


class Backend(BaseModel):
    """One backend of a load-balanced frontend."""

    model_config = ConfigDict(frozen=True)

    address: str
    """`ip:port`, IPv6 as `[ip]:port`, without protocol."""
    ip: str
    port: int
    protocol: str | None
    state: str
    preferred: bool
    """Affinity marker; on 1.18+ set on every backend (cilium#43681), so not proof of affinity there."""
    node_name: str | None
    """JSON only, and only on some local backends: its absence does not prove a remote backend."""


class Service(BaseModel):
    """One frontend of `cilium service list` (one per protocol on 1.17+)."""

    model_config = ConfigDict(frozen=True)

    id: int | None
    frontend: str
    """`ip:port`, without the `/PROTO` suffix."""
    protocol: str | None
    type: str
    """`ClusterIP`, `NodePort`, …, without ` (Remote)`."""
    remote: bool
    name: str | None
    namespace: str | None
    backends: list[Backend]


# ---------------------------------------------------------------------------------------- shared bits

_PORT = r"[0-9]{1,5}"
_ADDRESS = re.compile(
    rf"(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|(?P<v4>[0-9.]+)):(?P<port>{_PORT})(?:/(?P<proto>[A-Z]+))?"
)


def _split_name(name: str) -> tuple[str | None, str]:
    cluster, sep, node = name.partition("/")
    return (cluster, node) if sep else (None, name)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _normalise_ip(text: str) -> str | None:
    """Canonical text of an IP, or None when it is not one (so text and JSON compare equal)."""
    if _CANONICAL_IPV4.fullmatch(text):
        return text  # already canonical; skips `ipaddress`, most of the cost on 100,000 backends
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")


def _parse_timestamp(text: str) -> datetime | None:
    """RFC 3339 as Go prints it; nanoseconds are cut to what `datetime` holds."""
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip(), count=1))
    except ValueError:
        return None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines without trailing whitespace; blank lines carry no meaning in any layout."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if line:
            yield number, line


def _first_line(text: str) -> tuple[int, str]:
    return next(_lines(text), (1, ""))


def _load_json(text: str, command: str) -> Any:
    """`json.loads` with every failure (syntax, depth, giant numbers) turned into a located error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        lines = text.splitlines()
        line = lines[err.lineno - 1] if 0 < err.lineno <= len(lines) else ""
        raise CiliumOutputError(
            command,
            f"invalid or truncated JSON ({err.msg}, column {err.colno})",
            expected=f"the complete output of `{command} -o json`",
            line_no=err.lineno,
            line=line,
        ) from None
    except (ValueError, RecursionError) as err:
        raise CiliumOutputError(
            command,
            f"JSON that cannot be loaded ({type(err).__name__}: {str(err)[:80]})",
            expected=f"the output of `{command} -o json`",
            line_no=1,
            line=_first_line(text)[1],
        ) from None


class _Json:
    """Typed access to decoded JSON that reports the path of anything of the wrong shape."""

    def __init__(self, command: str) -> None:
        self.command = command

    def fail(self, path: str, value: object, expected: str) -> CiliumOutputError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:79] + "…"
        return CiliumOutputError(
            self.command, f"unexpected value {shown}", expected=expected, json_path=path or "top level"
        )

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, value, "a JSON object")
        return value

    def opt_obj(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        value = parent.get(key)
        return None if value is None else self.obj(value, f"{path}.{key}")

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, value, "a JSON array")
        return value

    def opt_array(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        return [] if value is None else self.array(value, f"{path}.{key}")

    def string(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        value = parent.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{path}.{key}", value, "a non-empty string")
        return value

    def opt_string(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = parent.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(f"{path}.{key}", value, "a string")
        return value

    def integer(self, parent: Mapping[str, Any], key: str, path: str, low: int, high: int) -> int:
        value = parent.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{path}.{key}", value, f"an integer from {low} to {high}")
        return value

    def opt_bool(self, parent: Mapping[str, Any], key: str, path: str) -> bool:
        value = parent.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", value, "true or false")
        return value

    def ip(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        raw = self.string(parent, key, path)
        ip = _normalise_ip(raw)
        if ip is None:
            raise self.fail(f"{path}.{key}", raw, "an IPv4 or IPv6 address")
        return ip


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
        for line_no, line in _lines(text):
            self.read_line(line_no, line)
        return self.finish(text)

    def read_line(self, line_no: int, line: str) -> None:
        if m := _PROBE_TIME.fullmatch(line):
            self.start_layout("probe-time", line_no, line)
            self.timestamp = self.timestamp_of(m["ts"], line_no, line)
        elif _NODES.fullmatch(line):
            if self.layout is None:
                self.layout = "probe-time"
            elif self.detail:
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
        host_ip = _normalise_ip(ip)
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
        ip = None if raw_ip is None else _normalise_ip(raw_ip)
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
        line_no, line = _first_line(text)
        if self.layout is None:
            raise self.fail(line_no, line, "empty output", "`cilium-health status` text or JSON")
        if self.table_header is not None and not self.table:
            raise self.fail(*self.table_header, "table header without rows (truncated?)", "one row per node")
        drafts = self.merge()
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

    def merge(self) -> list[_NodeDraft]:
        """1.17+ verbose prints a row and a block per node: one node with both sets of failures."""
        drafts = list(self.table.values())
        for name, block in self.detail.items():
            row = self.table.get(name)
            if row is None:
                drafts.append(block)
                continue
            row.local = row.local or block.local
            row.paths = block.paths
            row.endpoint_ip = block.endpoint_ip
            row.host_ip = row.host_ip or block.host_ip
        return drafts


# -------------------------------------------------------------------------------------- health: JSON


def _health_from_json(text: str) -> HealthStatus:
    j = _Json(HEALTH_COMMAND)
    top = j.obj(_load_json(text, HEALTH_COMMAND), "")
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


def _json_paths(j: _Json, node: Mapping[str, Any], where: str) -> tuple[str | None, str | None, list[str]]:
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


def _json_path(j: _Json, obj: Mapping[str, Any], kind: str, sec: bool, where: str, failures: list[str]) -> str:
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


# ------------------------------------------------------------------------------------ services: text

_SERVICE_HEADER = re.compile(r"(?P<id>ID\s+)?Frontend\s+Service Type\s+Backend")
_SERVICE_TYPE = r"(?P<type>[A-Za-z][A-Za-z-]*)(?P<remote> \(Remote\))?"
_BACKEND_CELL = r"(?P<n>[0-9]{1,9}) => (?P<addr>\S+) \((?P<state>[a-z][a-z-]*)\)(?P<preferred> \(preferred\))?"
_ROW_WITH_ID = re.compile(rf"(?P<sid>[0-9]{{1,9}})\s+(?P<fe>\S+)\s+{_SERVICE_TYPE}(?:\s+{_BACKEND_CELL})?")
_ROW_WITHOUT_ID = re.compile(rf"(?P<fe>\S+)\s+{_SERVICE_TYPE}(?:\s+{_BACKEND_CELL})?")
_CONTINUATION = re.compile(rf"\s+{_BACKEND_CELL}")


def _address(text: str) -> tuple[str, int, str | None] | None:
    """`ip:port[/PROTO]` → (canonical ip, port, protocol), None if it is not such an address."""
    m = _ADDRESS.fullmatch(text)
    if m is None:
        return None
    ip = _normalise_ip(m["v6"] or m["v4"])
    port = int(m["port"])
    if ip is None or port > 65535 or (m["v4"] is not None and ":" in ip):
        return None
    return ip, port, m["proto"]


class _ServiceTextReader:
    """One pass over the tabwriter table: a row per frontend, then its extra backends."""

    def __init__(self) -> None:
        self.services: list[dict[str, Any]] = []
        self.last_n = 0

    def fail(self, line_no: int, line: str, problem: str, expected: str) -> CiliumOutputError:
        return CiliumOutputError(SERVICE_COMMAND, problem, expected=expected, line_no=line_no, line=line)

    def read(self, text: str) -> list[Service]:
        lines = _lines(text)
        header = next(lines, None)
        if header is None:
            raise self.fail(1, "", "empty output", "the `ID  Frontend  Service Type  Backend` header")
        m = _SERVICE_HEADER.fullmatch(header[1])
        if m is None:
            raise self.fail(
                *header,
                "no table header",
                "`ID  Frontend  Service Type  Backend` (or JSON starting with `[`)",
            )
        row = _ROW_WITH_ID if m["id"] else _ROW_WITHOUT_ID
        for line_no, line in lines:
            if line[0].isspace():
                if not self.services:
                    raise self.fail(line_no, line, "backend before any service", "a service row first")
                cont = _CONTINUATION.fullmatch(line)
                if cont is None:
                    raise self.fail(line_no, line, "unreadable backend line", "`<n> => <ip>:<port> (<state>)`")
                self.backend(cont, line_no, line)
            elif (r := row.fullmatch(line)) is not None:
                self.service(r, line_no, line)
            else:
                raise self.fail(line_no, line, "unreadable service row", "`<id>  <ip>:<port>  <type>  <backend>`")
        return [Service.model_validate(s) for s in self.services]

    def service(self, m: re.Match[str], line_no: int, line: str) -> None:
        frontend = _address(m["fe"])
        if frontend is None:
            raise self.fail(line_no, line, f"frontend {m['fe']!r} is not ip:port", "`<ip>:<port>[/TCP|/UDP]`")
        ip, port, protocol = frontend
        self.services.append(
            {
                "id": int(m["sid"]) if "sid" in m.re.groupindex else None,
                "frontend": _join_host_port(ip, port),
                "protocol": protocol,
                "type": m["type"],
                "remote": m["remote"] is not None,
                "name": None,
                "namespace": None,
                "backends": [],
            }
        )
        self.last_n = 0
        if m["n"] is not None:
            self.backend(m, line_no, line)

    def backend(self, m: re.Match[str], line_no: int, line: str) -> None:
        n = int(m["n"])
        if n <= self.last_n:
            raise self.fail(
                line_no,
                line,
                f"backend {n} after backend {self.last_n}",
                "backend numbers that increase (a repeat means garbled output)",
            )
        self.last_n = n
        address = _address(m["addr"])
        if address is None:
            raise self.fail(line_no, line, f"backend {m['addr']!r} is not ip:port", "`<ip>:<port>[/PROTO]`")
        ip, port, protocol = address
        self.services[-1]["backends"].append(
            Backend(
                address=_join_host_port(ip, port),
                ip=ip,
                port=port,
                protocol=protocol,
                state=m["state"],
                preferred=m["preferred"] is not None,
                node_name=None,
            )
        )


# ------------------------------------------------------------------------------------ services: JSON


def _services_from_json(text: str) -> list[Service]:
    j = _Json(SERVICE_COMMAND)
    entries = j.array(_load_json(text, SERVICE_COMMAND), "")
    services = []
    for index, raw in enumerate(entries):
        where = f"[{index}]"
        entry = j.obj(raw, where)
        spec = j.obj(entry.get("spec"), f"{where}.spec")
        flags = j.opt_obj(spec, "flags", f"{where}.spec") or {}
        # The text layout prints what is realized in the datapath; use the same when it is filled in.
        status = j.opt_obj(entry, "status", where)
        realized = None if status is None else j.opt_obj(status, "realized", f"{where}.status")
        source, src = (spec, f"{where}.spec")
        if (
            realized is not None
            and isinstance(realized.get("frontend-address"), dict)
            and realized["frontend-address"].get("ip")
        ):
            source, src = (realized, f"{where}.status.realized")
        fe = j.obj(source.get("frontend-address"), f"{src}.frontend-address")
        fe_ip = j.ip(fe, "ip", f"{src}.frontend-address")
        fe_port = j.integer(fe, "port", f"{src}.frontend-address", 0, 65535)
        service_id = source.get("id", spec.get("id"))
        if service_id is not None and (isinstance(service_id, bool) or not isinstance(service_id, int)):
            raise j.fail(f"{src}.id", service_id, "an integer")
        backends = []
        for n, raw_be in enumerate(j.opt_array(source, "backend-addresses", src)):
            bw = f"{src}.backend-addresses[{n}]"
            be = j.obj(raw_be, bw)
            ip = j.ip(be, "ip", bw)
            port = j.integer(be, "port", bw, 0, 65535)
            backends.append(
                Backend(
                    address=_join_host_port(ip, port),
                    ip=ip,
                    port=port,
                    protocol=j.opt_string(be, "protocol", bw),
                    state=j.opt_string(be, "state", bw) or "active",  # omitempty: empty means active
                    preferred=j.opt_bool(be, "preferred", bw),
                    node_name=j.opt_string(be, "nodeName", bw),
                )
            )
        services.append(
            Service(
                id=service_id,
                frontend=_join_host_port(fe_ip, fe_port),
                protocol=j.opt_string(fe, "protocol", f"{src}.frontend-address"),
                type=j.string(flags, "type", f"{where}.spec.flags"),
                remote=bool(j.opt_string(flags, "cluster", f"{where}.spec.flags")),
                name=j.opt_string(flags, "name", f"{where}.spec.flags"),
                namespace=j.opt_string(flags, "namespace", f"{where}.spec.flags"),
                backends=backends,
            )
        )
    return services


def parse_service_list(text: str) -> list[Service]:
    """Parse `cilium service list [--clustermesh-affinity]` text (1.13+) or `-o json` output.

    The only empty result is a table with its header and no rows (or JSON `[]`): the agent then
    really has no services. Anything else that yields nothing, or cannot be read, raises
    `CiliumOutputError`, because an empty list would read as "failover has no backends".
    """
    if text.lstrip().startswith("["):
        return _services_from_json(text)
    return _ServiceTextReader().read(text)
