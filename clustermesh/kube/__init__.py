"""Talking to a cluster: the Kubernetes client adapter, the credentials that open it, one client per run."""

from clustermesh.kube.api_errors import is_transient
from clustermesh.kube.client import ClusterClient, ExecOutput, wait_for
from clustermesh.kube.credentials import SecretLoader, open_cluster
from clustermesh.kube.session import ClusterSessions

__all__ = [
    "ClusterClient",
    "ClusterSessions",
    "ExecOutput",
    "SecretLoader",
    "is_transient",
    "open_cluster",
    "wait_for",
]
