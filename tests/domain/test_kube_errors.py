"""The Kubernetes door: errors the pipeline can act on, kubeconfigs refused early, secrets kept out."""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from clustermesh.errors import (
    AlreadyExistsError,
    ClusterMeshError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    KkpClusterNotFoundError,
    KkpTransientError,
    KkpUnauthorizedError,
    KubeApiError,
    KubeconfigError,
    NotFoundError,
    TLSVerificationError,
    TransientKubeError,
    UnauthorizedError,
    WaitTimeoutError,
)
from clustermesh.kube import ClusterClient
from clustermesh.kube.api_errors import Redactor, is_transient, translate_error
from clustermesh.kube.credentials import open_cluster
from clustermesh.kube.waiting import describe_object, wait_for
from clustermesh.spec import ClusterSpec
from sandbox.pki import issue, make_ca

TOKEN = "sha256~Zk3rT0pS3cr3tT0k3nValueThatMustNeverLeak"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06YWRtaW4ifQ.c2lnbmF0dXJlLXBhcnQ"
TARGET = "kube-system/applicationinstallations/cilium"


class FakeResponse:
    """Just enough of a urllib3 response for ApiException(http_resp=…), headers included."""

    def __init__(self, status: int, reason: str, body: dict[str, Any] | str, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.headers = headers


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def api_exception(code: int, reason: str, message: str) -> ApiException:
    headers = {"Authorization": f"Bearer {TOKEN}", "Www-Authenticate": f"Bearer {JWT}", "Audit-Id": "1"}
    return ApiException(http_resp=FakeResponse(code, reason, status_body(code, reason, message), headers))


def translate(exc: BaseException) -> KubeApiError:
    return translate_error(exc, cluster="kkp-a", verb="replace", target=TARGET)


# -- HTTP statuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expected", "transient"),
    [
        (400, "BadRequest", InvalidError, False),
        (401, "Unauthorized", UnauthorizedError, False),
        (403, "Forbidden", ForbiddenError, False),
        (404, "NotFound", NotFoundError, False),
        (409, "Conflict", ConflictError, False),
        (409, "AlreadyExists", AlreadyExistsError, False),
        (410, "Expired", TransientKubeError, True),
        (422, "Invalid", InvalidError, False),
        (429, "TooManyRequests", TransientKubeError, True),
        (500, "InternalError", TransientKubeError, True),
        (503, "ServiceUnavailable", TransientKubeError, True),
        (504, "Timeout", TransientKubeError, True),
    ],
)
def test_each_status_becomes_the_error_that_says_what_to_do(
    code: int, reason: str, expected: type[KubeApiError], transient: bool
) -> None:
    error = translate(api_exception(code, reason, f"the server says {code}"))
    assert type(error) is expected
    assert error.status == code
    assert error.reason == reason
    assert is_transient(error) is transient


def test_an_unexpected_status_is_a_plain_kube_api_error_and_not_retried() -> None:
    error = translate(api_exception(405, "MethodNotAllowed", "no"))
    assert type(error) is KubeApiError
    assert not is_transient(error)


