"""The pipeline's only door to a Kubernetes API: one client per cluster, and errors it can act on.

Built on the official ``kubernetes`` client. Calls go through its typed APIs, but responses come back
as the server's own JSON (``_preload_content=False``): the client's models are strict about fields they
do not know, so parsing responses through them breaks or loses fields a newer server, KKP or the
sandbox sends. Request bodies still pass through the models, which catches a misspelt field before it
is sent. Every failure leaves as a :class:`~clustermesh.errors.KubeApiError`
subclass that says whether to retry, re-read or fix something, and never carries a credential.
"""

from __future__ import annotations

import ast
import base64
import binascii
import copy
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import pydantic
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream
from websocket import WebSocketException

from clustermesh.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    KubeApiError,
    KubeconfigError,
    NotFoundError,
    TLSVerificationError,
    TransientKubeError,
    UnauthorizedError,
    WaitTimeoutError,
)

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
_REDACTED = "[redacted]"

# Errors the client and the libraries under it raise for a call that did not work. Anything else
# escaping a call (TypeError, KeyError, …) is a bug of ours and is left alone.
_CALL_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    urllib3.exceptions.HTTPError,
    OSError,  # ssl.SSLError, ConnectionError, TimeoutError, socket.gaierror
    WebSocketException,
    pydantic.ValidationError,
)

_KubeConfigLoader: Any = kube_config.KubeConfigLoader  # the loader is untyped; keep that in one place


# --------------------------------------------------------------------------------------------------
# Keeping secrets out of messages


_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",}]+"), r"\1 " + _REDACTED),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + _REDACTED),
    (re.compile(r"eyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]*"), _REDACTED),  # JWTs (service-account, OIDC)
)


