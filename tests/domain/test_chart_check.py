"""The chart check's parts: where the archive comes from (folder, Helm repository over loopback HTTP, cache,
an unreachable source given up fast and remembered), the ``helm`` binary renderer's missing-binary error,
the ``cilium.chart`` settings, and the values key named from Helm's own messages."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from clustermesh.cilium.chart import render_with_helm
from clustermesh.cilium.chart_source import ChartUnavailableError, fetch_chart, forget_unreachable
from clustermesh.errors import ChartRenderError
from clustermesh.spec.settings import CiliumSettings
from clustermesh.steps.chart_check import ChartValuesRefusedError, check_values, values_key
from tests.conftest import CHARTS_DIR, charts_mark
from tests.domain.test_values import mesh

CHARTS = CHARTS_DIR
needs_charts = charts_mark("cilium-1.16.9.tgz")


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    forget_unreachable()
    yield
    forget_unreachable()


# ------------------------------------------------------------------------------ a loopback Helm repository


class HelmRepo:
    """``index.yaml`` and one archive served over loopback HTTP; counts every request by path."""

    def __init__(self, archive: Path, *, digest: str | None = None) -> None:
        self.requests: list[str] = []
        body = archive.read_bytes()
        version = archive.name.removeprefix("cilium-").removesuffix(".tgz")
        entry: dict[str, Any] = {"name": "cilium", "version": version, "urls": [f"charts/{archive.name}"]}
        entry["digest"] = digest if digest is not None else hashlib.sha256(body).hexdigest()
        files = {"/index.yaml": yaml.safe_dump({"apiVersion": "v1", "entries": {"cilium": [entry]}}).encode()}
        files[f"/charts/{archive.name}"] = body
        repo = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                repo.requests.append(self.path)
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def repo() -> Iterator[HelmRepo]:
    assert CHARTS is not None
    served = HelmRepo(CHARTS / "cilium-1.16.9.tgz")
    yield served
    served.close()


@needs_charts
def test_a_folder_source_gives_the_exact_version_and_names_what_it_has_when_it_lacks_one() -> None:
    assert CHARTS is not None
    assert fetch_chart(str(CHARTS), "1.16.9") == CHARTS / "cilium-1.16.9.tgz"
    with pytest.raises(ChartUnavailableError, match=r"cilium-1\.16\.77\.tgz.*1\.16\.9"):
        fetch_chart(str(CHARTS), "1.16.77")


@needs_charts
def test_a_helm_repository_is_pulled_once_then_the_cache_answers_without_a_request(
    repo: HelmRepo, tmp_path: Path
) -> None:
    first = fetch_chart(repo.url, "1.16.9", cache_dir=tmp_path)
    assert repo.requests == ["/index.yaml", "/charts/cilium-1.16.9.tgz"]
    assert CHARTS is not None and first.read_bytes() == (CHARTS / "cilium-1.16.9.tgz").read_bytes()
    assert fetch_chart(repo.url, "1.16.9", cache_dir=tmp_path) == first
    assert len(repo.requests) == 2, "the second call must not ask the repository again"
    with pytest.raises(ChartUnavailableError, match=r"lists no cilium 1\.17\.0"):
        fetch_chart(repo.url, "1.17.0", cache_dir=tmp_path)


@needs_charts
def test_an_archive_that_does_not_match_the_index_digest_is_not_kept(tmp_path: Path) -> None:
    assert CHARTS is not None
    served = HelmRepo(CHARTS / "cilium-1.16.9.tgz", digest="0" * 64)
    try:
        with pytest.raises(ChartUnavailableError, match="digest"):
            fetch_chart(served.url, "1.16.9", cache_dir=tmp_path)
    finally:
        served.close()
    assert not list(tmp_path.rglob("*.tgz"))


def test_an_unreachable_repository_is_said_once_and_not_asked_again(tmp_path: Path) -> None:
    """A port that accepts and hangs up at once: the first call connects, the second does not even try."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[int] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        with pytest.raises(ChartUnavailableError, match="cannot reach") as first:
            fetch_chart(url, "1.16.9", cache_dir=tmp_path)
        assert "cilium.chart.source" in first.value.fix
        seen = len(accepted)
        assert seen >= 1
        with pytest.raises(ChartUnavailableError, match="cannot reach"):
            fetch_chart(url, "1.18.10", cache_dir=tmp_path)
        assert len(accepted) == seen, "a source found unreachable must not be asked again by this process"
    finally:
        sock.close()


def test_the_helm_renderer_without_a_helm_binary_names_the_setting_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no helm on PATH
    archive = tmp_path / "cilium-1.16.9.tgz"
    archive.write_bytes(b"")
    with pytest.raises(ChartRenderError) as caught:
        render_with_helm(archive, {})
    assert "cilium.chart.renderer" in str(caught.value)
    assert "install helm" in caught.value.fix and "engine" in caught.value.fix