def test_message_names_cluster_verb_object_and_the_api_status_message() -> None:
    message = (
        'Operation cannot be fulfilled on applicationinstallations.apps.kubermatic.k8c.io "cilium": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    error = translate(api_exception(409, "Conflict", message))
    text = str(error)
    assert "'kkp-a'" in text
    assert f"replace {TARGET}" in text
    assert "HTTP 409 Conflict" in text
    assert message in text
    assert "read the object again" in text
    assert isinstance(error, ClusterMeshError)


def test_header_values_never_reach_the_message() -> None:
    for code, reason in [(401, "Unauthorized"), (403, "Forbidden"), (500, "InternalError")]:
        text = str(translate(api_exception(code, reason, "denied")))
        assert TOKEN not in text
        assert JWT not in text
        assert "Audit-Id" not in text


def test_token_echoed_in_a_body_is_struck_out() -> None:
    error = translate(api_exception(401, "Unauthorized", f"token Bearer {TOKEN} rejected; jwt {JWT}"))
    text = str(error)
    assert TOKEN not in text
    assert JWT not in text
    assert "[redacted]" in text


def test_forbidden_and_unauthorized_say_which_credentials_to_check() -> None:
    creds = "kubeconfig user 'admin' (context 'kkp-a')"
    forbidden = translate_error(
        api_exception(403, "Forbidden", "nope"),
        cluster="kkp-a",
        verb="get",
        target="kube-system/secrets/x",
        credentials=creds,
    )
    unauthorized = translate_error(
        api_exception(401, "Unauthorized", "Unauthorized"),
        cluster="kkp-a",
        verb="get",
        target="/version",
        credentials=creds,
    )
    assert creds in str(forbidden) and "RBAC" in str(forbidden)
    assert creds in str(unauthorized) and "token or client certificate" in str(unauthorized)


def test_a_non_json_body_is_cut_short() -> None:
    page = "<html>" + "proxy error " * 200 + "</html>"
    exc = ApiException(http_resp=FakeResponse(502, "Bad Gateway", page, {}))
    error = translate(exc)
    assert isinstance(error, TransientKubeError)
    assert len(error.problem) <= 200
    assert error.problem.startswith("<html>proxy error")


def test_a_refused_exec_handshake_keeps_status_and_message_but_not_headers() -> None:
    body = json.dumps(status_body(403, "Forbidden", 'pods "cilium-x" is forbidden: cannot create pods/exec')).encode()
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    exc = ApiException(status=0, reason=f"Handshake status 403 Forbidden -+-+- {headers} -+-+- {body!r}")
    error = translate_error(exc, cluster="kkp-a", verb="exec", target="kube-system/pods/cilium-x/exec")
    assert isinstance(error, ForbiddenError)
    assert error.status == 403
    assert 'pods "cilium-x" is forbidden' in str(error)
    assert TOKEN not in str(error)
    assert "content-type" not in str(error)


# -- connection, timeout and TLS failures ----------------------------------------------------------


def _connection_refused() -> BaseException:
    message = "Failed to establish a new connection: [Errno 111] refused"
    return urllib3.exceptions.NewConnectionError(None, message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        _connection_refused(),
        urllib3.exceptions.MaxRetryError(None, "/version", _connection_refused()),  # type: ignore[arg-type]
        urllib3.exceptions.ReadTimeoutError(None, "/version", "Read timed out. (read timeout=5)"),  # type: ignore[arg-type]
        urllib3.exceptions.ConnectTimeoutError("timed out"),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ApiException(status=0, reason="[Errno 111] Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_failures_and_timeouts_are_transient(exc: BaseException) -> None:
    error = translate(exc)
    assert isinstance(error, TransientKubeError)
    assert "object at 0x" not in str(error)
    assert is_transient(exc)


def test_a_certificate_that_does_not_verify_is_not_retried() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    wrapped = urllib3.exceptions.MaxRetryError(None, "/version", urllib3.exceptions.SSLError(cause))  # type: ignore[arg-type]
    error = translate(wrapped)
    assert isinstance(error, TLSVerificationError)
    assert "certificate-authority-data" in str(error)
    assert not is_transient(wrapped)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientKubeError("c", "get", "x", "p"), True),
        (ConflictError("c", "replace", "x", "p"), False),
        (NotFoundError("c", "get", "x", "p"), False),
        (InvalidError("c", "replace", "x", "p"), False),
        (ForbiddenError("c", "get", "x", "p"), False),
        (UnauthorizedError("c", "get", "x", "p"), False),
        (TLSVerificationError("c", "get", "x", "p"), False),
        (api_exception(503, "ServiceUnavailable", "x"), True),
        (api_exception(429, "TooManyRequests", "x"), True),
        (api_exception(409, "Conflict", "x"), False),
        (api_exception(404, "NotFound", "x"), False),
        (ValueError("not ours to retry"), False),
        (KeyError("bug"), False),
        (FileNotFoundError(2, "no such file: client.key"), False),
        (WaitTimeoutError("c", "x", "y", timeout=1, check="z"), False),
        # opening a KKP-referenced cluster asks KKP for its kubeconfig first: a 503 there is worth a retry
        (KkpTransientError("p", "c", "Service Unavailable", status=503), True),
        (KkpUnauthorizedError("p", "c", "invalid bearer token", status=401), False),
        (KkpClusterNotFoundError("p", "c", "not found", status=404), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_transient_truth_table(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    "error",
    [
        ConflictError("kkp-a", "replace", TARGET, "modified", status=409, reason="Conflict"),
        TransientKubeError("kkp-a", "get", "/version", "timed out"),
        KubeconfigError("kkp-a", "there is no context 'x'", fix="use 'a'"),
        WaitTimeoutError("kkp-a", "Ready", "Ready=False", timeout=5, check="the AI's status"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error: ClusterMeshError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


# -- kubeconfigs -----------------------------------------------------------------------------------


def kubeconfig(
    *,
    server: str = "https://127.0.0.1:6443",
    cluster_extra: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    current: str | None = "kkp-a",
) -> str:
    cluster = {"server": server, "certificate-authority-data": base64.b64encode(b"not really a CA").decode()}
    cluster.update(cluster_extra or {})
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "a", "cluster": cluster}, {"name": "b", "cluster": dict(cluster)}],
        "users": [{"name": "admin", "user": user if user is not None else {"token": TOKEN}}],
        "contexts": [
            {"name": "kkp-a", "context": {"cluster": "a", "user": "admin"}},
            {"name": "kkp-b", "context": {"cluster": "b", "user": "admin"}},
        ],
    }
    if current is not None:
        config["current-context"] = current
    return yaml.safe_dump(config)


def test_an_unknown_context_is_refused_listing_the_available_ones() -> None:
    with pytest.raises(KubeconfigError) as info:
        ClusterClient.from_kubeconfig_text(kubeconfig(), context="kkp-c", cluster_name="mesh-1", request_timeout=5)
    text = str(info.value)
    assert "'kkp-c'" in text
    assert "'kkp-a'" in text and "'kkp-b'" in text
    assert "mesh-1" in text
    assert TOKEN not in text


def test_without_context_or_current_context_the_available_ones_are_listed() -> None:
    with pytest.raises(KubeconfigError, match="no current-context.*'kkp-a', 'kkp-b'"):
        ClusterClient.from_kubeconfig_text(kubeconfig(current=None), context=None, cluster_name="m", request_timeout=5)


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_insecure_skip_tls_verify_is_refused(flag: object) -> None:
    text = kubeconfig(cluster_extra={"insecure-skip-tls-verify": flag})
    with pytest.raises(KubeconfigError, match="insecure-skip-tls-verify") as info:
        ClusterClient.from_kubeconfig_text(text, context="kkp-a", cluster_name="m", request_timeout=5)
    assert "always verifies TLS" in str(info.value)


def test_insecure_flag_on_an_unused_cluster_does_not_matter() -> None:
    config = yaml.safe_load(kubeconfig())
    config["clusters"][1]["cluster"]["insecure-skip-tls-verify"] = True
    with ClusterClient.from_kubeconfig_text(
        yaml.safe_dump(config), context="kkp-a", cluster_name="m", request_timeout=5
    ) as cluster:
        assert cluster.server == "https://127.0.0.1:6443"


def test_a_plain_http_server_is_refused() -> None:
    with pytest.raises(KubeconfigError, match="not https"):
        ClusterClient.from_kubeconfig_text(
            kubeconfig(server="http://127.0.0.1:8080"), context=None, cluster_name="m", request_timeout=5
        )


def test_a_configuration_without_tls_verification_is_refused() -> None:
    configuration = k8s.Configuration(host="https://127.0.0.1:6443")
    configuration.verify_ssl = False
    with pytest.raises(KubeconfigError, match="TLS verification off"):
        ClusterClient(configuration, cluster_name="m")


def test_broken_yaml_is_reported_by_position_without_quoting_the_line() -> None:
    text = f"users:\n- name: admin\n  user:\n    token: {TOKEN}\n   bad: [\n"
    with pytest.raises(KubeconfigError, match="not valid YAML at line") as info:
        ClusterClient.from_kubeconfig_text(text, context=None, cluster_name="m", request_timeout=5)
    assert TOKEN not in str(info.value)


def test_a_context_naming_a_missing_user_is_refused() -> None:
    config = yaml.safe_load(kubeconfig())
    config["contexts"][0]["context"]["user"] = "ghost"
    with pytest.raises(KubeconfigError, match="user 'ghost'.*defined users: admin"):
        ClusterClient.from_kubeconfig_text(yaml.safe_dump(config), context="kkp-a", cluster_name="m", request_timeout=5)


@pytest.mark.skipif(not hasattr(__import__("os"), "memfd_create"), reason="memfd is Linux-only")
def test_key_and_certificate_data_stay_in_memory() -> None:
    key = b"-----BEGIN EC PRIVATE KEY-----\nsecret key bytes\n-----END EC PRIVATE KEY-----\n"
    user = {
        "client-certificate-data": base64.b64encode(b"cert").decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    temp_files_before = dict(kube_config._temp_files)
    with ClusterClient.from_kubeconfig_text(
        kubeconfig(user=user), context="kkp-a", cluster_name="m", request_timeout=5
    ) as cluster:
        configuration = cluster._configuration
        assert str(configuration.key_file).startswith("/proc/self/fd/")
        with open(str(configuration.key_file), "rb") as handle:
            assert handle.read() == key
        assert str(configuration.ssl_ca_cert).startswith("/proc/self/fd/")
        assert configuration.verify_ssl is True
    assert kube_config._temp_files == temp_files_before  # the loader wrote nothing to disk


def test_invalid_base64_names_the_field_not_the_value() -> None:
    user = {"client-key-data": "%%%" + TOKEN, "client-certificate-data": base64.b64encode(b"c").decode()}
    with pytest.raises(KubeconfigError, match="client-key-data is not valid base64") as info:
        ClusterClient.from_kubeconfig_text(kubeconfig(user=user), context="kkp-a", cluster_name="m", request_timeout=5)
    assert TOKEN not in str(info.value)


def test_repr_shows_cluster_and_server_only() -> None:
    with ClusterClient.from_kubeconfig_text(kubeconfig(), context=None, cluster_name="m", request_timeout=5) as c:
        assert repr(c) == "ClusterClient(cluster_name='m', server='https://127.0.0.1:6443')"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: connection refused, without any cluster."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


def test_a_call_to_an_unreachable_server_raises_transient_without_the_library_chain(closed_port: int) -> None:
    text = kubeconfig(server=f"https://127.0.0.1:{closed_port}")
    with (
        ClusterClient.from_kubeconfig_text(text, context="kkp-a", cluster_name="mesh-1", request_timeout=2) as c,
        pytest.raises(TransientKubeError) as info,
    ):
        c.version()
    error = info.value
    assert "cluster 'mesh-1': get /version failed" in str(error)
    assert TOKEN not in str(error)
    # the urllib3 error (with its request and connection) is not chained: not hidden, gone
    assert error.__context__ is None and error.__cause__ is None
    assert is_transient(error)


# -- waiting ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_returns_the_value_that_satisfied_the_predicate() -> None:
    clock = FakeClock()
    values = iter([1, 2, 3, 4])
    got = wait_for(
        lambda: next(values),
        lambda v: v >= 3,
        timeout=10,
        expected="3",
        check="x",
        cluster="c",
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == 3
    assert clock.now == 2.0


def test_wait_timeout_says_expected_last_seen_and_what_to_check() -> None:
    clock = FakeClock()
    ai = {
        "kind": "ApplicationInstallation",
        "metadata": {"namespace": "kube-system", "name": "cilium", "generation": 4},
        "status": {"conditions": {"Ready": {"status": "False", "reason": "InstallationFailed"}}},
    }
    with pytest.raises(WaitTimeoutError) as info:
        wait_for(
            lambda: ai,
            lambda _: False,
            timeout=5,
            poll_interval=1,
            cluster="kkp-a",
            expected="cilium Ready with observedGeneration 4",
            check="the AI's status.conditions.Ready.message",
            clock=clock,
            sleep=clock.sleep,
        )
    text = str(info.value)
    assert "after 5s waiting for cilium Ready with observedGeneration 4" in text
    assert "ApplicationInstallation kube-system/cilium, generation 4" in text
    assert "InstallationFailed" in text
    assert "check the AI's status.conditions.Ready.message" in text


def test_wait_rides_over_transient_errors_and_not_found() -> None:
    clock = FakeClock()
    answers: list[Any] = [
        TransientKubeError("c", "get", "x", "connection refused"),
        NotFoundError("c", "get", "kube-system/services/clustermesh-apiserver", "not found"),
        "ready",
    ]

    def read() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    assert (
        wait_for(
            read,
            lambda v: v == "ready",
            timeout=10,
            expected="e",
            check="c",
            cluster="c",
            clock=clock,
            sleep=clock.sleep,
        )
        == "ready"
    )


def test_wait_reports_the_last_transient_error_when_it_never_recovers() -> None:
    clock = FakeClock()

    def read() -> None:
        raise TransientKubeError("c", "get", "x", "connection refused")

    with pytest.raises(WaitTimeoutError, match="last seen: no answer \\(connection refused\\)"):
        wait_for(
            read,
            lambda _: True,
            timeout=3,
            expected="e",
            check="c",
            cluster="c",
            clock=clock,
            sleep=clock.sleep,
        )


def test_wait_stops_at_once_on_an_error_that_will_not_go_away() -> None:
    clock = FakeClock()

    def read() -> None:
        raise ForbiddenError("c", "get", "x", "forbidden")

    with pytest.raises(ForbiddenError):
        wait_for(
            read,
            lambda _: True,
            timeout=60,
            expected="e",
            check="c",
            cluster="c",
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == 0.0


def test_a_secret_is_described_without_its_data() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {"namespace": "kube-system", "name": "cilium-ca"},
        "data": {"ca.key": base64.b64encode(TOKEN.encode()).decode()},
    }
    text = describe_object(secret)
    assert text == "Secret kube-system/cilium-ca"


# -- what an error carries: nothing of the kubeconfig or the answer it came from ------------------


def forms(secret: str) -> dict[str, bytes]:
    """A secret as it could sit in a message, a pickle or a file: UTF-8, UTF-16 both ways, base64."""
    return {
        "utf-8": secret.encode(),
        "utf-16-le": secret.encode("utf-16-le"),
        "utf-16-be": secret.encode("utf-16-be"),
        "base64": base64.b64encode(secret.encode()),
    }


def carried(error: BaseException) -> bytes:
    """Everything an error takes along: its text, its attributes, its chain, its pickle (as Prefect stores it)."""
    import cloudpickle  # type: ignore[import-untyped]

    values: list[object] = [str(error), repr(error), vars(error), pickle.dumps(error), cloudpickle.dumps(error)]
    chained = error.__context__ or error.__cause__
    if chained is not None:
        values += [repr(chained), getattr(chained, "__dict__", {})]
        values.append(getattr(chained, "object", b""))  # UnicodeDecodeError: the whole input
        values.append(getattr(getattr(chained, "problem_mark", None), "buffer", ""))  # PyYAML: the whole buffer
    return b"\n".join(v if isinstance(v, bytes) else repr(v).encode("utf-8", "backslashreplace") for v in values)


def leaks(error: BaseException, secret: str) -> list[str]:
    blob = carried(error)
    return [form for form, needle in forms(secret).items() if needle in blob]


def test_the_carry_search_finds_a_token_held_by_a_chained_decoding_error() -> None:
    """The checks below must be able to fail: the chains Python keeps by itself are searched."""
    raw = f"users:\n- user:\n    token: {TOKEN}\n".encode("utf-16")
    try:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KubeconfigError("m", "not UTF-8", fix="x") from None
    except KubeconfigError as chained:
        assert chained.__context__ is not None, "`from None` hides the context, it does not drop it"
        assert "utf-16-le" in leaks(chained, TOKEN)
    try:
        yaml.safe_load(f"token: {TOKEN}\n bad: [")
    except yaml.YAMLError as exc:
        assert leaks(exc, TOKEN) and "utf-8" in leaks(exc, TOKEN)


def utf16_without_bom(text: str) -> bytes:
    return text.encode("utf-16-le")


@pytest.mark.parametrize(
    ("encode", "words"),
    [
        (lambda t: t.encode("utf-16"), "is UTF-16 (what PowerShell's `>` and Out-File write by default), not UTF-8"),
        (lambda t: t.encode("utf-16-be"), "holds a NUL character at offset 0"),
        (lambda t: b"\xfe\xff" + t.encode("utf-16-be"), "is UTF-16, not UTF-8"),
        (utf16_without_bom, "holds a NUL character at offset 1: it is UTF-16 without a byte-order mark"),
        (lambda t: t.encode("utf-32"), "is UTF-32, not UTF-8"),
        (lambda t: b"\x89PNG" + os.urandom(300) + t.encode(), "is not UTF-8 text: the byte at offset 0"),
        (lambda t: t.encode().replace(b"kind: Config", b"kind: Conf\xefg"), "is not UTF-8 text: the byte at offset"),
    ],
    ids=["utf-16", "utf-16-be-no-bom", "utf-16-be", "utf-16-le-no-bom", "utf-32", "binary", "latin-1"],
)
def test_a_kubeconfig_that_is_not_utf8_is_refused_naming_file_field_and_fix_and_carrying_nothing(
    tmp_path: Path, encode: Callable[[str], bytes], words: str
) -> None:
    path = tmp_path / "cluster.kubeconfig"
    path.write_bytes(encode(kubeconfig()))
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"path": str(path)}})
    with pytest.raises(KubeconfigError) as info:
        open_cluster(cluster)
    error = info.value
    text = str(error)
    assert text.startswith("kubeconfig for cluster 'mesh-2': "), text
    assert f"kubeconfig file {path} (clusters[].kubeconfig.path) {words}" in text, text
    assert text.endswith("— save the kubeconfig as UTF-8 (PowerShell: Out-File -Encoding utf8)"), text
    assert error.__context__ is None and error.__cause__ is None
    assert leaks(error, TOKEN) == []
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == text and copy.__context__ is None


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "with-bom"])
def test_a_utf8_kubeconfig_is_read_with_or_without_a_byte_order_mark(tmp_path: Path, bom: bytes) -> None:
    """PowerShell 5's ``Out-File -Encoding utf8`` writes a BOM: the fix we give must then work."""
    path = tmp_path / "cluster.kubeconfig"
    path.write_bytes(bom + kubeconfig().encode())
    with ClusterClient.from_kubeconfig_file(path, context="kkp-a", cluster_name="m", request_timeout=5) as client:
        assert client.server == "https://127.0.0.1:6443"


