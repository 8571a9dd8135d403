"""Cilium's Helm values in the KKP ApplicationInstallation: read them, render our part, plan the write.

We own only ``cluster``, ``clustermesh`` and ``tls``; KKP enforces or freezes the rest (kkp.md §2), so
the plan is always "the cluster's full current values with our overlay deep-merged in", compared
semantically (KKP re-serialises with sorted keys and drops comments), and written only when it differs.
``clustermesh.config.clusters`` is merged by name so peers we do not know about survive; it may be a
list or (1.19+) a map keyed by cluster name, and is read in both forms and written in the form the
cluster already uses.
"""

from __future__ import annotations

import base64
import binascii
import copy
import difflib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, SecretStr

from clustermesh.certs import fingerprint
from clustermesh.cilium.profiles import CiliumProfile
from clustermesh.errors import KkpOwnedKeyError, ValuesError
from clustermesh.spec import ClusterSpec, MeshSpec

__all__ = [
    "CLUSTERS_PATH",
    "KKP_OWNED_PATHS",
    "OUR_ROOTS",
    "CaMaterial",
    "PeerEntry",
    "Values",
    "ValuesChange",
    "ValuesField",
    "clusters_form",
    "configured_peers",
    "deep_merge",
    "dump_values",
    "legacy_paths_to_remove",
    "peer_entries",
    "plan_change",
    "read_values",
    "redact_values",
    "removed_keys_present",
    "render_mesh_values",
]

Values = dict[str, Any]
ValuesField = Literal["values", "valuesBlock"]
Path = tuple[str, ...]

CLUSTERS_PATH: Path = ("clustermesh", "config", "clusters")
"""The one list (or, 1.19+, map keyed by name) merged by entry name instead of replaced."""

ClustersForm = Literal["list", "map"]

OUR_ROOTS: frozenset[str] = frozenset({"cluster", "clustermesh", "tls"})
"""Top-level keys our overlays may contain; anything else is a bug in the caller."""

KKP_OWNED_PATHS: tuple[Path, ...] = (
    ("cni",),
    ("ipam",),
    ("ipv6",),
    ("kubeProxyReplacement",),
    ("k8sServiceHost",),
    ("k8sServicePort",),
    ("sessionAffinity",),
    ("securityContext",),
    ("podSecurityContext",),
    ("operator", "securityContext"),
    ("operator", "podSecurityContext"),
    ("envoy", "securityContext"),
    ("envoy", "podSecurityContext"),
    ("certgen", "podSecurityContext"),
    ("hubble", "relay", "securityContext"),
    ("hubble", "relay", "podSecurityContext"),
    ("hubble", "ui", "securityContext"),
    ("hubble", "ui", "podSecurityContext"),
    ("extraConfig",),
)
"""Keys KKP enforces on every reconcile or its webhook keeps immutable (kkp.md §2): never ours to write."""

_SECRET_VALUE_KEYS = frozenset({"cert", "key", "caCert", "caBundle", "crt", "ca.crt", "ca.key", "tls.crt", "tls.key"})
_HIDDEN_KEY_WORDS = ("password", "token", "secret")
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r")


class CaMaterial(BaseModel):
    """A CA to share between clusters (1.13 / ``ca_mode: shared``), as the base64 strings of ``cilium-ca``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    cert: str = Field(repr=False, description="base64 of ca.crt, verbatim from the Secret's data")
    key: SecretStr = Field(repr=False, description="base64 of ca.key, verbatim from the Secret's data")


class PeerEntry(BaseModel):
    """What one cluster needs to reach a peer: the peer's address and its remote client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(description="the peer's cluster.name")
    ips: list[IPvAnyAddress] = Field(min_length=1, description="clustermesh-apiserver addresses of the peer")
    port: int = Field(default=2379, ge=1, le=65535, description="2379 for LoadBalancer, else the nodePort")
    cert: str = Field(repr=False, description="tls.crt of the peer's clustermesh-apiserver-remote-cert (base64)")
    key: SecretStr = Field(repr=False, description="tls.key of that Secret (base64)")
    ca_cert: str | None = Field(default=None, repr=False, description="ca.crt of that Secret (base64), 1.14+")


