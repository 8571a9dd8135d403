"""KKP's way of upgrading a cluster's Cilium: a new ``spec.applicationRef.version`` on the ``cilium``
ApplicationInstallation, the values left as they are. The application controller (``kkp``) then renders
that version's chart with the same values and applies it; the agents roll node by node
(``Agents._roll_agents``) and the clustermesh-apiserver surges (``maxUnavailable: 0``). A chart that
refuses the old values fails the installation with the chart's message, as KKP's would."""

from __future__ import annotations

from sandbox.controllers.base import AI_KEY, NS, SimCluster, concrete_version
from sandbox.store import Obj


class Upgrades:
    """``upgrade_cilium``: what a KKP user does to move one cluster to another Cilium version."""

    def upgrade_cilium(self, cluster: SimCluster | str | int, to_version: str) -> str:
        """Set the cilium ApplicationInstallation's ``spec.applicationRef.version``; returns the version set."""
        c: SimCluster = self.cluster(cluster)  # type: ignore[attr-defined]  # World's
        version = concrete_version(to_version)
        if c.store.try_get(AI_KEY, NS, "cilium") is None:
            raise KeyError(f"{c.name} has no cilium ApplicationInstallation in {NS}")

        def fn(ai: Obj) -> None:
            ai.setdefault("spec", {}).setdefault("applicationRef", {"name": "cilium"})["version"] = version

        c.store.mutate(AI_KEY, NS, "cilium", fn)
        return version