def test_text_with_nul_characters_from_a_secret_block_names_the_block() -> None:
    text = kubeconfig().encode("utf-16-le").decode("latin-1")  # UTF-16 read as a one-byte encoding
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"secret_block": "kc-mesh-2"}})
    with pytest.raises(KubeconfigError) as info:
        open_cluster(cluster, load_secret=lambda name: text)
    message = str(info.value)
    assert "Prefect Secret block 'kc-mesh-2' (clusters[].kubeconfig.secret_block) holds a NUL character" in message
    assert "save the kubeconfig as UTF-8" in message
    assert info.value.__context__ is None
    assert leaks(info.value, TOKEN) == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"users:\n- name: admin\n  user:\n    token: {TOKEN}\n   bad: [\n", "at line 5, column 4"),
        (f"users: [{{token: {TOKEN}}}\n", "at line 2, column 1"),
        (f'{{"users": [{{"token": "{TOKEN}"}}\n', "at line 2, column 1"),  # JSON is YAML: same parser, same rule
        (f"token: {TOKEN}\x01\n", "at character"),
        (f"token: {TOKEN}\nissued: 2024-02-30\n", ""),  # the constructor's ValueError, not a YAMLError
    ],
    ids=["indentation", "flow", "json", "control-character", "impossible-date"],
)
def test_broken_yaml_is_refused_by_position_without_the_buffer_the_parser_keeps(text: str, where: str) -> None:
    with pytest.raises(KubeconfigError) as info:
        ClusterClient.from_kubeconfig_text(text, context=None, cluster_name="m", request_timeout=5)
    error = info.value
    assert f"the kubeconfig text is not valid YAML{' ' + where if where else ''}" in str(error)
    assert error.__context__ is None and error.__cause__ is None  # MarkedYAMLError.problem_mark.buffer: all of it
    assert leaks(error, TOKEN) == []


