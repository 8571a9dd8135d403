"""A kubeconfig that is not UTF-8, or not YAML, fails the run with our error and leaves its token nowhere.

The operator's night: a kubeconfig saved by PowerShell's ``>`` (UTF-16), a binary file, a kubeconfig with
broken YAML. Before, ``setup`` died with a bare ``UnicodeDecodeError`` naming no cluster, and Prefect
stored the failed run's exception in its result storage (mode 0644): unpickled, its ``object`` was the
whole kubeconfig, token and CA data. PyYAML's errors keep the whole buffer the same way.

Each bad kubeconfig goes through ``clustermesh setup --plan`` and ``clustermesh setup`` as CLI processes
(``python -m cli.app``, each with a PREFECT_HOME of its own, talking to this module's Prefect test server)
and through the flows in-process. Then every file under every PREFECT_HOME, the server's SQLite database
(column by column), the processes' output and the errors themselves are searched for the token and the CA
data: as text, base64, UTF-16, and inside whatever unpickles. Nothing may be found; the message names the
cluster and the fix; every result file Prefect wrote for our flows is 0600 in 0700 folders.
"""

from __future__ import annotations

import base64
import os
import pickle
import re
import stat
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle  # type: ignore[import-untyped]
import pytest
import yaml

from clustermesh.errors import ClusterMeshError, KubeconfigError
from clustermesh.spec import MeshSpec, load_spec
from flows.create_clusters import create_user_clusters
from flows.failover_drill import failover_drill
from flows.mesh_setup import cluster_mesh_setup
from flows.mesh_verify import nightly_mesh_verification
from sandbox.server import Sandbox
from tasks.results import RESULT_KEY_ENV
from tests.hardening.test_secrets import database_places, expanded, file_places
from tests.helpers import cli_environment, prefect_test_server, run_cli

BAD = "cluster-2"
UTF8_FIX = "save the kubeconfig as UTF-8 (PowerShell: Out-File -Encoding utf8)"
CLI_TIMEOUT = 300.0


# ------------------------------------------------------------------------------------------ places


@dataclass(frozen=True)
class Server:
    url: str
    home: Path
    db: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    home = tmp_path_factory.mktemp("prefect-home-crash")
    with prefect_test_server(home) as url:
        EventsWorker.drain_all()  # events (and so task states) go to this module's server, not an earlier one
        db = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
        assert db.startswith("sqlite"), db
        yield Server(url=url, home=home, db=Path(db.split("///", 1)[1]))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox-crash"), cilium_version="1.16", time_scale=0.0) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _no_result_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESULT_KEY_ENV, raising=False)
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def process_umask() -> Iterator[None]:
    """The test process keeps the usual 022: owner-only files must not depend on the caller's umask."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


# --------------------------------------------------------------------------------------- secrets


def credentials(sandbox: Sandbox) -> tuple[str, str]:
    """The bad cluster's bearer token and CA data, as its (good) kubeconfig holds them."""
    config = yaml.safe_load((Path(sandbox.directory) / f"{BAD}.kubeconfig").read_text())
    return str(config["users"][0]["user"]["token"]), str(config["clusters"][0]["cluster"]["certificate-authority-data"])


