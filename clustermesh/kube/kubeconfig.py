"""From a kubeconfig to a client configuration: one context, TLS always verified, key data kept in memory.

Bytes become text here, as UTF-8 only (a UTF-16 file, what PowerShell's ``>`` writes, is refused with
the fix); the text is parsed here (YAML errors are reported by position only: YAML's own message quotes
the offending text, which may be a credential), only the chosen context's cluster and user are handed to
the official ``KubeConfigLoader``, a cluster entry that turns verification off or is not ``https://``
is refused, and ``*-data`` fields (CA, client certificate, client key) become in-memory files
(``memfd``) so the loader writes no temporary file. Every string of the user entry is kept as a possible
credential, for the redaction of error texts (:class:`~clustermesh.kube.api_errors.Redactor`).

No error raised here chains the library's exception: a ``UnicodeDecodeError`` holds the whole input in
``object``, PyYAML's ``MarkedYAMLError`` in ``problem_mark.buffer``, a ``JSONDecodeError`` in ``doc``, and
a chained exception travels with ours into tracebacks, Prefect states and pickles. So every
``KubeconfigError`` is raised after its ``except`` block has ended (``__context__`` stays None), not inside
it with ``from None`` (which only hides the context from tracebacks).
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.config import kube_config
from kubernetes.config.config_exception import ConfigException
from yaml.reader import ReaderError

from clustermesh.errors import KubeconfigError
from clustermesh.kube.api_errors import Redactor, cut

__all__ = [
    "UTF8_FIX",
    "KubeconfigSource",
    "LoadedKubeconfig",
    "MemoryFiles",
    "decode_kubeconfig",
    "load_context",
    "parse_kubeconfig",
    "read_kubeconfig_file",
]

_KubeConfigLoader: Any = kube_config.KubeConfigLoader  # the loader is untyped; keep that in one place


UTF8_FIX = "save the kubeconfig as UTF-8 (PowerShell: Out-File -Encoding utf8)"
"""The fix for a kubeconfig that is not UTF-8: PowerShell's ``>`` and ``Out-File`` write UTF-16 by default."""


@dataclass(frozen=True)
class KubeconfigSource:
    """Where a kubeconfig comes from, as error messages name it: what it is, the spec field, how to repoint it.

    ``what`` never holds the kubeconfig's content: a file path, a block or variable name.
    """

    what: str
    field: str
    repoint: str
    """The fix for a reference that names the wrong thing (a folder, a missing file)."""

    def __str__(self) -> str:
        return f"{self.what} ({self.field})" if self.field else self.what

    @classmethod
    def text(cls) -> KubeconfigSource:
        return cls("the kubeconfig text", "", "pass the kubeconfig's text")

    @classmethod
    def file(cls, path: str | os.PathLike[str]) -> KubeconfigSource:
        return cls(
            f"kubeconfig file {os.fspath(path)}",
            "clusters[].kubeconfig.path",
            "set clusters[].kubeconfig.path in the spec to the kubeconfig file itself",
        )


_BOMS: tuple[tuple[bytes, str], ...] = (  # UTF-32 first: its little-endian mark starts like UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16 (what PowerShell's `>` and Out-File write by default)"),
    (b"\xfe\xff", "UTF-16"),
)


def decode_kubeconfig(raw: bytes, cluster_name: str, source: KubeconfigSource) -> str:
    """Kubeconfig bytes as text: UTF-8 only (with or without a byte-order mark); anything else is refused.

    The error says what the bytes look like (UTF-16, binary) and never chains the ``UnicodeDecodeError``,
    whose ``object`` is the whole file, token and key data included.
    """
    problem = next((f"is {name}, not UTF-8" for bom, name in _BOMS if raw.startswith(bom)), None)
    if problem is None:
        try:
            text = raw.decode("utf-8-sig")  # strict; PowerShell 5's "-Encoding utf8" writes a BOM
        except UnicodeDecodeError as exc:
            problem = f"is not UTF-8 text: the byte at offset {exc.start} is not UTF-8 (another encoding, or binary)"
        else:
            return _checked_text(text, cluster_name, source)
    raise KubeconfigError(cluster_name, f"{source} {problem}", fix=UTF8_FIX)


def _checked_text(text: str, cluster_name: str, source: KubeconfigSource) -> str:
    """Text that no kubeconfig holds: NUL characters are UTF-16 read as something else, or a binary file."""
    if text.startswith("\ufeff"):
        text = text[1:]
    nul = text.find("\x00")
    if nul >= 0:
        raise KubeconfigError(
            cluster_name,
            f"{source} holds a NUL character at offset {nul}: it is UTF-16 without a byte-order mark, or not text",
            fix=UTF8_FIX,
        )
    return text


