"""What Cilium is, per line, without a cluster: the version profiles and the parsers of its agents' output."""

from clustermesh.cilium.chart import EtcdConfig, chart_for, peer_etcd_configs, render_chart
from clustermesh.cilium.health_output import parse_health
from clustermesh.cilium.output_models import Backend, HealthNode, HealthStatus, Service
from clustermesh.cilium.profiles import SUPPORTED_LINES, CiliumProfile, parse_cilium_version, profile_for
from clustermesh.cilium.service_output import parse_service_list

__all__ = [
    "SUPPORTED_LINES",
    "Backend",
    "CiliumProfile",
    "EtcdConfig",
    "HealthNode",
    "HealthStatus",
    "Service",
    "chart_for",
    "parse_cilium_version",
    "parse_health",
    "parse_service_list",
    "peer_etcd_configs",
    "profile_for",
    "render_chart",
]