class _Redactor:
    """Removes known credential values and anything shaped like a token from text we did not write.

    API messages, library error strings and exec-plugin output all end up in exception messages; the
    credentials of the kubeconfig in use are struck out by value, other tokens by shape.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        for pattern, replacement in _TOKEN_PATTERNS:
            text = pattern.sub(replacement, text)
        return text


_redact_shapes = _Redactor()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------
# Error translation


@dataclass(frozen=True)
class _Call:
    """Which call failed, and how to speak about its credentials: the context every error message needs."""

    cluster: str
    verb: str
    target: str
    credentials: str
    redact: Callable[[str], str]

    def error(
        self,
        cls: type[KubeApiError],
        problem: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        fix: str | None = None,
    ) -> KubeApiError:
        return cls(self.cluster, self.verb, self.target, problem, status=status, reason=reason, fix=fix)


def translate_error(
    exc: BaseException,
    *,
    cluster: str,
    verb: str,
    target: str,
    credentials: str = "the kubeconfig's user",
    redact: Callable[[str], str] = _redact_shapes,
) -> KubeApiError:
    """Turn what the client raised into the error class that tells the caller what to do next.

    ``credentials`` names (never shows) the credentials in use, for 401/403 hints. Headers of the
    request or response are never read, so tokens cannot leak through them.
    """
    if isinstance(exc, KubeApiError):
        return exc
    call = _Call(cluster, verb, target, credentials, redact)
    if isinstance(exc, ApiException):
        status = exc.status if isinstance(exc.status, int) else 0
        if status == 0:  # raised by the client itself, e.g. the exec WebSocket wrapping its errors
            return _from_client_text(str(exc.reason or ""), call)
        reason, message = _read_status_body(exc.body, redact)
        return _from_status(status, reason or str(exc.reason or ""), message, call)
    if isinstance(exc, pydantic.ValidationError):
        # Field paths and messages only: input values could be anything, secrets included.
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5])
        return call.error(
            InvalidError,
            f"the client refused the request before sending it: {problems}",
            fix="fix the manifest's fields; the official client does not know them",
        )
    while isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = _cut(redact(_strip_object_reprs(str(exc))), 300)
    if _is_certificate_failure(exc, text):
        return call.error(TLSVerificationError, f"TLS verification failed: {text}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return call.error(TransientKubeError, f"{_connection_problem(exc)}: {text}")
    return call.error(KubeApiError, f"{type(exc).__name__}: {text}")


_CONNECTION_ERRORS = (
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,
    socket.gaierror,  # a name that did not resolve: DNS may be back in a moment
    ssl.SSLError,  # certificate failures are sorted out before this
    WebSocketException,
)


def is_transient(exc: BaseException) -> bool:
    """Whether repeating the same call may succeed: the retry condition for every Kubernetes task."""
    if isinstance(exc, KubeApiError):
        return isinstance(exc, TransientKubeError)
    if isinstance(exc, _CALL_ERRORS):
        return isinstance(translate_error(exc, cluster="", verb="", target=""), TransientKubeError)
    return False


def _from_status(status: int, reason: str, message: str, call: _Call) -> KubeApiError:
    problem = message or "the API server gave no message"
    cls: type[KubeApiError] = KubeApiError
    fix: str | None = None
    if status == 401:
        cls = UnauthorizedError
        fix = (
            f"the API server did not accept the credentials of {call.credentials}: check that its token "
            "or client certificate is current and issued for this cluster"
        )
    elif status == 403:
        cls = ForbiddenError
        fix = (
            f"{call.credentials} may not {call.verb} {call.target}: grant it through RBAC, or use the "
            "cluster's admin kubeconfig"
        )
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = AlreadyExistsError if reason == "AlreadyExists" else ConflictError
    elif status in (400, 422):
        cls = InvalidError
    elif status == 410:  # Expired/Gone: a newer read fixes it
        cls, fix = TransientKubeError, "read again; the version asked for is gone"
    elif status == 429 or status >= 500:
        cls = TransientKubeError
    return call.error(cls, problem, status=status, reason=reason or None, fix=fix)


def _read_status_body(body: object, redact: Callable[[str], str]) -> tuple[str, str]:
    """The ``reason`` and ``message`` of a ``Status`` body; a non-JSON body (a proxy's page) is cut short."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip():
        return "", ""
    try:
        status = json.loads(body)
    except ValueError:
        return "", redact(_cut(" ".join(body.split()), 200))
    if not isinstance(status, dict):
        return "", ""
    message = str(status.get("message") or "")
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not message and isinstance(causes, list):
        message = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}" for c in causes[:5] if isinstance(c, dict))
    return str(status.get("reason") or ""), redact(_cut(message, 1000))


_HANDSHAKE = re.compile(r"Handshake status (\d{3})(?: ([A-Za-z][A-Za-z ]*?))?\s*(?:-\+-\+-|$)")
_CONNECTION_WORDS = re.compile(
    r"(?i)refused|reset|timed? ?out|unreachable|broken pipe|closed|eof|name or service not known|"
    r"temporary failure|no route|connection aborted"
)


def _from_client_text(text: str, call: _Call) -> KubeApiError:
    """Classify an ``ApiException(status=0)``: the exec WebSocket folds every failure into its text.

    A refused handshake reads ``Handshake status 403 Forbidden -+-+- {headers} -+-+- b'{body}'``;
    only the status and the body's Status message are kept, never the headers.
    """
    handshake = _HANDSHAKE.search(text)
    if handshake:
        reason, message = _read_status_body(_handshake_body(text), call.redact)
        return _from_status(int(handshake.group(1)), reason or handshake.group(2) or "", message, call)
    text = _cut(call.redact(_strip_object_reprs(text)), 300)
    if _is_certificate_failure(None, text):
        return call.error(TLSVerificationError, f"TLS verification failed: {text}")
    if _CONNECTION_WORDS.search(text):
        return call.error(TransientKubeError, text)
    return call.error(KubeApiError, text or "the client failed without a message")


def _handshake_body(text: str) -> object:
    """The body after the last ``-+-+-``: websocket-client shows it as a bytes literal, so read it as one."""
    if "-+-+-" not in text:
        return ""
    tail = text.rsplit("-+-+-", 1)[1].strip()
    if tail[:2] in ("b'", 'b"'):
        try:
            return ast.literal_eval(tail)  # literals only: safe on what a server sent
        except (ValueError, SyntaxError):
            return ""
    return tail


