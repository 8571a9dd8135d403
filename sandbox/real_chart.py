"""The sandbox's KKP rendering the real Cilium chart: ``ChartRenderer(charts_dir)``, a ``Renderer``.

``clustermesh sandbox up --charts DIR`` installs each cluster's ``cilium`` ApplicationInstallation the way
KKP does: the archive ``cilium-<exact version>.tgz`` from ``DIR`` rendered with the values by Helm's own
engine (PyPI's ``helm-python-sdk``, the optional ``charts`` dependency group, imported only here and only
when a chart is rendered). A template or schema failure becomes ``ChartError`` with Helm's message, so KKP's
install failure carries it verbatim.

What the simulated cluster acts on is read from the rendered manifests: identity and kube-proxy replacement
from ``cilium-config``; the clustermesh-apiserver's Service, replicas and containers (kvstoremesh); whether
certgen is a Helm hook; the ``cilium-clustermesh`` / ``cilium-kvstoremesh`` Secrets, applied verbatim; the
hostAliases of the agents' DaemonSet (or, with KVStoreMesh, of the apiserver Deployment).

Certificates: offline, ``tls.auto.method: helm`` mints a fresh CA and leaf certificates on every render
(``lookup`` sees no cluster). The sandbox's certgen keeps issuing the CA and leaf Secrets instead, which is
what Helm's ``lookup`` of the existing Secrets gives a real cluster. Which CA *key in the values* the chart
honours is still the chart's decision: a CA given in the values counts only when the rendered CA Secret
carries exactly that certificate (1.13 reads ``clustermesh.apiserver.tls.ca``, later lines ``tls.ca``).

The sandbox imports nothing of the pipeline; ``clustermesh.cilium.chart`` has its own reader of renders.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sandbox.chart import DEFAULT_NODE_PORT, DEFAULT_PORT, CaBundle, ChartError, ClusterEntry, Rendered

__all__ = ["ChartRenderer", "available_versions"]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: renders are mostly YAML

AGENT_SECRET = "cilium-clustermesh"
KVSTOREMESH_SECRET = "cilium-kvstoremesh"
APISERVER = "clustermesh-apiserver"
CERTGEN_JOB = "clustermesh-apiserver-generate-certs"
_CA_SECRETS = ("clustermesh-apiserver-ca-cert", "cilium-ca")  # the first rendered one signs the mesh certs
_ARCHIVE = re.compile(r"cilium-([0-9]+\.[0-9]+\.[0-9]+)\.tgz")
_CACHE_LIMIT = 512
_INSTALL_FIX = "install Helm's engine with `uv sync --group charts` (the optional `charts` dependency group)"

Manifests = list[dict[str, Any]]


def available_versions(charts_dir: Path) -> list[str]:
    """The chart versions ``charts_dir`` holds (``cilium-<version>.tgz``), oldest first."""
    found = [m[1] for p in charts_dir.glob("cilium-*.tgz") if (m := _ARCHIVE.fullmatch(p.name))]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _engine() -> Any:
    try:  # by name: the optional group must not be needed to import (or type-check) the sandbox
        return importlib.import_module("helm_python")
    except ImportError as exc:
        raise ChartError(f"Helm's engine is not installed ({exc}): {_INSTALL_FIX}") from None


class ChartRenderer:
    """Render with the real chart of each exact version found in ``charts_dir``; renders are cached."""

    def __init__(self, charts_dir: Path | str) -> None:
        self.charts_dir = Path(charts_dir)
        if not self.charts_dir.is_dir():
            raise ChartError(f"{self.charts_dir} is not a folder: pass a folder of cilium-<version>.tgz archives")
        _engine()  # without Helm's engine nothing renders: say so now, with the fix
        self._cache: OrderedDict[tuple[str, str], Rendered | ChartError] = OrderedDict()
        self._lock = threading.Lock()
        self.renders = 0  # how many times Helm's engine ran (the rest came from the cache)

    def archive(self, version: str) -> Path:
        """``cilium-<version>.tgz`` in the folder; ``ChartError`` naming the folder and its versions if absent."""
        wanted = version.strip().removeprefix("v")
        path = self.charts_dir / f"cilium-{wanted}.tgz"
        if path.is_file():
            return path
        have = ", ".join(available_versions(self.charts_dir)) or "none"
        raise ChartError(
            f"chart cilium-{wanted}.tgz is not in {self.charts_dir} (versions there: {have}); "
            f"add it (helm pull cilium/cilium --version {wanted}) or ask for one of those versions"
        )

    def render(self, version: str, values: dict[str, Any]) -> Rendered:
        plain = _plain(values)
        digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
        key = (version, digest)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            try:
                hit = rendered_from(version, self.manifests(version, plain), values)
            except ChartError as exc:
                hit = exc
            with self._lock:
                self._cache[key] = hit
                while len(self._cache) > _CACHE_LIMIT:
                    self._cache.popitem(last=False)
        if isinstance(hit, ChartError):
            raise ChartError(hit.message)
        return hit

    def manifests(self, version: str, values: Mapping[str, Any]) -> Manifests:
        """The objects ``helm install`` would apply, or ``ChartError`` with Helm's own message."""
        archive = self.archive(version)
        helm = _engine()
        self.renders += 1
        try:
            with helm.Chart.load(archive) as chart:
                out: dict[str, str] = chart.render(
                    dict(values), name="cilium", namespace="kube-system", is_install=True
                )
        except helm.HelmError as exc:
            raise ChartError(str(exc)) from None
        except (TypeError, ValueError) as exc:  # values JSON cannot carry
            raise ChartError(f"values are not plain YAML data: {exc}") from None
        objects: Manifests = []
        for path, text in out.items():
            if not path.endswith((".yaml", ".yml")):
                continue  # NOTES.txt
            try:
                docs = list(yaml.load_all(text, Loader=_LOADER))
            except yaml.YAMLError as exc:
                raise ChartError(f"{path} rendered invalid YAML: {exc}") from None
            objects.extend(d for d in docs if isinstance(d, dict) and d.get("kind"))
        return objects


