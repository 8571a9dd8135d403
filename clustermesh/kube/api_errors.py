"""Errors from the Kubernetes client turned into ours: what to do next, and no credential in the text.

:func:`translate_error` maps what the official client and the libraries under it raise (``ApiException``,
urllib3, ``ssl``, the exec WebSocket, pydantic) to a :class:`~clustermesh.errors.KubeApiError` subclass
that says whether to retry, re-read or fix something; :func:`is_transient` is the retry condition built
on it. Text we did not write (API messages, library errors, exec-plugin output) passes through a
:class:`Redactor` first, which strikes out the kubeconfig's credential values and anything shaped like a token.
"""

from __future__ import annotations

import ast
import errno
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pydantic
import urllib3
from kubernetes.client.exceptions import ApiException
from websocket import WebSocketException

from clustermesh.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    KkpTransientError,
    KubeApiError,
    NotFoundError,
    TLSVerificationError,
    TransientKubeError,
    UnauthorizedError,
)

__all__ = ["CALL_ERRORS", "Redactor", "cut", "is_transient", "redact_shapes", "translate_error"]

REDACTED = "[redacted]"

# Errors the client and the libraries under it raise for a call that did not work. Anything else
# escaping a call (TypeError, KeyError, …) is a bug of ours and is left alone.
CALL_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    urllib3.exceptions.HTTPError,
    OSError,  # ssl.SSLError, ConnectionError, TimeoutError, socket.gaierror
    WebSocketException,
    pydantic.ValidationError,
)


# --------------------------------------------------------------------------------------------------
# Keeping secrets out of messages


_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",}]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + REDACTED),
    (re.compile(r"eyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]*"), REDACTED),  # JWTs (service-account, OIDC)
    # A private key quoted back (an admission webhook refusing values that hold a CA key): the PEM block,
    # cut short or not, and its base64 as a Secret or Helm values carry it ("-----BEGIN" is "LS0tLS1CRUdJTi").
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL), REDACTED),
    (re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=_-]*"), REDACTED),
)


class Redactor:
    """Removes known credential values and anything shaped like a token from text we did not write.

    API messages, library error strings and exec-plugin output all end up in exception messages; the
    credentials of the kubeconfig in use are struck out by value, other tokens by shape.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _TOKEN_PATTERNS:
            text = pattern.sub(replacement, text)
        return text


redact_shapes = Redactor()


def cut(text: str, limit: int) -> str:
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
    server: str | None = None

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
    redact: Callable[[str], str] = redact_shapes,
    server: str | None = None,
) -> KubeApiError:
    """Turn what the client raised into the error class that tells the caller what to do next.

    ``credentials`` names (never shows) the credentials in use, for 401/403 hints; ``server`` is the
    kubeconfig's server address, named when the connection fails. Headers of the request or response
    are never read, so tokens cannot leak through them. The caller raises the result without chaining
    ``exc`` (see :meth:`ClusterClient._translated`).
    """
    if isinstance(exc, KubeApiError):
        return exc
    call = _Call(cluster, verb, target, credentials, redact, server)
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
    address = _address(exc, server)
    while isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
        address = _address(exc, None) or address
    text = cut(redact(_strip_object_reprs(str(exc))), 300)
    if _is_certificate_failure(exc, text):
        return call.error(TLSVerificationError, f"TLS verification failed: {text}")
    if isinstance(exc, _CONNECTION_ERRORS):
        problem, fix = _connection_problem(exc, text, address or "the API server", server)
        return call.error(TransientKubeError, f"{problem}: {text}", fix=fix)
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
    """Whether repeating the same call may succeed: the retry condition for every task that opens a cluster.

    Opening a cluster referenced through KKP asks the KKP API for its kubeconfig first, so a KKP error
    that another attempt can fix (unreachable, 429, 5xx: :class:`KkpTransientError`) counts too.
    """
    if isinstance(exc, KkpTransientError):
        return True
    if isinstance(exc, KubeApiError):
        return isinstance(exc, TransientKubeError)
    if isinstance(exc, CALL_ERRORS):
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
        return "", cut(redact(" ".join(body.split())), 200)
    if not isinstance(status, dict):
        return "", ""
    message = str(status.get("message") or "")
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not message and isinstance(causes, list):
        message = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}" for c in causes[:5] if isinstance(c, dict))
    return str(status.get("reason") or ""), cut(redact(message), 1000)


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
    text = cut(call.redact(_strip_object_reprs(text)), 300)
    if _is_certificate_failure(None, text):
        return call.error(TLSVerificationError, f"TLS verification failed: {text}")
    if _refused(None, text):
        problem, fix = _refused_problem(_address(None, call.server) or "the API server", call.server)
        return call.error(TransientKubeError, f"{problem}: {text}", fix=fix)
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


def _address(exc: BaseException | None, server: str | None) -> str | None:
    """``host:port`` the failed call went to: from urllib3's connection or pool, else from the server URL."""
    new_connection = isinstance(exc, urllib3.exceptions.NewConnectionError)
    for name in ("conn",) if new_connection else ("conn", "pool"):  # NewConnectionError's pool is deprecated
        holder = getattr(exc, name, None)
        host = getattr(holder, "host", None)
        if isinstance(host, str) and host:
            port = getattr(holder, "port", None)
            return f"{host}:{port}" if port else host
    if server:
        netloc = urllib.parse.urlsplit(server).netloc
        return netloc.rpartition("@")[2] or None  # never a user:password@ part
    return None