def needles(token: str, ca_data: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for label, secret in (("token", token), ("CA data", ca_data)):
        out[f"{label}"] = secret.encode()
        out[f"{label} (base64)"] = base64.b64encode(secret.encode())
        out[f"{label} (UTF-16-LE)"] = secret.encode("utf-16-le")
        out[f"{label} (UTF-16-BE)"] = secret.encode("utf-16-be")
    out["token (base64 of UTF-16)"] = base64.b64encode(token.encode("utf-16-le"))[:40]
    return out


_PICKLE = re.compile(rb"\x80[\x02-\x05]")


def unpickled(blob: bytes) -> list[bytes]:
    """What unpickles from ``blob`` or from what it wraps (base64, JSON escapes), flattened to bytes."""
    out: list[bytes] = []
    for variant in expanded(blob):
        if not _PICKLE.match(variant):
            continue
        try:
            obj = pickle.loads(variant)  # noqa: S301 - our own test's artifacts
        except Exception:  # noqa: BLE001, S112 - not a pickle after all
            continue
        out.append(flattened(obj))
    return out


def flattened(obj: object, depth: int = 0, seen: set[int] | None = None) -> bytes:
    """Every string and bytes reachable from ``obj``: arguments, attributes, exception chains, marks."""
    seen = set() if seen is None else seen
    if depth > 8 or id(obj) in seen:
        return b""
    seen.add(id(obj))
    if isinstance(obj, bytes | bytearray):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace")
    children: list[object] = []
    if isinstance(obj, dict):
        children += [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children += list(obj)
    if isinstance(obj, BaseException):
        children += [*obj.args, obj.__context__, obj.__cause__]
    if hasattr(obj, "__dict__"):
        children += list(vars(obj).values())
    parts = [flattened(child, depth + 1, seen) for child in children if child is not None]
    return b"\n".join([repr(obj).encode("utf-8", "backslashreplace")[:2000], *parts])


def find(secrets: dict[str, bytes], places: dict[str, bytes]) -> list[str]:
    """ "<secret> in <place>" for every hit, the secret never shown; pickles are opened too."""
    found: list[str] = []
    for place, blob in places.items():
        variants = expanded(blob) + unpickled(blob)
        for label, needle in secrets.items():
            if any(needle in variant for variant in variants):
                found.append(f"{label} in {place}")
    return found


def test_the_search_finds_the_token_in_the_failed_run_result_prefect_wrote_before(tmp_path: Path) -> None:
    """The search must be able to fail: the record of before (a pickled UnicodeDecodeError, base64 in the
    result file) and a pickled YAML error are found, also when the pickle is all that holds the token."""
    token, ca_data = "sha256~" + "t0k3n" * 8, base64.b64encode(b"-----BEGIN CERTIFICATE-----\nca").decode()
    text = f"clusters:\n- cluster:\n    certificate-authority-data: {ca_data}\nusers:\n- user:\n    token: {token}\n"
    try:
        text.encode("utf-16").decode("utf-8")
    except UnicodeDecodeError as exc:
        decoding = exc
    try:
        yaml.safe_load(text + "   broken: [\n")
    except yaml.YAMLError as exc:
        parsing = exc
    places = {
        "result file": base64.b64encode(cloudpickle.dumps(decoding)),
        "yaml error": base64.b64encode(cloudpickle.dumps(parsing)),
        "clean": b"kubeconfig for cluster 'cluster-2': ... save the kubeconfig as UTF-8",
    }
    found = find(needles(token, ca_data), places)
    assert {hit.rsplit(" in ", 1)[1] for hit in found} == {"result file", "yaml error"}, found
    assert "token (UTF-16-LE) in result file" in found and "token in yaml error" in found, found
    assert unpickled(places["result file"]), "the unpickling path must open a Prefect-style base64 pickle"


# ----------------------------------------------------------------------------------- bad inputs


def bad_kubeconfig(kind: str, good: str, token: str) -> bytes:
    if kind == "utf-16":  # what `Get-Content … > cluster-2.kubeconfig` writes in Windows PowerShell
        return good.encode("utf-16")
    if kind == "binary":  # a PNG header, random bytes, and the token somewhere inside
        return b"\x89PNG\r\n\x1a\n" + os.urandom(512) + token.encode() + os.urandom(512)
    assert kind == "broken-yaml"  # an indentation slip right after the token line
    lines = good.splitlines()
    at = next(i for i, line in enumerate(lines) if "token:" in line)
    return "\n".join([*lines[: at + 1], "   extra: [", *lines[at + 1 :]]).encode()


EXPECTED = {
    "utf-16": f"is UTF-16 (what PowerShell's `>` and Out-File write by default), not UTF-8 — {UTF8_FIX}",
    "binary": f"is not UTF-8 text: the byte at offset 0 is not UTF-8 (another encoding, or binary) — {UTF8_FIX}",
    "broken-yaml": "is not valid YAML at line",
}


def spec_with(sandbox: Sandbox, kubeconfig: Path, folder: Path) -> Path:
    data = yaml.safe_load((Path(sandbox.directory) / "mesh.yaml").read_text())
    entry = next(c for c in data["clusters"] if c["name"] == BAD)
    entry["kubeconfig"] = {"path": str(kubeconfig), "context": BAD}
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def message_ok(text: str, kind: str, kubeconfig: Path) -> bool:
    return f"kubeconfig for cluster '{BAD}': kubeconfig file {kubeconfig} (clusters[].kubeconfig.path) " in text and (
        EXPECTED[kind] in text
    )


def owner_only_problems(storage: Path) -> list[str]:
    """Result files and folders under ``storage`` that others could read (or that are not there)."""
    problems = []
    for path in [storage, *storage.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            problems.append(f"{path}: {oct(mode)}, expected {oct(want)}")
    return problems


# ------------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("kind", ["utf-16", "binary", "broken-yaml"])
def test_a_bad_kubeconfig_fails_setup_with_the_cluster_and_the_fix_and_leaves_no_credential_anywhere(
    kind: str,
    server: Server,
    sandbox: Sandbox,
    tmp_path: Path,
    process_umask: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    token, ca_data = credentials(sandbox)
    good = (Path(sandbox.directory) / f"{BAD}.kubeconfig").read_text()
    kubeconfig = tmp_path / f"{BAD}.kubeconfig"
    kubeconfig.write_bytes(bad_kubeconfig(kind, good, token))
    config = spec_with(sandbox, kubeconfig, tmp_path)
    places: dict[str, bytes] = {}

    # 1. The CLI, as the operator runs it: --plan (no Prefect), then the setup flow.
    cli_homes: list[Path] = []
    for mode, args in (("plan", ["--plan"]), ("setup", [])):
        home = tmp_path / f"cli-home-{mode}"
        cli_homes.append(home)
        done = run_cli(cli_environment(home, server.url), "setup", "--config", str(config), *args, timeout=CLI_TIMEOUT)
        output = done.stdout + done.stderr
        places[f"{mode}: stdout"], places[f"{mode}: stderr"] = done.stdout.encode(), done.stderr.encode()
        assert done.returncode != 0, output
        assert message_ok(output, kind, kubeconfig), output
        assert "UnicodeDecodeError" not in output and "ScannerError" not in output, output
        if mode == "plan":
            assert "Traceback" not in output, output
            assert done.returncode == 1, output

    # 2. The flows in-process, on this module's server (its PREFECT_HOME, its result storage).
    spec = load_spec(config)
    state = cluster_mesh_setup(spec, return_state=True)
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, KubeconfigError), repr(error)
    assert message_ok(str(error), kind, kubeconfig), str(error)
    assert message_ok(state.message or "", kind, kubeconfig), state.message
    assert error.__context__ is None and error.__cause__ is None, "a chained exception would carry the payload"
    places["setup error"] = b"\n".join(
        [
            "".join(traceback.format_exception(error)).encode(),
            repr(error).encode(),
            pickle.dumps(error),
            cloudpickle.dumps(error),
            cloudpickle.dumps(state),
            flattened(error),  # in this process too: its chain, its attributes (a YAML mark holds the buffer)
            flattened(state),
        ]
    )
    places.update(other_flows(spec, tmp_path))

    # 3. Every trace the runs left.
    out, err = capfd.readouterr()
    places["pytest stdout"], places["pytest stderr"] = out.encode(), err.encode()
    places.update(database_places(server.db))
    places.update({f"server home {p}": b for p, b in file_places(server.home).items()})
    for home in cli_homes:
        places.update({f"{home.name} {p}": b for p, b in file_places(home).items()})
    assert any(p.startswith("database log.") for p in places) and any("storage" in p for p in places), sorted(places)
    leaks = find(needles(token, ca_data), places)
    assert not leaks, "credentials found:\n" + "\n".join(leaks)

    # 4. What Prefect persisted for us is the owner's alone: the setup process's and this process's storage.
    storages = [tmp_path / "cli-home-setup" / "storage", server.home / "storage"]
    for storage in storages:
        assert any(p.is_file() for p in storage.rglob("*")), f"{storage}: the failed run's result is not there"
        assert not owner_only_problems(storage), "\n".join(owner_only_problems(storage))


def other_flows(spec: MeshSpec, tmp_path: Path) -> dict[str, bytes]:
    """The nightly, the drill and the KKP cluster creation meet the same kubeconfig (or a KKP reference
    with no token): they end without a result in clear, whatever they conclude."""
    places: dict[str, bytes] = {}
    kkp = {
        "name": "kkp-crash",
        "clusters": [
            {
                "name": name,
                "id": i,
                "kkp": {"api_url": "https://127.0.0.1:9", "project": "p1", "token_env": "CLUSTERMESH_NO_SUCH_TOKEN"},
            }
            for i, name in ((1, "kkp-1"), (2, "kkp-2"))
        ],
    }
    kkp_path = tmp_path / "mesh-kkp.yaml"
    kkp_path.write_text(yaml.safe_dump(kkp, sort_keys=False))
    runs = {
        "nightly": lambda: nightly_mesh_verification(spec, run_drill=False, return_state=True),
        "drill": lambda: failover_drill(spec, return_state=True),
        "create-clusters": lambda: create_user_clusters(load_spec(kkp_path), return_state=True),
    }
    for name, run in runs.items():
        state = run()
        outcome = state.result(raise_on_failure=False)
        places[f"{name} outcome"] = cloudpickle.dumps(state) + flattened(state) + flattened(outcome)
        # failed, so Prefect wrote the run's exception after the flow function returned (the case to cover)
        assert state.is_failed() and isinstance(outcome, ClusterMeshError), f"{name}: {state!r} {outcome!r}"
        places[f"{name} traceback"] = "".join(traceback.format_exception(outcome)).encode()
    return places
