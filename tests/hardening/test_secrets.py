"""Secrets stay secret (DESIGN.md): nothing the sandbox issued may surface anywhere a run leaves traces.

The pipeline runs for real: sandbox clusters behind the real Kubernetes API, a temporary Prefect server
whose SQLite database and result storage (PREFECT_HOME, a temp dir of this module) are searched
afterwards, and the Slack-compatible test server, whose raw request bodies are searched too. The secrets
are read from the clusters with the official ``kubernetes`` client after the run, so a key copied between
clusters (Cilium 1.13's shared CA) is looked for in every form it could take.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import time
import traceback
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet, InvalidToken
from kubernetes import client as k8s

from clustermesh.certs import key_matches, load_cert, load_private_key
from clustermesh.errors import KubeconfigError, TLSVerificationError
from clustermesh.kube import ClusterClient
from clustermesh.kube.credentials import open_cluster
from clustermesh.spec import ClusterSpec, MeshSpec, load_spec
from clustermesh.steps.models import MeshEndpoint
from flows.failover_drill import failover_drill
from flows.mesh_setup import SetupResult, cluster_mesh_setup
from flows.mesh_verify import VerificationResult, nightly_mesh_verification
from tasks.results import RESULT_KEY_ENV, FernetPickleSerializer, ResultKeyError, caching_enabled, result_key
from tests.conftest import kube_client
from tests.helpers import prefect_test_server
from tests.slack_server import SlackTestServer

ROOT = Path(__file__).resolve().parents[2]
NS = "kube-system"
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")
KEY_FIELDS = ("tls.key", "ca.key")
REMOTE_CERT = "clustermesh-apiserver-remote-cert"
WAIT_FOR_SERVER = 60.0  # seconds the Prefect server gets to store the last logs and events


# ------------------------------------------------------------------------------------------ Prefect


@dataclass(frozen=True)
class PrefectPlace:
    """Where the module's Prefect server keeps things: PREFECT_HOME (result storage) and its database."""

    home: Path
    db: Path


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectPlace]:
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_test_server(home):
        # The events worker is one per process and keeps the server it first connected to: after a harness
        # of another test module (tests/flows) it would send this module's events (and so its task run
        # states) to that server. Stopped here, the next event starts a worker for this server.
        EventsWorker.drain_all()
        url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
        assert url.startswith("sqlite"), url
        yield PrefectPlace(home=home, db=Path(url.split("///", 1)[1]))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack and the result key come from each test, never from the developer's shell."""
    for name in (*SLACK_ENV, RESULT_KEY_ENV):
        monkeypatch.delenv(name, raising=False)


def db_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql, args))


def wait_until_stored(db: Path, flow_run_id: Any, event: str) -> None:
    """Logs and events reach the database in batches: wait until the last run's end and ``event`` are in."""
    deadline = time.monotonic() + WAIT_FOR_SERVER
    seen: tuple[int, int] = (0, 0)
    while time.monotonic() < deadline:
        seen = (
            db_rows(
                db,
                "SELECT count(*) FROM log WHERE flow_run_id = ? AND task_run_id IS NULL "
                "AND message LIKE 'Finished in state%'",
                str(flow_run_id),
            )[0][0],
            db_rows(db, "SELECT count(*) FROM events WHERE event = ?", event)[0][0],
        )
        if all(seen):
            return
        time.sleep(0.5)
    raise AssertionError(
        f"after {WAIT_FOR_SERVER:g}s the database holds (final log, {event} events) = {seen}: "
        "the search below would miss what the server had not stored yet"
    )


TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def task_runs(db: Path, flow_run_id: Any, names: list[str]) -> dict[str, tuple[int, str, str]]:
    """{task run name: (run_count, state type, state message)} of one flow run, once ``names`` have ended.

    Task run states reach the database through events (asynchronously), so this waits for them.
    """
    deadline = time.monotonic() + WAIT_FOR_SERVER
    runs: dict[str, tuple[int, str, str]] = {}
    while time.monotonic() < deadline:
        rows = db_rows(
            db,
            "SELECT t.name, t.run_count, t.state_type, s.message FROM task_run t "
            "LEFT JOIN task_run_state s ON s.id = t.state_id WHERE t.flow_run_id = ?",
            str(flow_run_id),
        )
        runs = {name: (count, str(state), message or "") for name, count, state, message in rows}
        if all(runs.get(name, (0, "", ""))[1] in TERMINAL for name in names):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"task runs {names} did not end in the database within {WAIT_FOR_SERVER:g}s: {runs}")