def parse_kubeconfig(text: str, cluster_name: str, source: KubeconfigSource | None = None) -> Mapping[str, Any]:
    """The kubeconfig as data; refused, by position only, when it is not YAML (JSON is YAML too)."""
    source = source or KubeconfigSource.text()
    text = _checked_text(text, cluster_name, source)
    where: str | None = None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = _yaml_position(exc)
    except (ValueError, TypeError, RecursionError):  # a constructor's own error: an impossible date, a deep nest
        where = ""
    if where is not None:
        # Only the position: YAML's message quotes the offending text and its mark holds the whole buffer.
        raise KubeconfigError(
            cluster_name,
            f"{source} is not valid YAML{where}",
            fix="check the kubeconfig's indentation and quoting",
        )
    if not isinstance(config, Mapping):
        raise KubeconfigError(
            cluster_name,
            f"{source} is not a kubeconfig (expected a mapping with contexts, clusters and users)",
            fix="check the reference",
        )
    return config


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(mark, yaml.Mark):
        return f" at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, ReaderError):
        return f" at character {exc.position}: {exc.reason}"
    return ""


def _named_entries(
    config: Mapping[str, Any], key: str, body_key: str, cluster_name: str
) -> dict[str, Mapping[str, Any]]:
    entries = config.get(key) or []
    if not isinstance(entries, list):
        raise KubeconfigError(cluster_name, f"{key} is not a list", fix=f"write {key} as a list of named entries")
    out: dict[str, Mapping[str, Any]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(cluster_name, f"{key}[{index}] has no name", fix="give every entry a name")
        body = entry.get(body_key)
        out[entry["name"]] = body if isinstance(body, Mapping) else {}
    return out


def _refuse_unverified(cluster: Mapping[str, Any], ref: str, context: str, cluster_name: str) -> None:
    skip = cluster.get("insecure-skip-tls-verify")
    if skip is True or str(skip).lower() == "true":
        raise KubeconfigError(
            cluster_name,
            f"cluster entry {ref!r} (context {context!r}) sets insecure-skip-tls-verify: true",
            fix="clustermesh always verifies TLS and has no switch to turn that off: remove the flag and put "
            "the cluster's CA in certificate-authority-data (KKP's kubeconfigs carry it)",
        )
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise KubeconfigError(
            cluster_name,
            f"cluster entry {ref!r} (context {context!r}) has server {server!r}, which is not https",
            fix="point server at the API's https:// address",
        )


def _strings(node: object) -> Iterator[str]:
    """Every string in a user entry: all of them are treated as possible credentials."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


class MemoryFiles:
    """Certificate and key bytes as memfd files: ``ssl`` insists on paths, and these never reach a disk."""

    available = hasattr(os, "memfd_create")

    def __init__(self) -> None:
        self._fds: list[int] = []

    def add(self, label: str, content: bytes) -> str:
        fd = os.memfd_create(f"clustermesh-{label}")  # close-on-exec by default
        self._fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with suppress(OSError):
                os.close(fd)


def _move_data_to_memory(body: dict[str, Any], key: str, files: MemoryFiles, *, secret: bool, cluster: str) -> None:
    """Swap ``<key>-data`` for ``<key>`` naming an in-memory file, so the loader writes no temp file."""
    data_key = f"{key}-data"
    data = body.get(data_key)
    if not data:
        return
    raw: bytes | None = None
    with suppress(binascii.Error, ValueError):
        raw = base64.b64decode(str(data), validate=True)
    if raw is None:
        raise KubeconfigError(
            cluster, f"{data_key} is not valid base64", fix=f"store {data_key} as the base64 of the PEM file"
        )
    if files.available:
        body[key] = files.add(key, raw)
        del body[data_key]
    elif secret:
        raise KubeconfigError(
            cluster,
            f"{data_key} would have to be written to a temporary file in the clear on this platform",
            fix="use a token user, or point client-key at a key file you protect",
        )


# --------------------------------------------------------------------------------------------------
# Reading and loading


@dataclass
class LoadedKubeconfig:
    """A loaded context: the client configuration, how to name its credentials, and what to redact.

    ``files`` holds the in-memory key and certificate files the configuration points at; whoever
    keeps the configuration closes them when done with it.
    """

    configuration: k8s.Configuration
    credentials: str
    secrets: list[str]
    files: MemoryFiles


def read_kubeconfig_file(
    path: str | os.PathLike[str], cluster_name: str, source: KubeconfigSource | None = None
) -> tuple[Mapping[str, Any], str]:
    """A kubeconfig file, parsed, and the directory its relative paths resolve against.

    ``source`` names the reference that led here (the spec's path, an env var) for error messages.
    """
    file = Path(path)
    source = source or KubeconfigSource.file(file)
    raw: bytes | None = None
    failure: OSError | None = None
    try:
        raw = file.read_bytes()
    except OSError as exc:  # kept past the block to be classified: it holds the path, never the content
        failure = exc
    if raw is None:
        problem, fix = _read_failure(failure, file, source)
        raise KubeconfigError(cluster_name, f"{source} {problem}", fix=fix)
    return parse_kubeconfig(decode_kubeconfig(raw, cluster_name, source), cluster_name, source), str(
        file.resolve().parent
    )


def _read_failure(exc: OSError | None, file: Path, source: KubeconfigSource) -> tuple[str, str]:
    """What is wrong with the path, and the fix, from the error reading it raised."""
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a kubeconfig file", _folder_fix(file, source)
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return "does not exist", f"{source.repoint} (check for a typo and that it is on the machine running the flow)"
    if isinstance(exc, PermissionError):
        return (
            "cannot be read: permission denied",
            "let the user running the pipeline read the file (its mode, owner and folders)",
        )
    reason = (exc.strerror if exc is not None else None) or type(exc).__name__
    return f"cannot be read: {reason}", source.repoint


_KUBECONFIG_NAMES = ("config", "kubeconfig", "admin.conf")


def _folder_fix(folder: Path, source: KubeconfigSource) -> str:
    """Repoint at the file, naming a few files in the folder that look like kubeconfigs (names only)."""
    candidates: list[str] = []
    with suppress(OSError):
        for entry in sorted(folder.iterdir()):
            name = entry.name.lower()
            if entry.is_file() and (
                name in _KUBECONFIG_NAMES or "kubeconfig" in name or name.endswith((".yaml", ".yml"))
            ):
                candidates.append(str(entry))
    hint = f" (in that folder: {', '.join(candidates[:3])})" if candidates else ""
    return f"{source.repoint}, not its folder{hint}"


def _choose_context(config: Mapping[str, Any], context: str | None, cluster_name: str) -> tuple[str, Mapping[str, Any]]:
    """The context asked for, else the current one; refused with the list of those available."""
    contexts = _named_entries(config, "contexts", "context", cluster_name)
    available = ", ".join(repr(n) for n in sorted(contexts)) or "none"
    chosen = context or config.get("current-context") or None
    if not chosen:
        raise KubeconfigError(
            cluster_name,
            "no context was given and the kubeconfig sets no current-context",
            fix=f"name one of the available contexts: {available}",
        )
    if chosen not in contexts:
        raise KubeconfigError(
            cluster_name,
            f"there is no context {chosen!r}",
            fix=f"use one of the available contexts: {available}",
        )
    return str(chosen), contexts[chosen]


def _context_entries(
    config: Mapping[str, Any], chosen: str, ctx: Mapping[str, Any], cluster_name: str
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """The cluster and user entries the context names, as copies we may change: (ref, body, ref, body)."""
    cluster_ref = ctx.get("cluster")
    user_ref = ctx.get("user")
    clusters = _named_entries(config, "clusters", "cluster", cluster_name)
    if cluster_ref not in clusters:
        raise KubeconfigError(
            cluster_name,
            f"context {chosen!r} names cluster {cluster_ref!r}, which the kubeconfig does not define",
            fix=f"define it or fix the context; defined clusters: {', '.join(sorted(clusters))}",
        )
    users = _named_entries(config, "users", "user", cluster_name)
    if user_ref and user_ref not in users:
        raise KubeconfigError(
            cluster_name,
            f"context {chosen!r} names user {user_ref!r}, which the kubeconfig does not define",
            fix=f"define it or fix the context; defined users: {', '.join(sorted(users)) or 'none'}",
        )
    cluster_body = copy.deepcopy(dict(clusters[cluster_ref]))
    user_body = copy.deepcopy(dict(users[user_ref])) if user_ref else {}
    return cluster_ref, cluster_body, user_ref, user_body


def load_context(
    config: Mapping[str, Any], *, context: str | None, cluster_name: str, base_dir: str
) -> LoadedKubeconfig:
    """Load one context of a parsed kubeconfig into a client configuration (see the module docstring)."""
    chosen, ctx = _choose_context(config, context, cluster_name)
    cluster_ref, cluster_body, user_ref, user_body = _context_entries(config, chosen, ctx, cluster_name)
    _refuse_unverified(cluster_body, cluster_ref, chosen, cluster_name)
    secrets = list(_strings(user_body))
    files = MemoryFiles()
    try:
        _move_data_to_memory(cluster_body, "certificate-authority", files, secret=False, cluster=cluster_name)
        _move_data_to_memory(user_body, "client-certificate", files, secret=False, cluster=cluster_name)
        _move_data_to_memory(user_body, "client-key", files, secret=True, cluster=cluster_name)
        only_chosen = {
            "current-context": chosen,
            "contexts": [{"name": chosen, "context": dict(ctx)}],
            "clusters": [{"name": cluster_ref, "cluster": cluster_body}],
            "users": [{"name": user_ref, "user": user_body}] if user_ref else [],
        }
        configuration = k8s.Configuration()
        failure: str | None = None
        try:
            loader = _KubeConfigLoader(config_dict=only_chosen, active_context=chosen, config_base_path=base_dir)
            loader.load_and_set(configuration)
        except (ConfigException, OSError, ValueError) as exc:
            failure = cut(Redactor(secrets)(str(exc)), 300)
        if failure is not None:
            raise KubeconfigError(
                cluster_name,
                f"context {chosen!r} cannot be loaded: {failure}",
                fix="check the user and cluster entries it names",
            )
    except BaseException:
        files.close()
        raise
    return LoadedKubeconfig(
        configuration=configuration,
        credentials=f"kubeconfig user {user_ref!r} (context {chosen!r})",
        secrets=secrets,
        files=files,
    )
