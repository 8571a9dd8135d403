"""``cilium-dbg troubleshoot clustermesh [clusters...]``: per remote cluster, stage by stage.

Ported from Cilium's ``cilium-dbg/cmd/troubleshoot/troubleshoot_clustermesh.go`` (the header, one
``Cluster "<name>":`` block per configuration, sorted) and ``pkg/kvstore/etcd_debug.go`` (``EtcdDbg``:
endpoints with DNS, TCP, TLS and the client authentication, the certificates' serial, subject, issuer and
validity, then the etcd client). What each stage says comes from the datapath's verdict for the link
(:mod:`sandbox.datapath.troubleshoot`).

Availability (cilium#32336): 1.16 on, and backported to 1.14.12 and 1.15.6 (the v1.14 backport PR
cilium#32571 merged 2024-05-16; the patch numbers are the first releases after it, inferred from the
release dates). Before that the binary has no ``troubleshoot`` command and cobra answers "unknown command".
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sandbox.agentcli.go import Result, Version
from sandbox.cilium_model import AgentSnapshot, CertInfo, MeshConfigCheck

CONFIG_DIR = "/var/lib/cilium/clustermesh/"
_FIRST_PATCH = {(1, 14): 12, (1, 15): 6}  # the backports; 1.16+ had it from .0, 1.13 never
_TLS_INFO = "Negotiated TLS version: TLS 1.3, ciphersuite TLS_AES_128_GCM_SHA256"


def has_troubleshoot(version: tuple[int, ...]) -> bool:
    """Whether the agent binary of this Cilium version has ``troubleshoot clustermesh``."""
    line = (version[0], version[1])
    if line >= (1, 16):
        return True
    first = _FIRST_PATCH.get(line)
    return first is not None and (version[2] if len(version) > 2 else 0) >= first


def _full_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.lstrip("v").split("-")[0].split(".")[:3]:
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


def _unknown(binary: str) -> Result:
    return 1, "", f'Error: unknown command "troubleshoot" for "{binary}"\nRun \'{binary} --help\' for usage.\n'


def _go_time(when: datetime) -> str:
    """Go's ``time.Time.String()`` of a UTC time."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def _serial(hex_serial: str) -> str:
    """``etcdDbgOutputCert``'s serial: a colon after the 2nd character, then every 2 more."""
    out = hex_serial
    i = 2
    while i < len(out):
        out = out[:i] + ":" + out[i:]
        i += 3
    return out


def _cert_lines(cert: CertInfo, indent: str) -> list[str]:
    return [
        f"{indent}- Serial number:       {_serial(cert.serial)}",
        f"{indent}  Subject:             {cert.subject}",
        f"{indent}  Issuer:              {cert.issuer}",
        f"{indent}  Validity:",
        f"{indent}    Not before:  {_go_time(cert.not_before)}",
        f"{indent}    Not after:   {_go_time(cert.not_after)}",
    ]


def _endpoint_lines(check: MeshConfigCheck, etcd_version: str) -> tuple[list[str], bool]:
    """The ``🔌 Endpoints:`` block and whether the endpoint answered all the way to etcd."""
    if check.endpoint is None:
        return ["❌ No available endpoints"], False
    lines = ["🔌 Endpoints:", f"   - {check.endpoint}"]
    pad = "     "
    if check.endpoint_error:
        return [*lines, f"{pad}❌ Cannot parse endpoint: {check.endpoint_error}"], False
    url = urlsplit(check.endpoint if "://" in check.endpoint else f"https://{check.endpoint}")
    host_port = url.netloc
    remote = f"{check.resolved_ip}:{url.port or 2379}" if check.resolved_ip else host_port
    if check.dns_error:
        lines.append(f"{pad}❌ Cannot resolve hostname: {check.dns_error}")
    elif check.resolved_ip:
        lines.append(f"{pad}✅ Hostname resolved to: {check.resolved_ip}")
    if check.tcp_error:
        return [*lines, f"{pad}❌ Cannot establish TCP connection to {host_port}: {check.tcp_error}"], False
    lines.append(f"{pad}✅ TCP connection successfully established to {remote}")
    if check.tls_error:
        return [*lines, f"{pad}❌ Cannot establish TLS connection to {host_port}: {check.tls_error}"], False
    lines += [f"{pad}✅ TLS connection successfully established to {remote}", f"{pad}ℹ️  {_TLS_INFO}"]
    if check.client_auth_error:
        return [*lines, f"{pad}❌ TLS client authentication failed: {check.client_auth_error}"], False
    return [*lines, f"{pad}ℹ️  Etcd server version: {etcd_version}"], True


def _certificate_lines(check: MeshConfigCheck) -> list[str]:
    lines = ["🔑 Digital certificates:"]
    if not check.root_cas:
        lines.append("   ⚠️ Root CA unset: using system pool")
    else:
        lines.append("   ✅ TLS Root CA certificates:")
        for cert in check.root_cas:
            lines += _cert_lines(cert, "      ")
    if not check.client_certs:
        lines.append("   ⚠️ No available TLS client certificates")
        return lines
    lines.append("   ✅ TLS client certificates:")
    for cert in check.client_certs:
        lines += _cert_lines(cert, "      ")
        if not check.client_verifies:
            lines.append("        ⚠️ Cannot verify certificate with the configured root CAs")
    return lines


def _cluster_block(check: MeshConfigCheck, local: str, etcd_version: str) -> list[str]:
    lines = [f'Cluster "{check.name}":']
    if check.name == local:
        lines.append("ℹ️  This entry corresponds to the local cluster")
    lines.append(f"📄 Configuration path: {CONFIG_DIR}{check.name}")
    if check.config_error:
        return [*lines, f"❌ Cannot parse etcd configuration: {check.config_error}"]
    endpoint, connected = _endpoint_lines(check, etcd_version)
    lines += ["", *endpoint, "", *_certificate_lines(check), "", "⚙️ Etcd client:"]
    if not connected:
        return [*lines, "   ❌ Failed to establish connection: context deadline exceeded"]
    cluster_id = hashlib.sha256(check.name.encode()).hexdigest()[:16]
    return [*lines, "   ✅ Etcd connection successfully established", f"   ℹ️  Etcd cluster ID: {cluster_id}"]


def troubleshoot_clustermesh(
    snapshot: AgentSnapshot, version: Version, opts: dict[str, Any], args: list[str], *, binary: str, etcd_version: str
) -> Result:
    """The command's output for ``args`` (cluster names; empty: every configuration)."""
    if not has_troubleshoot(_full_version(snapshot.cilium_version)):
        return _unknown(binary)
    checks = {c.name: c for c in snapshot.mesh_checks}
    out = [f"Found {len(checks)} cluster configurations"]
    clusters = sorted(args) if args else sorted(checks)
    if args:
        out.append(f"Troubleshooting filtered subset of clusters: {', '.join(args)}")
    for name in clusters:
        out += ["", f'Cluster "{name}":'] if name not in checks else [""]
        if name not in checks:
            out.append("❌ Configuration not found")
            continue
        out += _cluster_block(checks[name], snapshot.cluster_name, etcd_version)
    return 0, "\n".join(out) + "\n", ""