# ----------------------------------------------------------------------------- secrets and places


def pem_forms(stored: str) -> dict[str, bytes]:
    """A key as a Secret stores it (base64), as PEM, as each base64 body line of the PEM, and as DER."""
    pem = base64.b64decode(stored).decode()
    body = [line.strip() for line in pem.splitlines() if line.strip() and "-----" not in line]
    forms = {"base64": stored.encode(), "pem": pem.encode(), "pem (\\n escaped)": pem.replace("\n", "\\n").encode()}
    forms.update({f"pem line {i}": line.encode() for i, line in enumerate(body) if len(line) >= 24})
    forms["der"] = base64.b64decode("".join(body))
    return forms


def cluster_keys(sb: Any) -> dict[str, str]:
    """Every private key in kube-system of every cluster, as stored: {"cluster/secret/field": base64}.

    Read with the official client after the run, so keys the pipeline copied between clusters are included.
    """
    keys: dict[str, str] = {}
    for kubeconfig in sorted(Path(sb.directory).glob("*.kubeconfig")):
        api = kube_client(kubeconfig)
        try:
            for secret in k8s.CoreV1Api(api).list_namespaced_secret(NS).items:
                for field, value in (secret.data or {}).items():
                    if value and (field in KEY_FIELDS or field.endswith(".key")):
                        keys[f"{kubeconfig.stem}/{secret.metadata.name}/{field}"] = value
        finally:
            api.close()
    return keys


def bearer_tokens(sb: Any) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for kubeconfig in sorted(Path(sb.directory).glob("*.kubeconfig")):
        for user in yaml.safe_load(kubeconfig.read_text()).get("users") or []:
            token = (user.get("user") or {}).get("token")
            if token:
                tokens[f"bearer token of {kubeconfig.stem}"] = str(token)
    return tokens


def sandbox_secrets(sb: Any, slack_token: str | None, fernet_key: str | None) -> dict[str, bytes]:
    """Every secret of a run, labelled: keys of every kube-system Secret, bearer tokens, Fernet key, Slack token."""
    needles = {label: token.encode() for label, token in bearer_tokens(sb).items()}
    for label, value in cluster_keys(sb).items():
        needles.update({f"{label} ({form})": needle for form, needle in pem_forms(value).items()})
    if fernet_key:
        needles["Fernet key"] = fernet_key.encode()
        needles["Fernet key (raw)"] = base64.urlsafe_b64decode(fernet_key)
    if slack_token:
        needles["Slack token"] = slack_token.encode()
    needles["sandbox control token"] = str(sb.control_token).encode()
    return needles


_BASE64_RUN = re.compile(rb"(?:[A-Za-z0-9+/_-]{16,}={0,2}[\r\n]*){4,}")  # one line or MIME-wrapped lines


def expanded(blob: bytes, depth: int = 2) -> list[bytes]:
    """The blob plus what it might wrap: JSON/URL escapes undone, base64 runs decoded (and decompressed).

    ``depth`` levels deep: a pickle in base64 holding a PEM in base64 is opened down to the PEM.
    """
    out = [blob, blob.replace(b"\\/", b"/"), blob.replace(b"\\n", b"\n")]
    text = blob.decode("utf-8", "replace")
    for unquote in (urllib.parse.unquote, urllib.parse.unquote_plus):
        unquoted = unquote(text)
        if unquoted != text:
            out.append(unquoted.encode())
    for match in _BASE64_RUN.finditer(blob):
        run = re.sub(rb"\s", b"", match.group(0))
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = decode(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            inner = [decoded]
            for decompress in (zlib.decompress, bz2.decompress):
                with contextlib.suppress(zlib.error, OSError, ValueError):
                    inner.append(decompress(decoded))
            for item in inner:
                out.extend(expanded(item, depth - 1) if depth > 1 else [item])
    return out


def find_leaks(needles: dict[str, bytes], places: dict[str, bytes]) -> list[str]:
    """ "<secret label> in <place>" for every secret found anywhere (the secret itself is never shown)."""
    found: list[str] = []
    for place, blob in places.items():
        variants = expanded(blob)
        for label, needle in needles.items():
            if any(needle in variant for variant in variants):
                found.append(f"{label} in {place}")
    return found


def database_places(db: Path) -> dict[str, bytes]:
    """Every column of every table of the Prefect database (text and blobs), plus the raw files."""
    places: dict[str, bytes] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                values = [r[0] for r in conn.execute(f'SELECT "{column}" FROM "{table}"') if r[0] is not None]
                blob = b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in values)
                if blob:
                    places[f"database {table}.{column}"] = blob
    for path in sorted(db.parent.glob(db.name + "*")):
        places[f"database file {path.name}"] = path.read_bytes()
    return places


