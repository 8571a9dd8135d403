"""The pipeline's only door to a Kubernetes API: one client per cluster, and errors it can act on.

Built on the official ``kubernetes`` client. Calls go through its typed APIs, but responses come back
as the server's own JSON (``_preload_content=False``): the client's models are strict about fields they
do not know, so parsing responses through them breaks or loses fields a newer server, KKP or the
sandbox sends. Request bodies still pass through the models, which catches a misspelt field before it
is sent. Every failure leaves as a :class:`~clustermesh.errors.KubeApiError`
subclass that says whether to retry, re-read or fix something, and never carries a credential
(:mod:`clustermesh.kube.api_errors`); kubeconfigs are read by :mod:`clustermesh.kube.kubeconfig`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.stream import stream

from clustermesh.errors import (
    KubeApiError,
    KubeconfigError,
    NotFoundError,
    TransientKubeError,
)
from clustermesh.kube.api_errors import CALL_ERRORS, Redactor, cut, is_transient, translate_error
from clustermesh.kube.batch import BatchAndClock
from clustermesh.kube.cleanup import NamespaceCleanup
from clustermesh.kube.kubeconfig import (
    KubeconfigSource,
    LoadedKubeconfig,
    MemoryFiles,
    load_context,
    parse_kubeconfig,
    read_kubeconfig_file,
)
from clustermesh.kube.objects import KINDS, Applied, as_object, contains, items, replacement
from clustermesh.kube.secrets import SecretWrites
from clustermesh.kube.waiting import describe_object, wait_for

__all__ = [
    "AI_GROUP",
    "AI_PLURAL",
    "AI_VERSION",
    "FIELD_MANAGER",
    "Applied",
    "ClusterClient",
    "ExecOutput",
    "describe_object",
    "is_transient",
    "translate_error",
    "wait_for",
]

T = TypeVar("T")

READ_RETRY_PAUSES = (0.2, 0.5, 1.0)
"""Pauses before re-sending a read that failed transiently (see ``ClusterClient._call``)."""

AI_GROUP = "apps.kubermatic.k8c.io"
AI_VERSION = "v1"
AI_PLURAL = "applicationinstallations"
FIELD_MANAGER = "clustermesh"
"""Named on every write, so ``managedFields`` show which fields the pipeline set."""

_MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class ExecOutput:
    """What a command run in a container left behind; a non-zero exit is an answer, not an error."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


# --------------------------------------------------------------------------------------------------
# The client


