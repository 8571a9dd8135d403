"""The MeshSpec: which clusters form the mesh and how, with the checks that span several fields.

``load_spec`` and ``from_data`` are the ways in: a valid MeshSpec, or one SpecError listing every problem.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from clustermesh.cilium.profiles import profile_for
from clustermesh.errors import SpecError, SpecProblem
from clustermesh.spec.base import CLUSTER_NAME_RE, DNS_LABEL_RE, SpecModel, custom_error, network_input
from clustermesh.spec.certificates import CertificateSettings
from clustermesh.spec.display import display
from clustermesh.spec.problems import spec_error_from
from clustermesh.spec.reading import parse_yaml, read_spec_file
from clustermesh.spec.references import KkpRef, KubeconfigRef
from clustermesh.spec.settings import (
    CiliumSettings,
    DrillSettings,
    KkpSettings,
    NotifySettings,
    Timeouts,
)

__all__ = ["ClusterSpec", "MeshSpec", "from_data", "load_spec"]


class ClusterSpec(SpecModel):
    """One KKP user cluster of the mesh."""

    name: Annotated[
        str,
        Field(
            title="Cilium cluster name",
            description="cluster.name: ≤32 chars of a-z, 0-9 and '-'; not 'default'.",
            min_length=1,
            max_length=32,
        ),
    ]
    id: Annotated[
        int,
        Field(
            title="Cilium cluster id",
            description="cluster.id: 1..255 (1..511 with max_connected_clusters 511), unique in the mesh.",
            ge=1,
            le=511,
        ),
    ]
    # The form marks both "(Optional)": each is, on its own; the titles say that one of them is needed.
    kubeconfig: Annotated[
        KubeconfigRef | None,
        Field(
            title="Kubeconfig — one of this or KKP reference",
            description="Give exactly one of Kubeconfig or KKP reference. Where the admin kubeconfig of this "
            "user cluster is found: a Prefect Secret block name, a file path or an env var on the worker "
            "(never the kubeconfig itself).",
        ),
    ] = None
    kkp: Annotated[
        KkpRef | None,
        Field(
            title="KKP reference — one of this or Kubeconfig",
            description="Give exactly one of Kubeconfig or KKP reference. The cluster in KKP: its admin "
            "kubeconfig is fetched through the KKP API at run time and never stored.",
        ),
    ] = None
    pod_cidrs: Annotated[
        list[Annotated[IPvAnyNetwork, BeforeValidator(network_input)]],
        Field(
            title="Expected pod CIDRs",
            description="Pod CIDRs this cluster should have (checked live); empty = not checked.",
        ),
    ] = []

    @field_validator("name", mode="after")
    @classmethod
    def _cilium_name_rule(cls, value: str) -> str:
        if value == "default":
            raise custom_error(
                "cluster_name_default",
                "'default' is Cilium's 'no mesh' name and is refused with a cluster id",
                "pick a distinct name such as cluster-1",
            )
        if not CLUSTER_NAME_RE.match(value):
            raise custom_error(
                "cluster_name_format",
                "not a valid Cilium cluster name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> Self:
        if (self.kubeconfig is None) == (self.kkp is None):
            got = "both" if self.kubeconfig is not None else "neither"
            raise custom_error(
                "cluster_access",
                f"give exactly one of kubeconfig or kkp (got {got})",
                "reference the admin kubeconfig (kubeconfig: ...) or the KKP cluster (kkp: ...), not both",
            )
        return self


class MeshSpec(SpecModel):
    """A Cluster Mesh: its clusters (the first plays the guide's "Cluster 1"), how to build and check it."""

    name: Annotated[
        str,
        Field(
            title="Mesh name",
            description="Names this mesh in Slack and in concurrency keys (one run per mesh at a time).",
            min_length=1,
            max_length=63,
        ),
    ] = "mesh"
    clusters: Annotated[
        list[ClusterSpec],
        Field(
            title="Clusters",
            description="2..255 clusters (..511 with max_connected_clusters 511); the first is 'Cluster 1'.",
            min_length=2,
            max_length=511,
        ),
    ]
    cilium: Annotated[CiliumSettings, Field(title="Cilium", description="Cluster Mesh settings in Cilium.")] = (
        CiliumSettings()
    )
    timeouts: Annotated[Timeouts, Field(title="Timeouts", description="Seconds each wait may take.")] = Timeouts()
    drill: Annotated[DrillSettings, Field(title="Failover drill", description="The failover rehearsal.")] = (
        DrillSettings()
    )
    notify: Annotated[NotifySettings, Field(title="Notifications", description="Slack and links.")] = NotifySettings()
    certificates: Annotated[
        CertificateSettings,
        Field(title="Certificate expiry", description="Days left below which the nightly warns, and fails."),
    ] = CertificateSettings()
    kkp: Annotated[
        KkpSettings | None,
        Field(
            title="KKP cluster creation",
            description="Datacenter, versions and pod CIDR pool for `clustermesh clusters create`; "
            "empty = clusters are not created by the pipeline.",
        ),
    ] = None

    @field_validator("name", mode="after")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL_RE.match(value):
            raise custom_error(
                "mesh_name",
                "not a valid mesh name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        """Checks that need more than one field; all reported together, each at its own field path."""
        errors = [
            InitErrorDetails(type=custom_error(kind, message, fix), loc=loc, input=value)
            for loc, kind, message, fix, value in self._cross_field_problems()
        ]
        if errors:
            raise ValidationError.from_exception_data("MeshSpec", errors)
        return self

    def _cross_field_problems(self) -> list[tuple[tuple[str | int, ...], str, str, str, Any]]:
        found: list[tuple[tuple[str | int, ...], str, str, str, Any]] = []
        limit = self.cilium.max_connected_clusters
        if len(self.clusters) > limit:
            found.append(
                (
                    ("clusters",),
                    "too_many_clusters",
                    f"{len(self.clusters)} clusters exceed max_connected_clusters {limit}",
                    "remove clusters, or set cilium.max_connected_clusters to 511 (Cilium 1.15+, before install)",
                    f"{len(self.clusters)} clusters",
                )
            )
        first_by_name: dict[str, int] = {}
        first_by_id: dict[int, int] = {}
        for i, cluster in enumerate(self.clusters):
            if cluster.name in first_by_name:
                j = first_by_name[cluster.name]
                found.append(
                    (
                        ("clusters", i, "name"),
                        "duplicate_name",
                        f"cluster names must be unique: clusters[{j}] and clusters[{i}] both use {cluster.name!r}",
                        "give each cluster its own name",
                        cluster.name,
                    )
                )
            else:
                first_by_name[cluster.name] = i
            if cluster.id in first_by_id:
                j = first_by_id[cluster.id]
                found.append(
                    (
                        ("clusters", i, "id"),
                        "duplicate_id",
                        f"cluster IDs must be unique: clusters[{j}] and clusters[{i}] both use id {cluster.id}",
                        f"give each cluster its own id in 1..{limit}",
                        cluster.id,
                    )
                )
            else:
                first_by_id[cluster.id] = i
            if cluster.id > limit:
                found.append(
                    (
                        ("clusters", i, "id"),
                        "id_range",
                        f"cluster id {cluster.id} is above max_connected_clusters {limit}",
                        f"use an id in 1..{limit}, or set cilium.max_connected_clusters to 511 (Cilium 1.15+)",
                        cluster.id,
                    )
                )
        found.extend(self._cidr_problems())
        if self.cilium.version is not None:
            profile = profile_for(self.cilium.version)
            for field, message, fix, value in self.cilium.problems_for(profile):
                found.append((tuple(field.split(".")), "cilium_version_mismatch", message, fix, value))
        return found

    def _cidr_problems(self) -> list[tuple[tuple[str | int, ...], str, str, str, Any]]:
        """Overlapping pod CIDRs are unsupported by Cluster Mesh (reference §4.8)."""
        found: list[tuple[tuple[str | int, ...], str, str, str, Any]] = []
        seen: list[tuple[int, int, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for i, cluster in enumerate(self.clusters):
            for k, cidr in enumerate(cluster.pod_cidrs):
                for j, m, other in seen:
                    if other.version == cidr.version and other.overlaps(cidr):
                        what = "within one cluster" if j == i else "between clusters"
                        found.append(
                            (
                                ("clusters", i, "pod_cidrs", k),
                                "cidr_overlap",
                                f"pod CIDRs must not overlap {what}: {cidr} overlaps "
                                f"clusters[{j}].pod_cidrs[{m}] "
                                f"({other})",
                                "give every cluster its own pod range (KKP: spec.clusterNetwork.pods.cidrBlocks)",
                                str(cidr),
                            )
                        )
                seen.append((i, k, cidr))
        return found

    @property
    def first(self) -> ClusterSpec:
        """The cluster that plays "Cluster 1" of the guide: enabled first, its data handed to the others."""
        return self.clusters[0]

    @property
    def others(self) -> list[ClusterSpec]:
        """Every cluster but the first, in spec order."""
        return self.clusters[1:]

    def cluster(self, name: str) -> ClusterSpec:
        """The cluster named ``name``; KeyError names the known ones."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster {name!r} in mesh {self.name!r}; known: {[c.name for c in self.clusters]}")

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> MeshSpec:
        """Parse and validate YAML text; every problem becomes part of one SpecError."""
        data = parse_yaml(text, source)
        return from_data(data, source=source)

    @classmethod
    def from_yaml_file(cls, path: str | Path) -> MeshSpec:
        """Read ``path`` and validate it; unreadable files are SpecErrors too."""
        path = Path(path)
        return cls.from_yaml(read_spec_file(path), source=str(path))


def load_spec(path: str | Path) -> MeshSpec:
    """The CLI's and flows' entry point: a valid MeshSpec or a SpecError listing every problem."""
    return MeshSpec.from_yaml_file(path)


def from_data(data: object, *, source: str | None = None) -> MeshSpec:
    """Validate already-parsed data (e.g. deployment parameters) with the same readable errors."""
    if not isinstance(data, dict):
        raise SpecError(
            [
                SpecProblem(
                    "",
                    "the spec must be a mapping",
                    display(data),
                    "start with `clusters:` at the top level",
                )
            ],
            source=source,
        )
    try:
        return MeshSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, MeshSpec, source=source) from None
