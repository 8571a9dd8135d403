"""What the Cilium Helm chart of one version line does with a set of values: render or refuse.

Only the parts that matter for Cluster Mesh are modelled (reference/cilium.md §1.1). The sandbox keeps
its own renderer on purpose: the pipeline writes values, this module judges them the way the real chart
would, so a mistake in the pipeline's understanding shows up as a failed installation here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from sandbox.versions import LINES as VERSION_LINES
from sandbox.versions import Version, line_names
from sandbox.versions import facts as version_facts
from sandbox.versions import parse as parse_version

LINES = line_names()  # "1.13" … (sandbox.versions.LINES)
NAME_RE = re.compile(r"^([a-z0-9][-a-z0-9]*)?[a-z0-9]$")
DEFAULT_NODE_PORT = 32379
DEFAULT_PORT = 2379
NO_PORT = 0  # an entry without ``port``: the chart prints ``https://host:<no value>`` (nothing dials that)
MESH_DOMAIN = "mesh.cilium.io"  # clustermesh.config.domain's default
OLD_CA_KEY = "clustermesh.apiserver.tls.ca"
CERTGEN_HOOK_ENDS: Version = (1, 19, 0)  # certgen's Job is a post-install/upgrade hook from 1.14 to 1.18.12


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
class CaBundle:
    """``tls.caBundle`` (1.14+): the trust bundle the clustermesh-apiserver's etcd (server and admin client) and
    the agents read as ``ca.crt`` instead of the leaf Secrets' ca.crt (templates/clustermesh-apiserver/
    deployment.yaml, cilium-agent/daemonset.yaml). ``content`` given: the chart renders the ConfigMap (or,
    with ``useSecret``, the Secret) itself (templates/cilium-ca-bundle-configmap.yaml); else a person made it."""

    kind: str  # "ConfigMap" | "Secret"
    name: str
    key: str
    content: str = ""


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
    ca_bundle: CaBundle | None = None
    """``tls.caBundle.enabled`` (1.14+; 1.13 has no such key): what the apiserver and agents trust as ca.crt."""

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


def _check_pem(b64: str, field_name: str, template: str, *, key: bool = False) -> None:
    """``buildCustomCert`` needs base64 of a PEM certificate (or private key) it can parse."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(3, 12, f"error calling buildCustomCert: unable to decode base64 {field_name}", template) from None
    if b"-----BEGIN" not in raw:
        raise _fail(3, 12, f"error calling buildCustomCert: {field_name} is not a PEM block", template)
    if not _parses(raw, key=key):
        what = "private key" if key else "certificate"
        raise _fail(3, 12, f"error calling buildCustomCert: error parsing {what} in {field_name}", template)


