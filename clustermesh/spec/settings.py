"""The mesh-wide settings: Cilium, KKP cluster creation, timeouts, the failover drill, notifications.

"auto" in the Cilium settings means what the version profile says is safe; ``CiliumSettings.resolve``
turns it into concrete choices (``ResolvedCilium``) once the version is known.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from clustermesh.cilium.profiles import SUPPORTED_LINES, CaMode, CiliumProfile, TlsMethod, profile_for
from clustermesh.errors import SpecError, SpecProblem, UnsupportedVersionError
from clustermesh.spec.base import (
    DNS_LABEL_RE,
    SpecModel,
    block_name,
    custom_error,
    env_name,
    looks_secret,
    network_input,
)
from clustermesh.spec.display import display

__all__ = [
    "ChartSettings",
    "CiliumSettings",
    "DrillSettings",
    "KkpSettings",
    "NotifySettings",
    "ResolvedCilium",
    "SlackSettings",
    "Timeouts",
]

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


CILIUM_HELM_REPO = "https://helm.cilium.io/"


class ChartSettings(SpecModel):
    """The Cilium chart the values are rendered with before any write: a refused key stops the run first."""

    source: Annotated[
        str | None,
        Field(
            max_length=2048,
            title="Chart source",
            description="A folder of cilium-<version>.tgz archives on the worker, or a Helm repository URL "
            "(pulled once, then cached); empty = no chart check.",
        ),
    ] = CILIUM_HELM_REPO
    renderer: Annotated[
        Literal["engine", "helm"],
        Field(
            title="Renderer",
            description="engine = Helm's engine from the optional charts group (uv sync --group charts); "
            "helm = a helm binary on PATH (helm template).",
        ),
    ] = "engine"

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_url(cls, data: object) -> object:
        """``https://user:password@host/``: refused, and the error shows the URL without its user part."""
        source = data.get("source") if isinstance(data, dict) else None
        if not isinstance(source, str) or "://" not in source:
            return data
        scheme, rest = source.strip().split("://", 1)
        host, slash, path = rest.partition("/")
        if "@" not in host:
            return data
        raise ValidationError.from_exception_data(
            "ChartSettings",
            [
                InitErrorDetails(
                    type=custom_error(
                        "chart_source",
                        "credentials in the URL would show in logs and messages",
                        "use a repository that needs no login, or helm pull the archive into a folder and give that",
                    ),
                    loc=("source",),
                    input=f"{scheme}://<hidden>@{host.rsplit('@', 1)[1]}{slash}{path}",
                )
            ],
        )

    @field_validator("source", mode="after")
    @classmethod
    def _folder_or_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise custom_error(
                "blank", "must not be blank", "give null (source: ~) to skip the check, or remove it for Cilium's repo"
            )
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise custom_error(
                "chart_source", "holds control characters", "give a folder path or an http(s) URL on one line"
            )
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", value):  # a scheme: must be a URL Helm can pull from
            if not re.match(r"^https?://[^\s/?#]+[^\s?#]*$", value):
                raise custom_error(
                    "chart_source",
                    "not an http(s) Helm repository URL",
                    f"give the repository's base URL (e.g. {CILIUM_HELM_REPO}) or a folder path",
                )
            return value
        if looks_secret(value):
            raise custom_error(
                "chart_source", "not a folder path", "give the folder holding cilium-<version>.tgz archives"
            )
        return value