def _refused(exc: BaseException | None, text: str) -> bool:
    seen: BaseException | None = exc
    for _ in range(4):  # urllib3 raises NewConnectionError from the socket's ConnectionRefusedError
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return True
        seen = seen.__cause__ or seen.__context__
    return f"[Errno {errno.ECONNREFUSED}]" in text or "connection refused" in text.lower()


def _where(server: str | None) -> str:
    return f"the kubeconfig's server address ({server})" if server else "the kubeconfig's server address"


def _refused_problem(address: str, server: str | None) -> tuple[str, str]:
    return (
        f"connection refused by {address}",
        f"nothing accepts connections there: check {_where(server)} and that the API server is running; "
        "retrying is safe",
    )


def _connection_problem(exc: BaseException, text: str, address: str, server: str | None) -> tuple[str, str | None]:
    """What went wrong with the connection, in words that match it, and the fix when there is a better one.

    Order matters: urllib3's ``NewConnectionError`` (refused, unreachable) subclasses its
    ``ConnectTimeoutError``, so a refused connection must be recognised before any timeout.
    """
    where = _where(server)
    if _refused(exc, text):
        return _refused_problem(address, server)
    if isinstance(exc, urllib3.exceptions.NameResolutionError | socket.gaierror):
        return (
            f"cannot resolve the host of {address}",
            f"check {where} and this machine's DNS; retrying is safe",
        )
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"cannot connect to {address}", f"check {where} and the route to it; retrying is safe"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return (
            f"timed out connecting to {address}",
            f"check {where} and that no firewall drops packets to it; retrying is safe",
        )
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return f"timed out waiting for {address}", None
    if isinstance(exc, urllib3.exceptions.ProtocolError | ConnectionError):
        return f"connection to {address} broken", None
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
        return f"TLS handshake with {address} failed", None
    return f"connection problem with {address}", None


def _strip_object_reprs(text: str) -> str:
    """``<urllib3.connection.HTTPSConnection object at 0x7f…>: `` says nothing to a reader, and the
    ``HTTPSConnection(host=…, port=…): `` prefix repeats the address the message names already."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*", "", text)
    return re.sub(r"HTTPS?Connection(?:Pool)?\(host='[^']*', port=\d+\):\s*", "", text)  # the address is named
