"""Thin re-export kept for the modules that still import it (steps, drill, tests); import `clustermesh.cilium`."""

from clustermesh.cilium.health_output import parse_health
from clustermesh.cilium.output_models import Backend, HealthNode, HealthStatus, Service
from clustermesh.cilium.service_output import parse_service_list

__all__ = ["Backend", "HealthNode", "HealthStatus", "Service", "parse_health", "parse_service_list"]
