"""What the Cilium Helm chart of one version line does with a set of values: render or refuse.

Only the parts that matter for Cluster Mesh are modelled (reference/cilium.md §1.1). The sandbox keeps
its own renderer on purpose: the pipeline writes values, this module judges them the way the real chart
would, so a mistake in the pipeline's understanding shows up as a failed installation here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.versions import facts as version_facts
from sandbox.versions import line_names
from sandbox.versions import parse as parse_version

LINES = line_names()  # "1.13" … "1.19" (sandbox.versions.LINES)
NAME_RE = re.compile(r"^([a-z0-9][-a-z0-9]*)?[a-z0-9]$")
DEFAULT_NODE_PORT = 32379
DEFAULT_PORT = 2379


class ChartError(Exception):
    """A render failure, worded like Helm's (``execution error at (cilium/templates/…): …``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ClusterEntry:
    """One ``clustermesh.config.clusters[]`` entry, tls strings kept verbatim (base64 of PEM)."""

    name: str
    address: str = ""
    port: int = DEFAULT_PORT
    ips: tuple[str, ...] = ()
    has_tls: bool = False
    cert: str = ""
    key: str = ""
    ca_cert: str = ""  # "" when the entry has no ``tls.caCert`` (or on 1.13, which ignores it)


@dataclass(frozen=True)
class Rendered:
    """The outcome of a successful render, reduced to what the simulated cluster acts on."""

    version: str  # concrete chart version, e.g. "1.16.9"
    cluster_name: str
    cluster_id: int
    max_connected_clusters: int
    mesh_enabled: bool  # clustermesh.useAPIServer
    config_enabled: bool  # clustermesh.config.enabled: the cilium-clustermesh Secret is rendered
    service_type: str  # clustermesh.apiserver.service.type
    node_port: int
    service_annotations: dict[str, str]
    apiserver_replicas: int
    ca_cert: str  # base64 PEM of the CA given in values ("" = none given: certgen's own CA)
    ca_key: str
    ca_source: str  # "clustermesh.apiserver.tls.ca" | "tls.ca" | ""
    tls_auto_enabled: bool
    tls_method: str  # helm | cronJob | certmanager
    certgen_is_hook: bool  # certgen runs as a post-install/post-upgrade hook (1.14–1.18 cronJob)
    clusters: tuple[ClusterEntry, ...]
    kvstoremesh: bool
    kube_proxy_replacement: str
    pod_cidrs: tuple[str, ...]
    pod_mask_size: int
    values: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    mesh_secrets: dict[str, dict[str, str]] | None = field(default=None, compare=False, repr=False)
    """Real-chart mode: the rendered ``cilium-clustermesh`` / ``cilium-kvstoremesh`` Secrets' data (name →
    key → base64), applied verbatim. ``None``: the built-in model (``mesh_secret_data``) writes them."""
    host_aliases: tuple[tuple[str, str], ...] | None = field(default=None, compare=False, repr=False)
    """Real-chart mode: the rendered agents' hostAliases as (ip, hostname). ``None``: built from ``clusters``."""

    @property
    def line(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _get(values: dict[str, Any], path: str, default: Any = None) -> Any:
    cur: Any = values
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            return default
        cur = cur[part]
    return cur


def _fail(line: int, col: int, message: str, template: str = "validate.yaml") -> ChartError:
    return ChartError(f"execution error at (cilium/templates/{template}:{line}:{col}): {message}")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _check_pem(b64: str, field_name: str, template: str) -> None:
    """``buildCustomCert`` needs base64 of a PEM; anything else fails the render."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(3, 12, f"error calling buildCustomCert: unable to decode base64 {field_name}", template) from None
    if b"-----BEGIN" not in raw:
        raise _fail(3, 12, f"error calling buildCustomCert: {field_name} is not a PEM block", template)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise _fail(1, 4, f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _fail(1, 4, f"{what} must be an integer, got {value!r}") from None


def render(version: str, values: dict[str, Any]) -> Rendered:
    """Render ``values`` with the chart of ``version``, or raise ``ChartError`` as Helm would fail."""
    major, minor, patch = parse_version(version)
    if (major, minor) < (1, 13) or (major, minor) > (1, 19):
        raise ChartError(f"chart cilium version {version} is not available in the sandbox (1.13 to 1.19 only)")
    ver = (major, minor, patch)
    if not isinstance(values, dict):
        raise ChartError("values must be a map")

    # --- cluster identity -----------------------------------------------------------------------
    name = _get(values, "cluster.name", "default")
    name = str(name)
    cluster_id = _int(_get(values, "cluster.id", 0), "cluster.id")
    max_connected = 255
    if ver >= (1, 15, 0):
        max_connected = _int(_get(values, "clustermesh.maxConnectedClusters", 255), "clustermesh.maxConnectedClusters")
        if max_connected not in (255, 511):
            raise _fail(23, 5, f"clustermesh.maxConnectedClusters must be 255 or 511, got {max_connected}")
    if cluster_id < 0 or cluster_id > max_connected:
        raise _fail(
            17,
            5,
            f"The cluster.id must be in the range 1 to {max_connected} (0: no mesh), got {cluster_id}",
        )
    if name == "default" and cluster_id != 0:
        raise _fail(8, 5, "The cluster name is invalid: cannot use default value with cluster.id != 0")
    compat = _get(values, "upgradeCompatibility")
    bypass = False
    if compat:
        try:
            bypass = parse_version(str(compat)) <= (1, 15, 999)
        except ValueError:
            bypass = False
    if ver >= (1, 16, 0) and not bypass and (len(name) > 32 or not NAME_RE.match(name)):
        raise _fail(
            11,
            7,
            f'The cluster name "{name}" is invalid. It must consist of at most 32 lower case alphanumeric '
            "characters and '-', start and end with an alphanumeric character.",
        )

    # --- clustermesh apiserver --------------------------------------------------------------------
    mesh_enabled = _truthy(_get(values, "clustermesh.useAPIServer", False))
    config_enabled = _truthy(_get(values, "clustermesh.config.enabled", False))
    service_type = str(_get(values, "clustermesh.apiserver.service.type", "NodePort"))
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ChartError(
            f'Service "clustermesh-apiserver" is invalid: spec.type: Unsupported value: "{service_type}": '
            'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'
        )
    node_port = _int(_get(values, "clustermesh.apiserver.service.nodePort", DEFAULT_NODE_PORT), "nodePort")
    annotations = _get(values, "clustermesh.apiserver.service.annotations", {}) or {}
    replicas = _int(_get(values, "clustermesh.apiserver.replicas", 1), "clustermesh.apiserver.replicas")

    tls_auto_enabled = _truthy(_get(values, "clustermesh.apiserver.tls.auto.enabled", True))
    method = str(_get(values, "clustermesh.apiserver.tls.auto.method", "helm"))
    if method not in ("helm", "cronJob", "certmanager"):
        raise _fail(
            30,
            9,
            f"clustermesh.apiserver.tls.auto.method must be helm, cronJob or certmanager, got {method!r}",
        )
    if (
        mesh_enabled
        and tls_auto_enabled
        and method == "certmanager"
        and not _get(values, "clustermesh.apiserver.tls.auto.certManagerIssuerRef")
    ):
        raise _fail(
            34,
            5,
            "ClusterMesh TLS certgen method=certmanager requires user specify "
            ".Values.clustermesh.apiserver.tls.auto.certManagerIssuerRef",
        )
    hook = method == "cronJob" and (1, 14, 0) <= ver <= (1, 18, 11)

    # --- which CA ---------------------------------------------------------------------------------
    old_cert = str(_get(values, "clustermesh.apiserver.tls.ca.cert", "") or "")
    old_key = str(_get(values, "clustermesh.apiserver.tls.ca.key", "") or "")
    new_cert = str(_get(values, "tls.ca.cert", "") or "")
    new_key = str(_get(values, "tls.ca.key", "") or "")
    old_fatal = ver >= (1, 17, 0) or (minor == 16 and patch >= 2) or (minor == 15 and patch >= 8)
    if (old_cert or old_key) and old_fatal:
        raise _fail(
            47,
            5,
            "clustermesh.apiserver.tls.ca.cert and clustermesh.apiserver.tls.ca.key have been removed, "
            "use tls.ca.cert and tls.ca.key instead",
        )
    ca_cert = ca_key = ca_source = ""
    if minor == 13:
        candidates = [("clustermesh.apiserver.tls.ca", old_cert, old_key)]
    elif minor == 14:
        candidates = [("clustermesh.apiserver.tls.ca", old_cert, old_key), ("tls.ca", new_cert, new_key)]
    else:  # 1.15+: the old key is ignored (≤1.15.7 / ≤1.16.1) or already refused above
        candidates = [("tls.ca", new_cert, new_key)]
    for source, cert, key in candidates:
        if cert:
            template = "clustermesh-apiserver/tls-helm/_helpers.tpl"
            if not key:
                raise ChartError(f"execution error at (cilium/templates/{template}:23:58): missing {source}.key")
            _check_pem(cert, f"{source}.cert", template)
            _check_pem(key, f"{source}.key", template)
            ca_cert, ca_key, ca_source = cert, key, source
            break

    # --- clusters[] -------------------------------------------------------------------------------
    raw_clusters = _get(values, "clustermesh.config.clusters", []) or []
    if not isinstance(raw_clusters, list):
        raise _fail(
            5,
            14,
            "clustermesh.config.clusters must be a list",
            "clustermesh-config/_helpers.tpl",
        )
    entries: list[ClusterEntry] = []
    for i, raw in enumerate(raw_clusters):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise _fail(
                7,
                18,
                f"clustermesh.config.clusters[{i}]: name is required",
                "clustermesh-config/_helpers.tpl",
            )
        peer = str(raw["name"])
        if peer == name:
            continue  # Cilium skips its own cluster in the list
        tls = raw.get("tls")
        has_tls = isinstance(tls, dict) and bool(tls)
        tls = tls if isinstance(tls, dict) else {}
        ips = raw.get("ips") or []
        if not isinstance(ips, list):
            ips = [ips]
        entries.append(
            ClusterEntry(
                name=peer,
                address=str(raw.get("address") or ""),
                port=_int(raw.get("port") or DEFAULT_PORT, f"clustermesh.config.clusters[{i}].port"),
                ips=tuple(str(ip) for ip in ips),
                has_tls=has_tls,
                cert=str(tls.get("cert") or ""),
                key=str(tls.get("key") or ""),
                ca_cert="" if minor == 13 else str(tls.get("caCert") or ""),
            )
        )

    # --- kvstoremesh, KPR, IPAM -------------------------------------------------------------------
    if minor == 13:
        kvstoremesh = False
    else:
        kvstoremesh = _truthy(_get(values, "clustermesh.apiserver.kvstoremesh.enabled", minor >= 16))
    kpr = _get(values, "kubeProxyReplacement", "false" if minor >= 14 else "disabled")
    kpr_text = ("true" if kpr else "false") if isinstance(kpr, bool) else str(kpr)
    cidrs = _get(values, "ipam.operator.clusterPoolIPv4PodCIDRList")
    if cidrs is None:
        single = _get(values, "ipam.operator.clusterPoolIPv4PodCIDR")
        if single and minor >= 14:
            raise ChartError(
                "ipam.operator.clusterPoolIPv4PodCIDR was removed in Cilium 1.14, "
                "use ipam.operator.clusterPoolIPv4PodCIDRList"
            )
        cidrs = [single] if single else ["10.0.0.0/8"]
    if isinstance(cidrs, str):
        cidrs = [cidrs]
    mask = _int(_get(values, "ipam.operator.clusterPoolIPv4MaskSize", 24), "clusterPoolIPv4MaskSize")

    return Rendered(
        version=f"{major}.{minor}.{patch}",
        cluster_name=name,
        cluster_id=cluster_id,
        max_connected_clusters=max_connected,
        mesh_enabled=mesh_enabled,
        config_enabled=config_enabled,
        service_type=service_type,
        node_port=node_port,
        service_annotations={str(k): str(v) for k, v in dict(annotations).items()},
        apiserver_replicas=replicas,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_source=ca_source,
        tls_auto_enabled=tls_auto_enabled,
        tls_method=method,
        certgen_is_hook=hook,
        clusters=tuple(entries),
        kvstoremesh=kvstoremesh,
        kube_proxy_replacement=kpr_text,
        pod_cidrs=tuple(str(c) for c in cidrs),
        pod_mask_size=mask,
        values=values,
    )


def mesh_secret_data(r: Rendered, local_ca: str, remote: dict[str, str]) -> dict[str, str]:
    """The built-in model of the ``cilium-clustermesh`` Secret (key → base64) for ``r``'s clusters[] entries.

    ``local_ca`` is the base64 CA certificate of the cluster's ``cilium-ca`` Secret, ``remote`` the data of
    its ``clustermesh-apiserver-remote-cert`` Secret (``tls.crt`` / ``tls.key``), as the chart reads them.
    """
    entry_tls_only = version_facts(r.version).entry_tls_only
    data: dict[str, str] = {}
    for e in r.clusters:
        host = e.address or f"{e.name}.mesh.cilium.io"
        text = (
            f"endpoints:\n- https://{host}:{e.port}\n"
            f"trusted-ca-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client-ca.crt\n"
            f"key-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.key\n"
            f"cert-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.crt\n"
        )
        if entry_tls_only:
            cert, key, ca = (e.cert, e.key, local_ca) if e.has_tls else ("", "", "")
        elif e.has_tls:
            cert, key, ca = e.cert, e.key, e.ca_cert or local_ca
        else:
            cert, key, ca = str(remote.get("tls.crt", "")), str(remote.get("tls.key", "")), e.ca_cert or local_ca
        data[e.name] = base64.b64encode(text.encode()).decode()
        data[f"{e.name}.etcd-client.crt"] = cert
        data[f"{e.name}.etcd-client.key"] = key
        data[f"{e.name}.etcd-client-ca.crt"] = ca
    return data