def _object_name(ai: Mapping[str, Any]) -> str:
    meta = ai.get("metadata") if isinstance(ai.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return f"ApplicationInstallation {meta.get('namespace', 'kube-system')}/{meta.get('name', 'cilium')}"


def read_values(ai: Mapping[str, Any]) -> tuple[Values, ValuesField]:
    """The values the cluster runs with and the field they live in.

    KKP 2.25+ keeps them in ``valuesBlock`` (YAML text) and forces ``values: {}``; older KKP only has
    ``values``. A blank block or ``{}`` counts as unset. With both unset the field is ``valuesBlock``
    when the object has that key (a 2.25+ CRD), else ``values``.
    """
    obj = _object_name(ai)
    spec = ai.get("spec")
    if not isinstance(spec, Mapping):
        raise ValuesError(obj, "has no spec", fix="read the object again; is it an ApplicationInstallation?")
    block = spec.get("valuesBlock")
    values = spec.get("values")
    if block is not None and not isinstance(block, str):
        raise ValuesError(obj, "spec.valuesBlock is not a string", fix="set spec.valuesBlock to YAML text")
    if values is not None and not isinstance(values, Mapping):
        raise ValuesError(obj, "spec.values is not a mapping", fix="set spec.values to an object or {}")
    block_set = bool(block and block.strip())
    values_set = bool(values)
    if block_set and values_set:
        raise ValuesError(
            obj,
            "both spec.values and spec.valuesBlock are set (KKP refuses this)",
            fix="move the content into one of them and set the other to empty ({} or '')",
        )
    if block_set:
        assert block is not None
        return _parse_block(obj, block), "valuesBlock"
    if values_set:
        assert values is not None
        problem = _shape_problem(values)
        if problem is not None:
            raise ValuesError(obj, f"spec.values {problem}", fix="write the values out plainly")
        return copy.deepcopy(dict(values)), "values"
    return {}, "valuesBlock" if "valuesBlock" in spec else "values"


def _parse_block(obj: str, block: str) -> Values:
    """YAML text → mapping; errors give the position only (the block holds TLS keys)."""
    try:
        parsed = yaml.safe_load(block)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValuesError(
            obj,
            f"spec.valuesBlock is not valid YAML{where}: {exc.problem or 'syntax error'}",
            fix="fix the block in the UI or with `kubectl edit applicationinstallation cilium -n kube-system`",
        ) from None
    except yaml.YAMLError:
        raise ValuesError(obj, "spec.valuesBlock is not valid YAML", fix="fix the block") from None
    except (RecursionError, ValueError):  # nesting deeper than Python's stack; integers of >4300 digits
        raise ValuesError(
            obj,
            "spec.valuesBlock cannot be read: nested too deeply or a value too large",
            fix="fix the block (KKP cannot deploy it either)",
        ) from None
    if parsed is None:
        return {}
    problem = _shape_problem(parsed)
    if problem is not None:
        raise ValuesError(
            obj,
            f"spec.valuesBlock {problem}",
            fix="write the values out plainly, without recursive or heavily repeated aliases (KKP refuses "
            "excessive aliasing too)",
        )
    if not isinstance(parsed, dict):
        raise ValuesError(
            obj,
            f"spec.valuesBlock is YAML but a {type(parsed).__name__}, not a mapping",
            fix="make the block a mapping of Helm values (key: value at the top level)",
        )
    return parsed


MAX_VALUES_NODES = 200_000
"""Far more mappings, lists and scalars than any Cilium values hold: beyond it a block is an alias bomb."""
MAX_VALUES_DEPTH = 100
"""Cilium's values nest about ten levels; far deeper ones would overflow the stack when merged or dumped."""


def _shape_problem(root: Any) -> str | None:
    """Why parsed values cannot be handled (alias bomb, self-reference, absurd nesting), else None.

    Iterative and memoised, so neither deep nesting nor a "billion laughs" block is walked in full.
    """
    done: dict[int, tuple[int, int]] = {}  # id → (nodes with aliases expanded, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if not isinstance(node, dict | list):
            continue
        key = id(node)
        children = list(node.values()) if isinstance(node, dict) else node
        if leaving:
            on_path.discard(key)
            shapes = [done[id(c)] if isinstance(c, dict | list) else (1, 0) for c in children]
            size = 1 + sum(s for s, _ in shapes)
            depth = 1 + max((d for _, d in shapes), default=0)
            if size > MAX_VALUES_NODES:
                return f"expands to more than {MAX_VALUES_NODES} entries (YAML anchors and aliases)"
            if depth > MAX_VALUES_DEPTH:
                return f"nests deeper than {MAX_VALUES_DEPTH} levels"
            done[key] = (size, depth)
        elif key in on_path:
            return "refers to itself (a recursive YAML alias)"
        elif key not in done:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return None


def _merge(base: Any, overlay: Any, path: Path) -> Any:
    if path == CLUSTERS_PATH and isinstance(overlay, list):
        if isinstance(base, list):
            return _merge_by_name(base, overlay)
        if isinstance(base, dict):
            return _merge_into_map(base, overlay)
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = {k: copy.deepcopy(v) for k, v in base.items()}
        for key, value in overlay.items():
            merged[key] = _merge(base[key], value, (*path, str(key))) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(overlay)


def _merge_by_name(base: list[Any], overlay: list[Any]) -> list[Any]:
    """Overlay entries replace same-named ones in place; unknown peers stay; new ones are appended.

    A peer the overlay manages is kept once, where it was first listed: a second entry of that name
    (a copy left by hand, often with a stale address) is dropped, since Cilium would read both.
    Entries of peers the overlay does not name are left exactly as they are, duplicates included.
    """
    incoming: dict[Any, Any] = {}
    unnamed: list[Any] = []
    for entry in overlay:
        name = _entry_name(entry)
        if name is not None:
            incoming[name] = entry
        else:
            unnamed.append(entry)
    merged: list[Any] = []
    placed: set[Any] = set()
    for entry in base:
        name = _entry_name(entry)
        if name is None or name not in incoming:
            merged.append(copy.deepcopy(entry))
        elif name not in placed:
            merged.append(copy.deepcopy(incoming[name]))
            placed.add(name)
    merged.extend(copy.deepcopy(e) for name, e in incoming.items() if name not in placed)
    merged.extend(copy.deepcopy(e) for e in unnamed)
    return merged


def _merge_into_map(base: dict[Any, Any], overlay: list[Any]) -> dict[Any, Any]:
    """The map form (1.19+): an overlay entry replaces its name's value in place (without ``name``, as in the
    chart's example; a hand-set ``enabled: false`` goes too: the spec says it is a peer); other keys stay."""
    merged = {key: copy.deepcopy(value) for key, value in base.items()}
    for entry in overlay:
        name = _entry_name(entry)
        if name is not None:  # our overlays always name their entries
            merged[name] = {k: copy.deepcopy(v) for k, v in entry.items() if k != "name"}
    return merged


def _entry_name(entry: Any) -> Any:
    """An entry's ``name`` when it can key a dict; a hand-written list, set or mapping as name is no name."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, Hashable) else None


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> Values:
    """``overlay`` over ``base`` as new data: dicts recursively, lists replaced, except the mesh peer list.

    Neither input is modified. ``clustermesh.config.clusters`` is merged by ``name`` as cilium-cli
    does, so a peer added by hand or by another mesh is not dropped.
    """
    result = _merge(dict(base), dict(overlay), ())
    assert isinstance(result, dict)
    return result


def render_mesh_values(
    profile: CiliumProfile,
    cluster: ClusterSpec,
    spec: MeshSpec,
    *,
    shared_ca: CaMaterial | None,
    peers: list[PeerEntry],
) -> Values:
    """Exactly the keys we own for ``cluster``: the guide's snippet for this Cilium line.

    ``shared_ca`` goes where the profile says (1.13: ``clustermesh.apiserver.tls.ca``; later ``tls.ca``)
    and only in shared CA mode. Peer entries carry ``tls.caCert`` in per-peer mode (1.14+). In shared
    mode from 1.19, where per-entry certificates are deprecated, entries carry no ``tls`` at all: the
    agents then use the local ``clustermesh-apiserver-remote-cert``, issued by the shared CA. No
    ``clusters`` key is written without peers, so enabling the first cluster leaves its list alone.
    Keys the line removed (``profile.removed_value_paths``) are never part of it.
    """
    resolved = spec.cilium.resolve(profile)
    obj = f"values for cluster {cluster.name!r}"
    names = [p.name for p in peers]
    if cluster.name in names:
        raise ValuesError(obj, "lists itself as a peer", fix="pass only the other clusters' endpoints")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValuesError(obj, f"peers listed twice: {', '.join(duplicates)}", fix="pass one endpoint per peer")
    if shared_ca is not None and resolved.ca_mode != "shared":
        raise ValuesError(
            obj,
            f"a shared CA was given but the CA mode is {resolved.ca_mode} on Cilium {profile.line}",
            fix="do not copy CA keys between clusters in per-peer mode (or set cilium.ca_mode: shared)",
        )
    per_peer = resolved.ca_mode == "per-peer"
    with_certs = per_peer or not profile.per_entry_certs_deprecated
    entries = _peer_entries(peers, per_peer_ca=per_peer, with_certs=with_certs, obj=obj)
    config: Values = {"enabled": True}
    if entries:
        config["clusters"] = entries
    apiserver: Values = {
        "service": {"type": resolved.service_type},
        "tls": {"auto": {"method": resolved.tls_method}},
    }
    clustermesh: Values = {"useAPIServer": True, "config": config, "apiserver": apiserver}
    if resolved.max_connected_clusters == 511:
        clustermesh["maxConnectedClusters"] = 511
    values: Values = {"cluster": {"name": cluster.name, "id": cluster.id}, "clustermesh": clustermesh}
    if shared_ca is not None:
        ca = {"cert": shared_ca.cert, "key": shared_ca.key.get_secret_value()}
        values = deep_merge(values, _nest(profile.ca_placement, ca))
    return values


def _peer_entries(peers: list[PeerEntry], *, per_peer_ca: bool, with_certs: bool, obj: str) -> list[Values]:
    """``clustermesh.config.clusters``: one entry per peer, with the peer's CA in per-peer CA mode; without
    ``with_certs`` (shared CA, 1.19+) an entry is the address alone."""
    entries: list[Values] = []
    for peer in peers:
        entry: Values = {"name": peer.name, "address": "", "port": peer.port, "ips": [str(ip) for ip in peer.ips]}
        entries.append(entry)
        if not with_certs:
            continue
        tls: Values = {"cert": peer.cert, "key": peer.key.get_secret_value()}
        if per_peer_ca:
            if peer.ca_cert is None:
                raise ValuesError(
                    obj,
                    f"peer {peer.name!r} has no caCert, needed in per-peer CA mode",
                    fix="read ca.crt of the peer's clustermesh-apiserver-remote-cert",
                )
            tls["caCert"] = peer.ca_cert
        entry["tls"] = tls
    return entries


def _nest(path: Path, leaf: Any) -> Values:
    node: Any = leaf
    for key in reversed(path):
        node = {key: node}
    assert isinstance(node, dict)
    return node


def value_at(values: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """(True, the value) at ``path`` in nested mappings, or (False, None) where a key is missing."""
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def clusters_form(values: Mapping[str, Any]) -> ClustersForm | None:
    """The form of ``clustermesh.config.clusters`` in ``values``: a list, a map (1.19+), or None (unset/other)."""
    _, clusters = value_at(values, CLUSTERS_PATH)
    if isinstance(clusters, list):
        return "list"
    if isinstance(clusters, dict):
        return "map"
    return None


def peer_entries(values: Mapping[str, Any]) -> list[Values]:
    """Every ``clustermesh.config.clusters`` entry that is a mapping, in either form, with its ``name`` (in the
    map form, the key, as the chart does); ``enabled: false`` (1.19+) stays: the chart leaves that peer out."""
    _, clusters = value_at(values, CLUSTERS_PATH)
    if isinstance(clusters, dict):
        return [{**value, "name": key} for key, value in clusters.items() if isinstance(value, dict)]
    if isinstance(clusters, list):
        return [dict(entry) for entry in clusters if isinstance(entry, dict)]
    return []


def configured_peers(values: Mapping[str, Any]) -> list[str]:
    """Names of the peers the chart connects to: every entry of either form except ``enabled: false`` ones."""
    return [str(e.get("name")) for e in peer_entries(values) if e.get("enabled") is not False]


def removed_keys_present(profile: CiliumProfile, values: Mapping[str, Any]) -> list[Path]:
    """Keys set in ``values`` that this line's chart no longer reads (1.20: silently ignored); never ours to write."""
    found = []
    for path in profile.removed_value_paths:
        present, value = value_at(values, path)
        if present and value not in (None, ""):
            found.append(path)
    return found


def legacy_paths_to_remove(profile: CiliumProfile, current: Mapping[str, Any], patch: int | None) -> list[Path]:
    """Old keys the chart would ignore or refuse on this line (the guide's CA key on 1.15+)."""
    found, _ = value_at(current, profile.legacy_ca_path)
    if found and profile.old_ca_key_effect(patch) != "used":
        return [profile.legacy_ca_path]
    return []


def _touches(overlay: Any, path: Path) -> bool:
    """Whether merging ``overlay`` could change ``path``: it has the path, or a non-dict on its way."""
    node = overlay
    for key in path:
        if not isinstance(node, dict):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


def _check_ownership(overlay: Mapping[str, Any], remove: Sequence[Path]) -> None:
    for path in KKP_OWNED_PATHS:
        if _touches(dict(overlay), path) or any(p[: len(path)] == path or path[: len(p)] == p for p in remove):
            raise KkpOwnedKeyError(
                "values overlay",
                f"would change {'.'.join(path)}, which KKP enforces or keeps immutable",
                fix="leave KKP-owned keys out of the overlay; send them back exactly as read",
            )
    foreign = sorted(str(k) for k in overlay if k not in OUR_ROOTS)
    if foreign:
        raise KkpOwnedKeyError(
            "values overlay",
            f"writes top-level keys we do not own: {', '.join(foreign)}",
            fix=f"only {', '.join(sorted(OUR_ROOTS))} may be written; this is a bug in the caller",
        )
    for path in remove:
        if not path or path[0] not in OUR_ROOTS:
            raise KkpOwnedKeyError(
                "values overlay",
                f"would remove {'.'.join(path) or '(everything)'}, which is not ours",
                fix=f"only remove keys under {', '.join(sorted(OUR_ROOTS))}",
            )


def _same(a: Any, b: Any) -> bool:
    """Semantic equality that, unlike ``==``, keeps ``true`` and ``1`` apart (YAML types matter to Helm)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _looks_like_key_material(text: str) -> bool:
    if "-----BEGIN" in text:
        return True
    raw = text.encode("ascii", errors="replace").strip()
    if len(raw) < 32 or not set(raw) <= _B64_CHARS:
        return False
    try:
        decoded = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return decoded.startswith((b"-----BEGIN", b"\x30\x82", b"\x30\x81"))


def _redact(node: Any, key: str | None) -> Any:
    if isinstance(node, dict):
        return {k: _redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, key) for v in node]
    if isinstance(node, str):
        if key is not None and any(word in key.lower() for word in _HIDDEN_KEY_WORDS):
            return "<hidden>"
        if (key in _SECRET_VALUE_KEYS and node) or _looks_like_key_material(node):
            return f"<{fingerprint(node)}>"
    return node


def redact_values(values: Mapping[str, Any]) -> Values:
    """A copy safe to log or show: certs and keys become ``<sha256:…>`` tags, tokens ``<hidden>``."""
    result = _redact(dict(values), None)
    assert isinstance(result, dict)
    return result


@dataclass(frozen=True)
class ValuesChange:
    """The planned write: full new values, whether they differ, and a diff that is safe to show."""

    changed: bool
    new_values: Values = dataclass_field(repr=False)
    current_values: Values = dataclass_field(repr=False)
    removed: tuple[Path, ...] = ()

    def diff_lines(self, redact: bool = True) -> list[str]:
        """Unified diff of the YAML (sorted keys, as KKP writes it); key material fingerprinted by default."""
        if not self.changed:
            return []
        before = redact_values(self.current_values) if redact else self.current_values
        after = redact_values(self.new_values) if redact else self.new_values
        return list(
            difflib.unified_diff(
                _yaml_lines(before), _yaml_lines(after), fromfile="current", tofile="desired", lineterm=""
            )
        )

    def __str__(self) -> str:
        return "\n".join(self.diff_lines()) if self.changed else "no change"


def _yaml_lines(values: Mapping[str, Any]) -> list[str]:
    text = yaml.safe_dump(dict(values), sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)
    return text.splitlines()


def _delete(values: Values, path: Path) -> bool:
    node: Any = values
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def plan_change(
    current_values: Mapping[str, Any], desired_overlay: Mapping[str, Any], *, remove: Sequence[Path] = ()
) -> ValuesChange:
    """Merge our overlay into the cluster's values and decide, semantically, whether a write is needed.

    Raises KkpOwnedKeyError before computing anything if the overlay (or ``remove``) would touch a key
    KKP owns: the full values are sent back, so those must return exactly as they were read.
    """
    _check_ownership(desired_overlay, remove)
    new_values = deep_merge(current_values, desired_overlay)
    removed = tuple(path for path in remove if _delete(new_values, path))
    for path in KKP_OWNED_PATHS:
        before, after = value_at(current_values, path), value_at(new_values, path)
        if before[0] != after[0] or not _same(before[1], after[1]):
            raise KkpOwnedKeyError(  # unreachable unless the merge itself is wrong: the last line of defence
                "values plan", f"would change {'.'.join(path)}", fix="report this as a bug"
            )
    current = copy.deepcopy(dict(current_values))
    return ValuesChange(
        changed=not _same(current, new_values), new_values=new_values, current_values=current, removed=removed
    )


@overload
def dump_values(values: Mapping[str, Any], field: Literal["valuesBlock"]) -> str: ...
@overload
def dump_values(values: Mapping[str, Any], field: Literal["values"]) -> Values: ...
def dump_values(values: Mapping[str, Any], field: ValuesField) -> str | Values:
    """What to write back into ``field``: YAML with sorted keys (as KKP writes it) or a plain object."""
    if field == "valuesBlock":
        return yaml.safe_dump(dict(values), sort_keys=True, default_flow_style=False, allow_unicode=True)
    return copy.deepcopy(dict(values))
