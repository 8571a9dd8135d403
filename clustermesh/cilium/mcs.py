"""The Multi-Cluster Services API (MCS-API) in a cluster's Cilium values: the one key that turns it on.

Which key depends on the line (``CiliumProfile.mcs_api_values_path``, proven against the real charts by
``tests/domain/test_mcs_profiles.py``): ``clustermesh.enableMCSAPISupport`` on 1.17 and 1.18,
``clustermesh.mcsapi.enabled`` from 1.19 (where the old key is deprecated; 1.20 no longer reads it). Both
render cilium-config ``clustermesh-enable-mcs-api: "true"``, the clustermesh-apiserver's
``--clustermesh-enable-mcs-api`` and the operator's ServiceImport controllers.

Only the key is written (on 1.19+ an ``enableMCSAPISupport`` left from 1.17/1.18 is removed with it,
:func:`superseded_mcs_api_paths`): ``clusterset.local`` names also need CoreDNS's ``multicluster`` plugin (CoreDNS
1.12.2+). From 1.19 the chart can configure it (``clustermesh.mcsapi.corednsAutoConfigure.enabled``), but under
KKP the user cluster's CoreDNS is KKP's to reconcile, so the setup leaves that to the person who runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.cilium.profiles import MCS_API_CONFIG_KEY, MCS_API_ENABLED_PATH, MCS_API_SUPPORT_PATH, CiliumProfile
from clustermesh.errors import ValuesError

__all__ = [
    "MCS_API_CONFIG_KEY",
    "MCS_API_FIELD",
    "mcs_api_enabled_in_config",
    "mcs_api_values",
    "superseded_mcs_api_paths",
]

MCS_API_FIELD = "cilium.mcs_api"
"""The spec field that asks the setup to enable MCS-API."""


def mcs_api_values(profile: CiliumProfile, *, enabled: bool, cluster: str) -> dict[str, Any]:
    """The values that turn MCS-API on for ``profile``'s line; empty when not asked for (a key someone else set
    stays as it is). A line without MCS-API is refused naming the spec field."""
    if not enabled:
        return {}
    path = profile.mcs_api_values_path
    if path is None:
        raise ValuesError(
            f"values for cluster {cluster!r}",
            f"{MCS_API_FIELD} is true, but Cilium {profile.line} has no Multi-Cluster Services API (1.17+)",
            fix=f"upgrade {cluster} to Cilium 1.17 or later, or set {MCS_API_FIELD}: false",
        )
    node: dict[str, Any] = {path[-1]: True}
    for key in reversed(path[:-1]):
        node = {key: node}
    return node


def superseded_mcs_api_paths(
    profile: CiliumProfile, current: Mapping[str, Any], *, enabled: bool
) -> list[tuple[str, ...]]:
    """The old key to remove when the setup writes ``mcsapi.enabled`` (1.19+) and the values still carry
    ``enableMCSAPISupport`` (left from 1.17/1.18): deprecated on 1.19, silently ignored on 1.20."""
    if not enabled or profile.mcs_api_values_path != MCS_API_ENABLED_PATH:
        return []
    node: Any = current
    for key in MCS_API_SUPPORT_PATH:
        if not isinstance(node, Mapping) or key not in node:
            return []
        node = node[key]
    return [MCS_API_SUPPORT_PATH]


def mcs_api_enabled_in_config(config: Mapping[str, Any] | None) -> bool:
    """Whether a cluster's ``cilium-config`` ConfigMap (as read) has MCS-API on."""
    data = (config or {}).get("data") or {}
    return str(data.get(MCS_API_CONFIG_KEY, "")).strip().lower() == "true"