class CiliumSettings(SpecModel):
    """How Cluster Mesh is configured in Cilium; "auto" means what the version profile says is safe."""

    version: Annotated[
        str | None,
        Field(
            title="Cilium version",
            description="Override the detected version, 1.13–1.20 ('1.16', '1.16.9'); empty = detect.",
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
            description="shared = copy cluster 1's CA everywhere (old guide, 1.13; from 1.19 entries then carry "
            "no certificates, the form Cilium recommends, but tls.ca makes the Helm release own Secret cilium-ca, "
            "which Helm refuses where certgen made it); per-peer = each entry carries the peer's caCert (new "
            "guide, 1.14+); auto = shared on 1.13, per-peer from 1.14 (1.19 and 1.20 included).",
        ),
    ] = "auto"
    max_connected_clusters: Annotated[
        Literal[255, 511],
        Field(
            title="Max connected clusters",
            description="clustermesh.maxConnectedClusters; 511 needs Cilium 1.15+, fixed after install.",
        ),
    ] = 255
    mcs_api: Annotated[
        bool,
        Field(
            title="Multi-Cluster Services API",
            description="Enable MCS-API (ServiceExport/ServiceImport, <svc>.<ns>.svc.clusterset.local) on every "
            "cluster: clustermesh.enableMCSAPISupport on 1.17–1.18, clustermesh.mcsapi.enabled from 1.19; "
            "needs Cilium 1.17+, and CoreDNS 1.12.2+ with its multicluster plugin for the names.",
        ),
    ] = False
    chart: Annotated[
        ChartSettings,
        Field(
            title="Chart check",
            description="Render the real Cilium chart with each cluster's final values before writing them.",
        ),
    ] = ChartSettings()

    @field_validator("version", mode="after")
    @classmethod
    def _supported_version(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            profile_for(value)
        except UnsupportedVersionError:
            raise custom_error(
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
        if self.mcs_api and profile.mcs_api_values_path is None:
            found.append(
                (
                    f"{prefix}.mcs_api",
                    f"Cilium {line} has no Multi-Cluster Services API (1.17+)",
                    "upgrade every cluster to Cilium 1.17 or later first, or set mcs_api: false",
                    self.mcs_api,
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
            raise SpecError([SpecProblem(f, m, display(v), fix) for f, m, fix, v in problems])
        tls: TlsMethod = profile.safe_tls_method_under_kkp if self.tls_method == "auto" else self.tls_method
        ca: CaMode = profile.default_ca_mode if self.ca_mode == "auto" else self.ca_mode
        return ResolvedCilium(
            profile=profile,
            service_type=self.service_type,
            tls_method=tls,
            ca_mode=ca,
            max_connected_clusters=self.max_connected_clusters,
        )


@dataclass(frozen=True)
class ResolvedCilium:
    """CiliumSettings with "auto" decided for one Cilium line: what the values renderer writes."""

    profile: CiliumProfile
    service_type: Literal["LoadBalancer", "NodePort"]
    tls_method: TlsMethod
    ca_mode: CaMode
    max_connected_clusters: Literal[255, 511]


DEFAULT_POD_CIDR_POOL = tuple(f"172.{n}.0.0/16" for n in range(25, 32))
SEMVER_RE = re.compile(r"^v?\d+\.\d+\.\d+$")


class KkpSettings(SpecModel):
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
        list[Annotated[IPvAnyNetwork, BeforeValidator(network_input)]],
        Field(
            title="Pod CIDR pool",
            description="Pod CIDRs handed to new clusters in order, skipping any that overlap a cluster "
            "of the mesh; a cluster's own pod_cidrs win.",
            min_length=1,
            max_length=511,
        ),
    ] = [ipaddress.ip_network(c) for c in DEFAULT_POD_CIDR_POOL]
    services_cidr: Annotated[
        Annotated[IPvAnyNetwork, BeforeValidator(network_input)],
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
            raise custom_error("semver", "not a full version", "give major.minor.patch, e.g. 1.32.4")
        return value.lstrip("v")

    @field_validator("cilium_version", mode="after")
    @classmethod
    def _supported_cilium(cls, value: str) -> str:
        try:
            profile_for(value)
        except UnsupportedVersionError:
            raise custom_error(
                "cilium_version",
                "not a supported Cilium version",
                f"use a version of the lines {', '.join(SUPPORTED_LINES)} that your KKP offers (e.g. 1.19.4)",
            ) from None
        return value

    @field_validator("datacenter", "provider", "preset", mode="after")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is not None and (looks_secret(value) or not DNS_LABEL_RE.match(value.lower())):
            raise custom_error("kkp_name", "not a KKP name", "give the name as KKP shows it (letters, digits and '-')")
        return value

    @model_validator(mode="after")
    def _pool_ok(self) -> Self:
        seen: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in self.pod_cidr_pool:
            if cidr.version != 4:
                raise custom_error(
                    "pool_ipv6", f"{cidr} is not IPv4", "give IPv4 networks (KKP's pod CIDR is IPv4 first)"
                )
            for other in seen:
                if other.overlaps(cidr):
                    raise custom_error(
                        "pool_overlap",
                        f"pool entries overlap: {cidr} and {other}",
                        "give each pool entry its own range",
                    )
            seen.append(cidr)
        return self


class Timeouts(SpecModel):
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
                    type=custom_error(
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


DRILL_SCENARIOS = ("scale-to-zero", "cluster-loss", "mcs")
"""The drill's scenarios (``clustermesh.drill.SCENARIOS`` names the same)."""


class DrillSettings(SpecModel):
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
    scenarios: Annotated[
        list[str],
        Field(
            title="Scenarios",
            description="What the nightly drills, in order: scale-to-zero (backends scaled to 0 one cluster at "
            "a time), cluster-loss (one member's clustermesh-apiserver scaled to 0) and/or mcs (the failover "
            "through an MCS-API exported service; added on its own where cilium.mcs_api is true).",
        ),
    ] = ["scale-to-zero"]
    loss_seconds: Annotated[
        PositiveSeconds,
        Field(
            title="Cluster-loss watch",
            description="Seconds the cluster-loss drill watches the others keep a lost member's backends "
            "(without cacheTTL); with cacheTTL it waits for their withdrawal (TTL + timeout at most).",
        ),
    ] = 60

    @field_validator("scenarios", mode="after")
    @classmethod
    def _known_scenarios(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in DRILL_SCENARIOS]
        if unknown:
            raise custom_error(
                "drill_scenario",
                f"unknown drill scenario {unknown[0]!r}",
                f"use one or more of: {', '.join(DRILL_SCENARIOS)}",
            )
        if not value:
            raise custom_error("drill_scenario", "no drill scenario", "name at least one, e.g. [scale-to-zero]")
        return list(dict.fromkeys(value))

    @field_validator("one_at_a_time", mode="after")
    @classmethod
    def _only_one_at_a_time(cls, value: bool) -> bool:
        # Accepted as a field so a spec can say it; refused when false rather than silently ignored.
        if not value:
            raise custom_error(
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
            raise custom_error(
                "namespace",
                "not a valid namespace name",
                "use lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        return value


class SlackSettings(SpecModel):
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
        if value is not None and looks_secret(value):
            raise custom_error(
                "slack_inline_secret",
                "this looks like a token or webhook URL, not a reference",
                "store it in a Prefect Secret block (token_block) or an env var and give the name",
            )
        return value

    @field_validator("token_env", "webhook_env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return env_name(value, example="SLACK_BOT_TOKEN")

    @field_validator("token_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return block_name(value, example="slack-bot-token")


class NotifySettings(SpecModel):
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
            raise custom_error("url", "not an http(s) URL", "give the UI's base URL, e.g. https://prefect.example.com")
        return value
