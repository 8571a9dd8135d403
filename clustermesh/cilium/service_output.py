"""Read `cilium service list [--clustermesh-affinity]` of Cilium 1.13+, text table or `-o json`.

Failover decisions read the backends from here, so an unreadable or truncated table raises
`CiliumOutputError` (naming the line or JSON path and what was expected) instead of reading as
"no backends". Layouts per version: reference/cilium.md §2. 1.19 and 1.20 print the 1.18 layouts (the
`ID` column kept, see tests/fixtures/cilium/README.md); a table without the `ID` column is read too,
with `id` None.
"""

from __future__ import annotations

import re
from typing import Any

from clustermesh.cilium.output_models import Backend, Service
from clustermesh.cilium.output_reading import JsonReader, load_json, normalise_ip, numbered_lines
from clustermesh.errors import CiliumOutputError

__all__ = ["parse_service_list"]

SERVICE_COMMAND = "cilium service list"

_PORT = r"[0-9]{1,5}"
_ADDRESS = re.compile(
    rf"(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|(?P<v4>[0-9.]+)):(?P<port>{_PORT})(?:/(?P<proto>[A-Z]+))?"
)


def _join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
    ip = normalise_ip(m["v6"] or m["v4"])
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
        lines = numbered_lines(text)
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
    j = JsonReader(SERVICE_COMMAND)
    entries = j.array(load_json(text, SERVICE_COMMAND), "")
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
