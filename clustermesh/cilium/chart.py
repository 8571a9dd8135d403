"""Render Cilium's real Helm charts with Helm's own engine, offline, and read what the agents would read.

The engine is Helm's Go code bundled by PyPI's ``helm-python-sdk`` (``libhelm_c.so``); it is an optional
dependency group (``uv sync --group charts``) and imported only when a chart is rendered. Rendering
runs the chart's templates and its ``values.schema.json`` check exactly as ``helm install`` would,
without a cluster (``lookup`` returns nothing, so ``tls.auto.method: helm`` mints a fresh CA per render).

What the render shows about the mesh is read from the ``cilium-clustermesh`` Secret (the agents) or
``cilium-kvstoremesh`` (KVStoreMesh, on by default from 1.16, which then dials the peers itself while the
agents talk to the local clustermesh-apiserver): one etcd config YAML per peer, whose files are resolved
through the volumes that mount that Secret, as the containers would see them.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.util
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clustermesh.errors import ChartRenderError

__all__ = [
    "AGENT_SECRET",
    "KVSTOREMESH_SECRET",
    "EtcdConfig",
    "chart_for",
    "peer_etcd_configs",
    "render_chart",
    "REFUSED_FIX",
    "engine_installed",
    "render_with_helm",
    "require_helm_binary",
]

AGENT_SECRET = "cilium-clustermesh"
KVSTOREMESH_SECRET = "cilium-kvstoremesh"
_INSTALL_FIX = "install Helm's engine with `uv sync --group charts` (the optional `charts` dependency group)"
_HELM_FIX = (
    "install helm (https://helm.sh/docs/intro/install/) on the machine that runs the pipeline, "
    "or set cilium.chart.renderer to engine"
)
HELM_TIMEOUT = 120.0
REFUSED_FIX = "change the values the message names"
"""The fix of every ChartRenderError that is Helm refusing the values (not a missing renderer or archive)."""
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: renders are mostly YAML
_WORKLOADS = frozenset({"DaemonSet", "Deployment", "StatefulSet", "Job", "CronJob", "Pod"})


def engine_installed() -> bool:
    """Helm's engine (the optional ``charts`` group) can be imported."""
    return importlib.util.find_spec("helm_python") is not None


def require_helm_binary(helm: str = "helm") -> str:
    """The path of the ``helm`` binary on PATH; a ChartRenderError naming the setting and the fix when absent."""
    binary = shutil.which(helm)
    if binary is None:
        raise ChartRenderError(
            "(renderer)", f"cilium.chart.renderer is 'helm' but there is no {helm!r} binary on PATH", fix=_HELM_FIX
        )
    return binary


def _engine() -> Any:
    try:  # by name: type checking must not depend on the optional group either
        return importlib.import_module("helm_python")
    except ImportError as exc:  # the group is optional: say how to get it
        raise ChartRenderError("(any)", f"Helm's engine is not installed ({exc})", fix=_INSTALL_FIX) from None


