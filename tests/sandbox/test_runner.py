"""``clustermesh sandbox up|down|fault`` as a user runs them: a separate process, files, TLS, signals."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``clustermesh <args>`` in a fresh interpreter and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@dataclass
class Running:
    """A ``clustermesh sandbox up`` process and its folder."""

    proc: subprocess.Popen[str]
    directory: Path

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.directory / "sandbox.json").read_text())  # type: ignore[no-any-return]

    def kubeconfig(self, name: str) -> dict[str, Any]:
        return yaml.safe_load((self.directory / f"{name}.kubeconfig").read_text())  # type: ignore[no-any-return]

    def ca_pem(self, name: str) -> bytes:
        cluster = self.kubeconfig(name)["clusters"][0]["cluster"]
        return base64.b64decode(cluster["certificate-authority-data"])

    def url(self, name: str) -> str:
        return str(self.kubeconfig(name)["clusters"][0]["cluster"]["server"])

    def token(self, name: str) -> str:
        return str(self.kubeconfig(name)["users"][0]["user"]["token"])

    def client(self, name: str, *, token: bool = True) -> httpx.Client:
        """An HTTPS client that trusts exactly the cluster's CA (from its kubeconfig)."""
        ctx = ssl.create_default_context(cadata=self.ca_pem(name).decode())
        headers = {"Authorization": f"Bearer {self.token(name)}"} if token else {}
        return httpx.Client(base_url=self.url(name), verify=ctx, headers=headers, timeout=10)

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout=timeout)


def start_sandbox(directory: Path, *args: str, timeout: float = 30) -> Running:
    """Start ``clustermesh sandbox up --dir directory --time-scale 0 <args>`` and wait for ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "sandbox", "up", "--dir", str(directory)] + ["--time-scale", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    running = Running(proc, directory)
    deadline = time.monotonic() + timeout
    try:
        while not (directory / "ready").exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"sandbox up exited with {proc.returncode}: {err}{out}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {directory / 'ready'} after {timeout}s")
            time.sleep(0.05)
    except BaseException:
        kill(running)
        raise
    return running


def kill(running: Running) -> None:
    """Leave nothing behind: kill the process if it still runs and reap it."""
    if running.proc.poll() is None:
        running.proc.kill()
    running.proc.communicate(timeout=15)


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[Any]:
    """Start sandbox processes on demand; every one is killed (if still alive) after the test."""
    started: list[Running] = []

    def start(*args: str) -> Running:
        running = start_sandbox(tmp_path / f"run-{len(started) + 1}", *args)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            kill(running)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One 3-cluster sandbox process shared by the read-only checks of this module."""
    running = start_sandbox(tmp_path_factory.mktemp("three") / "sb", "--clusters", "3")
    try:
        yield running
    finally:
        kill(running)


def ai_values(running: Running, cluster: str) -> dict[str, Any]:
    """The cilium ApplicationInstallation's values, wherever KKP keeps them (values or valuesBlock)."""
    with running.client(cluster) as http:
        resp = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/kube-system/{PLURAL}/cilium")
    resp.raise_for_status()
    spec = resp.json()["spec"]
    return yaml.safe_load(spec["valuesBlock"]) if spec.get("valuesBlock") else spec["values"]  # type: ignore[no-any-return]


# ---- files -----------------------------------------------------------------------------------------


def test_up_writes_a_private_verified_kubeconfig_per_cluster(three: Running) -> None:
    for i in (1, 2, 3):
        path = three.directory / f"cluster-{i}.kubeconfig"
        assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
        text = path.read_text()
        assert "insecure-skip-tls-verify" not in text
        cfg = yaml.safe_load(text)
        cluster = cfg["clusters"][0]["cluster"]
        assert cluster["server"].startswith("https://127.0.0.1:")
        assert b"BEGIN CERTIFICATE" in base64.b64decode(cluster["certificate-authority-data"])
        user = cfg["users"][0]["user"]
        assert user.get("token") and "client-key-data" not in user
        assert cfg["current-context"] == f"cluster-{i}"
    # every cluster has its own CA and its own token
    assert len({three.ca_pem(f"cluster-{i}") for i in (1, 2, 3)}) == 3
    assert len({three.token(f"cluster-{i}") for i in (1, 2, 3)}) == 3


