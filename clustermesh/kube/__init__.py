"""Talking to a cluster: the Kubernetes client adapter and the credentials that open it."""

from clustermesh.kube.client import ClusterClient, ExecOutput, is_transient, wait_for
from clustermesh.kube.credentials import SecretLoader, open_cluster

__all__ = ["ClusterClient", "ExecOutput", "SecretLoader", "is_transient", "open_cluster", "wait_for"]
