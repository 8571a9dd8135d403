"""What every controller shares: the simulated cluster (``SimCluster``), the addresses and names KKP and
the chart use, the delays, and small helpers over objects."""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.chart import Rendered
from sandbox.controllers.clock import _Timer
from sandbox.store import Obj, Store, now_rfc3339
from sandbox.versions import kkp_patches

CILIUM_PATCH = kkp_patches()  # line → the patch KKP ships (sandbox.versions.LINES)
NS = "kube-system"
AI_KEY = "apps.kubermatic.k8c.io/v1/applicationinstallations"
PODS, NODES, SECRETS, CMS, SVCS = "v1/pods", "v1/nodes", "v1/secrets", "v1/configmaps", "v1/services"
DEPLOYS, DSS = "apps/v1/deployments", "apps/v1/daemonsets"
EPS, SLICES = "v1/endpoints", "discovery.k8s.io/v1/endpointslices"
RELEASE = "kube-system-cilium"
SERVICE_CIDR = ipaddress.ip_network("10.240.16.0/20")
MESH_SECRET = "cilium-clustermesh"
KVSTOREMESH_SECRET = "cilium-kvstoremesh"
APISERVER = "clustermesh-apiserver"
LEAF_SECRETS = (
    "clustermesh-apiserver-server-cert",
    "clustermesh-apiserver-admin-cert",
    "clustermesh-apiserver-remote-cert",
    "clustermesh-apiserver-local-cert",
)
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
K8S_RAND = "bcdfghjklmnpqrstvwxz2456789"

# Delays in simulated seconds (multiplied by time_scale).
INSTALL_DELAY = 5.0
LB_DELAY = 10.0
CERTGEN_DELAY = 30.0
AGENT_RESTART = 20.0
POD_START = 2.0
RETRY_DELAY = 10.0
MAX_FAILURES = 5


def default_pod_cidr(index: int) -> str:
    """The guide's 172.25/16, 172.26/16, … while that stays in 172.16/12; then 10.<100+i>/16."""
    return f"172.{24 + index}.0.0/16" if index <= 7 else f"10.{100 + index}.0.0/16"


def lb_pool(index: int) -> list[str]:
    """Ten LoadBalancer addresses per cluster, always valid IPs (documentation and benchmark ranges)."""
    if index <= 24:
        return [f"203.0.113.{10 * index + k}" for k in range(10)]
    return [f"198.18.{index}.{10 + k}" for k in range(10)]


def concrete_version(version: str) -> str:
    """A line (``"1.16"``) becomes the patch KKP ships; a full version is kept as it is."""
    v = version.strip().lstrip("v")
    return CILIUM_PATCH.get(v, v)


def _kkp(version: str) -> tuple[int, int]:
    parts = version.strip().lstrip("v").split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text or "")
    except ValueError:
        return b""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _rand(rng: random.Random, n: int, alphabet: str = K8S_RAND) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _hash_name(obj: Any, n: int = 10) -> str:
    """A stable, name-safe hash (like a pod-template-hash)."""
    h = int(_digest(obj), 16)
    out = []
    for _ in range(n):
        h, r = divmod(h, len(K8S_RAND))
        out.append(K8S_RAND[r])
    return "".join(out)