def test_up_writes_a_mesh_spec_with_distinct_pod_cidrs(three: Running) -> None:
    mesh = yaml.safe_load((three.directory / "mesh.yaml").read_text())
    clusters = mesh["clusters"]
    assert [c["name"] for c in clusters] == ["cluster-1", "cluster-2", "cluster-3"]
    assert [c["id"] for c in clusters] == [1, 2, 3]
    for c in clusters:
        assert Path(c["kubeconfig"]["path"]).is_file(), c
    cidrs = [ipaddress.ip_network(c["pod_cidrs"][0]) for c in clusters]
    assert [str(n) for n in cidrs] == ["172.25.0.0/16", "172.26.0.0/16", "172.27.0.0/16"]
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1 :])


def test_up_writes_sandbox_json_with_pid_ports_and_control_url(three: Running) -> None:
    info = three.info
    assert info["pid"] == three.proc.pid
    assert info["control_url"].startswith("http://127.0.0.1:")
    assert info["control_token"]
    assert (three.directory / "sandbox.json").stat().st_mode & 0o777 == 0o600
    ports = [c["port"] for c in info["clusters"]]
    assert len(set(ports)) == 3
    for c in info["clusters"]:
        assert c["url"] == f"https://127.0.0.1:{c['port']}" == three.url(c["name"])


def test_default_cilium_113_puts_values_in_spec_values(three: Running) -> None:
    with three.client("cluster-1") as http:
        resp = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/kube-system/{PLURAL}/cilium")
    spec = resp.json()["spec"]
    assert spec["applicationRef"]["version"].startswith("1.13.")
    assert not spec.get("valuesBlock")
    assert spec["values"]["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"]


# ---- authentication and TLS ------------------------------------------------------------------------


def test_requests_without_a_token_are_unauthorized(three: Running) -> None:
    with three.client("cluster-1", token=False) as http:
        resp = http.get("/api/v1/namespaces")
    assert resp.status_code == 401
    assert resp.json()["reason"] == "Unauthorized"
    with three.client("cluster-1") as http:
        assert http.get("/api/v1/namespaces").status_code == 200


def test_a_token_of_another_cluster_is_unauthorized(three: Running) -> None:
    ctx = ssl.create_default_context(cadata=three.ca_pem("cluster-1").decode())
    headers = {"Authorization": f"Bearer {three.token('cluster-2')}"}
    with httpx.Client(verify=ctx, headers=headers, timeout=10) as http:
        assert http.get(three.url("cluster-1") + "/api/v1/namespaces").status_code == 401


@pytest.mark.parametrize("trust", ["system", "other-cluster"])
def test_tls_fails_with_a_ca_other_than_the_kubeconfigs(three: Running, trust: str) -> None:
    if trust == "system":
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.create_default_context(cadata=three.ca_pem("cluster-2").decode())
    headers = {"Authorization": f"Bearer {three.token('cluster-1')}"}
    with (
        httpx.Client(verify=ctx, headers=headers, timeout=10) as http,
        pytest.raises(httpx.ConnectError) as err,
    ):
        http.get(three.url("cluster-1") + "/version")
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


# ---- faults through the CLI ------------------------------------------------------------------------


def test_fault_block_port_between_two_clusters_is_accepted(three: Running) -> None:
    d = str(three.directory)
    done = cli("sandbox", "fault", "block-port", "--dir", d, "--between", "cluster-1,cluster-2", "--port", "tcp/2379")
    assert done.returncode == 0, done.stderr
    assert "block-port" in done.stdout and "tcp/2379" in done.stdout
    undone = cli(
        "sandbox",
        "fault",
        "unblock-port",
        "--dir",
        d,
        "--between",
        "cluster-1,cluster-2",
        "--port",
        "tcp/2379",
    )
    assert undone.returncode == 0, undone.stderr


def test_fault_block_port_refuses_unknown_clusters_and_ports(three: Running) -> None:
    d = str(three.directory)
    bad_cluster = cli(
        "sandbox", "fault", "block-port", "--dir", d, "--between", "cluster-1,cluster-9", "--port", "tcp/2379"
    )
    assert bad_cluster.returncode != 0
    assert "cluster-9" in bad_cluster.stderr and "cluster-3" in bad_cluster.stderr
    bad_port = cli("sandbox", "fault", "block-port", "--dir", d, "--between", "cluster-1,cluster-2", "--port", "tcp/1")
    assert bad_port.returncode != 0
    assert "tcp/1" in bad_port.stderr and "udp/8472" in bad_port.stderr
    no_between = cli("sandbox", "fault", "block-port", "--dir", d, "--port", "tcp/2379")
    assert no_between.returncode != 0 and "--between" in no_between.stderr


def test_fault_of_an_unknown_kind_fails_and_lists_the_kinds(three: Running) -> None:
    done = cli("sandbox", "fault", "flood-everything", "--dir", str(three.directory))
    assert done.returncode != 0
    assert "flood-everything" in done.stderr
    for kind in ("block-port", "api-down", "lb-never", "rotate-ca", "clear"):
        assert kind in done.stderr, done.stderr


