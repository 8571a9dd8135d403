"""The chart's ``tls.caBundle`` during a CA rotation: X trusts the old and the new CA while the leaves change.

With ``tls.caBundle.enabled`` (every chart from 1.14; values.yaml: "overrides the content of the 'ca.crt'
field of the respective certificates, allowing for CA rotation with no down-time") the clustermesh-apiserver's
etcd verifies clients by the bundle (templates/clustermesh-apiserver/deployment.yaml: the ca.crt of
``etcd-server-secrets`` and ``etcd-admin-client``), and the agents / KVStoreMesh read
``common-etcd-client-ca.crt`` / ``local-etcd-client-ca.crt`` from it (templates/cilium-agent/daemonset.yaml).
With ``content`` the chart renders the ConfigMap ``name`` (default ``cilium-root-ca.crt``) itself.

The rotation owns ``tls.caBundle`` only between its phase 1 and phase 3: what was there before is recorded in
``clustermesh-ca-next`` (key ``ca-bundle-before.json``) and put back at the end, and the installation carries
the annotation ``clustermesh.io/ca-bundle-rotation`` (the new CA's fingerprint) while it is ours. A person's
own bundle (enabled, or with content) is never overwritten: the rotation is refused. Pure over values.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from clustermesh.certs import fingerprint
from clustermesh.values import value_at

TLS_PATH = ("tls",)
BUNDLE_PATH = ("tls", "caBundle")
BUNDLE_OWNER = "clustermesh.io/ca-bundle-rotation"
"""On the cilium ApplicationInstallation while the rotation owns ``tls.caBundle``: the new CA's fingerprint."""
BEFORE_KEY = "ca-bundle-before.json"
"""In ``clustermesh-ca-next``: ``tls`` and ``tls.caBundle`` as they were before the rotation."""


def bundle_refusal(values: Mapping[str, Any]) -> str | None:
    """Why ``tls.caBundle`` is not ours to use (a person's own bundle), with the fix; None when it is free."""
    found, bundle = value_at(values, BUNDLE_PATH)
    if not found or bundle is None:
        return None
    if not isinstance(bundle, dict):
        return f"tls.caBundle is {bundle!r}, not a map — fix: remove it or make it a map with enabled: false"
    if bundle.get("enabled") or bundle.get("content"):
        source = "Secret" if bundle.get("useSecret") else "ConfigMap"
        return (
            f"tls.caBundle is already in use (enabled: {bundle.get('enabled')!r}, {source} "
            f"{bundle.get('name') or 'cilium-root-ca.crt'}): the rotation needs it for the trust overlap and never "
            "overwrites a bundle it did not write — fix: add the new CA to your own bundle by hand, or set "
            "tls.caBundle.enabled false and remove its content, then rotate"
        )
    return None


def record_before(values: Mapping[str, Any]) -> str:
    """``tls`` / ``tls.caBundle`` as found, as JSON for ``clustermesh-ca-next``."""
    had_tls, _ = value_at(values, TLS_PATH)
    had_bundle, bundle = value_at(values, BUNDLE_PATH)
    return json.dumps({"had_tls": had_tls, "had_ca_bundle": had_bundle, "ca_bundle": bundle}, sort_keys=True)


def trusts(values: Mapping[str, Any]) -> tuple[str, ...]:
    """Fingerprints of the certificates ``tls.caBundle.content`` holds while enabled; () otherwise."""
    _, bundle = value_at(values, BUNDLE_PATH)
    if not isinstance(bundle, dict) or not bundle.get("enabled") or not bundle.get("content"):
        return ()
    text = str(bundle["content"])
    blocks = text.split("-----END CERTIFICATE-----")
    return tuple(fingerprint(b + "-----END CERTIFICATE-----\n") for b in blocks if "BEGIN CERTIFICATE" in b)


def is_ours(ai: Mapping[str, Any], values: Mapping[str, Any], new_ca: str, trust: Sequence[str]) -> bool:
    """The installation trusts exactly ``trust`` through a bundle this rotation (to ``new_ca``) wrote."""
    annotations = ((ai.get("metadata") or {}).get("annotations")) or {}
    want = tuple(fingerprint(c) for c in trust)
    return annotations.get(BUNDLE_OWNER) == fingerprint(new_ca) and trusts(values) == want


def with_bundle(values: Mapping[str, Any], trust: Sequence[str]) -> dict[str, Any]:
    """A copy of ``values`` whose ``tls.caBundle`` is enabled with ``trust`` as content (its other keys kept)."""
    result = copy.deepcopy(dict(values))
    found_tls = result.get("tls")
    tls: dict[str, Any] = found_tls if isinstance(found_tls, dict) else {}
    found_bundle = tls.get("caBundle")
    bundle: dict[str, Any] = found_bundle if isinstance(found_bundle, dict) else {}
    content = "".join(c.strip() + "\n" for c in trust)
    result["tls"] = {**tls, "caBundle": {**bundle, "enabled": True, "content": content}}
    return result


def restored(values: Mapping[str, Any], before: str) -> dict[str, Any]:
    """A copy of ``values`` with ``tls.caBundle`` (and ``tls``) as ``record_before`` found them."""
    record = json.loads(before)
    result = copy.deepcopy(dict(values))
    tls = result.get("tls")
    if not isinstance(tls, dict):
        return result
    if record.get("had_ca_bundle"):
        tls["caBundle"] = record.get("ca_bundle")
    else:
        tls.pop("caBundle", None)
    if not tls and not record.get("had_tls"):
        result.pop("tls")
    return result


def same_bundle(values: Mapping[str, Any], before: str) -> bool:
    """``values``' ``tls.caBundle`` is what ``record_before`` found."""
    record = json.loads(before)
    found, bundle = value_at(values, BUNDLE_PATH)
    return found == bool(record.get("had_ca_bundle")) and (not found or bundle == record.get("ca_bundle"))
