"""Turn a kubeconfig reference from the spec into a client, without the kubeconfig ever being a parameter.

Resolution, in the order the spec allows exactly one of:

1. ``path`` (+ optional ``context``): the file is read on the machine that runs the step;
2. ``env``: the named environment variable holds a file path, read like ``path``;
3. ``secret_block``: the text of a Prefect Secret block, fetched by ``load_secret`` (the tasks layer
   passes Prefect's loader; the domain never imports Prefect);
4. ``kkp`` instead of ``kubeconfig``: the admin kubeconfig is fetched through the KKP REST API
   (``GET /api/v2/projects/{p}/clusters/{c}/kubeconfig``) with the referenced token, kept in memory only.

The text stays in memory; errors name the reference, never its content, and chain no exception that
could hold it (see :mod:`clustermesh.kube.kubeconfig`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from clustermesh.errors import ClusterMeshError, KubeconfigError
from clustermesh.kube.client import ClusterClient
from clustermesh.kube.kubeconfig import KubeconfigSource
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
        path = Path(ref.path).expanduser()
        return _from_file(cluster.name, path, ref.context, request_timeout, KubeconfigSource.file(path))
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise KubeconfigError(
                cluster.name,
                f"environment variable {ref.env} (clusters[].kubeconfig.env) is not set",
                fix=f"export {ref.env}=<path of the cluster's kubeconfig> on the machine running the flow",
            )
        path = Path(value).expanduser()
        source = KubeconfigSource(
            f"kubeconfig file {path}, named by environment variable {ref.env}",
            "clusters[].kubeconfig.env",
            f"export {ref.env}=<path of the kubeconfig file itself> on the machine running the flow",
        )
        return _from_file(cluster.name, path, None, request_timeout, source)
    assert ref.secret_block is not None
    if load_secret is None:
        raise KubeconfigError(
            cluster.name,
            f"kubeconfig is in Prefect Secret block {ref.secret_block!r}, which needs Prefect",
            fix="run through the flow (clustermesh setup), or reference the kubeconfig by path",
        )
    text: str | None = None
    with suppress(ValueError):  # Prefect: "Unable to find block document named …"
        text = load_secret(ref.secret_block)
    if text is None:
        raise KubeconfigError(
            cluster.name,
            f"Prefect Secret block {ref.secret_block!r} (clusters[].kubeconfig.secret_block) does not exist",
            fix="create it with `clustermesh blocks register --config <mesh.yaml>` or correct the name in the spec",
        )
    block = KubeconfigSource(
        f"Prefect Secret block {ref.secret_block!r}",
        "clusters[].kubeconfig.secret_block",
        "store the kubeconfig file's content in the block (`clustermesh blocks register --config <mesh.yaml>`)",
    )
    return ClusterClient.from_kubeconfig_text(
        text, context=None, cluster_name=cluster.name, request_timeout=request_timeout, source=block
    )


def _from_file(name: str, path: Path, context: str | None, timeout: float, source: KubeconfigSource) -> ClusterClient:
    """The file is read as UTF-8 only; a folder, a missing file or another encoding is refused naming ``source``."""
    return ClusterClient.from_kubeconfig_file(
        path, context=context, cluster_name=name, request_timeout=timeout, source=source
    )


def _from_kkp(cluster: ClusterSpec, timeout: float, load_secret: SecretLoader | None) -> ClusterClient:
    from clustermesh.kkp import api as kkp

    assert cluster.kkp is not None
    error: ClusterMeshError | None = None
    try:
        with kkp.client_for(cluster, load_secret=load_secret, timeout=timeout) as api:
            found = kkp.find_cluster(api, cluster)
            text = api.kubeconfig(found.id)
    except ClusterMeshError as exc:
        error = exc
    if error is not None:
        # The KKP client raises ``from None``, which hides but keeps the context: a UnicodeDecodeError
        # of the kubeconfig KKP sent would hold it whole. Dropped before anything can keep or pickle it.
        error.__context__ = error.__cause__ = None
        raise error
    source = KubeconfigSource(
        f"the admin kubeconfig KKP returned for project {cluster.kkp.project!r}",
        "clusters[].kkp",
        "check the cluster in the KKP dashboard",
    )
    return ClusterClient.from_kubeconfig_text(
        text, context=None, cluster_name=cluster.name, request_timeout=timeout, source=source
    )