@functools.lru_cache(maxsize=64)
def _parses(raw: bytes, *, key: bool) -> bool:
    """Whether ``raw`` is a PEM certificate (or unencrypted private key); cached: values repeat often."""
    try:
        if key:
            serialization.load_pem_private_key(raw, password=None)
        else:
            x509.load_pem_x509_certificate(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise _fail(1, 4, f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _fail(1, 4, f"{what} must be an integer, got {value!r}") from None


def _supported(version: str) -> tuple[int, int, int]:
    """The parsed ``version`` when its line is in ``sandbox.versions.LINES``; a ChartError otherwise."""
    ver = parse_version(version)
    if ver[:2] not in VERSION_LINES:
        first, last = min(VERSION_LINES), max(VERSION_LINES)
        raise ChartError(
            f"chart cilium version {version} is not available in the sandbox "
            f"({first[0]}.{first[1]} to {last[0]}.{last[1]} only)"
        )
    return ver


def _schema_error(path: str, value: Any, want: str) -> ChartError:
    got = "string" if isinstance(value, str) else type(value).__name__
    return ChartError(
        f"values don't meet the specifications of the schema(s) in the following chart(s):\n"
        f"cilium:\n- at '/{path.replace('.', '/')}': got {got}, want {want}"
    )


def _identity(ver: Version, values: dict[str, Any]) -> tuple[str, int, int]:
    """cluster.name, cluster.id and maxConnectedClusters, checked where the chart of ``ver`` checks them.

    The chart never checks the ID's range (the agent does, at runtime, as the sandbox's datapath does);
    1.16+ checks types by schema and the name in validate.yaml (1.16 lets ``upgradeCompatibility`` < 1.16
    skip the format check, 1.17+ always checks it).
    """
    raw_name, raw_id = _get(values, "cluster.name", "default"), _get(values, "cluster.id", 0)
    raw_max = _get(values, "clustermesh.maxConnectedClusters", 255)
    if ver >= (1, 16, 0):  # values.schema.json
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            raise _schema_error("cluster.id", raw_id, "integer")
        if not isinstance(raw_name, str):
            raise _schema_error("cluster.name", raw_name, "string")
        if not isinstance(raw_max, int) or isinstance(raw_max, bool):
            raise _schema_error("clustermesh.maxConnectedClusters", raw_max, "integer")
    name = str(raw_name)
    cluster_id = _int(raw_id, "cluster.id")
    max_connected = 255
    if ver >= (1, 15, 0):
        max_connected = _int(raw_max, "clustermesh.maxConnectedClusters")
        if max_connected not in (255, 511):
            raise _fail(23, 5, f"clustermesh.maxConnectedClusters must be 255 or 511, got {max_connected}")
    if ver < (1, 16, 0):
        return name, cluster_id, max_connected
    if name == "":
        raise _fail(10, 5, "The cluster name is invalid: cannot be empty")
    if not _name_check_skipped(ver, values) and (len(name) > 32 or not NAME_RE.match(name)):
        raise _fail(
            11,
            7,
            f'The cluster name "{name}" is invalid. It must consist of at most 32 lower case alphanumeric '
            "characters and '-', start and end with an alphanumeric character.",
        )
    if name == "default" and cluster_id != 0:
        raise _fail(8, 5, "The cluster name is invalid: cannot use default value with cluster.id != 0")
    return name, cluster_id, max_connected


def _name_check_skipped(ver: Version, values: dict[str, Any]) -> bool:
    """1.16 only: ``upgradeCompatibility`` below 1.16 skips the name format check (gone in 1.17)."""
    compat = _get(values, "upgradeCompatibility")
    if ver[:2] != (1, 16) or not compat:
        return False
    try:
        return parse_version(str(compat)) < (1, 16, 0)
    except ValueError:
        return False


def _certgen(ver: Version, values: dict[str, Any], mesh_enabled: bool) -> tuple[bool, str]:
    tls_auto_enabled = _truthy(_get(values, "clustermesh.apiserver.tls.auto.enabled", True))
    method = str(_get(values, "clustermesh.apiserver.tls.auto.method", "helm"))
    # an unknown method renders no certgen at all (no chart refuses it): nothing issues the certificates
    if (
        ver >= (1, 13, 8)  # 1.13.0 has no such check (the 1.13 patches between are not in shared/charts)
        and mesh_enabled
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
    return tls_auto_enabled, method


def _check_provided_certs(ver: Version, values: dict[str, Any], mesh_enabled: bool, tls_auto_enabled: bool) -> None:
    """Certgen off: up to 1.19 the chart renders the apiserver's Secrets from values and needs the server
    certificate there (1.16+: unless ``tls.enableSecrets`` is false); 1.20 has no such Secrets any more."""
    if not mesh_enabled or tls_auto_enabled or ver >= (1, 20, 0):
        return
    if ver >= (1, 16, 0) and not _truthy(_get(values, "clustermesh.apiserver.tls.enableSecrets", True)):
        return
    for part in ("cert", "key"):
        if not _get(values, f"clustermesh.apiserver.tls.server.{part}"):
            raise _fail(
                10,
                62,
                f"missing clustermesh.apiserver.tls.server.{part} (tls.auto.enabled is false: "
                "give the server certificate, or turn tls.auto back on)",
                "clustermesh-apiserver/tls-provided/server-secret.yaml",
            )


def _ca(ver: Version, values: dict[str, Any]) -> tuple[str, str, str]:
    """(cert, key, the key it came from) of the CA given in values; 1.13 reads the old key only."""
    old_cert = str(_get(values, "clustermesh.apiserver.tls.ca.cert", "") or "")
    old_key = str(_get(values, "clustermesh.apiserver.tls.ca.key", "") or "")
    new_cert = str(_get(values, "tls.ca.cert", "") or "")
    new_key = str(_get(values, "tls.ca.key", "") or "")
    minor, patch = ver[1], ver[2]
    old_fatal = ver >= (1, 17, 0) or (minor == 16 and patch >= 2) or (minor == 15 and patch >= 8)
    if (old_cert or old_key) and old_fatal:
        raise _fail(
            47,
            5,
            "clustermesh.apiserver.tls.ca.cert and clustermesh.apiserver.tls.ca.key have been removed, "
            "use tls.ca.cert and tls.ca.key instead",
        )
    if minor == 13:
        candidates = [(OLD_CA_KEY, old_cert, old_key)]
    elif minor == 14:
        candidates = [(OLD_CA_KEY, old_cert, old_key), ("tls.ca", new_cert, new_key)]
    else:  # 1.15+: the old key is ignored (≤1.15.7 / ≤1.16.1) or already refused above
        candidates = [("tls.ca", new_cert, new_key)]
    for source, cert, key in candidates:
        if cert and key:  # one without the other is ignored: certgen makes its own CA
            template = "clustermesh-apiserver/tls-helm/_helpers.tpl"
            _check_pem(cert, f"{source}.cert", template)
            _check_pem(key, f"{source}.key", template, key=True)
            return cert, key, source
    return "", "", ""


def ca_bundle(ver: Version, values: dict[str, Any]) -> CaBundle | None:
    """``tls.caBundle`` as the chart reads it (values.yaml defaults: name cilium-root-ca.crt, key ca.crt);
    None when disabled or on 1.13 (no such key)."""
    if ver < (1, 14, 0) or not _truthy(_get(values, "tls.caBundle.enabled", False)):
        return None
    kind = "Secret" if _truthy(_get(values, "tls.caBundle.useSecret", False)) else "ConfigMap"
    name = str(_get(values, "tls.caBundle.name", "cilium-root-ca.crt") or "cilium-root-ca.crt")
    key = str(_get(values, "tls.caBundle.key", "ca.crt") or "ca.crt")
    return CaBundle(kind, name, key, str(_get(values, "tls.caBundle.content", "") or ""))


def _raw_entries(ver: Version, values: dict[str, Any]) -> list[Any]:
    """``clustermesh.config.clusters`` as a list: 1.19+ also takes a map keyed by name, and skips
    ``enabled: false`` entries; 1.16–1.18's schema wants a list."""
    raw = _get(values, "clustermesh.config.clusters", []) or []
    if isinstance(raw, dict) and ver >= (1, 19, 0):
        raw = [{**(body if isinstance(body, dict) else {}), "name": name} for name, body in sorted(raw.items())]
    if not isinstance(raw, list):
        if ver >= (1, 16, 0):
            want = "object or array" if ver >= (1, 19, 0) else "array"
            raise _schema_error("clustermesh.config.clusters", raw, want)
        raise _fail(5, 14, "clustermesh.config.clusters must be a list", "clustermesh-config/_helpers.tpl")
    if ver >= (1, 19, 0):
        raw = [e for e in raw if not (isinstance(e, dict) and e.get("enabled") is False)]
    return raw


def _entries(ver: Version, values: dict[str, Any], own_name: str) -> tuple[ClusterEntry, ...]:
    entries: list[ClusterEntry] = []
    for i, raw in enumerate(_raw_entries(ver, values)):
        where = f"clustermesh.config.clusters[{i}]"
        if not isinstance(raw, dict) or not raw.get("name"):
            raise _fail(7, 18, f"{where}: name is required", "clustermesh-config/_helpers.tpl")
        peer = str(raw["name"])
        if peer == own_name:
            continue  # Cilium skips its own cluster in the list
        raw_tls = raw.get("tls")
        tls: dict[str, Any] = raw_tls if isinstance(raw_tls, dict) else {}
        ips = raw.get("ips") or []
        ips = ips if isinstance(ips, list) else [ips]
        address = str(raw.get("address") or "")
        if not ips and not address:
            raise _fail(
                14, 24, "missing clustermesh.apiserver.config.clusters.address", "clustermesh-config/_helpers.tpl"
            )
        if ver[:2] == (1, 13) and not tls:  # `.tls.key` of an entry without tls: a nil pointer
            raise _fail(
                13,
                31,
                f"{where}: nil pointer evaluating interface {{}}.key",
                "clustermesh-config/clustermesh-secret.yaml",
            )
        port = raw.get("port")
        entries.append(
            ClusterEntry(
                name=peer,
                address=address,
                port=NO_PORT if port in (None, "") else _int(port, f"{where}.port"),
                ips=tuple(str(ip) for ip in ips),
                has_tls=bool(tls),
                cert=str(tls.get("cert") or ""),
                key=str(tls.get("key") or ""),
                ca_cert="" if ver[:2] == (1, 13) else str(tls.get("caCert") or ""),
            )
        )
    return tuple(entries)


def _kube_proxy_replacement(ver: Version, values: dict[str, Any]) -> str:
    """The value cilium-config gets (a boolean as ``true``/``false``; unset: the line's default).

    Not checked on purpose (a known difference, tests/contracts/test_chart_conformance.py): the real
    charts refuse what the line does not know (1.13.8+: disabled/partial/strict; 1.14/1.15: those and
    true/false; 1.16+: true/false), but the sandbox's KKP writes ``strict``/``true`` by KKP release, not
    by Cilium line (reference/kkp.md §2: KKP's exact rule is unverified), so checking here would refuse
    mixed KKP/Cilium pairs the sandbox serves.
    """
    raw = _get(values, "kubeProxyReplacement")
    if raw is None or raw == "":
        return "disabled" if ver[:2] == (1, 13) else "false"
    return ("true" if raw else "false") if isinstance(raw, bool) else str(raw)


def _pod_cidrs(ver: Version, values: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    cidrs = _get(values, "ipam.operator.clusterPoolIPv4PodCIDRList")
    if cidrs is None:
        single = _get(values, "ipam.operator.clusterPoolIPv4PodCIDR")
        if single and ver >= (1, 14, 0):
            raise ChartError(
                "ipam.operator.clusterPoolIPv4PodCIDR was removed in Cilium 1.14, "
                "use ipam.operator.clusterPoolIPv4PodCIDRList"
            )
        cidrs = [single] if single else ["10.0.0.0/8"]
    if isinstance(cidrs, str):
        cidrs = [cidrs]
    mask = _int(_get(values, "ipam.operator.clusterPoolIPv4MaskSize", 24), "clusterPoolIPv4MaskSize")
    return tuple(str(c) for c in cidrs), mask


def render(version: str, values: dict[str, Any]) -> Rendered:
    """Render ``values`` with the chart of ``version``, or raise ``ChartError`` as Helm would fail."""
    ver = _supported(version)
    if not isinstance(values, dict):
        raise ChartError("values must be a map")
    name, cluster_id, max_connected = _identity(ver, values)

    mesh_enabled = _truthy(_get(values, "clustermesh.useAPIServer", False))
    # 1.13/1.14 render cilium-clustermesh only with the apiserver on as well (1.15+: config.enabled alone)
    config_enabled = _truthy(_get(values, "clustermesh.config.enabled", False)) and (mesh_enabled or ver >= (1, 15, 0))
    service_type = str(_get(values, "clustermesh.apiserver.service.type", "NodePort"))
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ChartError(
            f'Service "clustermesh-apiserver" is invalid: spec.type: Unsupported value: "{service_type}": '
            'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'
        )
    node_port = _int(_get(values, "clustermesh.apiserver.service.nodePort", DEFAULT_NODE_PORT), "nodePort")
    annotations = _get(values, "clustermesh.apiserver.service.annotations", {}) or {}
    replicas = _int(_get(values, "clustermesh.apiserver.replicas", 1), "clustermesh.apiserver.replicas")
    tls_auto_enabled, method = _certgen(ver, values, mesh_enabled)
    _check_provided_certs(ver, values, mesh_enabled, tls_auto_enabled)
    ca_cert, ca_key, ca_source = _ca(ver, values)
    clusters = _entries(ver, values, name)
    kvstoremesh = ver >= (1, 14, 0) and _truthy(
        _get(values, "clustermesh.apiserver.kvstoremesh.enabled", ver >= (1, 16, 0))
    )
    kpr = _kube_proxy_replacement(ver, values)
    pod_cidrs, mask = _pod_cidrs(ver, values)

    return Rendered(
        version=".".join(map(str, ver)),
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
        certgen_is_hook=method == "cronJob" and (1, 14, 0) <= ver < CERTGEN_HOOK_ENDS,
        clusters=clusters,
        kvstoremesh=kvstoremesh,
        kube_proxy_replacement=kpr,
        pod_cidrs=pod_cidrs,
        pod_mask_size=mask,
        values=values,
        ca_bundle=ca_bundle(ver, values),
    )


def etcd_config_text(e: ClusterEntry) -> str:
    """The etcd config of one peer: ``ips`` win over ``address`` (the name then resolves by hostAliases)."""
    host = f"{e.name}.{MESH_DOMAIN}" if e.ips else e.address
    port = "<no value>" if e.port == NO_PORT else str(e.port)  # Helm prints a missing port so
    return (
        f"endpoints:\n- https://{host}:{port}\n"
        f"trusted-ca-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client-ca.crt\n"
        f"key-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.key\n"
        f"cert-file: /var/lib/cilium/clustermesh/{e.name}.etcd-client.crt\n"
    )


def mesh_secret_data(r: Rendered, local_ca: str, remote: dict[str, str]) -> dict[str, str]:
    """The built-in model of the ``cilium-clustermesh`` Secret (key → base64) for ``r``'s clusters[] entries.

    ``local_ca`` is the base64 CA certificate of the cluster's ``cilium-ca`` Secret, ``remote`` the data of
    its ``clustermesh-apiserver-remote-cert`` Secret (``tls.crt`` / ``tls.key``), as the chart reads them.
    The files hold what the real chart's config makes the dialer read:

    - 1.13: the entry's own ``tls.cert``/``tls.key`` and, as CA, ``clustermesh.apiserver.tls.ca.cert``
      (empty when that key is not set: the peer's CA file is empty and TLS cannot verify);
    - 1.14+: an entry with both ``tls.cert`` and ``tls.key`` presents them and trusts its ``tls.caCert``
      (1.14: else the old ``clustermesh.apiserver.tls.ca.cert``), else the local CA; an entry without
      both presents the remote-cert (``common-etcd-client*``) and trusts the local CA, ``caCert`` or not.
    """
    entry_tls_only = version_facts(r.version).entry_tls_only
    # 1.13/1.14 copy the old key's CA certificate as it is given (with its key or not)
    old_ca = str(_get(r.values, f"{OLD_CA_KEY}.cert", "") or "") if r.line in ("1.13", "1.14") else ""
    data: dict[str, str] = {}
    for e in r.clusters:
        if entry_tls_only:
            cert, key, ca = e.cert, e.key, old_ca
        elif e.cert and e.key:
            cert, key, ca = e.cert, e.key, e.ca_cert or old_ca or local_ca
        else:
            cert, key, ca = str(remote.get("tls.crt", "")), str(remote.get("tls.key", "")), local_ca
        data[e.name] = base64.b64encode(etcd_config_text(e).encode()).decode()
        data[f"{e.name}.etcd-client.crt"] = cert
        data[f"{e.name}.etcd-client.key"] = key
        data[f"{e.name}.etcd-client-ca.crt"] = ca
    return data


def host_aliases(r: Rendered) -> tuple[tuple[str, str], ...]:
    """(ip, hostname) the dialing pods resolve: a real render's own, else one per ``ips`` of each entry."""
    if r.host_aliases is not None:
        return r.host_aliases
    return tuple((ip, f"{e.name}.{MESH_DOMAIN}") for e in r.clusters for ip in e.ips)
