"""Turn a kubeconfig reference from the spec into a client, without the kubeconfig ever being a parameter.

Resolution, in the order the spec allows exactly one of:

1. ``path`` (+ optional ``context``): the file is read on the machine that runs the step;
2. ``env``: the named environment variable holds a file path, read like ``path``;
3. ``secret_block``: the text of a Prefect Secret block, fetched by ``load_secret`` (the tasks layer
   passes Prefect's loader; the domain never imports Prefect);
4. ``kkp`` instead of ``kubeconfig``: the admin kubeconfig is fetched through the KKP REST API
   (``GET /api/v2/projects/{p}/clusters/{c}/kubeconfig``) with the referenced token, kept in memory only.

The text stays in memory; errors name the reference, never its content.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from clustermesh.errors import KubeconfigError
from clustermesh.kube.client import ClusterClient
from clustermesh.spec import ClusterSpec

SecretLoader = Callable[[str], str]


def open_cluster(
    cluster: ClusterSpec, *, request_timeout: float = 30.0, load_secret: SecretLoader | None = None
) -> ClusterClient:
    """A client for ``cluster``; its docstring-level contract is this module's docstring."""
    if cluster.kkp is not None:
        return _from_kkp(cluster, request_timeout, load_secret)
    ref = cluster.kubeconfig
    assert ref is not None  # the spec allows exactly one of kubeconfig and kkp
    if ref.path is not None:
        return _from_file(cluster.name, Path(ref.path).expanduser(), ref.context, request_timeout)
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise KubeconfigError(
                cluster.name,
                f"environment variable {ref.env} is not set",
                fix=f"export {ref.env}=<path of the cluster's kubeconfig> on the machine running the flow",
            )
        return _from_file(cluster.name, Path(value).expanduser(), None, request_timeout)
    assert ref.secret_block is not None
    if load_secret is None:
        raise KubeconfigError(
            cluster.name,
            f"kubeconfig is in Prefect Secret block {ref.secret_block!r}, which needs Prefect",
            fix="run through the flow (clustermesh setup), or reference the kubeconfig by path",
        )
    try:
        text = load_secret(ref.secret_block)
    except ValueError:  # Prefect: "Unable to find block document named …"
        raise KubeconfigError(
            cluster.name,
            f"Prefect Secret block {ref.secret_block!r} (clusters[].kubeconfig.secret_block) does not exist",
            fix="create it with `clustermesh blocks register --config <mesh.yaml>` or correct the name in the spec",
        ) from None
    return ClusterClient.from_kubeconfig_text(
        text, context=None, cluster_name=cluster.name, request_timeout=request_timeout
    )


def _from_file(name: str, path: Path, context: str | None, timeout: float) -> ClusterClient:
    if not path.is_file():
        raise KubeconfigError(
            name, f"kubeconfig file {path} does not exist", fix="check clusters[].kubeconfig.path in the spec"
        )
    return ClusterClient.from_kubeconfig_file(path, context=context, cluster_name=name, request_timeout=timeout)


def _from_kkp(cluster: ClusterSpec, timeout: float, load_secret: SecretLoader | None) -> ClusterClient:
    from clustermesh.kkp import api as kkp

    with kkp.client_for(cluster, load_secret=load_secret, timeout=timeout) as api:
        found = kkp.find_cluster(api, cluster)
        text = api.kubeconfig(found.id)
    return ClusterClient.from_kubeconfig_text(text, context=None, cluster_name=cluster.name, request_timeout=timeout)