def test_invalid_base64_and_loader_errors_chain_nothing() -> None:
    user = {"client-key-data": "%%%" + TOKEN, "client-certificate-data": base64.b64encode(b"c").decode()}
    with pytest.raises(KubeconfigError) as info:
        ClusterClient.from_kubeconfig_text(kubeconfig(user=user), context="kkp-a", cluster_name="m", request_timeout=5)
    assert info.value.__context__ is None and leaks(info.value, TOKEN) == []
    user = {"tokenFile": f"/no/such/{TOKEN}"}  # the loader's message quotes the path: struck out by value
    with pytest.raises(KubeconfigError, match="cannot be loaded: .*redacted") as info:
        ClusterClient.from_kubeconfig_text(kubeconfig(user=user), context="kkp-a", cluster_name="m", request_timeout=5)
    assert info.value.__context__ is None and leaks(info.value, TOKEN) == []


# -- a kubeconfig path that names the wrong thing --------------------------------------------------


def test_a_directory_given_as_kubeconfig_path_says_so_and_names_the_field_and_the_file_inside(tmp_path: Path) -> None:
    folder = tmp_path / "kubeconfigs"
    folder.mkdir()
    (folder / "mesh-2.kubeconfig").write_text(kubeconfig())
    (folder / "notes.txt").write_text("not a kubeconfig")
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"path": str(folder)}})
    with pytest.raises(KubeconfigError) as info:
        open_cluster(cluster)
    text = str(info.value)
    assert f"kubeconfig file {folder} (clusters[].kubeconfig.path) is a directory, not a kubeconfig file" in text
    assert "set clusters[].kubeconfig.path in the spec to the kubeconfig file itself, not its folder" in text
    assert f"(in that folder: {folder / 'mesh-2.kubeconfig'})" in text, text
    assert "does not exist" not in text and "permission" not in text.lower()


