"""What Cilium is, per line, without a cluster: the version profiles and the parsers of its agents' output."""

from clustermesh.cilium.output import HealthStatus, Service, parse_health, parse_service_list
from clustermesh.cilium.profiles import SUPPORTED_LINES, CiliumProfile, parse_cilium_version, profile_for

__all__ = [
    "SUPPORTED_LINES",
    "CiliumProfile",
    "HealthStatus",
    "Service",
    "parse_cilium_version",
    "parse_health",
    "parse_service_list",
    "profile_for",
]
