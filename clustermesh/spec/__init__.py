"""The MeshSpec: which clusters form the mesh and how, checked completely before any cluster is contacted.

The same model is read from a YAML file, filled in the Prefect UI form and passed as deployment
parameters, so every field has a title and a description, choices are ``Literal``s, and constraints
sit in ``Annotated`` (the form enforces those; ``model_validator``s run only when the flow starts).
Credentials are referenced (file path, Prefect Secret block name, env var name), never embedded:
parameters are stored in the Prefect database in clear.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from clustermesh.cilium.profiles import SUPPORTED_LINES, CaMode, CiliumProfile, TlsMethod, profile_for
from clustermesh.errors import SpecError, SpecProblem, UnsupportedVersionError

__all__ = [
    "CiliumSettings",
    "ClusterSpec",
    "DrillSettings",
    "KkpRef",
    "KkpSettings",
    "KubeconfigRef",
    "MeshSpec",
    "NotifySettings",
    "ResolvedCilium",
    "SlackSettings",
    "Timeouts",
    "from_data",
    "load_spec",
    "spec_error_from",
]

CLUSTER_NAME_RE = re.compile(r"^([a-z0-9][-a-z0-9]*)?[a-z0-9]$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BLOCK_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_MARKERS = (
    "apiVersion:",
    "-----BEGIN",
    "client-key-data",
    "token:",
    "xoxb-",
    "xoxp-",
    "hooks.slack.com",
)


def _looks_secret(text: str) -> bool:
    """Kubeconfig text, PEM, Slack tokens: things a reference field must never hold, or an error echo."""
    return "\n" in text or "\r" in text or any(marker in text for marker in _SECRET_MARKERS)


def _custom(kind: str, message: str, fix: str) -> PydanticCustomError:
    """A validation error carrying its fix, so ``load_spec`` can print "field: message — fix"."""
    return PydanticCustomError(kind, message, {"fix": fix})


def _reference_only(value: str | None, kind: str, message: str, fix: str) -> str | None:
    """Reference fields (paths, names) hold no secret text and are not blank."""
    if value is not None and _looks_secret(value):
        raise _custom(kind, message, fix)
    if value is not None and not value.strip():
        raise _custom("blank", "must not be blank", "remove the field or give a value")
    return value


def _network_input(value: object) -> object:
    """Only text (or an address object) reaches ``ipaddress``, which calls str() on anything else.

    str() of a YAML alias bomb expands it in full: a ten-line spec would take all memory.
    """
    if isinstance(value, str | bytes | int | ipaddress.IPv4Network | ipaddress.IPv6Network) and not isinstance(
        value, bool
    ):
        return value
    raise _custom("cidr_type", "not a network", "give a network like 172.26.0.0/16 (host bits zero)")


PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _env_name(value: str | None, *, example: str) -> str | None:
    """Fields that name an environment variable take its NAME, never its value."""
    if value is not None and not ENV_NAME_RE.match(value):
        raise _custom(
            "env_name",
            "not an environment variable name",
            f"give the variable's NAME (letters, digits, _), e.g. {example}",
        )
    return value


def _block_name(value: str | None, *, example: str) -> str | None:
    """Fields that name a Prefect block take its name (a slug)."""
    if value is not None and not BLOCK_NAME_RE.match(value):
        raise _custom(
            "block_name",
            "not a Prefect block name",
            f"use the block's name: lowercase letters, digits and dashes, e.g. {example}",
        )
    return value


class _Model(BaseModel):
    """Typos are errors, not silently ignored keys; pydantic's own messages never echo input (secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class KubeconfigRef(_Model):
    """Where to find a cluster's kubeconfig: exactly one of ``path``, ``secret_block`` or ``env``."""

    path: Annotated[
        str | None,
        Field(title="Kubeconfig file", description="Path of a kubeconfig file on the worker running the flow."),
    ] = None
    context: Annotated[
        str | None,
        Field(title="Context", description="Context inside the kubeconfig; its current-context when empty."),
    ] = None
    secret_block: Annotated[
        str | None,
        Field(
            title="Prefect Secret block",
            description="Name of a Prefect Secret block whose value is the kubeconfig text.",
        ),
    ] = None
    env: Annotated[
        str | None,
        Field(
            title="Environment variable",
            description="Name of an environment variable holding the kubeconfig file path.",
        ),
    ] = None

    @field_validator("path", "context", "secret_block", "env", mode="after")
    @classmethod
    def _no_inline_secrets(cls, value: str | None) -> str | None:
        return _reference_only(
            value,
            "kubeconfig_inline",
            "this looks like kubeconfig or key text, not a reference",
            "never put the kubeconfig itself in the spec: store it in a file (path), a Prefect Secret "
            "block (secret_block) or point an env var at a file (env)",
        )

    @field_validator("env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return _env_name(value, example="KUBECONFIG_CLUSTER_1")

    @field_validator("secret_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return _block_name(value, example="kubeconfig-cluster-1")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        chosen = [n for n in ("path", "secret_block", "env") if getattr(self, n) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise _custom(
                "kubeconfig_source",
                f"exactly one of path, secret_block, env must be set (set: {got})",
                "keep one way to find the kubeconfig",
            )
        if self.context is not None and self.path is None:
            raise _custom(
                "kubeconfig_context",
                "context is only used with path",
                "remove context, or reference the kubeconfig by path",
            )
        return self

    def describe(self) -> str:
        """Safe one-line description for logs: says where, never what."""
        if self.path is not None:
            return f"file {self.path}" + (f" (context {self.context})" if self.context else "")
        if self.secret_block is not None:
            return f"Prefect Secret block {self.secret_block}"
        return f"env var {self.env}"


DEFAULT_POD_CIDR_POOL = tuple(f"172.{n}.0.0/16" for n in range(25, 32))
KKP_PROJECT_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SEMVER_RE = re.compile(r"^v?\d+\.\d+\.\d+$")


class KkpRef(_Model):
    """A KKP user cluster reached through the KKP REST API; its admin kubeconfig is fetched at run time.

    The bearer token (OIDC or project service-account token) is referenced: exactly one of
    ``token_block`` (Prefect Secret block) or ``token_env`` (env var holding the token).
    """

    api_url: Annotated[
        str,
        Field(title="KKP API URL", description="Base URL of the KKP dashboard/API, e.g. https://kkp.example.com."),
    ]
    project: Annotated[
        str,
        Field(title="Project ID", description="The KKP project ID (not its display name).", min_length=1),
    ]
    cluster_id: Annotated[
        str | None,
        Field(
            title="Cluster ID",
            description="The KKP cluster ID; empty = find the cluster by its name (the entry's name), "
            "as before `clustermesh clusters create` has made it.",
        ),
    ] = None
    token_block: Annotated[
        str | None,
        Field(title="Token Secret block", description="Prefect Secret block holding the KKP API token."),
    ] = None
    token_env: Annotated[
        str | None,
        Field(title="Token env var", description="Name of the env var holding the KKP API token."),
    ] = None
    ca_file: Annotated[
        str | None,
        Field(
            title="CA bundle",
            description="PEM file of the CA that signed the KKP API's certificate; empty = system trust.",
        ),
    ] = None

    @field_validator("api_url", "project", "cluster_id", "token_block", "token_env", "ca_file", mode="after")
    @classmethod
    def _references_only(cls, value: str | None) -> str | None:
        return _reference_only(
            value,
            "kkp_inline_secret",
            "this looks like a token or key text, not a reference",
            "store the KKP token in a Prefect Secret block (token_block) or an env var (token_env) and give its name",
        )

    @field_validator("api_url", mode="after")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise _custom("url", "not an http(s) URL", "give the KKP API's base URL, e.g. https://kkp.example.com")
        return value.rstrip("/")

    @field_validator("project", "cluster_id", mode="after")
    @classmethod
    def _kkp_id(cls, value: str | None) -> str | None:
        if value is not None and not KKP_PROJECT_RE.match(value):
            raise _custom(
                "kkp_id",
                "not a KKP ID",
                "give the ID as shown in the KKP dashboard (lowercase letters and digits, e.g. x7k2pq9wzn)",
            )
        return value

    @field_validator("token_env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return _env_name(value, example="KKP_TOKEN")

    @field_validator("token_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return _block_name(value, example="kkp-token")

    @model_validator(mode="after")
    def _exactly_one_token(self) -> Self:
        chosen = [n for n in ("token_block", "token_env") if getattr(self, n) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise _custom(
                "kkp_token_source",
                f"exactly one of token_block, token_env must be set (set: {got})",
                "keep one way to find the KKP API token",
            )
        return self

    def describe(self) -> str:
        """Safe one-line description for logs: says where, never the token."""
        what = f"cluster {self.cluster_id}" if self.cluster_id else "cluster by name"
        return f"KKP {self.api_url} project {self.project}, {what}"


class ClusterSpec(_Model):
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
    kubeconfig: Annotated[
        KubeconfigRef | None,
        Field(title="Kubeconfig", description="Where the admin kubeconfig of this user cluster is found."),
    ] = None
    kkp: Annotated[
        KkpRef | None,
        Field(
            title="KKP reference",
            description="Instead of a kubeconfig: the cluster in KKP; the admin kubeconfig is fetched "
            "through the KKP API at run time and never stored.",
        ),
    ] = None
    pod_cidrs: Annotated[
        list[Annotated[IPvAnyNetwork, BeforeValidator(_network_input)]],
        Field(
            title="Expected pod CIDRs",
            description="Pod CIDRs this cluster should have (checked live); empty = not checked.",
        ),
    ] = []

    @field_validator("name", mode="after")
    @classmethod
    def _cilium_name_rule(cls, value: str) -> str:
        if value == "default":
            raise _custom(
                "cluster_name_default",
                "'default' is Cilium's 'no mesh' name and is refused with a cluster id",
                "pick a distinct name such as cluster-1",
            )
        if not CLUSTER_NAME_RE.match(value):
            raise _custom(
                "cluster_name_format",
                "not a valid Cilium cluster name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> Self:
        if (self.kubeconfig is None) == (self.kkp is None):
            got = "both" if self.kubeconfig is not None else "neither"
            raise _custom(
                "cluster_access",
                f"give exactly one of kubeconfig or kkp (got {got})",
                "reference the admin kubeconfig (kubeconfig: ...) or the KKP cluster (kkp: ...), not both",
            )
        return self


class CiliumSettings(_Model):
    """How Cluster Mesh is configured in Cilium; "auto" means what the version profile says is safe."""

    version: Annotated[
        str | None,
        Field(
            title="Cilium version",
            description="Override the detected version, 1.13–1.19 ('1.16', '1.16.9'); empty = detect.",
        ),
    ] = None
    service_type: Annotated[
        Literal["LoadBalancer", "NodePort"],
        Field(
            title="clustermesh-apiserver Service type",
            description="How peers reach the clustermesh-apiserver.",
        ),
    ] = "LoadBalancer"
    tls_method: Annotated[
        Literal["auto", "helm", "cronJob", "certmanager"],
        Field(
            title="Certificate generation",
            description="clustermesh.apiserver.tls.auto.method; auto = cronJob on 1.13/1.19+, "
            "helm on 1.14–1.18 (cronJob deadlocks there under KKP).",
        ),
    ] = "auto"
    ca_mode: Annotated[
        Literal["auto", "shared", "per-peer"],
        Field(
            title="CA mode",
            description="shared = copy cluster 1's CA everywhere (old guide, 1.13); per-peer = each entry "
            "carries the peer's caCert (new guide, 1.14+); auto = per version.",
        ),
    ] = "auto"
    max_connected_clusters: Annotated[
        Literal[255, 511],
        Field(
            title="Max connected clusters",
            description="clustermesh.maxConnectedClusters; 511 needs Cilium 1.15+, fixed after install.",
        ),
    ] = 255

    @field_validator("version", mode="after")
    @classmethod
    def _supported_version(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            profile_for(value)
        except UnsupportedVersionError:
            raise _custom(
                "cilium_version",
                "not a supported Cilium version",
                f"use a version of the lines {', '.join(SUPPORTED_LINES)} (e.g. '1.16' or '1.16.9'), "
                "or leave it empty to detect",
            ) from None
        return value

    def problems_for(self, profile: CiliumProfile, *, prefix: str = "cilium") -> list[tuple[str, str, str, object]]:
        """(field, message, fix, value) for settings this Cilium line cannot honour."""
        found: list[tuple[str, str, str, object]] = []
        line = profile.line
        if self.tls_method == "cronJob" and profile.certgen_is_helm_hook:
            found.append(
                (
                    f"{prefix}.tls_method",
                    f"cronJob certgen deadlocks under KKP on Cilium {line} (post-install hook + Helm --wait, "
                    "kubermatic#15249)",
                    "use tls_method auto or helm (or certmanager)",
                    self.tls_method,
                )
            )
        if self.ca_mode == "per-peer" and not profile.supports_per_peer_ca_cert:
            found.append(
                (
                    f"{prefix}.ca_mode",
                    f"Cilium {line} has no clusters[].tls.caCert, so peers must share one CA",
                    "use ca_mode auto or shared",
                    self.ca_mode,
                )
            )
        if not profile.supports_max_connected_clusters(self.max_connected_clusters):
            found.append(
                (
                    f"{prefix}.max_connected_clusters",
                    f"Cilium {line} supports only {profile.max_connected_clusters_options}",
                    "use 255, or upgrade every cluster to Cilium 1.15+ before installing the mesh",
                    self.max_connected_clusters,
                )
            )
        return found

    def resolve(self, profile: CiliumProfile) -> ResolvedCilium:
        """Turn "auto" into concrete choices for a (detected) version; raise SpecError when impossible."""
        problems = self.problems_for(profile)
        if problems:
            raise SpecError([SpecProblem(f, m, _display(v), fix) for f, m, fix, v in problems])
        tls: TlsMethod = profile.safe_tls_method_under_kkp if self.tls_method == "auto" else self.tls_method
        ca: CaMode = profile.default_ca_mode if self.ca_mode == "auto" else self.ca_mode
        return ResolvedCilium(
            profile=profile,
            service_type=self.service_type,
            tls_method=tls,
            ca_mode=ca,
            max_connected_clusters=self.max_connected_clusters,
        )


class KkpSettings(_Model):
    """How ``clustermesh clusters create`` makes missing KKP user clusters (immutable choices included)."""

    datacenter: Annotated[
        str, Field(title="Datacenter", description="KKP datacenter (spec.cloud.dc) of new clusters.", min_length=1)
    ]
    provider: Annotated[
        str,
        Field(
            title="Cloud provider",
            description="Provider key of spec.cloud (e.g. openstack, aws, bringyourown); its settings "
            "come from the preset.",
            min_length=1,
        ),
    ] = "bringyourown"
    preset: Annotated[
        str | None,
        Field(title="Preset", description="KKP preset (credential) name with the provider's credentials."),
    ] = None
    kubernetes_version: Annotated[
        str, Field(title="Kubernetes version", description="spec.version of new clusters, e.g. 1.32.4.")
    ]
    cilium_version: Annotated[
        str,
        Field(
            title="Cilium version",
            description="spec.cniPlugin.version of new clusters (a version KKP offers, e.g. 1.19.4).",
        ),
    ] = "1.19.4"
    pod_cidr_pool: Annotated[
        list[Annotated[IPvAnyNetwork, BeforeValidator(_network_input)]],
        Field(
            title="Pod CIDR pool",
            description="Pod CIDRs handed to new clusters in order, skipping any that overlap a cluster "
            "of the mesh; a cluster's own pod_cidrs win.",
            min_length=1,
            max_length=511,
        ),
    ] = [ipaddress.ip_network(c) for c in DEFAULT_POD_CIDR_POOL]
    services_cidr: Annotated[
        Annotated[IPvAnyNetwork, BeforeValidator(_network_input)],
        Field(title="Services CIDR", description="spec.clusterNetwork.services of new clusters."),
    ] = ipaddress.ip_network("10.240.16.0/20")
    health_timeout: Annotated[
        PositiveSeconds,
        Field(title="Health timeout", description="Seconds new clusters may take to become healthy in KKP."),
    ] = 1200

    @field_validator("kubernetes_version", "cilium_version", mode="after")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER_RE.match(value):
            raise _custom("semver", "not a full version", "give major.minor.patch, e.g. 1.32.4")
        return value.lstrip("v")

    @field_validator("cilium_version", mode="after")
    @classmethod
    def _supported_cilium(cls, value: str) -> str:
        try:
            profile_for(value)
        except UnsupportedVersionError:
            raise _custom(
                "cilium_version",
                "not a supported Cilium version",
                f"use a version of the lines {', '.join(SUPPORTED_LINES)} that your KKP offers (e.g. 1.19.4)",
            ) from None
        return value

    @field_validator("datacenter", "provider", "preset", mode="after")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is not None and (_looks_secret(value) or not DNS_LABEL_RE.match(value.lower())):
            raise _custom("kkp_name", "not a KKP name", "give the name as KKP shows it (letters, digits and '-')")
        return value

    @model_validator(mode="after")
    def _pool_ok(self) -> Self:
        seen: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in self.pod_cidr_pool:
            if cidr.version != 4:
                raise _custom("pool_ipv6", f"{cidr} is not IPv4", "give IPv4 networks (KKP's pod CIDR is IPv4 first)")
            for other in seen:
                if other.overlaps(cidr):
                    raise _custom(
                        "pool_overlap",
                        f"pool entries overlap: {cidr} and {other}",
                        "give each pool entry its own range",
                    )
            seen.append(cidr)
        return self


@dataclass(frozen=True)
class ResolvedCilium:
    """CiliumSettings with "auto" decided for one Cilium line: what the values renderer writes."""

    profile: CiliumProfile
    service_type: Literal["LoadBalancer", "NodePort"]
    tls_method: TlsMethod
    ca_mode: CaMode
    max_connected_clusters: Literal[255, 511]


class Timeouts(_Model):
    """How long each wait may take, in seconds; a timeout error says what was expected and what was seen."""

    install: Annotated[
        PositiveSeconds,
        Field(title="Install", description="KKP applies the values (Ready, deployed, generation)."),
    ] = 900
    load_balancer: Annotated[
        PositiveSeconds,
        Field(title="LoadBalancer", description="clustermesh-apiserver Service gets an external address."),
    ] = 300
    certificates: Annotated[
        PositiveSeconds, Field(title="Certificates", description="certgen creates the clustermesh Secrets.")
    ] = 300
    health: Annotated[
        PositiveSeconds,
        Field(title="Health", description="All nodes of all clusters reachable in cilium-health."),
    ] = 600
    api: Annotated[PositiveSeconds, Field(title="API request", description="One Kubernetes API request.")] = 30
    poll_interval: Annotated[
        PositiveSeconds,
        Field(title="Poll interval", description="Pause between two looks when not watching."),
    ] = 2

    @model_validator(mode="after")
    def _poll_shorter_than_waits(self) -> Self:
        waits = {name: getattr(self, name) for name in ("install", "load_balancer", "certificates", "health")}
        shortest = min(waits, key=waits.__getitem__)
        if self.poll_interval < waits[shortest]:
            return self
        # Blame the field the user set (a default is not what they got wrong); both set: the pair, by name.
        set_by_user = self.model_fields_set
        loc: tuple[str, ...] = ("poll_interval",)
        value: object = self.poll_interval
        if shortest in set_by_user:
            loc = () if "poll_interval" in set_by_user else (shortest,)
            value = waits[shortest] if loc else {"poll_interval": self.poll_interval, shortest: waits[shortest]}
        raise ValidationError.from_exception_data(
            "Timeouts",
            [
                InitErrorDetails(
                    type=_custom(
                        "poll_interval",
                        f"every wait must be longer than poll_interval ({self.poll_interval:g}s); "
                        f"{shortest} is {waits[shortest]:g}s",
                        f"raise {shortest} or lower poll_interval",
                    ),
                    loc=loc,
                    input=value,
                )
            ],
        )


class DrillSettings(_Model):
    """The failover drill of the guide's example: a global nginx, scaled to zero one cluster at a time."""

    enabled: Annotated[bool, Field(title="Enabled", description="Run the failover drill.")] = True
    namespace: Annotated[
        str,
        Field(title="Namespace", description="Namespace the drill creates in every cluster.", max_length=63),
    ] = "clustermesh-drill"
    image: Annotated[str, Field(title="Image", description="Backend image (the guide's nginx).", min_length=1)] = (
        "nginx:1.16.1"
    )
    replicas: Annotated[int, Field(title="Replicas", description="Backends per cluster.", ge=1, le=50)] = 2
    port: Annotated[int, Field(title="Port", description="Service and container port.", ge=1, le=65535)] = 80
    service_type: Annotated[
        Literal["ClusterIP", "NodePort", "LoadBalancer"],
        Field(title="Service type", description="Type of the drill's global Service."),
    ] = "ClusterIP"
    affinity: Annotated[
        Literal["local", "remote", "none"],
        Field(title="Affinity", description="service-affinity annotation; local = the guide's failover."),
    ] = "local"
    timeout: Annotated[
        PositiveSeconds, Field(title="Timeout", description="Seconds each drill phase may take to converge.")
    ] = 300
    one_at_a_time: Annotated[
        bool,
        Field(
            title="One cluster at a time",
            description="Scale down one cluster per phase, never two at once (the only mode supported).",
        ),
    ] = True

    @field_validator("one_at_a_time", mode="after")
    @classmethod
    def _only_one_at_a_time(cls, value: bool) -> bool:
        # Accepted as a field so a spec can say it; refused when false rather than silently ignored.
        if not value:
            raise _custom(
                "drill_one_at_a_time",
                "failing several clusters at once is not supported: the drill scales down one cluster per "
                "phase and restores it before the next",
                "remove drill.one_at_a_time or set it to true",
            )
        return value

    @field_validator("namespace", mode="after")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL_RE.match(value):
            raise _custom(
                "namespace",
                "not a valid namespace name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value


class SlackSettings(_Model):
    """Where the summary goes; tokens are referenced by block or env var name, never given."""

    channel: Annotated[
        str, Field(title="Channel", description="Channel name or id, e.g. #platform-mesh.", min_length=1)
    ]
    token_block: Annotated[
        str | None,
        Field(title="Token Secret block", description="Prefect Secret block holding the bot token (used first)."),
    ] = None
    token_env: Annotated[
        str | None,
        Field(title="Token env var", description="Env var holding the bot token, used when no block is named."),
    ] = "SLACK_BOT_TOKEN"
    webhook_env: Annotated[
        str | None,
        Field(title="Webhook env var", description="Env var holding an incoming-webhook URL (fallback)."),
    ] = None

    @field_validator("channel", "token_block", "token_env", "webhook_env", mode="after")
    @classmethod
    def _references_only(cls, value: str | None) -> str | None:
        if value is not None and _looks_secret(value):
            raise _custom(
                "slack_inline_secret",
                "this looks like a token or webhook URL, not a reference",
                "store it in a Prefect Secret block (token_block) or an env var and give the name",
            )
        return value

    @field_validator("token_env", "webhook_env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return _env_name(value, example="SLACK_BOT_TOKEN")

    @field_validator("token_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return _block_name(value, example="slack-bot-token")


class NotifySettings(_Model):
    """Who hears about results."""

    slack: Annotated[
        SlackSettings | None,
        Field(title="Slack", description="Post summaries and alerts to Slack; empty = off."),
    ] = None
    prefect_ui_url: Annotated[
        str | None,
        Field(title="Prefect UI URL", description="Base URL of the Prefect UI, for links in messages."),
    ] = None

    @field_validator("prefect_ui_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise _custom("url", "not an http(s) URL", "give the UI's base URL, e.g. https://prefect.example.com")
        return value


class MeshSpec(_Model):
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
            raise _custom(
                "mesh_name",
                "not a valid mesh name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        """Checks that need more than one field; all reported together, each at its own field path."""
        errors = [
            InitErrorDetails(type=_custom(kind, message, fix), loc=loc, input=value)
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
        data = _parse_yaml(text, source)
        return from_data(data, source=source)

    @classmethod
    def from_yaml_file(cls, path: str | Path) -> MeshSpec:
        """Read ``path`` and validate it; unreadable files are SpecErrors too."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = SpecProblem("", f"cannot read the spec file: {type(exc).__name__}", str(path), _read_fix(exc))
            raise SpecError([problem], source=str(path)) from None
        return cls.from_yaml(text, source=str(path))


def _read_fix(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "check the path"
    if isinstance(exc, UnicodeDecodeError):
        return "save the file as UTF-8"
    return "check the file's permissions"


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
                    _display(data),
                    "start with `clusters:` at the top level",
                )
            ],
            source=source,
        )
    try:
        return MeshSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, source=source) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: a second `id:` silently winning is a typo hidden."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key: let SafeLoader raise its own error
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str | None) -> object:
    """YAML → data; errors give line and column but never the document's text (it may hold secrets)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = exc.problem or exc.context or "invalid YAML"
        if problem.startswith("found duplicate key"):
            problem = "duplicate key"
        raise SpecError(
            [SpecProblem("", f"YAML syntax error at {where}: {problem}", "-", "fix the YAML at that position")],
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(
            [SpecProblem("", f"YAML error: {type(exc).__name__}", "-", "check the file is YAML")],
            source=source,
        ) from None
    except RecursionError:
        raise SpecError(
            [SpecProblem("", "YAML nested too deeply to read", "-", "a mesh spec needs only a few levels")],
            source=source,
        ) from None
    except ValueError:  # e.g. an integer of thousands of digits (Python's int string limit)
        raise SpecError(
            [SpecProblem("", "YAML holds a value too large to read", "-", "check the numbers in the spec")],
            source=source,
        ) from None


_GENERIC_FIXES: dict[str, str] = {
    "missing": "add this field",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "int_from_float": "give a whole number",
    "float_parsing": "give a number of seconds",
    "float_type": "give a number of seconds",
    "finite_number": "give a finite number",
    "string_type": "give a text value",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "list_type": "give a list",
    "model_type": "give a mapping with the fields listed in the docs",
    "model_attributes_type": "give a mapping with the fields listed in the docs",
    "dict_type": "give a mapping",
    "too_short": "add entries",
    "too_long": "remove entries",
    "string_too_short": "give a longer value",
    "string_too_long": "shorten it",
    "greater_than": "give a larger value",
    "greater_than_equal": "give a larger value",
    "less_than": "give a smaller value",
    "less_than_equal": "give a smaller value",
    "ip_v4_network": "give a network like 172.26.0.0/16 (host bits zero)",
    "ip_v6_network": "give a network like fd00:26::/64 (host bits zero)",
    "ip_any_network": "give a network like 172.26.0.0/16 (host bits zero)",
}

_SECRET_FIELDS = {"kubeconfig", "token_block", "token_env", "webhook_env"}


def _field_path(loc: tuple[str | int, ...]) -> str:
    """('clusters', 1, 'id') → 'clusters[1].id'; pydantic's model/function tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{_int_text(part)}]"
        elif "[" in part or part.startswith("function-"):
            continue
        else:
            part = _key_text(part)
            out += f".{part}" if out else part
    return out


def _key_text(key: object) -> str:
    """A mapping key for a field path or a summary: cut, and hidden when it looks like secret text."""
    if isinstance(key, int) and not isinstance(key, bool):
        return _int_text(key)
    text = str(key)
    if _looks_secret(text):
        return "<hidden key>"
    return text if len(text) <= 60 else text[:59] + "…"


def _int_text(value: int) -> str:
    """Digits of a sane integer; a huge one is summarised (str() of >4300 digits raises ValueError)."""
    return str(value) if value.bit_length() <= 200 else f"<integer of {value.bit_length()} bits>"


def _display(value: object, *, redact: bool = False) -> str:
    """Show a value safely: scalars as they are (cut), secret-looking text hidden, containers summarised."""
    if isinstance(value, str):
        if redact or _looks_secret(value):
            return "<hidden: looks like secret text>"
        return repr(value if len(value) <= 60 else value[:59] + "…")
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value)
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, dict):
        keys = ", ".join(_key_text(k) for k in list(value)[:8])
        return f"<mapping with keys: {keys}>" if keys else "<empty mapping>"
    if isinstance(value, list | tuple):
        return f"<list of {len(value)} items>"
    if isinstance(value, BaseModel):
        return f"<{type(value).__name__}>"
    text = str(value)
    return text if len(text) <= 60 and not _looks_secret(text) else f"<{type(value).__name__}>"


def _allowed_fields(loc: tuple[str | int, ...]) -> list[str] | None:
    """Field names of the model at ``loc`` (the parent of an unknown key), for "did you mean" fixes."""
    model: type[BaseModel] = MeshSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def spec_error_from(exc: ValidationError, *, source: str | None = None) -> SpecError:
    """pydantic's errors → SpecProblems of "field: message (got: value) — fix", with secrets hidden."""
    problems: list[SpecProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = _field_path(loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        message = err["msg"]
        fix = str(ctx.get("fix", "")) or _GENERIC_FIXES.get(kind, "")
        redact = any(part in _SECRET_FIELDS for part in loc if isinstance(part, str))
        if kind == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1])
            message = "unknown field"
            fix = "remove it or fix the spelling" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            redact = True
        elif kind == "literal_error":
            fix = f"use one of {ctx.get('expected', 'the listed values')}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bound = ctx.get("gt", ctx.get("ge", ctx.get("lt", ctx.get("le"))))
            fix = f"{fix} (limit {bound})"
        elif kind in ("too_short", "too_long") and field == "clusters":
            fix = "list 2..255 clusters (..511 with cilium.max_connected_clusters 511)"
        shown = "nothing" if kind == "missing" else _display(err.get("input"), redact=redact)
        problems.append(SpecProblem(field, message, shown, fix))
    return SpecError(problems, source=source)