def test_an_env_var_naming_a_directory_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG_MESH_2", str(tmp_path))
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"env": "KUBECONFIG_MESH_2"}})
    with pytest.raises(KubeconfigError) as info:
        open_cluster(cluster)
    text = str(info.value)
    assert "named by environment variable KUBECONFIG_MESH_2 (clusters[].kubeconfig.env) is a directory" in text
    assert "export KUBECONFIG_MESH_2=<path of the kubeconfig file itself>" in text


def test_a_missing_kubeconfig_file_says_it_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.kubeconfig"
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"path": str(missing)}})
    with pytest.raises(KubeconfigError, match=r"\(clusters\[\]\.kubeconfig\.path\) does not exist — set clusters"):
        open_cluster(cluster)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no permission error to provoke")
def test_an_unreadable_kubeconfig_file_says_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.kubeconfig"
    path.write_text(kubeconfig())
    path.chmod(0)
    cluster = ClusterSpec.model_validate({"name": "mesh-2", "id": 2, "kubeconfig": {"path": str(path)}})
    with pytest.raises(KubeconfigError, match="cannot be read: permission denied"):
        open_cluster(cluster)


# -- connection failures, in words that match them -------------------------------------------------


def test_a_refused_connection_says_refused_with_the_address_and_the_fix_not_timed_out(closed_port: int) -> None:
    text = kubeconfig(server=f"https://127.0.0.1:{closed_port}")
    with (
        ClusterClient.from_kubeconfig_text(text, context="kkp-a", cluster_name="mesh-1", request_timeout=2) as c,
        pytest.raises(TransientKubeError) as info,
    ):
        c.version()
    message = str(info.value)
    assert f"get /version failed: connection refused by 127.0.0.1:{closed_port}" in message, message
    assert "timed out" not in message and "HTTPSConnection(" not in message, message
    assert f"check the kubeconfig's server address (https://127.0.0.1:{closed_port})" in message, message
    assert "API server is running" in message


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (_connection_refused(), "connection refused by the API server"),
        (urllib3.exceptions.ConnectTimeoutError(None, "Connection to 10.0.0.1 timed out"), "timed out connecting"),
        (urllib3.exceptions.ReadTimeoutError(None, "/version", "Read timed out."), "timed out waiting"),  # type: ignore[arg-type]
        (urllib3.exceptions.NameResolutionError("kkp.invalid", None, socket.gaierror(-2, "unknown")), "cannot resolve"),  # type: ignore[arg-type]
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ApiException(status=0, reason="[Errno 111] Connection refused"), "connection refused"),
        (ConnectionResetError(104, "reset by peer"), "broken"),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "dns", "refused-socket", "refused-exec", "reset"],
)
def test_each_connection_failure_is_named_for_what_it_is(exc: BaseException, words: str) -> None:
    error = translate(exc)
    assert isinstance(error, TransientKubeError)
    assert words in str(error), str(error)
    if "timed out" not in words:
        assert "timed out" not in str(error), str(error)


