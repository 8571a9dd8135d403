"""What the setup steps hand each other: facts, endpoints and changes, as frozen pydantic models.

Models that travel between steps never carry key material in clear text fields: keys are
``SecretStr`` with ``repr=False``, and ``MeshEndpoint.public()`` is what may be shown or stored in clear.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from clustermesh.certs import fingerprint
from clustermesh.cilium.profiles import CiliumProfile, profile_for
from clustermesh.values import CaMaterial, PeerEntry


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterFacts(_Frozen):
    """Step 1's findings about one cluster: what it runs and whether a mesh may be built on it."""

    name: str = Field(description="the cluster's name in the spec (its Cilium cluster.name)")
    id: int
    kubernetes_version: str
    cilium_version: str = Field(description="the version the pipeline works with (detected or overridden)")
    detected_cilium_version: str
    profile_line: str
    values_field: Literal["values", "valuesBlock"]
    kube_proxy_replacement: str
    pod_cidrs: list[str]
    nodes: int
    current_cluster_name: str | None = Field(description="cluster.name already in the values, if any")
    current_cluster_id: int | None
    mesh_enabled: bool
    peers_configured: list[str] = Field(description="names in clustermesh.config.clusters today")
    managed_peers: list[str] = Field(
        default_factory=list,
        description="peers the pipeline wrote and whose entry is still there (clustermesh.steps.membership)",
    )
    local_only_policies: list[str] = Field(
        default_factory=list,
        description="network policies whose peers match only local endpoints under "
        "clustermesh.policyDefaultLocalCluster (1.19+), as clustermesh.cilium.policies describes them",
    )

    @property
    def profile(self) -> CiliumProfile:
        """What this cluster's Cilium line does differently: resolved once per version, not at every use."""
        return _profile(self.cilium_version)


@cache
def _profile(version: str) -> CiliumProfile:
    return profile_for(version)


class MeshEndpoint(_Frozen):
    """Steps 3 and 5: what peers need to reach one cluster's clustermesh-apiserver."""

    cluster: str
    ips: list[str]
    port: int
    service_type: str
    remote_cert: str = Field(repr=False, description="tls.crt of clustermesh-apiserver-remote-cert (base64)")
    remote_key: SecretStr = Field(repr=False, description="tls.key of that Secret (base64)")
    ca_cert: str = Field(repr=False, description="the CA that issued the cluster's certificates (base64)")
    ca_key: SecretStr | None = Field(
        default=None, repr=False, description="the CA's key, read only where a shared CA is needed"
    )
    ca_secret: str = Field(description="the Secret the CA was read from")

    def peer_entry(self) -> PeerEntry:
        """The ``clusters[]`` entry other clusters write for this one."""
        return PeerEntry(
            name=self.cluster,
            ips=self.ips,  # type: ignore[arg-type]  # validated into IP addresses by pydantic
            port=self.port,
            cert=self.remote_cert,
            key=self.remote_key,
            ca_cert=self.ca_cert,
        )

    def shared_ca(self) -> CaMaterial:
        if self.ca_key is None:
            raise ValueError(f"the CA key of {self.cluster} was not read (not in shared CA mode)")
        return CaMaterial(cert=self.ca_cert, key=self.ca_key)

    def public(self) -> dict[str, object]:
        """Everything safe to show: addresses and fingerprints, never keys."""
        return {
            "cluster": self.cluster,
            "address": ", ".join(f"{ip}:{self.port}" for ip in self.ips),
            "service_type": self.service_type,
            "remote_cert": fingerprint(self.remote_cert),
            "ca_cert": fingerprint(self.ca_cert),
            "ca_secret": self.ca_secret,
            "ca_key_read": self.ca_key is not None,
        }


class StepChange(_Frozen):
    """A write step's outcome (steps 2, 4, 6): what differed, whether it was written, what KKP said."""

    cluster: str
    step: str
    changed: bool
    written: bool
    diff: list[str] = Field(description="unified diff of the values, key material as fingerprints")
    values_field: Literal["values", "valuesBlock"]
    generation: int
    conflicts_retried: int = 0
    applied: bool = Field(description="KKP reported the installation applied for this generation")
    install_retried: bool = Field(
        default=False, description="KKP had given up on the values we wrote; they were handed to it again"
    )

    def describe(self) -> str:
        if self.install_retried:
            return (
                f"{self.cluster}: KKP had given up on the values clustermesh wrote; asked it to install them again "
                f"({'with changes, ' if self.changed else ''}generation {self.generation})"
            )
        if not self.changed:
            return f"{self.cluster}: no change"
        verb = "written" if self.written else "planned"
        return f"{self.cluster}: {verb} ({len(self.diff)} diff lines, generation {self.generation})"