def file_places(root: Path) -> dict[str, bytes]:
    return {f"file {p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def result_records(storage: Path) -> dict[Path, dict[str, Any]]:
    """Prefect's result records in ``storage`` (JSON: metadata + serialized result) by path."""
    records: dict[Path, dict[str, Any]] = {}
    for path in sorted(storage.rglob("*")):
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(record, dict) and "metadata" in record and "result" in record:
            records[path] = record
    return records


def test_the_leak_search_finds_a_key_in_each_form_it_looks_for() -> None:
    """The search below must be able to fail: a key hidden in pickles, JSON, URL forms or base64 is found."""
    import pickle

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    stored = base64.b64encode(pem.encode()).decode()
    needles = {f"key ({form})": needle for form, needle in pem_forms(stored).items()}
    line = pem.splitlines()[1]
    places = {
        "json": json.dumps({"pem": pem}).encode(),
        "url-encoded form": urllib.parse.urlencode({"text": stored}).encode(),
        "base64 pickle": base64.b64encode(pickle.dumps({"k": stored})),
        "wrapped base64 pickle": base64.encodebytes(pickle.dumps(stored)),
        "compressed": base64.b64encode(zlib.compress(pem.encode())),
        "one line": f"log: {line}".encode(),
        "clean": b"sha256:" + b"0" * 64,
    }
    leaks = find_leaks(needles, places)
    assert {leak.rsplit(" in ", 1)[1] for leak in leaks} == set(places) - {"clean"}


# ----------------------------------------------------------------------------------- 1. no leaks


@pytest.mark.parametrize("cilium", ["1.13", "1.16"])
def test_no_secret_of_the_sandbox_is_left_anywhere_after_setup_nightly_and_drill(
    cilium: str,
    prefect: PrefectPlace,
    sandbox_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="prefect")
    fernet_key = Fernet.generate_key().decode()
    monkeypatch.setenv(RESULT_KEY_ENV, fernet_key)
    sb = sandbox_factory(cilium_version=cilium)
    spec = load_spec(Path(sb.directory) / "mesh.yaml")
    storage = prefect.home / "storage"
    before = set(result_records(storage))

    with SlackTestServer(token=f"xoxb-{secrets.token_hex(12)}-{secrets.token_urlsafe(18)}") as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", slack.url)
        outcomes: list[object] = []
        errors: list[str] = []
        for name, run in (
            ("setup", lambda: cluster_mesh_setup(spec, return_state=True)),
            ("nightly", lambda: nightly_mesh_verification(spec, run_drill=True, return_state=True)),
            ("drill", lambda: failover_drill(spec, return_state=True)),
        ):
            state = run()
            outcome = state.result(raise_on_failure=False)
            if isinstance(outcome, BaseException):
                errors.append(f"{name}: " + "".join(traceback.format_exception(outcome)))
            else:
                outcomes.append(outcome)
        slack_bodies = {f"slack request {i} {r['path']}": r["raw"].encode() for i, r in enumerate(slack.requests)}
    wait_until_stored(prefect.db, state.state_details.flow_run_id, "clustermesh.mesh.verified")
    out, err = capfd.readouterr()

    keys = cluster_keys(sb)
    for c in spec.clusters:
        assert f"{c.name}/{REMOTE_CERT}/tls.key" in keys and f"{c.name}/cilium-ca/ca.key" in keys, sorted(keys)
    first_ca, other_ca = (keys[f"{c.name}/cilium-ca/ca.key"] for c in (spec.first, spec.others[0]))
    # 1.13 has no tls.caCert: the first cluster's CA, key included, is copied to the other (the worst case)
    assert (first_ca == other_ca) == (cilium == "1.13"), "shared CA mode is expected exactly on 1.13"
    needles = sandbox_secrets(sb, slack.token, fernet_key)
    places: dict[str, bytes] = {
        **database_places(prefect.db),
        **file_places(prefect.home),
        **slack_bodies,
        "stdout": out.encode(),
        "stderr": err.encode(),
        "caplog": caplog.text.encode(),
        "log records": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}" for r in caplog.records
        ).encode(),
    }
    for i, outcome in enumerate(outcomes):
        places[f"result {i} repr"] = repr(outcome).encode()
        places[f"result {i} json"] = outcome.model_dump_json().encode()  # type: ignore[attr-defined]
    assert any("flow_run.parameters" in p for p in places) and any(p.startswith("database log.") for p in places)
    assert any(p.startswith("database artifact.") for p in places)
    assert any(p.startswith("database events.") for p in places)
    places.update({f"error {i}": text.encode() for i, text in enumerate(errors)})
    leaks = find_leaks(needles, places)
    assert not leaks, "secrets found:\n" + "\n".join(leaks)

    # The runs did what they should, so the search above covered a whole setup, nightly and drill.
    setup, nightly, drill = (outcomes + [None] * 3)[:3]
    assert not errors, "\n".join(errors)
    assert isinstance(setup, SetupResult) and setup.health.healthy, setup
    assert isinstance(nightly, VerificationResult) and nightly.status == "PASS", nightly.describe()
    assert nightly.drill is not None and nightly.drill.status == "passed", nightly.drill
    assert drill is not None and getattr(drill, "status", None) == "passed", drill
    assert len(slack_bodies) >= 2, "the nightly run should have talked to Slack"

    # Results that hold endpoints are sealed and owner-only.
    new = {p: r for p, r in result_records(storage).items() if p not in before}
    sealed = {p: r for p, r in new.items() if r["metadata"]["serializer"]["type"] == "fernet-pickle"}
    assert len(sealed) >= len(spec.clusters), f"expected encrypted endpoint results, got {sorted(new)}"
    endpoints: dict[str, MeshEndpoint] = {}
    for path, record in sealed.items():
        assert not any(b"BEGIN" in form for form in expanded(path.read_bytes())), f"{path} holds PEM text"
        assert os.stat(path).st_mode & 0o777 == 0o600, f"{path}: mode {oct(os.stat(path).st_mode & 0o777)}"
        with pytest.raises(InvalidToken):  # sealed: another key cannot open it
            Fernet(Fernet.generate_key()).decrypt(record["result"].encode())
        endpoint = FernetPickleSerializer().loads(record["result"].encode())  # and it is the endpoint, keys inside
        assert isinstance(endpoint, MeshEndpoint), type(endpoint)
        endpoints[endpoint.cluster] = endpoint
    assert set(endpoints) == {c.name for c in spec.clusters}
    first = endpoints[spec.first.name]
    # the remote key read at step 3 (under helm, 1.16, every later render re-issues it: an earlier one of that
    # Secret's keys), sealed with the certificate it belongs to
    cached_key = load_private_key(first.remote_key.get_secret_value())
    assert key_matches(load_cert(first.remote_cert), cached_key)
    if cilium == "1.13":
        assert first.remote_key.get_secret_value() == keys[f"{spec.first.name}/{REMOTE_CERT}/tls.key"]
    assert (endpoints[spec.first.name].ca_key is not None) == (cilium == "1.13"), "CA key read only for a shared CA"