# -- HTTP error bodies: what the server sends back is redacted before it is cut --------------------


def test_a_token_at_the_cut_of_a_status_message_leaves_no_part_behind() -> None:
    redact = Redactor([TOKEN])
    for room in range(990, 1001):
        exc = api_exception(422, "Invalid", "x" * room + TOKEN + " rejected")
        error = translate_error(exc, cluster="kkp-a", verb="replace", target=TARGET, redact=redact)
        assert TOKEN[:8] not in str(error), f"{room}: {error}"


def test_a_token_at_the_cut_of_a_page_leaves_no_part_behind() -> None:
    redact = Redactor([TOKEN])
    for room in range(190, 201):
        page = "<html>" + "e" * (room - 6) + TOKEN + "</html>"
        exc = ApiException(http_resp=FakeResponse(502, "Bad Gateway", page, {}))
        error = translate_error(exc, cluster="kkp-a", verb="get", target=TARGET, redact=redact)
        assert TOKEN[:8] not in str(error), f"{room}: {error}"


def test_a_private_key_quoted_back_by_a_webhook_is_struck_out_as_pem_and_as_base64() -> None:
    key = make_ca("webhook-echo").key_pem.decode()
    stored = base64.b64encode(key.encode()).decode()
    values = json.dumps({"clustermesh": {"apiserver": {"tls": {"ca": {"key": stored}}}}})
    for message in (
        f"admission webhook denied: spec.values: Invalid value: {values}",
        f"admission webhook denied: key {key}",
        f"admission webhook denied: key {key[:300]}",  # cut short by someone before us
    ):
        error = translate(api_exception(422, "Invalid", message))
        body = [line for line in key.splitlines() if "-----" not in line]
        assert not any(line[:20] in str(error) for line in body), str(error)
        assert stored[:40] not in str(error)
        assert "admission webhook denied" in str(error)