class ClusterClient(NamespaceCleanup, SecretWrites, BatchAndClock):
    """One cluster's Kubernetes API: typed calls in, the server's JSON and our own errors out.

    Build it with :meth:`from_kubeconfig_text` or :meth:`from_kubeconfig_file`. It keeps one
    ``ApiClient`` for ordinary calls and opens a separate one for each :meth:`exec`, because
    ``kubernetes.stream.stream`` swaps ``call_api`` on the client it is given and would misroute calls
    other threads make meanwhile. Every call is bounded by ``request_timeout`` seconds, and the client
    does not retry: whether to retry is the caller's decision (:func:`is_transient`), so a timeout
    means what it says.
    """

    def __init__(
        self,
        configuration: k8s.Configuration,
        *,
        cluster_name: str,
        request_timeout: float = 30.0,
        credentials: str = "the kubeconfig's user",
        secrets: Iterable[str] = (),
        _files: MemoryFiles | None = None,
    ) -> None:
        """Wrap an already loaded configuration; refuses one that would not verify TLS."""
        if not str(configuration.host or "").startswith("https://"):
            raise KubeconfigError(
                cluster_name,
                f"the server address {configuration.host!r} is not https",
                fix="point the kubeconfig's server at the API's https:// address",
            )
        if not configuration.verify_ssl:
            raise KubeconfigError(
                cluster_name,
                "the configuration turns TLS verification off",
                fix="clustermesh always verifies TLS: provide the cluster's CA instead",
            )
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")
        # No retries hidden below us: the task layer retries, and a request_timeout bounds one
        # attempt, not four. Redirects are still followed (the client asks for /version/).
        configuration.retries = urllib3.util.Retry(total=5, connect=0, read=0, status=0, other=0, redirect=3)
        self.cluster_name = cluster_name
        self.request_timeout = float(request_timeout)
        self.server = str(configuration.host)
        self._configuration = configuration
        self._credentials = credentials
        self._files = _files
        known = set(secrets)
        for value in (configuration.api_key or {}).values():
            known.add(str(value))
            known.update(str(value).split()[1:])  # "Bearer <token>" → "<token>"
        if configuration.password:
            known.add(str(configuration.password))
        self._redact = Redactor(known)
        self._api: Any = k8s.ApiClient(configuration)  # untyped close(); Any keeps that local
        self._core = k8s.CoreV1Api(self._api)
        self._apps = k8s.AppsV1Api(self._api)
        self._custom = k8s.CustomObjectsApi(self._api)
        self._version = k8s.VersionApi(self._api)

    # -- factories ---------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig_text(
        cls,
        text: str,
        *,
        context: str | None,
        cluster_name: str,
        request_timeout: float = 30.0,
        source: KubeconfigSource | None = None,
    ) -> ClusterClient:
        """The one way from a kubeconfig to a client; this is how credentials resolve.

        - The text is parsed in memory and only the chosen context (``context``, else the kubeconfig's
          ``current-context``) is used; an unknown context is refused with the list of available ones.
        - The cluster must be ``https://`` and TLS is always verified: a cluster entry with
          ``insecure-skip-tls-verify: true`` is refused, and nothing turns verification off.
        - Credentials are whatever the context's user holds, read by the official ``KubeConfigLoader``:
          a token (or ``tokenFile``), a client certificate and key, basic auth, or an exec/auth-provider
          plugin. ``*-data`` fields (CA, client certificate, client key) are handed to TLS as
          in-memory files (``memfd``), never written to disk; where that is impossible a client key is
          refused rather than written out in the clear.
        - Relative file paths resolve against the working directory (use :meth:`from_kubeconfig_file`
          for paths relative to a kubeconfig file).
        - ``source`` names where the text came from (a Secret block, KKP) in error messages.
        """
        config = parse_kubeconfig(text, cluster_name, source)
        loaded = load_context(config, context=context, cluster_name=cluster_name, base_dir="")
        return cls._from_loaded(loaded, cluster_name=cluster_name, request_timeout=request_timeout)

    @classmethod
    def from_kubeconfig_file(
        cls,
        path: str | os.PathLike[str],
        *,
        context: str | None,
        cluster_name: str,
        request_timeout: float = 30.0,
        source: KubeconfigSource | None = None,
    ) -> ClusterClient:
        """As :meth:`from_kubeconfig_text`, reading one file (UTF-8); relative paths in it resolve beside it."""
        config, base_dir = read_kubeconfig_file(path, cluster_name, source)
        loaded = load_context(config, context=context, cluster_name=cluster_name, base_dir=base_dir)
        return cls._from_loaded(loaded, cluster_name=cluster_name, request_timeout=request_timeout)

    @classmethod
    def _from_loaded(cls, loaded: LoadedKubeconfig, *, cluster_name: str, request_timeout: float) -> ClusterClient:
        try:
            return cls(
                loaded.configuration,
                cluster_name=cluster_name,
                request_timeout=request_timeout,
                credentials=loaded.credentials,
                secrets=loaded.secrets,
                _files=loaded.files,
            )
        except BaseException:
            loaded.files.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release pooled connections and the in-memory key files."""
        self._api.close()
        if self._files is not None:
            self._files.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClusterClient(cluster_name={self.cluster_name!r}, server={self.server!r})"

    # -- plumbing ----------------------------------------------------------------------------------

    def _translated(self, verb: str, target: str, call: Callable[[], T]) -> T:
        """``call()``, with what the client raises turned into our error class, chaining nothing.

        The library's exception holds headers, bodies and connection objects: it is not kept as the
        ``__context__`` of ours (raised after the ``except`` block, not inside it), so neither a traceback
        nor a pickled state can carry it.
        """
        error: KubeApiError | None = None
        try:
            return call()
        except KubeApiError:
            raise
        except CALL_ERRORS as exc:
            error = translate_error(
                exc,
                cluster=self.cluster_name,
                verb=verb,
                target=target,
                credentials=self._credentials,
                redact=self._redact,
                server=self.server,
            )
        raise error

    def _call(self, verb: str, target: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One request, answered with the server's JSON as plain Python data.

        Reads (``get``, ``list``) are retried a few times after a transient error, with short pauses:
        they are idempotent, and a check that makes dozens of reads would otherwise fail on any one
        dropped connection. Writes are never retried here; that is the caller's decision.
        """
        pauses = READ_RETRY_PAUSES if verb in ("get", "list") else ()
        for pause in pauses:
            try:
                return self._call_once(verb, target, method, *args, **kwargs)
            except TransientKubeError:
                time.sleep(pause)
        return self._call_once(verb, target, method, *args, **kwargs)

    def _call_once(self, verb: str, target: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def send() -> Any:
            response = method(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
            try:
                return response.data
            finally:
                response.release_conn()

        data = self._translated(verb, target, send)
        if not data:
            return None
        with suppress(ValueError):  # a JSONDecodeError's ``doc`` is the whole answer (a Secret's data, say)
            return json.loads(data)
        raise KubeApiError(
            self.cluster_name,
            verb,
            target,
            "the API answered with something that is not JSON",
            fix="check that the kubeconfig's server is the Kubernetes API and not a proxy or web page",
        )

    def _get_or_none(self, target: str, method: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        try:
            return as_object(self._call("get", target, method, *args))
        except NotFoundError:
            return None

    # -- reads -------------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's ``gitVersion`` (``v1.31.4``): a cheap call that proves address, TLS and token."""
        answer = self._call("get", "/version", self._version.get_code)
        return str(answer.get("gitVersion", "")) if isinstance(answer, dict) else ""

    def get_application_installation(self, namespace: str = "kube-system", name: str = "cilium") -> dict[str, Any]:
        """KKP's ApplicationInstallation; raises :class:`NotFoundError` when it is missing."""
        target = f"{namespace}/{AI_PLURAL}/{name}"
        return as_object(
            self._call(
                "get",
                target,
                self._custom.get_namespaced_custom_object,
                AI_GROUP,
                AI_VERSION,
                namespace,
                AI_PLURAL,
                name,
            )
        )

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret, or None if absent; its data never enters a message of ours."""
        return self._get_or_none(f"{namespace}/secrets/{name}", self._core.read_namespaced_secret, name, namespace)

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"{namespace}/services/{name}", self._core.read_namespaced_service, name, namespace)

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(
            f"{namespace}/configmaps/{name}", self._core.read_namespaced_config_map, name, namespace
        )

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(
            f"{namespace}/deployments/{name}", self._apps.read_namespaced_deployment, name, namespace
        )

    def list_nodes(self) -> list[dict[str, Any]]:
        return items(self._call("list", "nodes", self._core.list_node), "Node", "v1")

    def list_pods(self, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        target = f"{namespace}/pods (labelSelector {label_selector!r}"
        target += f", fieldSelector {field_selector!r})" if field_selector else ")"
        answer = self._call(
            "list",
            target,
            self._core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
        )
        return items(answer, "Pod", "v1")

    # -- writes ------------------------------------------------------------------------------------

    def replace_application_installation(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object as read and changed; a 409 (:class:`ConflictError`) means re-read.

        Refuses an object without ``metadata.resourceVersion``: a write must carry the version it
        was computed from, or it could overwrite KKP's or another run's change.
        """
        metadata = obj.get("metadata") or {}
        namespace, name, version = (
            metadata.get("namespace"),
            metadata.get("name"),
            metadata.get("resourceVersion"),
        )
        if not (namespace and name and version):
            raise ValueError(
                "replace_application_installation needs metadata.namespace, .name and .resourceVersion "
                f"(got {namespace!r}, {name!r}, {version!r}): pass the object as read, then changed"
            )
        return as_object(
            self._call(
                "replace",
                f"{namespace}/{AI_PLURAL}/{name}",
                self._custom.replace_namespaced_custom_object,
                AI_GROUP,
                AI_VERSION,
                namespace,
                AI_PLURAL,
                name,
                copy.deepcopy(dict(obj)),
                field_manager=FIELD_MANAGER,
            )
        )

    def create_or_replace(self, manifest: Mapping[str, Any]) -> Applied:
        """Make a Namespace, Service or Deployment look like ``manifest``, writing only if it differs.

        Create when absent; otherwise PUT carrying the resourceVersion just read, so a concurrent
        change gives :class:`ConflictError` (and a lost create race :class:`AlreadyExistsError`)
        instead of being overwritten. Labels and annotations others set are kept (the drill records
        replica counts in annotations), as are fields the server allocated (a Service's cluster IPs
        and node ports) and a Deployment's replicas when the manifest leaves them out. "Unchanged"
        means every field of the manifest already holds; server defaults do not count as change.
        """
        kind = KINDS.get((str(manifest.get("apiVersion")), str(manifest.get("kind"))))
        if kind is None:
            supported = ", ".join(f"{v} {k}" for v, k in KINDS)
            raise ValueError(
                f"create_or_replace supports {supported}; got {manifest.get('apiVersion')} {manifest.get('kind')}"
            )
        metadata = manifest.get("metadata") or {}
        name = metadata.get("name")
        namespace = metadata.get("namespace")
        if not name or (kind.namespaced and not namespace):
            raise ValueError(f"{manifest.get('kind')} manifest needs metadata.name (and .namespace if namespaced)")
        api = self._core if kind.api == "core" else self._apps
        ids: tuple[str, ...] = (str(name), str(namespace)) if kind.namespaced else (str(name),)
        target = f"{namespace}/{kind.plural}/{name}" if kind.namespaced else f"{kind.plural}/{name}"

        current = self._get_or_none(target, getattr(api, kind.read), *ids)
        desired = copy.deepcopy(dict(manifest))
        if current is None:
            where = (namespace,) if kind.namespaced else ()
            created = self._call(
                "create", target, getattr(api, kind.create), *where, desired, field_manager=FIELD_MANAGER
            )
            return Applied(as_object(created), "created")
        body = replacement(current, desired)
        if contains(current, body):
            return Applied(current, "unchanged")
        replaced = self._call("replace", target, getattr(api, kind.replace), *ids, body, field_manager=FIELD_MANAGER)
        return Applied(as_object(replaced), "replaced")

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set replicas through ``/scale`` (as ``kubectl scale`` does), touching nothing else."""
        if replicas < 0:
            raise ValueError(f"cannot scale {namespace}/deployments/{name} to {replicas} replicas")
        self._call(
            "scale",
            f"{namespace}/deployments/{name}/scale",
            self._apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type=_MERGE_PATCH,
        )

    def patch_deployment_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch annotations (None removes one); with ``resource_version`` a stale read gives 409.

        The drill writes a replica count here before changing it, so the next run can restore it.
        """
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return as_object(
            self._call(
                "patch",
                f"{namespace}/deployments/{name}",
                self._apps.patch_namespaced_deployment,
                name,
                namespace,
                {"metadata": metadata},
                field_manager=FIELD_MANAGER,
                _content_type=_MERGE_PATCH,
            )
        )

    # -- exec --------------------------------------------------------------------------------------

    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout: float) -> ExecOutput:
        """Run ``argv`` in a container; output and exit code come back, a non-zero exit is not raised.

        Runs on its own ApiClient (see the class docstring). Reads the channels until the server closes
        the stream, then takes the exit code from the Status on the error channel. Output is read as
        bytes and decoded once, so a character split across frames survives.
        """
        target = f"{namespace}/pods/{pod}/exec"
        shown = cut(" ".join(argv), 100)
        deadline = time.monotonic() + timeout
        exec_api: Any = k8s.ApiClient(self._configuration)

        def run() -> tuple[object, object, object]:
            ws = stream(
                k8s.CoreV1Api(exec_api).connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=list(argv),
                container=container,
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
                _request_timeout=timeout,
            )
            malformed: str | None = None
            try:
                while ws.is_open():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TransientKubeError(
                            self.cluster_name,
                            "exec",
                            target,
                            f"`{shown}` in container {container!r} did not finish within {timeout:g}s",
                            fix="check that the pod is running and responsive, or allow a longer timeout",
                        )
                    ws.update(timeout=remaining)
                return ws.read_channel(1), ws.read_channel(2), ws.read_channel(3)
            except RuntimeError as exc:  # the client's frame parser refusing what it got
                malformed = cut(self._redact(str(exc)), 300)
            finally:
                ws.close()
            raise KubeApiError(
                self.cluster_name, "exec", target, f"malformed exec stream: {malformed}", fix="report this"
            )

        try:
            stdout, stderr, status = self._translated("exec", target, run)
            return ExecOutput(
                exit_code=self._exit_code(status, target, shown),
                stdout=_text(stdout),
                stderr=_text(stderr),
            )
        finally:
            exec_api.close()

    def _exit_code(self, raw: object, target: str, shown: str) -> int:
        if not raw:
            raise TransientKubeError(
                self.cluster_name,
                "exec",
                target,
                f"the stream of `{shown}` closed without an exit status",
                fix="the connection dropped or the container went away; retry if the command is read-only",
            )
        try:
            status = json.loads(raw if isinstance(raw, str | bytes) else str(raw))
        except ValueError:
            status = None
        if isinstance(status, dict):
            if status.get("status") == "Success":
                return 0
            details = status.get("details")
            causes = details.get("causes") if isinstance(details, dict) else None
            for cause in causes if isinstance(causes, list) else []:
                if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                    try:
                        return int(cause.get("message", ""))
                    except ValueError:
                        break
            message = cut(self._redact(str(status.get("message") or "no message")), 500)
        else:
            message = "an exit status that is not a Status object"
        raise KubeApiError(
            self.cluster_name,
            "exec",
            target,
            f"`{shown}` did not run: {message}",
            fix="check the container name and that the command exists in its image",
        )

    # -- waiting -----------------------------------------------------------------------------------

    def wait_for(
        self,
        read: Callable[[], T],
        predicate: Callable[[T], bool],
        *,
        timeout: float,
        expected: str,
        check: str,
        poll_interval: float = 1.0,
        describe: Callable[[T], str] | None = None,
    ) -> T:
        """:func:`wait_for` on this cluster; see there for why it polls."""
        return wait_for(
            read,
            predicate,
            timeout=timeout,
            expected=expected,
            check=check,
            cluster=self.cluster_name,
            poll_interval=poll_interval,
            describe=describe,
        )


def _text(raw: object) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw or "")