@pytest.mark.skipif(shutil.which("helm") is None, reason="no helm binary on PATH")
@needs_charts
def test_the_helm_binary_refuses_what_the_engine_refuses() -> None:
    assert CHARTS is not None
    with pytest.raises(ChartRenderError, match="/cluster/id"):
        render_with_helm(CHARTS / "cilium-1.16.9.tgz", {"cluster": {"name": "c1", "id": "seven"}})


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("chart", "words"),
    [
        ({"source": "ftp://charts.example/"}, "not an http(s) Helm repository URL"),
        ({"source": "oci://registry.example/cilium"}, "not an http(s) Helm repository URL"),
        ({"source": "   "}, "must not be blank"),
        ({"source": "https://user:s3cret@charts.example/"}, "credentials in the URL"),
        ({"source": "/srv/charts\x00"}, "holds control characters"),
        ({"renderer": "kubectl"}, "'engine' or 'helm'"),
    ],
)
def test_chart_settings_refuse_what_cannot_work(chart: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CiliumSettings(chart=chart)  # type: ignore[arg-type]
    assert words in str(caught.value)
    assert "chart." in str(caught.value)


def test_chart_settings_default_to_cilium_s_public_repository_and_the_engine() -> None:
    settings = CiliumSettings()
    assert settings.chart.source == "https://helm.cilium.io/"
    assert settings.chart.renderer == "engine"
    assert CiliumSettings(chart={"source": None}).chart.source is None  # type: ignore[arg-type]
    assert CiliumSettings(chart={"source": "/srv/charts"}).chart.source == "/srv/charts"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the key Helm names


@pytest.mark.parametrize(
    ("message", "values", "key"),
    [
        (
            "values don't meet the specifications of the schema(s) in the following chart(s):\n"
            "cilium:\n- at '/cluster/id': got string, want integer\n",
            {},
            "cluster.id",
        ),
        (
            "cilium:\n- at '/clustermesh/config/clusters/0/port': got string, want integer",
            {},
            "clustermesh.config.clusters[0].port",
        ),
        (
            "execution error at (cilium/templates/cilium-configmap.yaml:71:5): kubeProxyReplacement must be "
            "explicitly set to a valid value (true or false) to continue.",
            {"kubeProxyReplacement": "strict", "cluster": {"name": "c1"}},
            "kubeProxyReplacement",
        ),
        ("- cluster.id: Invalid type. Expected: integer, given: string", {}, "cluster.id"),
        ("execution error at (cilium/templates/x.yaml:1:1): something is wrong", {"cluster": {}}, "see the message"),
    ],
)
def test_the_key_to_fix_is_read_from_helm_s_message(message: str, values: dict[str, Any], key: str) -> None:
    assert values_key(message, values) == key


@needs_charts
@pytest.mark.skipif(importlib.util.find_spec("helm_python") is None, reason="helm-python-sdk not installed")
def test_values_the_real_chart_refuses_raise_naming_the_cluster_and_the_key() -> None:
    assert CHARTS is not None
    spec = mesh()
    spec = spec.model_copy(update={"cilium": CiliumSettings(chart={"source": str(CHARTS)})})  # type: ignore[arg-type]
    values = {"cluster": {"name": "cluster-1", "id": "seven"}, "kubeProxyReplacement": "true"}
    with pytest.raises(ChartValuesRefusedError) as caught:
        check_values(spec, "cluster-1", "1.16.9", values)
    assert caught.value.key == "cluster.id"
    assert "cluster cluster-1" in str(caught.value) and "got string, want integer" in str(caught.value)
    good = {"cluster": {"name": "cluster-1", "id": 1}, "kubeProxyReplacement": "true"}
    assert check_values(spec, "cluster-1", "1.16.9", good)  # renders: manifests come back
    off = spec.model_copy(update={"cilium": CiliumSettings(chart={"source": None})})  # type: ignore[arg-type]
    assert check_values(off, "cluster-1", "1.16.9", values) is None


def test_a_repository_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    from clustermesh.errors import SpecError
    from clustermesh.spec import load_spec

    data = {
        "clusters": [
            {"name": "cluster-1", "id": 1, "kubeconfig": {"path": "/k/1"}},
            {"name": "cluster-2", "id": 2, "kubeconfig": {"path": "/k/2"}},
        ],
        "cilium": {"chart": {"source": "https://robot:s3cr3t-pw@charts.example/cilium"}},
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert "cilium.chart.source" in str(caught.value) and "credentials in the URL" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value) and "robot" not in str(caught.value)


def test_without_helm_s_engine_the_check_is_skipped_saying_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is an optional group: a default spec must not fail a setup where it is not installed."""
    import clustermesh.steps.chart_check as chart_check

    monkeypatch.setattr(chart_check, "engine_installed", lambda: False)
    spec = mesh()
    with pytest.raises(ChartUnavailableError) as caught:
        check_values(spec, "cluster-1", "1.16.9", {})
    assert "engine is not installed" in caught.value.problem and "uv sync --group charts" in caught.value.fix
