"""Talking to a cluster: the Kubernetes client adapter, the credentials that open it, one client per run.

``read_kubeconfig_file`` / ``decode_kubeconfig`` read a kubeconfig as the pipeline does (UTF-8 only, errors naming
the reference and the fix, nothing chained), for code that stores one elsewhere (Secret blocks).
"""

from clustermesh.kube.api_errors import is_transient
from clustermesh.kube.client import ClusterClient, ExecOutput, wait_for
from clustermesh.kube.credentials import SecretLoader, open_cluster
from clustermesh.kube.kubeconfig import UTF8_FIX, KubeconfigSource, decode_kubeconfig, read_kubeconfig_file
from clustermesh.kube.session import ClusterSessions

__all__ = [
    "UTF8_FIX",
    "ClusterClient",
    "ClusterSessions",
    "ExecOutput",
    "KubeconfigSource",
    "SecretLoader",
    "decode_kubeconfig",
    "is_transient",
    "open_cluster",
    "read_kubeconfig_file",
    "wait_for",
]
