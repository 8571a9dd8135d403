"""The real Cilium chart decides before anything is written: render each cluster's final values first.

The values a cluster will run are its ApplicationInstallation's current values with our keys merged in,
exactly as steps 2/4/6 merge them (``plan_mesh_values``). They are rendered with the chart of the
version the cluster runs (``cilium.chart``: a folder or a Helm repository; Helm's engine or a ``helm``
binary). A render that fails stops the run with Helm's message, the cluster and the values key to fix,
before any write; KKP never sees values its chart refuses.

From a render that succeeds, what each peer's dialer (KVStoreMesh where it runs, else the agents) will
read: the endpoint, and the trusted CA and client certificate as fingerprints. Files certgen creates
at runtime are fingerprinted from the cluster's ``clustermesh-apiserver-remote-cert`` Secret when it
exists, else shown as issued by certgen at install.

With no chart to be had (offline, a version the folder lacks) the check is skipped, saying why once.
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clustermesh.certs import fingerprint
from clustermesh.cilium.chart import (
    AGENT_SECRET,
    KVSTOREMESH_SECRET,
    REFUSED_FIX,
    EtcdConfig,
    engine_installed,
    peer_etcd_configs,
    render_chart,
    render_with_helm,
    require_helm_binary,
)
from clustermesh.cilium.chart_source import ChartUnavailableError, fetch_chart
from clustermesh.errors import ChartRenderError, WaitTimeoutError
from clustermesh.kube import ClusterClient
from clustermesh.spec import ClusterSpec, MeshSpec, Timeouts
from clustermesh.steps.models import ClusterFacts, MeshEndpoint
from clustermesh.steps.step2_4_6_mesh_values import plan_mesh_values
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT, collect_mesh_endpoint, uses_shared_ca
from clustermesh.values import CaMaterial, PeerEntry

__all__ = [
    "CERTGEN_AT_INSTALL",
    "PLACEHOLDER_IP",
    "ChartReport",
    "ChartValuesRefusedError",
    "ClusterChartView",
    "PeerView",
    "chart_view",
    "check_mesh_chart",
    "check_values",
    "known_endpoint",
    "mesh_peers",
    "values_key",
    "values_checker",
]

PLACEHOLDER_IP = "192.0.2.1"
"""TEST-NET-1 (RFC 5737): stands in for a peer address that exists only after step 3/5."""
PLACEHOLDER_LABEL = f"{PLACEHOLDER_IP} (placeholder: the address exists after step 3/5)"
CERTGEN_AT_INSTALL = "issued by certgen at install"
_PLACEHOLDER_PEM = base64.b64encode(b"placeholder: the peer's certificate exists after step 3/5").decode()
_RUNTIME_FILES = ("common-etcd-client", "local-etcd-client")


class ChartValuesRefusedError(ChartRenderError):
    """The chart a cluster runs refuses the values it would get: nothing was written."""

    def __init__(self, cluster: str, chart: str, message: str, key: str) -> None:
        self.cluster = cluster
        self.key = key
        self.helm_message = message
        super().__init__(
            f"{chart} of cluster {cluster}",
            f"the chart refuses the values this run would write (nothing was written): {' '.join(message.split())}; "
            f"the key to fix: {key}",
            fix=f"correct {key} in the cluster's cilium ApplicationInstallation values or in the spec, then run again"
            if key != "see the message"
            else "correct the values the message names, then run again",
        )


# ------------------------------------------------------------------------------ the key Helm names

_SCHEMA_AT = re.compile(r"at '(/[^']*)'")
_SCHEMA_DOTTED = re.compile(r"^\s*-\s*([A-Za-z_][\w.\[\]-]*):\s", re.MULTILINE)
_TEMPLATE_AT = re.compile(r"execution error at \([^)]*\):")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*")


def _pointer_to_key(pointer: str) -> str:
    key = ""
    for part in pointer.strip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        key += f"[{part}]" if part.isdigit() else (f".{part}" if key else part)
    return key


def _has_path(values: Mapping[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def values_key(message: str, values: Mapping[str, Any]) -> str:
    """The values key Helm's message is about: ``at '/cluster/id'`` → ``cluster.id``; a failed template's
    message is searched for a key the values hold (``kubeProxyReplacement must be …``). "see the message"
    when none is named."""
    pointers = _SCHEMA_AT.findall(message)
    if pointers:
        return ", ".join(dict.fromkeys(_pointer_to_key(p) for p in pointers))
    dotted = [k for k in _SCHEMA_DOTTED.findall(message) if "." in k or _has_path(values, k)]
    if dotted:
        return ", ".join(dict.fromkeys(dotted))
    text = _TEMPLATE_AT.sub("", message)
    found: list[str] = [str(t) for t in _TOKEN.findall(text) if _has_path(values, str(t))]
    if found:
        return max(found, key=lambda t: (t.count("."), len(t)))
    return "see the message"


# ------------------------------------------------------------------------------ rendering


def _render(spec: MeshSpec, version: str, values: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """(archive name, manifests); None when no source is set. The renderer is looked for before the archive
    is fetched: Helm's engine missing (an optional group) is a chart not to be had; ``renderer: helm`` without
    a ``helm`` binary is the user's setting to fix (ChartRenderError). Refusals carry Helm's message."""
    settings = spec.cilium.chart
    if settings.source is None:
        return None
    if settings.renderer == "helm":
        require_helm_binary()
    elif not engine_installed():
        raise ChartUnavailableError(
            "(engine)",
            "Helm's engine is not installed",
            fix="uv sync --group charts (the optional charts group), or set cilium.chart.renderer to helm",
        )
    archive = fetch_chart(settings.source, version)
    renderer = render_with_helm if settings.renderer == "helm" else render_chart
    return archive.name, renderer(archive, values)


def check_values(spec: MeshSpec, cluster: str, version: str, values: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Render ``values`` with the chart ``cluster`` runs; the manifests, or None when there is no chart.

    Raises ChartValuesRefusedError (cluster, Helm's message, key) when the chart refuses them, and
    ChartUnavailableError when the chart cannot be had (callers decide whether that is said or skipped).
    A missing renderer (``helm`` not on PATH, the engine not installed) is a ChartRenderError: a setting to fix.
    """
    try:
        rendered = _render(spec, version, values)
    except ChartUnavailableError:
        raise  # a ChartRenderError too, but not a refusal: the caller says so and goes on
    except ChartRenderError as exc:
        if _is_refusal(exc):
            raise ChartValuesRefusedError(cluster, exc.chart, exc.problem, values_key(exc.problem, values)) from None
        raise
    return None if rendered is None else rendered[1]