def _is_certificate_failure(exc: BaseException | None, text: str) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    if exc is not None and isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return True
    if exc is not None and any(isinstance(a, ssl.SSLCertVerificationError) for a in exc.args):
        return True
    lowered = text.lower()
    return "certificate verify failed" in lowered or "certificate_verify_failed" in lowered


def _connection_problem(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.ProtocolError | ConnectionError):
        return "connection broken"
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
        return "TLS handshake failed"
    return "connection problem"


def _strip_object_reprs(text: str) -> str:
    """``<urllib3.connection.HTTPSConnection object at 0x7f…>: `` says nothing to a reader."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*", "", text)


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ExecOutput:
    """What a command run in a container left behind; a non-zero exit is an answer, not an error."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Applied:
    """An object as the server holds it after :meth:`ClusterClient.create_or_replace`, and what it took."""

    object: dict[str, Any]
    action: Literal["created", "replaced", "unchanged"]


@dataclass(frozen=True)
class _Kind:
    plural: str
    namespaced: bool
    api: Literal["core", "apps"]
    read: str
    create: str
    replace: str


_KINDS: dict[tuple[str, str], _Kind] = {
    ("v1", "Namespace"): _Kind("namespaces", False, "core", "read_namespace", "create_namespace", "replace_namespace"),
    ("v1", "Service"): _Kind(
        "services",
        True,
        "core",
        "read_namespaced_service",
        "create_namespaced_service",
        "replace_namespaced_service",
    ),
    ("apps/v1", "Deployment"): _Kind(
        "deployments",
        True,
        "apps",
        "read_namespaced_deployment",
        "create_namespaced_deployment",
        "replace_namespaced_deployment",
    ),
}


# --------------------------------------------------------------------------------------------------
# The client