def test_fault_api_down_answers_503_until_turned_off(three: Running) -> None:
    d = str(three.directory)
    try:
        assert cli("sandbox", "fault", "api-down", "--dir", d, "--cluster", "cluster-1").returncode == 0
        with three.client("cluster-1") as http:
            assert http.get("/version").status_code == 503
            assert http.get("/api/v1/namespaces").status_code == 503
        with three.client("cluster-2") as http:
            assert http.get("/version").status_code == 200  # only the named cluster is down
    finally:
        off = cli("sandbox", "fault", "api-down", "--dir", d, "--cluster", "cluster-1", "--off")
    assert off.returncode == 0, off.stderr
    with three.client("cluster-1") as http:
        assert http.get("/version").status_code == 200


def test_fault_without_a_running_sandbox_says_how_to_start_one(tmp_path: Path) -> None:
    done = cli("sandbox", "fault", "clear", "--dir", str(tmp_path / "nothing"))
    assert done.returncode != 0
    assert "sandbox up" in done.stderr


# ---- stopping --------------------------------------------------------------------------------------


def test_down_stops_the_process_and_removes_ready(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "1")
    # Reap the process as soon as it exits, as an interactive shell does with a background job:
    # `sandbox down` waits for the pid to vanish, and an unreaped zombie never does.
    codes: list[int] = []
    reaper = threading.Thread(target=lambda: codes.append(running.proc.wait()), daemon=True)
    reaper.start()
    done = cli("sandbox", "down", "--dir", str(running.directory))
    assert done.returncode == 0, done.stderr
    assert str(running.proc.pid) in done.stdout
    reaper.join(timeout=15)
    assert codes == [0]
    assert not (running.directory / "ready").exists()
    with pytest.raises(httpx.ConnectError), running.client("cluster-1") as http:
        http.get("/version")


def test_sigint_stops_the_process_cleanly(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "1")
    url = running.url("cluster-1")
    running.proc.send_signal(signal.SIGINT)
    assert running.wait_exit() == 0
    _, err = running.proc.communicate()
    assert "Traceback" not in err, err
    assert not (running.directory / "ready").exists()
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=False, timeout=5) as http:
        http.get(url + "/version")


# ---- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option", "fix"),
    [
        (("--cilium-version", "1.12"), "--cilium-version", "1.13"),
        (("--clusters", "0"), "--clusters", "1 to 64"),
    ],
)
def test_bad_options_fail_before_anything_is_served(
    tmp_path: Path, args: tuple[str, str], option: str, fix: str
) -> None:
    directory = tmp_path / "sb"
    done = cli("sandbox", "up", "--dir", str(directory), "--time-scale", "0", *args, timeout=30)
    assert done.returncode != 0
    assert option in done.stderr and fix in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (directory / "sandbox.json").exists()
    assert not (directory / "ready").exists()
    assert not list(directory.glob("*.kubeconfig"))


def test_overlap_pod_cidrs_gives_cluster_2_the_pod_cidr_of_cluster_1(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "2", "--overlap-pod-cidrs")
    mesh = yaml.safe_load((running.directory / "mesh.yaml").read_text())
    assert [c["pod_cidrs"] for c in mesh["clusters"]] == [["172.25.0.0/16"], ["172.25.0.0/16"]]
    for name in ("cluster-1", "cluster-2"):
        ipam = ai_values(running, name)["ipam"]["operator"]
        assert ipam["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"], name


def test_kkp_227_puts_the_values_in_values_block(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "1", "--kkp-version", "2.27")
    assert running.info["kkp_version"] == "2.27"
    with running.client("cluster-1") as http:
        spec = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/kube-system/{PLURAL}/cilium").json()["spec"]
    assert not spec.get("values")
    block = yaml.safe_load(spec["valuesBlock"])
    assert block["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"]
    assert block["kubeProxyReplacement"] == "true"


def test_up_prints_where_the_files_are(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "1")
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait_exit() == 0
    out, _ = running.proc.communicate()
    assert "sandbox ready: 1 clusters" in out
    assert str(running.directory / "cluster-1.kubeconfig") in out
    assert os.fspath(running.directory) in out


def test_fault_after_the_sandbox_stopped_says_so(sandbox_process: Any) -> None:
    running: Running = sandbox_process("--clusters", "1")
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait_exit() == 0
    done = cli("sandbox", "fault", "clear", "--dir", str(running.directory))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "sandbox up" in done.stderr, done.stderr