def render_chart(
    archive: Path,
    values: Mapping[str, Any],
    *,
    release: str = "cilium",
    namespace: str = "kube-system",
) -> list[dict[str, Any]]:
    """The manifests ``helm install`` would apply for ``values``, as objects, in the engine's order.

    Raises ``ChartRenderError`` with Helm's own message when the archive cannot be loaded, a template
    fails (``fail`` in the chart's validate.yaml, for instance) or the values break the chart's schema.
    """
    helm = _engine()
    name = archive.name
    if not archive.is_file():
        raise ChartRenderError(name, f"no chart archive at {archive}", fix="pass a path to a cilium-<version>.tgz")
    try:
        with helm.Chart.load(archive) as chart:
            rendered: dict[str, str] = chart.render(_plain(values), name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise ChartRenderError(name, str(exc), fix=REFUSED_FIX) from None
    except (TypeError, ValueError) as exc:  # values json cannot carry
        raise ChartRenderError(
            name, f"values are not plain YAML data: {exc}", fix="pass dicts, lists, scalars"
        ) from None
    objects: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt and helpers
        try:
            docs = list(yaml.load_all(text, Loader=_LOADER))
        except yaml.YAMLError as exc:
            raise ChartRenderError(name, f"{path} rendered invalid YAML: {exc}", fix="check the values") from None
        objects.extend(doc for doc in docs if isinstance(doc, dict) and doc.get("kind"))
    return objects


def render_with_helm(
    archive: Path,
    values: Mapping[str, Any],
    *,
    release: str = "cilium",
    namespace: str = "kube-system",
    helm: str = "helm",
) -> list[dict[str, Any]]:
    """Like ``render_chart``, through a ``helm`` binary on PATH (``helm template``, offline, no cluster).

    Raises ``ChartRenderError`` naming ``cilium.chart.renderer`` when there is no such binary, and with
    Helm's own message (its stderr) when the chart refuses the values.
    """
    binary = require_helm_binary(helm)
    name = archive.name
    if not archive.is_file():
        raise ChartRenderError(name, f"no chart archive at {archive}", fix="pass a path to a cilium-<version>.tgz")
    with tempfile.TemporaryDirectory(prefix="clustermesh-values-") as folder:
        values_file = Path(folder) / "values.yaml"
        values_file.write_text(yaml.safe_dump(_plain(values)))  # owner-only folder: values may hold keys
        command = [binary, "template", release, str(archive), "--namespace", namespace, "--values", str(values_file)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ChartRenderError(name, f"helm template took over {HELM_TIMEOUT:g}s", fix=_HELM_FIX) from None
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("Error: ") or f"helm exited {done.returncode}"
        raise ChartRenderError(name, message, fix=REFUSED_FIX)
    try:
        docs = list(yaml.load_all(done.stdout, Loader=_LOADER))
    except yaml.YAMLError as exc:
        raise ChartRenderError(name, f"helm template printed invalid YAML: {exc}", fix="check the values") from None
    return [doc for doc in docs if isinstance(doc, dict) and doc.get("kind")]


def _plain(values: Mapping[str, Any]) -> Any:
    """Mappings and tuples as dicts and lists: the engine takes JSON."""

    def plain(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {str(k): plain(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [plain(v) for v in node]
        return node

    return plain(values)


_ARCHIVE = re.compile(r"cilium-(?P<major>[0-9]+)\.(?P<minor>[0-9]+)\.(?P<patch>[0-9]+)\.tgz")


def chart_for(charts_dir: Path, version: str) -> Path:
    """``cilium-<version>.tgz`` in ``charts_dir``; a line (``1.16``) picks its latest patch there."""
    wanted = version.strip().removeprefix("v")
    available: dict[tuple[int, int, int], Path] = {}
    for path in sorted(charts_dir.glob("cilium-*.tgz")) if charts_dir.is_dir() else []:
        if m := _ARCHIVE.fullmatch(path.name):
            available[(int(m["major"]), int(m["minor"]), int(m["patch"]))] = path
    exact = charts_dir / f"cilium-{wanted}.tgz"
    if exact in available.values():
        return exact
    line = re.fullmatch(r"([0-9]+)\.([0-9]+)", wanted)
    if line is not None:
        patches = [key for key in available if key[:2] == (int(line[1]), int(line[2]))]
        if patches:
            return available[max(patches)]
    have = ", ".join(".".join(map(str, key)) for key in sorted(available)) or "none"
    raise ChartRenderError(
        f"cilium-{wanted}.tgz",
        f"not in {charts_dir} (versions there: {have})",
        fix="add the archive (helm pull cilium/cilium --version <v>) or pick one of those",
    )


# ------------------------------------------------------------------------------ reading the render


@dataclass(frozen=True)
class EtcdConfig:
    """One peer's etcd config as the reading container sees it: where it dials and what it trusts.

    File contents are the decoded text of the Secret key that ends up at that path; ``None`` when no
    rendered object provides the file (a certificate certgen creates at runtime, for example), ``""``
    when the render writes the file empty.
    """

    peer: str
    endpoints: tuple[str, ...]
    ca_file: str
    cert_file: str
    key_file: str
    ca_file_content: str | None = field(repr=False)
    cert: str | None = field(repr=False)
    key: str | None = field(repr=False)
    read_by: tuple[str, ...] = ()
    """``<Kind>/<name>:<container>`` of every container that mounts the config."""


def _secret_data(obj: Mapping[str, Any], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        if value is None:  # `key: ` with an empty template value: the file exists, empty
            out[str(key)] = ""
            continue
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            raise ChartRenderError(where, f"key {key!r} is not base64", fix="check the values copied into it") from None
    out.update({str(k): str(v) for k, v in (obj.get("stringData") or {}).items()})
    return out


def _pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    pod = template.get("spec")
    return pod if isinstance(pod, Mapping) else None


def _volume_files(volume: Mapping[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """(kind, object name, key, path in the volume or None = every key under its own name) per source."""
    projected = volume.get("projected")
    sources: Iterable[Mapping[str, Any]] = [volume] if projected is None else (projected.get("sources") or [])
    out: list[tuple[str, str, str, str | None]] = []
    for source in sources:
        for kind, ref, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            body = source.get(ref)
            if not isinstance(body, Mapping):
                continue
            name = str(body.get(name_key) or body.get("name") or "")
            items = body.get("items")
            if items:
                out.extend((kind, name, str(i["key"]), str(i["path"])) for i in items)
            else:
                out.append((kind, name, "", None))
    return out


@dataclass
class _Reader:
    """A container that mounts the config Secret, and the files every one of its mounts provides."""

    label: str
    items: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """path -> (kind, object name, key): sources that list their items"""
    whole: list[tuple[str, str, str]] = field(default_factory=list)
    """(folder, kind, object name): sources projecting every key as a file of its own name"""


def _readers(manifests: list[dict[str, Any]], secret: str) -> list[_Reader]:
    readers: list[_Reader] = []
    for obj in manifests:
        if obj.get("kind") not in _WORKLOADS:
            continue
        pod = _pod_spec(obj)
        if pod is None:
            continue
        volumes = {str(v.get("name")): _volume_files(v) for v in pod.get("volumes") or []}
        containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
        for container in containers:
            reader = _Reader(f"{obj['kind']}/{(obj.get('metadata') or {}).get('name')}:{container.get('name')}")
            mounts_secret = False
            for mount in container.get("volumeMounts") or []:
                sources = volumes.get(str(mount.get("name")), [])
                base = str(mount.get("mountPath", "")).rstrip("/")
                sub = mount.get("subPath")
                for kind, name, key, path in sources:
                    mounts_secret = mounts_secret or (kind == "Secret" and name == secret)
                    if path is None:
                        if not sub:
                            reader.whole.append((base, kind, name))
                    elif not sub:
                        reader.items[f"{base}/{path}"] = (kind, name, key)
                    elif sub == path:
                        reader.items[base] = (kind, name, key)
            if mounts_secret:
                readers.append(reader)
    return readers


def _resolve(
    path: str, readers: list[_Reader], objects: Mapping[tuple[str, str], dict[str, str]], own: Mapping[str, str]
) -> str | None:
    """The content a reader finds at ``path``: a keyed item, or a whole-object mount holding that name."""
    folder, base = posixpath.split(path)
    for reader in readers:
        if path in reader.items:
            kind, name, key = reader.items[path]
            data = objects.get((kind, name))
            return None if data is None else data.get(key)
        for where, kind, name in reader.whole:
            data = objects.get((kind, name))
            if where == folder and data is not None and base in data:
                return data[base]
    if not readers:  # only the Secret was rendered: the agent's layout, files named after its keys
        return own.get(posixpath.basename(path))
    return None


def peer_etcd_configs(manifests: list[dict[str, Any]], *, secret: str = AGENT_SECRET) -> dict[str, EtcdConfig]:
    """Per peer, the etcd config ``secret`` holds, with its CA, certificate and key as mounted.

    ``cilium-clustermesh`` is what the agents read; with KVStoreMesh (1.16+ default) its entries point
    at the local clustermesh-apiserver and ``cilium-kvstoremesh`` holds the peers' real addresses.
    Raises ``ChartRenderError`` when the render has no such Secret or an entry is not an etcd config.
    """
    objects: dict[tuple[str, str], dict[str, str]] = {}
    for obj in manifests:
        kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
        if kind == "Secret":
            objects[("Secret", str(name))] = _secret_data(obj, f"Secret {name}")
        elif kind == "ConfigMap":
            objects[("ConfigMap", str(name))] = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
    own = objects.get(("Secret", secret))
    if own is None:
        rendered = sorted(n for k, n in objects if k == "Secret" and "mesh" in n)
        raise ChartRenderError(
            secret,
            f"the render has no Secret {secret} (mesh Secrets rendered: {', '.join(rendered) or 'none'})",
            fix="enable clustermesh.useAPIServer and clustermesh.config (and KVStoreMesh for cilium-kvstoremesh)",
        )
    readers = _readers(manifests, secret)
    configs: dict[str, EtcdConfig] = {}
    for peer, text in sorted(own.items()):
        if "." in peer:
            continue  # `<peer>.etcd-client-ca.crt` and friends: files, not configs
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("endpoints"), list):
            raise ChartRenderError(
                f"Secret {secret}",
                f"entry {peer!r} is not an etcd config (no endpoints list)",
                fix="check clustermesh.config.clusters",
            )
        files = {key: str(doc.get(key) or "") for key in ("trusted-ca-file", "cert-file", "key-file")}

        def content(path: str) -> str | None:
            return _resolve(path, readers, objects, own) if path else None

        configs[peer] = EtcdConfig(
            peer=peer,
            endpoints=tuple(str(e) for e in doc["endpoints"]),
            ca_file=files["trusted-ca-file"],
            cert_file=files["cert-file"],
            key_file=files["key-file"],
            ca_file_content=content(files["trusted-ca-file"]),
            cert=content(files["cert-file"]),
            key=content(files["key-file"]),
            read_by=tuple(r.label for r in readers),
        )
    return configs