def test_a_certificate_failure_from_a_real_handshake_names_the_ca_and_carries_no_token(tmp_path: Path) -> None:
    """TLS errors come from ssl: the text names the failure, never the request's token."""
    with https_server(lambda path: (200, b"{}")) as url:
        other_ca = base64.b64encode(make_ca("not-the-servers-ca").cert_pem).decode()
        text = kubeconfig(server=url).replace(base64.b64encode(b"not really a CA").decode(), other_ca)
        with (
            ClusterClient.from_kubeconfig_text(text, context="kkp-a", cluster_name="m", request_timeout=5) as c,
            pytest.raises(TLSVerificationError) as info,
        ):
            c.version()
    assert "certificate verify failed" in str(info.value).lower()
    assert info.value.__context__ is None and leaks(info.value, TOKEN) == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, f"<html>login page for token {TOKEN}</html>".encode(), KubeApiError),  # not JSON: a proxy's page
        (500, f"<html>upstream said: Authorization: Bearer {TOKEN}</html>".encode(), TransientKubeError),
        (422, json.dumps(status_body(422, "Invalid", f"token {TOKEN} is not allowed here")).encode(), InvalidError),
        (401, f"{TOKEN}".encode(), UnauthorizedError),
    ],
    ids=["not-json", "html-500", "status-422", "bare-401"],
)
def test_answers_of_a_real_https_server_reach_our_error_without_the_token(
    status: int, body: bytes, expected: type[KubeApiError]
) -> None:
    with (
        https_server(lambda path: (status, body)) as url,
        ClusterClient.from_kubeconfig_text(trusting(url), context="kkp-a", cluster_name="m", request_timeout=5) as c,
        pytest.raises(KubeApiError) as info,
    ):
        c.get_secret("kube-system", "cilium-ca")
    error = info.value
    assert type(error) is expected, repr(error)
    assert error.__context__ is None and error.__cause__ is None
    assert leaks(error, TOKEN) == [], str(error)


_SERVER_CA: Any = None


def server_ca() -> Any:
    global _SERVER_CA
    if _SERVER_CA is None:
        ca = make_ca("kube-errors-test-ca")
        _SERVER_CA = (ca, issue(ca, "kube-apiserver", ip_addresses=("127.0.0.1",), client=False))
    return _SERVER_CA


@contextmanager
def https_server(answer: Callable[[str], tuple[int, bytes]]) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 that answers every GET with ``answer(path)``; yields its URL."""
    import http.server
    import tempfile
    import threading

    _, serving = server_ca()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tls.crt").write_bytes(serving.cert_pem)
        (Path(folder) / "tls.key").write_bytes(serving.key_pem)
        context.load_cert_chain(Path(folder) / "tls.crt", Path(folder) / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def trusting(url: str) -> str:
    """A kubeconfig for ``url`` that trusts the test server's CA."""
    ca, _ = server_ca()
    return kubeconfig(server=url).replace(
        base64.b64encode(b"not really a CA").decode(), base64.b64encode(ca.cert_pem).decode()
    )