def _is_refusal(exc: ChartRenderError) -> bool:
    """Helm refused the values (as opposed to: no renderer, no archive)."""
    return exc.fix == REFUSED_FIX


def values_checker(spec: MeshSpec, facts: ClusterFacts) -> Callable[[Mapping[str, Any]], None]:
    """For the write steps: render the exact values right before they are written; silent when no chart."""

    def check(values: Mapping[str, Any]) -> None:
        try:
            check_values(spec, facts.name, facts.detected_cilium_version, values)
        except ChartUnavailableError:
            return  # said once by the check before step 2

    return check


# ------------------------------------------------------------------------------ what the peers' dialers read


@dataclass(frozen=True)
class PeerView:
    """What the dialer of one cluster reads for one peer; key material as fingerprints only."""

    peer: str
    endpoint: str
    trusted_ca: str
    client_cert: str
    read_by: str


@dataclass(frozen=True)
class ClusterChartView:
    cluster: str
    chart: str
    peers: list[PeerView] = field(default_factory=list)


def mesh_peers(
    spec: MeshSpec, cluster: str, endpoints: Mapping[str, MeshEndpoint | None]
) -> tuple[list[PeerEntry], list[str]]:
    """Every other cluster as a peer: its endpoint where it exists, else a placeholder; and the placeholders."""
    peers: list[PeerEntry] = []
    placeholders: list[str] = []
    for other in spec.clusters:
        if other.name == cluster:
            continue
        known = endpoints.get(other.name)
        if known is not None:
            peers.append(known.peer_entry())
            continue
        placeholders.append(other.name)
        peers.append(
            PeerEntry(
                name=other.name,
                ips=[PLACEHOLDER_IP],  # type: ignore[list-item]  # validated into an address by pydantic
                port=2379,
                cert=_PLACEHOLDER_PEM,
                key=_PLACEHOLDER_PEM,  # type: ignore[arg-type]  # validated into a SecretStr by pydantic
                ca_cert=_PLACEHOLDER_PEM,
            )
        )
    return peers, placeholders


def chart_view(
    client: ClusterClient,
    facts: ClusterFacts,
    cluster: ClusterSpec,
    spec: MeshSpec,
    *,
    endpoints: Mapping[str, MeshEndpoint | None],
    shared_ca: CaMaterial | None,
) -> ClusterChartView | None:
    """Render the values ``cluster`` will run once meshed (all peers; placeholders for those without an
    endpoint yet) and read what its dialer reads per peer. None when there is no chart to render.

    Raises ChartValuesRefusedError when the chart refuses them, ChartUnavailableError when it cannot be had.
    """
    peers, placeholders = mesh_peers(spec, cluster.name, endpoints)
    ai = client.get_application_installation()
    values = plan_mesh_values(ai, facts, cluster, spec, peers=peers, shared_ca=shared_ca).new_values
    manifests = check_values(spec, cluster.name, facts.detected_cilium_version, values)
    if manifests is None:
        return None
    remote = _remote_cert(client)
    configs = _dialer_configs(manifests, [p.name for p in peers])
    views = []
    for peer in peers:
        config = configs.get(peer.name)
        if config is None:
            views.append(PeerView(peer.name, "not in the render", "-", "-", "-"))
            continue
        endpoint = ", ".join(config.endpoints)
        pending = peer.name in placeholders
        ips = PLACEHOLDER_LABEL if pending else ", ".join(str(ip) for ip in peer.ips)
        views.append(
            PeerView(
                peer=peer.name,
                endpoint=f"{endpoint} → {ips}",
                trusted_ca=_file_view(config.ca_file, config.ca_file_content, remote.get("ca.crt"), pending),
                client_cert=_file_view(config.cert_file, config.cert, remote.get("tls.crt"), pending),
                read_by=", ".join(config.read_by) or "the agents",
            )
        )
    return ClusterChartView(cluster=cluster.name, chart=f"cilium-{facts.detected_cilium_version}", peers=views)