def _duration(text: Any, default: float) -> float:
    """Go durations as KKP writes them (``10m0s``, ``5m``, ``1h0m0s``) → seconds."""
    if text in (None, ""):
        return default
    if isinstance(text, int | float):
        return float(text)
    total, found = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text)):
        found = True
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total if found else default


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` wins; maps merge recursively; lists are replaced."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    cur = obj
    for p in path:
        if not isinstance(cur, dict) or cur.get(p) is None:
            return default
        cur = cur[p]
    return cur


@dataclass
class _Install:
    """A Helm upgrade KKP is running: applied, now waiting for readiness (and hooks) or the timeout."""

    generation: int
    rendered: Rendered
    atomic: bool
    wait: bool
    timeout: _Timer | None = None
    hook_started: bool = False
    hook_done: bool = False


@dataclass
class SimCluster:
    """One simulated KKP user cluster: its store plus what the controllers remember about it."""

    name: str
    index: int
    store: Store
    pod_cidr: str
    node_cidr: str
    cilium_version: str
    lb_pool: list[str]
    kkp_id: str
    api_host: str
    api_port: int = 6443
    nodes: list[str] = field(default_factory=list)
    lb_never: bool = False
    certgen_delay: float = CERTGEN_DELAY
    # controller state
    current: Rendered | None = None  # what is applied right now
    deployed: Rendered | None = None  # the last release that succeeded (atomic rollbacks return here)
    release_version: int = 1
    handled_generation: int = 0
    failures: int = 0
    retries_exceeded: bool = False
    install_timer: _Timer | None = None
    job: _Install | None = None
    certgen_timer: _Timer | None = None
    agents_timer: _Timer | None = None
    agent_fingerprint: str | None = None
    timers: dict[Any, _Timer] = field(default_factory=dict)
    started_pods: set[tuple[str, str]] = field(default_factory=set)
    pod_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    managed_endpoints: set[tuple[str, str]] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)
    scheduled: bool = False
    seq: int = 0

    @property
    def line(self) -> str:
        return ".".join(self.cilium_version.split(".")[:2])


def _condition(status: str, reason: str, message: str, gen: int, now: str) -> Obj:
    return {
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
        "observedGeneration": gen,
    }


def _release(version: int, status: str, description: str, first: str, last: str) -> Obj:
    return {
        "name": RELEASE,
        "version": version,
        "info": {"status": status, "description": description, "firstDeployed": first, "lastDeployed": last},
    }


def _deployment(
    name: str,
    ns: str,
    labels: dict[str, str],
    containers: list[Obj],
    replicas: int,
    host_network: bool = False,
) -> Obj:
    spec: Obj = {"containers": containers}
    if host_network:
        spec["hostNetwork"] = True
    return {
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": dict(labels)}, "spec": spec},
        },
        "status": {},
    }


def _owner(kind: str, obj: Obj) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"].get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owner_kind(pod: Obj) -> str | None:
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    return refs[0].get("kind") if refs else None


def _set_node_cidr(node: Obj, slice_: str, health: str, host: str) -> None:
    node.setdefault("spec", {})["podCIDR"] = slice_
    node["spec"]["podCIDRs"] = [slice_]
    ann = node.setdefault("metadata", {}).setdefault("annotations", {})
    ann["network.cilium.io/ipv4-pod-cidr"] = slice_
    ann["network.cilium.io/ipv4-health-ip"] = health
    ann["network.cilium.io/ipv4-cilium-host"] = host


def _pod_ready(pod: Obj) -> bool:
    for cond in _get(pod, "status", "conditions", default=[]):
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _pod_status(spec: Obj, ip: str, host_ip: str, *, ready: bool, restarts: int) -> Obj:
    now = now_rfc3339()
    st: Obj = {"phase": "Running", "qosClass": "BestEffort"}
    st["hostIP"] = host_ip
    st["hostIPs"] = [{"ip": host_ip}]
    st["podIP"] = ip
    st["podIPs"] = [{"ip": ip}]
    st["startTime"] = now
    st["containerStatuses"] = [
        {
            "name": ct["name"],
            "image": ct.get("image", ""),
            "imageID": f"{ct.get('image', '')}@sha256:{_digest(ct.get('image', ''))}",
            "containerID": f"containerd://{hashlib.sha256((ct['name'] + ip + now).encode()).hexdigest()}",
            "ready": ready,
            "started": True,
            "restartCount": restarts,
            "state": {"running": {"startedAt": now}},
        }
        for ct in spec.get("containers", [])
    ]
    st["conditions"] = []
    _set_ready(st, ready, now)
    return st


def _set_ready(st: Obj, ready: bool, now: str) -> None:
    value = "True" if ready else "False"
    conds = {c["type"]: c for c in st.get("conditions", [])}
    out = []
    for type_ in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"):
        want = value if type_ in ("Ready", "ContainersReady") else "True"
        prev = conds.get(type_)
        if prev and prev.get("status") == want:
            out.append(prev)
        else:
            cond = {"type": type_, "status": want, "lastTransitionTime": now}
            if want == "False":
                cond["reason"] = "ContainersNotReady"
            out.append(cond)
    st["conditions"] = out


def _mark_running(pod: Obj, now: str) -> None:
    st = pod.setdefault("status", {})
    _set_ready(st, True, now)
    for cs in st.get("containerStatuses", []):
        cs["ready"] = True
        cs["started"] = True


def _start_pod(pod: Obj, ip: str, host_ip: str, now: str) -> None:
    old = pod.get("status") or {}
    restarts = 0
    pod["status"] = _pod_status(pod["spec"], ip, host_ip, ready=True, restarts=restarts)
    pod["status"]["startTime"] = old.get("startTime", now)


def _set_waiting(pod: Obj, message: str) -> None:
    st = pod.setdefault("status", {})
    st["phase"] = "Pending"
    st["containerStatuses"] = [
        {
            "name": ct["name"],
            "image": ct.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating", "message": message}},
        }
        for ct in pod["spec"].get("containers", [])
    ]
    conds = [c for c in st.get("conditions", []) if c.get("type") == "PodScheduled"]
    conds.append({"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": message})
    st["conditions"] = conds


def _resolve_port(svc_port: Obj, pod: Obj) -> int:
    """``targetPort`` as number, or by name against the pod's container ports; default: ``port``."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for ct in pod["spec"].get("containers", []):
        for cp in ct.get("ports", []):
            if cp.get("name") == target and cp.get("protocol", "TCP") == svc_port.get("protocol", "TCP"):
                return int(cp["containerPort"])
    return int(svc_port.get("port", 0))


def _alloc_cluster_ip(key: str, used: set[Any]) -> str:
    size = SERVICE_CIDR.num_addresses
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % (size - 2) + 1
    for i in range(size - 2):
        off = (start + i - 1) % (size - 2) + 1
        if off in (1, 10):
            continue
        ip = str(SERVICE_CIDR.network_address + off)
        if ip not in used:
            return ip
    raise RuntimeError("service CIDR exhausted")


def _alloc_node_port(key: str, used: set[Any]) -> int:
    span = 32767 - 30000 + 1
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % span
    for i in range(span):
        port = 30000 + (start + i) % span
        if port != 32379 and port not in used:
            return port
    raise RuntimeError("node ports exhausted")


def _node_ip(node: Obj) -> str:
    for a in _get(node, "status", "addresses", default=[]):
        if a.get("type") == "InternalIP":
            return str(a["address"])
    return ""