# -------------------------------------------------------------------------- 2. clear, safe errors


def test_without_a_result_key_caching_is_off_and_one_warning_says_how_to_enable_it(
    prefect: PrefectPlace,
    sandbox_factory: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sb = sandbox_factory(cilium_version="1.16")
    spec = spec_with_kubeconfig(sb, 0, {"secret_block": "nope"}, tmp_path)
    assert not caching_enabled()
    with pytest.raises(ResultKeyError, match="refusing to persist a result in clear"):
        FernetPickleSerializer().dumps({"key": "material"})
    with caplog.at_level(logging.INFO):
        state = cluster_mesh_setup(spec, return_state=True)
    assert state.is_failed()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and RESULT_KEY_ENV in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "Fernet.generate_key()" in warnings[0] and "not cached" in warnings[0], warnings[0]


def test_a_malformed_result_key_names_the_variable_and_the_fix_without_showing_the_value(
    prefect: PrefectPlace,
    sandbox_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = "not-a-fernet-key-" + secrets.token_hex(8)
    monkeypatch.setenv(RESULT_KEY_ENV, bad)
    with pytest.raises(ResultKeyError) as direct:
        result_key()
    message = str(direct.value)
    assert RESULT_KEY_ENV in message and "Fernet.generate_key()" in message, message
    shown = "".join(traceback.format_exception(direct.value))
    assert bad not in shown, "the key's value is in the error or its traceback"

    sb = sandbox_factory(cilium_version="1.16")
    state = cluster_mesh_setup(load_spec(Path(sb.directory) / "mesh.yaml"), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ResultKeyError), repr(error)
    wait_until_stored(prefect.db, state.state_details.flow_run_id, "prefect.flow-run.Failed")
    out, err = capfd.readouterr()
    places = {
        "stdout": out.encode(),
        "stderr": err.encode(),
        "caplog": caplog.text.encode(),
        "error": "".join(traceback.format_exception(error)).encode(),
        **database_places(prefect.db),
    }
    assert not find_leaks({"malformed key": bad.encode()}, places)


def spec_with_kubeconfig(sb: Any, index: int, ref: dict[str, Any], tmp_path: Path) -> MeshSpec:
    """The sandbox's spec with cluster ``index``'s kubeconfig reference replaced by ``ref``."""
    data = yaml.safe_load((Path(sb.directory) / "mesh.yaml").read_text())
    data["clusters"][index]["kubeconfig"] = ref
    path = tmp_path / f"mesh-{secrets.token_hex(4)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def test_a_missing_secret_block_fails_the_run_naming_the_block(
    prefect: PrefectPlace,
    sandbox_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(RESULT_KEY_ENV, Fernet.generate_key().decode())
    sb = sandbox_factory(cilium_version="1.16")
    spec = spec_with_kubeconfig(sb, 0, {"secret_block": "nope"}, tmp_path)
    state = cluster_mesh_setup(spec, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException)
    assert "nope" in str(error), str(error)
    assert "nope" in (state.message or ""), state.message
    step = f"1. Check prerequisites of {spec.first.name}"
    runs = task_runs(
        prefect.db, state.state_details.flow_run_id, [f"1. Check prerequisites of {c.name}" for c in spec.clusters]
    )
    assert [name for name, run in runs.items() if run[1] == "FAILED"] == [step], runs
    assert runs[step][0] == 1, f"a missing block is not worth a retry: {runs[step]}"
    out, err = capfd.readouterr()
    needles = sandbox_secrets(sb, None, None)
    places = {"stdout": out.encode(), "stderr": err.encode(), "error": str(error).encode()}
    assert not find_leaks(needles, places)


def test_a_kubeconfig_without_the_named_context_lists_the_available_ones_and_never_the_token(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb = sandbox_factory(cilium_version="1.16")
    ep = sb.endpoints[0]
    text = Path(ep.kubeconfig).read_text()
    cluster = ClusterSpec.model_validate(
        {"name": ep.name, "id": 1, "kubeconfig": {"path": str(ep.kubeconfig), "context": "not-there"}}
    )
    with pytest.raises(KubeconfigError) as caught:
        open_cluster(cluster)
    message = str(caught.value)
    assert "'not-there'" in message and repr(ep.name) in message, message
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    ca_data = yaml.safe_load(text)["clusters"][0]["cluster"]["certificate-authority-data"]
    assert ep.token not in shown
    assert ca_data not in shown and text not in shown


# ------------------------------------------------------------------------- 3. TLS always verified


def kubeconfig_edit(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    target.chmod(0o600)
    return target


def test_a_kubeconfig_with_another_clusters_ca_fails_the_step_once_with_a_tls_error(
    prefect: PrefectPlace,
    sandbox_factory: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sb = sandbox_factory(cilium_version="1.16")
    first, second = sb.endpoints[0], sb.endpoints[1]
    other_ca = yaml.safe_load(Path(second.kubeconfig).read_text())["clusters"][0]["cluster"][
        "certificate-authority-data"
    ]

    def swap_ca(data: dict[str, Any]) -> None:
        data["clusters"][0]["cluster"]["certificate-authority-data"] = other_ca

    wrong = kubeconfig_edit(Path(first.kubeconfig), tmp_path / "wrong-ca.kubeconfig", swap_ca)
    with (
        pytest.raises(TLSVerificationError) as direct,
        ClusterClient.from_kubeconfig_file(wrong, context=first.name, cluster_name=first.name) as client,
    ):
        client.version()
    assert "certificate-authority" in str(direct.value), str(direct.value)

    spec = spec_with_kubeconfig(sb, 0, {"path": str(wrong), "context": first.name}, tmp_path)
    with SlackTestServer(token=f"xoxb-{secrets.token_hex(16)}") as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        monkeypatch.setenv("SLACK_CHANNEL", "#mesh-alerts")
        monkeypatch.setenv("SLACK_API_URL", slack.url)
        state = cluster_mesh_setup(spec, return_state=True)
        alerts = [m for m in slack.messages if "cluster-mesh-setup" in json.dumps(m)]
        bodies = {f"slack request {i}": r["raw"].encode() for i, r in enumerate(slack.requests)}
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TLSVerificationError), repr(error)
    assert "certificate-authority" in str(error) and first.name in str(error), str(error)
    step = f"1. Check prerequisites of {first.name}"
    runs = task_runs(prefect.db, state.state_details.flow_run_id, [step])
    assert runs[step][:2] == (1, "FAILED"), f"a certificate that does not verify is not retried: {runs[step]}"
    assert len(alerts) == 1 and "certificate-authority" in json.dumps(alerts[0]), slack.messages

    wait_until_stored(prefect.db, state.state_details.flow_run_id, "prefect.flow-run.Failed")
    out, err = capfd.readouterr()
    places = {
        **bodies,
        "stdout": out.encode(),
        "stderr": err.encode(),
        "caplog": caplog.text.encode(),
        "error": "".join(traceback.format_exception(error)).encode(),
        **{
            p: b for p, b in database_places(prefect.db).items() if p.startswith(("database log.", "database task_run"))
        },
    }
    assert not find_leaks(sandbox_secrets(sb, slack.token, None), places)


def test_a_kubeconfig_that_skips_tls_verification_is_refused(
    sandbox_factory: Callable[..., Any], tmp_path: Path
) -> None:
    sb = sandbox_factory(cilium_version="1.16")
    ep = sb.endpoints[0]

    def skip_verify(data: dict[str, Any]) -> None:
        cluster = data["clusters"][0]["cluster"]
        cluster.pop("certificate-authority-data")
        cluster["insecure-skip-tls-verify"] = True

    insecure = kubeconfig_edit(Path(ep.kubeconfig), tmp_path / "insecure.kubeconfig", skip_verify)
    cluster = ClusterSpec.model_validate(
        {"name": ep.name, "id": 1, "kubeconfig": {"path": str(insecure), "context": ep.name}}
    )
    with pytest.raises(KubeconfigError, match="insecure-skip-tls-verify") as caught:
        open_cluster(cluster)
    assert ep.token not in "".join(traceback.format_exception(caught.value))

    configuration = k8s.Configuration(host=ep.url, api_key={"authorization": f"Bearer {ep.token}"})
    configuration.verify_ssl = False
    with pytest.raises(KubeconfigError, match="TLS verification off") as caught:
        ClusterClient(configuration, cluster_name=ep.name)
    assert ep.token not in str(caught.value)


# Switches that turn certificate verification off, in the libraries the pipeline uses.
_SWITCHES = re.compile(
    r"verify_ssl\s*=\s*False|verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    r"|assert_hostname\s*=\s*False|disable_warnings|InsecureRequestWarning|cert_reqs\s*=\s*['\"]?none"
    r"|--insecure|ssl\s*=\s*False|insecure\w*\s*[=:]\s*True",
    re.IGNORECASE,
)


def verification_switches(source: str) -> list[tuple[int, str]]:
    """Lines of ``source`` that turn TLS verification off, or mention ``insecure`` outside a refusal.

    A mention is allowed in a docstring, a comment, or a function that exists to refuse it (its name
    says ``refuse``), so the code may explain and reject the setting, never apply it.
    """
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and "refuse" in node.name:
            allowed.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                allowed.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        if _SWITCHES.search(code) or (re.search(r"insecure", code, re.IGNORECASE) and number not in allowed):
            found.append((number, line.strip()))
    return found


def test_no_code_switch_turns_tls_verification_off() -> None:
    planted = 'def connect(c):\n    c.verify_ssl = False\n    cluster["insecure-skip-tls-verify"] = True\n'
    assert [n for n, _ in verification_switches(planted)] == [2, 3], "the scan must see a switch"
    files = [p for folder in ("cli", "clustermesh", "tasks", "flows") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert any(p.as_posix().endswith("clustermesh/kube/kubeconfig.py") for p in files)
    found = {
        f"{p.relative_to(ROOT)}:{n}: {line}": None for p in files for n, line in verification_switches(p.read_text())
    }
    assert not found, "TLS verification switches:\n" + "\n".join(found)