def _dialer_configs(manifests: list[dict[str, Any]], peers: list[str]) -> dict[str, EtcdConfig]:
    """KVStoreMesh's configs where it dials the peers (1.16+ default), else the agents'."""
    try:
        kvstoremesh = peer_etcd_configs(manifests, secret=KVSTOREMESH_SECRET)
    except ChartRenderError:
        kvstoremesh = {}
    if kvstoremesh and all(p in kvstoremesh for p in peers):
        return kvstoremesh
    return peer_etcd_configs(manifests, secret=AGENT_SECRET)


def _remote_cert(client: ClusterClient) -> dict[str, str]:
    secret = client.get_secret(NAMESPACE, REMOTE_CERT) or {}
    return {str(k): str(v) for k, v in (secret.get("data") or {}).items() if v}


def _file_view(path: str, content: str | None, runtime: str | None, placeholder: bool) -> str:
    """A file's fingerprint with its name; certgen's runtime files from the cluster's Secret, if it has it."""
    name = posixpath.basename(path) or "(none)"
    if placeholder and not name.startswith(_RUNTIME_FILES):
        return f"{name}: placeholder (known after step 3/5)"
    if content is None or name.startswith(_RUNTIME_FILES):
        if runtime:
            return f"{name}: {fingerprint(runtime)} (Secret {REMOTE_CERT})"
        return f"{name}: {CERTGEN_AT_INSTALL}"
    if not content.strip():
        return f"{name}: empty"
    return f"{name}: {fingerprint(content)}"


# ------------------------------------------------------------------------------ the whole mesh, before step 2


def known_endpoint(
    client: ClusterClient, facts: ClusterFacts, spec: MeshSpec, want_ca_key: bool
) -> MeshEndpoint | None:
    """A cluster's mesh endpoint if it exists already (a rerun); None on a first run. Never waits."""
    quick = spec.model_copy(
        update={
            "timeouts": Timeouts(install=0.02, load_balancer=0.02, certificates=0.02, health=0.02, poll_interval=0.01)
        }
    )
    try:
        return collect_mesh_endpoint(client, facts, quick, want_ca_key=want_ca_key)
    except WaitTimeoutError:
        return None


@dataclass(frozen=True)
class ChartReport:
    """What the chart check before step 2 saw: a view per cluster, or why no chart was rendered."""

    views: list[ClusterChartView]
    skipped: list[str]


def check_mesh_chart(
    clients: Mapping[str, ClusterClient], facts: Mapping[str, ClusterFacts], spec: MeshSpec
) -> ChartReport:
    """Render every cluster's final values (peers without an endpoint yet as placeholders) before any write.

    Raises ChartValuesRefusedError for the first cluster whose chart refuses its values (the others'
    refusals as notes); a chart that cannot be had is reported in ``skipped``, once per reason.
    """
    if spec.cilium.chart.source is None:
        return ChartReport(views=[], skipped=["cilium.chart.source is empty: the values are not rendered"])
    first = spec.first
    shared = uses_shared_ca(spec, facts[first.name])
    endpoints = {
        c.name: known_endpoint(clients[c.name], facts[c.name], spec, shared and c.name == first.name)
        for c in spec.clusters
    }
    first_endpoint = endpoints[first.name]
    shared_ca = first_endpoint.shared_ca() if (shared and first_endpoint is not None) else None
    views: list[ClusterChartView] = []
    skipped: dict[tuple[str, str], list[str]] = {}  # (problem, fix) -> charts: an unreachable source said once
    refused: list[ChartValuesRefusedError] = []
    for c in spec.clusters:
        try:
            view = chart_view(clients[c.name], facts[c.name], c, spec, endpoints=endpoints, shared_ca=shared_ca)
        except ChartUnavailableError as exc:
            charts = skipped.setdefault((exc.problem, exc.fix), [])
            charts.extend([] if exc.chart in charts else [exc.chart])
            continue
        except ChartValuesRefusedError as exc:
            refused.append(exc)
            continue
        if view is not None:
            views.append(view)
    if refused:
        for other in refused[1:]:
            refused[0].add_note(f"also refused: {other}")
        raise refused[0]
    notes = [f"{', '.join(charts)}: {problem} ({fix})" for (problem, fix), charts in skipped.items()]
    return ChartReport(views=views, skipped=notes)