class ClusterClient:
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
        _files: _MemoryFiles | None = None,
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
        self._redact = _Redactor(known)
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
        """
        config = _parse_kubeconfig(text, cluster_name)
        return cls._from_config(
            config, context=context, cluster_name=cluster_name, request_timeout=request_timeout, base_dir=""
        )

    @classmethod
    def from_kubeconfig_file(
        cls,
        path: str | os.PathLike[str],
        *,
        context: str | None,
        cluster_name: str,
        request_timeout: float = 30.0,
    ) -> ClusterClient:
        """As :meth:`from_kubeconfig_text`, reading one file; relative paths in it resolve beside it."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise KubeconfigError(
                cluster_name,
                f"cannot read {str(file)!r}: {exc.strerror or type(exc).__name__}",
                fix="check the path and that the pipeline may read it",
            ) from None
        config = _parse_kubeconfig(text, cluster_name)
        return cls._from_config(
            config,
            context=context,
            cluster_name=cluster_name,
            request_timeout=request_timeout,
            base_dir=str(file.resolve().parent),
        )

    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        context: str | None,
        cluster_name: str,
        request_timeout: float,
        base_dir: str,
    ) -> ClusterClient:
        contexts = _named_entries(config, "contexts", "context", cluster_name)
        available = ", ".join(repr(n) for n in sorted(contexts)) or "none"
        chosen = context or config.get("current-context") or None
        if not chosen:
            raise KubeconfigError(
                cluster_name,
                "no context was given and the kubeconfig sets no current-context",
                fix=f"name one of the available contexts: {available}",
            )
        if chosen not in contexts:
            raise KubeconfigError(
                cluster_name,
                f"there is no context {chosen!r}",
                fix=f"use one of the available contexts: {available}",
            )
        ctx = contexts[chosen]
        cluster_ref = ctx.get("cluster")
        user_ref = ctx.get("user")
        clusters = _named_entries(config, "clusters", "cluster", cluster_name)
        if cluster_ref not in clusters:
            raise KubeconfigError(
                cluster_name,
                f"context {chosen!r} names cluster {cluster_ref!r}, which the kubeconfig does not define",
                fix=f"define it or fix the context; defined clusters: {', '.join(sorted(clusters))}",
            )
        users = _named_entries(config, "users", "user", cluster_name)
        if user_ref and user_ref not in users:
            raise KubeconfigError(
                cluster_name,
                f"context {chosen!r} names user {user_ref!r}, which the kubeconfig does not define",
                fix=f"define it or fix the context; defined users: {', '.join(sorted(users)) or 'none'}",
            )
        cluster_body = copy.deepcopy(dict(clusters[cluster_ref]))
        user_body = copy.deepcopy(dict(users[user_ref])) if user_ref else {}
        _refuse_unverified(cluster_body, cluster_ref, chosen, cluster_name)
        secrets = list(_strings(user_body))
        redact = _Redactor(secrets)

        files = _MemoryFiles()
        try:
            _move_data_to_memory(cluster_body, "certificate-authority", files, secret=False, cluster=cluster_name)
            _move_data_to_memory(user_body, "client-certificate", files, secret=False, cluster=cluster_name)
            _move_data_to_memory(user_body, "client-key", files, secret=True, cluster=cluster_name)
            only_chosen = {
                "current-context": chosen,
                "contexts": [{"name": chosen, "context": dict(ctx)}],
                "clusters": [{"name": cluster_ref, "cluster": cluster_body}],
                "users": [{"name": user_ref, "user": user_body}] if user_ref else [],
            }
            configuration = k8s.Configuration()
            try:
                loader = _KubeConfigLoader(config_dict=only_chosen, active_context=chosen, config_base_path=base_dir)
                loader.load_and_set(configuration)
            except (ConfigException, OSError, ValueError) as exc:
                raise KubeconfigError(
                    cluster_name,
                    f"context {chosen!r} cannot be loaded: {_cut(redact(str(exc)), 300)}",
                    fix="check the user and cluster entries it names",
                ) from None
            return cls(
                configuration,
                cluster_name=cluster_name,
                request_timeout=request_timeout,
                credentials=f"kubeconfig user {user_ref!r} (context {chosen!r})",
                secrets=secrets,
                _files=files,
            )
        except BaseException:
            files.close()
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

    @contextmanager
    def _translated(self, verb: str, target: str) -> Iterator[None]:
        """Our error classes out, with the library's exception dropped from the chain (it holds headers)."""
        try:
            yield
        except KubeApiError:
            raise
        except _CALL_ERRORS as exc:
            raise translate_error(
                exc,
                cluster=self.cluster_name,
                verb=verb,
                target=target,
                credentials=self._credentials,
                redact=self._redact,
            ) from None

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
        with self._translated(verb, target):
            response = method(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise KubeApiError(
                self.cluster_name,
                verb,
                target,
                "the API answered with something that is not JSON",
                fix="check that the kubeconfig's server is the Kubernetes API and not a proxy or web page",
            ) from None

    def _get_or_none(self, target: str, method: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        try:
            return _as_object(self._call("get", target, method, *args))
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
        return _as_object(
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
        return _items(self._call("list", "nodes", self._core.list_node), "Node", "v1")

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
        return _items(answer, "Pod", "v1")

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
        return _as_object(
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
        kind = _KINDS.get((str(manifest.get("apiVersion")), str(manifest.get("kind"))))
        if kind is None:
            supported = ", ".join(f"{v} {k}" for v, k in _KINDS)
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
            return Applied(_as_object(created), "created")
        body = _replacement(current, desired)
        if _contains(current, body):
            return Applied(current, "unchanged")
        replaced = self._call("replace", target, getattr(api, kind.replace), *ids, body, field_manager=FIELD_MANAGER)
        return Applied(_as_object(replaced), "replaced")

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
        return _as_object(
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
        shown = _cut(" ".join(argv), 100)
        deadline = time.monotonic() + timeout
        exec_api: Any = k8s.ApiClient(self._configuration)
        try:
            with self._translated("exec", target):
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
                    stdout = ws.read_channel(1)
                    stderr = ws.read_channel(2)
                    status = ws.read_channel(3)
                except RuntimeError as exc:  # the client's frame parser refusing what it got
                    raise KubeApiError(
                        self.cluster_name, "exec", target, f"malformed exec stream: {exc}", fix="report this"
                    ) from None
                finally:
                    ws.close()
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
            message = self._redact(_cut(str(status.get("message") or "no message"), 500))
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


def wait_for(
    read: Callable[[], T],
    predicate: Callable[[T], bool],
    *,
    timeout: float,
    expected: str,
    check: str,
    cluster: str,
    poll_interval: float = 1.0,
    describe: Callable[[T], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Read until ``predicate`` holds, and return what it held for; else :class:`WaitTimeoutError`.

    Polls rather than watches, on purpose: a poll works for any read (a custom object, exec output,
    a condition across several objects), rides over a dropped connection or a restarted API server
    without resume logic (no 410 Expired, no bookmarks), and at one GET a second costs nothing at our
    scale. "Not found" and transient errors count as "not yet" and become the last thing seen; any
    other error ends the wait at once. The timeout names ``expected``, the last thing seen and
    ``check`` (what the operator should look at).
    """
    show: Callable[[Any], str] = describe or describe_object
    deadline = clock() + timeout
    last_seen = "nothing: no read finished"
    while True:
        try:
            value = read()
        except NotFoundError as exc:
            last_seen = f"not found ({exc.target})"
        except TransientKubeError as exc:
            last_seen = f"no answer ({exc.problem})"
        else:
            if predicate(value):
                return value
            last_seen = show(value)
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeoutError(cluster, expected, last_seen, timeout=timeout, check=check)
        sleep(min(poll_interval, remaining))


def describe_object(value: object) -> str:
    """A one-line view of what a wait last saw: kind, name, generation and status, never data or spec."""
    if value is None:
        return "nothing (not found)"
    if isinstance(value, Mapping) and isinstance(value.get("metadata"), Mapping):
        meta = value["metadata"]
        name = "/".join(str(p) for p in (meta.get("namespace"), meta.get("name")) if p)
        parts = [f"{value.get('kind', 'object')} {name}".strip()]
        if "generation" in meta:
            parts.append(f"generation {meta['generation']}")
        if "status" in value and value.get("kind") != "Secret":
            parts.append("status " + _cut(json.dumps(value["status"], sort_keys=True, default=str), 400))
        return ", ".join(parts)
    if isinstance(value, list):
        shown = "; ".join(describe_object(v) for v in value[:3])
        return f"{len(value)} item(s)" + (f": {shown}" if shown else "") + ("; …" if len(value) > 3 else "")
    return _cut(repr(value), 300)


# --------------------------------------------------------------------------------------------------
# Helpers


def _as_object(answer: Any) -> dict[str, Any]:
    return answer if isinstance(answer, dict) else {}


def _items(answer: Any, kind: str, api_version: str) -> list[dict[str, Any]]:
    """List items, given back the kind and apiVersion the server leaves off items in a list."""
    items = answer.get("items") if isinstance(answer, dict) else None
    out: list[dict[str, Any]] = []
    for item in items or []:
        if isinstance(item, dict):
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            out.append(item)
    return out


def _text(raw: object) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw or "")


def _replacement(current: Mapping[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The PUT body: desired state, plus what others and the server own on the current object."""
    body = copy.deepcopy(desired)
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    current_meta = current.get("metadata") or {}
    for key in ("labels", "annotations"):
        merged = dict(current_meta.get(key) or {})
        merged.update(meta.get(key) or {})
        if merged:
            meta[key] = merged
    meta["resourceVersion"] = current_meta.get("resourceVersion")
    spec = body.get("spec")
    current_spec = current.get("spec") or {}
    if isinstance(spec, dict) and body.get("kind") == "Service":
        for key in ("clusterIP", "clusterIPs", "healthCheckNodePort"):
            if key not in spec and key in current_spec:
                spec[key] = copy.deepcopy(current_spec[key])
        current_ports = {
            (p.get("port"), p.get("protocol", "TCP")): p for p in current_spec.get("ports") or [] if isinstance(p, dict)
        }
        for port in spec.get("ports") or []:
            old = current_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if old and "nodePort" not in port and "nodePort" in old:
                port["nodePort"] = old["nodePort"]
    if (
        isinstance(spec, dict)
        and body.get("kind") == "Deployment"
        and "replicas" not in spec
        and "replicas" in current_spec
    ):
        spec["replicas"] = current_spec["replicas"]
    return body


def _contains(have: object, want: object) -> bool:
    """Whether every field of ``want`` holds in ``have`` (lists item by item, same length)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return have == want


# -- kubeconfig -----------------------------------------------------------------------------------


def _parse_kubeconfig(text: str, cluster_name: str) -> Mapping[str, Any]:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        # Only the position: YAML's own message quotes the offending text, which may be a credential.
        raise KubeconfigError(
            cluster_name, f"not valid YAML{where}", fix="check the kubeconfig's indentation and quoting"
        ) from None
    if not isinstance(config, Mapping):
        raise KubeconfigError(
            cluster_name,
            "not a kubeconfig (expected a mapping with contexts, clusters and users)",
            fix="check the reference",
        )
    return config


def _named_entries(
    config: Mapping[str, Any], key: str, body_key: str, cluster_name: str
) -> dict[str, Mapping[str, Any]]:
    entries = config.get(key) or []
    if not isinstance(entries, list):
        raise KubeconfigError(cluster_name, f"{key} is not a list", fix=f"write {key} as a list of named entries")
    out: dict[str, Mapping[str, Any]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(cluster_name, f"{key}[{index}] has no name", fix="give every entry a name")
        body = entry.get(body_key)
        out[entry["name"]] = body if isinstance(body, Mapping) else {}
    return out


def _refuse_unverified(cluster: Mapping[str, Any], ref: str, context: str, cluster_name: str) -> None:
    skip = cluster.get("insecure-skip-tls-verify")
    if skip is True or str(skip).lower() == "true":
        raise KubeconfigError(
            cluster_name,
            f"cluster entry {ref!r} (context {context!r}) sets insecure-skip-tls-verify: true",
            fix="clustermesh always verifies TLS and has no switch to turn that off: remove the flag and put "
            "the cluster's CA in certificate-authority-data (KKP's kubeconfigs carry it)",
        )
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise KubeconfigError(
            cluster_name,
            f"cluster entry {ref!r} (context {context!r}) has server {server!r}, which is not https",
            fix="point server at the API's https:// address",
        )


def _strings(node: object) -> Iterator[str]:
    """Every string in a user entry: all of them are treated as possible credentials."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


class _MemoryFiles:
    """Certificate and key bytes as memfd files: ``ssl`` insists on paths, and these never reach a disk."""

    available = hasattr(os, "memfd_create")

    def __init__(self) -> None:
        self._fds: list[int] = []

    def add(self, label: str, content: bytes) -> str:
        fd = os.memfd_create(f"clustermesh-{label}")  # close-on-exec by default
        self._fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with suppress(OSError):
                os.close(fd)


def _move_data_to_memory(body: dict[str, Any], key: str, files: _MemoryFiles, *, secret: bool, cluster: str) -> None:
    """Swap ``<key>-data`` for ``<key>`` naming an in-memory file, so the loader writes no temp file."""
    data_key = f"{key}-data"
    data = body.get(data_key)
    if not data:
        return
    try:
        raw = base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(
            cluster, f"{data_key} is not valid base64", fix=f"store {data_key} as the base64 of the PEM file"
        ) from None
    if files.available:
        body[key] = files.add(key, raw)
        del body[data_key]
    elif secret:
        raise KubeconfigError(
            cluster,
            f"{data_key} would have to be written to a temporary file in the clear on this platform",
            fix="use a token user, or point client-key at a key file you protect",
        )