def _plain(node: Any) -> Any:
    """Mappings and tuples as dicts and lists: the engine takes JSON."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


# ------------------------------------------------------------------------------ reading the render


def _get(node: Any, *path: str, default: Any = None) -> Any:
    for part in path:
        if not isinstance(node, Mapping) or node.get(part) is None:
            return default
        node = node[part]
    return node


def _truthy(value: Any) -> bool:
    return value.lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def _find(manifests: Manifests, kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in manifests if o.get("kind") == kind and _get(o, "metadata", "name") == name), None)


def _secret_b64(obj: Mapping[str, Any]) -> dict[str, str]:
    """A rendered Secret's data as the API stores it: key → base64 (``stringData`` encoded, empty kept)."""
    out = {str(k): "" if v is None else str(v) for k, v in (obj.get("data") or {}).items()}
    for k, v in (obj.get("stringData") or {}).items():
        out[str(k)] = base64.b64encode(str(v).encode()).decode()
    return out


def _pem(b64: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True).strip()
    except (binascii.Error, ValueError):
        return b""


def _aliases(obj: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for alias in _get(obj, "spec", "template", "spec", "hostAliases", default=[]) or []:
        out.extend((str(alias["ip"]), str(h)) for h in alias.get("hostnames") or [] if alias.get("ip"))
    return out


def _int(text: Any, default: int) -> int:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return default


def rendered_from(version: str, manifests: Manifests, values: dict[str, Any]) -> Rendered:
    """What the simulated cluster acts on, read from a real render of ``version`` with ``values``."""
    config = _get(_find(manifests, "ConfigMap", "cilium-config"), "data", default={}) or {}
    deploy = _find(manifests, "Deployment", APISERVER)
    service = _find(manifests, "Service", APISERVER)
    containers = {str(c.get("name")) for c in _get(deploy, "spec", "template", "spec", "containers", default=[])}
    kvstoremesh = "kvstoremesh" in containers
    port = next(iter(_get(service, "spec", "ports", default=[]) or []), {}) or {}
    values_port = _get(values, "clustermesh", "apiserver", "service", "nodePort", default=DEFAULT_NODE_PORT)
    job = _find(manifests, "Job", CERTGEN_JOB)
    hook = bool(_get(job, "metadata", "annotations", "helm.sh/hook"))
    ca_cert, ca_key, ca_source = _values_ca(manifests, values)
    mesh_secrets = {
        name: _secret_b64(obj)
        for name in (AGENT_SECRET, KVSTOREMESH_SECRET)
        if (obj := _find(manifests, "Secret", name)) is not None
    }
    agents = _find(manifests, "DaemonSet", "cilium")
    aliases = _aliases(deploy) if kvstoremesh else _aliases(agents)
    cidrs = str(config.get("cluster-pool-ipv4-cidr") or "").split()
    name = str(config.get("cluster-name") or "default")
    return Rendered(
        version=version,
        cluster_name=name,
        cluster_id=_int(config.get("cluster-id"), 0),
        max_connected_clusters=_int(config.get("max-connected-clusters"), 255),
        mesh_enabled=deploy is not None,
        config_enabled=_truthy(_get(values, "clustermesh", "config", "enabled", default=False)),
        service_type=str(_get(service, "spec", "type", default="ClusterIP")),
        node_port=_int(port.get("nodePort"), _int(values_port, DEFAULT_NODE_PORT)),
        service_annotations={str(k): str(v) for k, v in (_get(service, "metadata", "annotations") or {}).items()},
        apiserver_replicas=_int(_get(deploy, "spec", "replicas"), 1),
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_source=ca_source,
        tls_auto_enabled=_truthy(_get(values, "clustermesh", "apiserver", "tls", "auto", "enabled", default=True)),
        tls_method=str(_get(values, "clustermesh", "apiserver", "tls", "auto", "method", default="helm")),
        certgen_is_hook=hook,
        clusters=_entries(values, name, version),
        kvstoremesh=kvstoremesh,
        kube_proxy_replacement=str(config.get("kube-proxy-replacement") or "false"),
        pod_cidrs=tuple(cidrs) or ("10.0.0.0/8",),
        pod_mask_size=_int(config.get("cluster-pool-ipv4-mask-size"), 24),
        values=values,
        mesh_secrets=mesh_secrets,
        host_aliases=tuple(aliases),
        ca_bundle=_ca_bundle(manifests, deploy),
    )


def _ca_bundle(manifests: Manifests, deploy: Mapping[str, Any] | None) -> CaBundle | None:
    """``tls.caBundle`` as the render says: the ConfigMap/Secret source of ca.crt in the apiserver's
    ``etcd-server-secrets`` volume, with the content the chart rendered for it (none: a person's object)."""
    volumes = _get(deploy, "spec", "template", "spec", "volumes", default=[]) or []
    volume = next((v for v in volumes if isinstance(v, dict) and v.get("name") == "etcd-server-secrets"), {})
    for source in _get(volume, "projected", "sources", default=[]) or []:
        for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            ref = source.get(key) if isinstance(source, dict) else None
            item = next((i for i in (ref or {}).get("items") or [] if i.get("path") == "ca.crt"), None)
            if ref is None or item is None or str(ref.get("name", "")).startswith(APISERVER):
                continue
            name, item_key = str(ref.get("name")), str(item.get("key"))
            obj = _find(manifests, kind, name) or {}
            content = (obj.get("data") or {}).get(item_key) or (obj.get("stringData") or {}).get(item_key) or ""
            if kind == "Secret" and (obj.get("data") or {}).get(item_key):
                content = base64.b64decode(str(content)).decode(errors="replace")
            return CaBundle(kind, name, item_key, str(content))
    return None


def _values_ca(manifests: Manifests, values: dict[str, Any]) -> tuple[str, str, str]:
    """(cert, key, values key) of the CA given in the values that the chart really signs the mesh with.

    The rendered CA Secret (``clustermesh-apiserver-ca-cert`` on 1.13, else ``cilium-ca``) shows which key
    the chart honoured; a key it ignored (``tls.ca`` on 1.13, the old key on 1.15+) gives ("", "", "").
    """
    rendered = next((obj for n in _CA_SECRETS if (obj := _find(manifests, "Secret", n)) is not None), None)
    if rendered is None:
        return "", "", ""
    used = _pem(str(_get(rendered, "data", "ca.crt", default="") or ""))
    for source in ("clustermesh.apiserver.tls.ca", "tls.ca"):
        cert = str(_get(values, *source.split("."), "cert", default="") or "")
        key = str(_get(values, *source.split("."), "key", default="") or "")
        if cert and used and _pem(cert) == used:
            return cert, key, source
    return "", "", ""


def _entries(values: dict[str, Any], own: str, version: str) -> tuple[ClusterEntry, ...]:
    """``clustermesh.config.clusters[]`` without the cluster itself, as the built-in renderer lists them."""
    raw = _get(values, "clustermesh", "config", "clusters", default=[]) or []
    per_entry_ca = not version.startswith("1.13.")
    out: list[ClusterEntry] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping) or not item.get("name") or str(item["name"]) == own:
            continue
        tls = item.get("tls") if isinstance(item.get("tls"), Mapping) else {}
        ips = item.get("ips") or []
        out.append(
            ClusterEntry(
                name=str(item["name"]),
                address=str(item.get("address") or ""),
                port=_int(item.get("port"), DEFAULT_PORT),
                ips=tuple(str(ip) for ip in (ips if isinstance(ips, list) else [ips])),
                has_tls=bool(tls),
                cert=str(tls.get("cert") or ""),
                key=str(tls.get("key") or ""),
                ca_cert=str(tls.get("caCert") or "") if per_entry_ca else "",
            )
        )
    return tuple(out)
