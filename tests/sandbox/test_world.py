"""The simulated KKP + Cilium world, driven on a real asyncio loop through the Store (no HTTP)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sandbox import pki
from sandbox.resources import builtin_types
from sandbox.store import Obj, Store
from sandbox.world import AI_KEY, World, deep_merge

NS = "kube-system"
GUIDE_STEP_2 = {
    "cluster": {"name": "cluster-1", "id": 1},
    "clustermesh": {
        "useAPIServer": True,
        "config": {"enabled": True},
        "apiserver": {"tls": {"auto": {"method": "cronJob"}}, "service": {"type": "LoadBalancer"}},
    },
}


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), timeout=60))


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll on the loop until ``predicate()`` is truthy (wall-clock ``timeout`` only guards hangs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0 if loop.time() < deadline - timeout + 1 else 0.001)


async def idle(world: World) -> None:
    """With time_scale 0: until no reconcile is queued and no timer is left."""
    await wait_for(
        lambda: not any(c.scheduled for c in world.clusters) and not any(t.pending for _, _, t in world.clock._heap),
        what="the world to go idle",
    )


def new_world(n: int = 1, **kw: Any) -> World:
    kw.setdefault("time_scale", 0.0)
    world = World(**kw)
    for i in range(1, n + 1):
        store = Store()
        store.register(builtin_types())
        world.add_cluster(store, index=i)
    world.start(asyncio.get_running_loop())
    return world


def ai(store: Store) -> Obj:
    return store.get(AI_KEY, NS, "cilium")


def values_of(obj: Obj) -> dict[str, Any]:
    block = obj["spec"].get("valuesBlock") or ""
    return yaml.safe_load(block) if block.strip() else obj["spec"].get("values") or {}


def edit_values(store: Store, snippet: dict[str, Any], *, mode: str = "auto") -> None:
    """What a person does with ``kubectl edit``: deep-merge a snippet into the values KKP shows."""
    current = ai(store)
    merged = deep_merge(values_of(current), snippet)
    if mode == "values" or (mode == "auto" and not (current["spec"].get("valuesBlock") or "").strip()):
        current["spec"]["values"] = merged
    else:
        current["spec"]["valuesBlock"] = yaml.safe_dump(merged)
    store.replace(AI_KEY, NS, "cilium", current)


def applied(store: Store) -> bool:
    obj = ai(store)
    ready = obj.get("status", {}).get("conditions", {}).get("Ready", {})
    return bool(
        ready.get("status") == "True"
        and ready.get("observedGeneration") == obj["metadata"]["generation"]
        and obj["status"]["helmRelease"]["info"]["status"] == "deployed"
    )


def failed(store: Store) -> Obj | None:
    ready = ai(store).get("status", {}).get("conditions", {}).get("Ready", {})
    return ready if ready.get("status") == "False" else None


def secret(store: Store, name: str) -> dict[str, str] | None:
    obj = store.try_get("v1/secrets", NS, name)
    return obj["data"] if obj else None


def issued_by(cert: bytes, ca: bytes) -> bool:
    """Independent of sandbox.pki: does ``ca`` sign ``cert``?"""
    try:
        x509.load_pem_x509_certificate(cert).verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    except InvalidSignature:
        return False
    return True


def pem(b64: str) -> bytes:
    return base64.b64decode(b64)


def record_ready_conditions(store: Store) -> list[Obj]:
    seen: list[Obj] = []

    def listen(_ev: str, rt: Any, obj: Obj) -> None:
        if rt.key == AI_KEY:
            seen.append(dict(obj.get("status", {}).get("conditions", {}).get("Ready", {})))

    store.add_listener(listen)
    return seen


def agent_pods(store: Store) -> list[Obj]:
    return store.list("v1/pods", NS, match=lambda p: p["metadata"]["labels"].get("k8s-app") == "cilium")


# ---- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_on_kkp_222_looks_like_a_kkp_user_cluster_with_cilium_113() -> None:
    async def body() -> None:
        world = new_world(2, cilium_version="1.13", kkp_version="2.22")
        c1, c2 = world.clusters
        s = c1.store
        obj = ai(s)
        assert obj["metadata"]["labels"] == {
            "apps.kubermatic.k8c.io/managed-by": "kkp",
            "apps.kubermatic.k8c.io/type": "cni",
        }
        assert obj["spec"]["applicationRef"] == {"name": "cilium", "version": "1.13.8"}
        assert obj["spec"]["deployOptions"]["helm"] == {"wait": True, "timeout": "10m0s", "atomic": False}
        assert "valuesBlock" not in obj["spec"]
        values = obj["spec"]["values"]
        assert "cluster" not in values and "clustermesh" not in values
        assert values["cni"] == {"exclusive": False} and values["kubeProxyReplacement"] == "strict"
        assert values["ipam"]["operator"] == {
            "clusterPoolIPv4PodCIDRList": ["172.25.0.0/16"],
            "clusterPoolIPv4MaskSize": 24,
        }
        assert obj["status"]["conditions"]["Ready"]["reason"] == "InstallationSuccessful"
        assert obj["status"]["helmRelease"]["name"] == "kube-system-cilium"
        assert applied(s)

        nodes = s.list("v1/nodes")
        assert len(nodes) == 2
        for node in nodes:
            assert re.fullmatch(r"[a-z0-9]{10}-worker-[a-z0-9]{6}-[0-9a-f]{10}-[a-z0-9]{5}", node["metadata"]["name"])
            assert ipaddress.ip_network(node["spec"]["podCIDR"]).subnet_of(ipaddress.ip_network("172.25.0.0/16"))
        ips = {a["address"] for n in nodes for a in n["status"]["addresses"] if a["type"] == "InternalIP"}
        assert ips == {"10.1.0.2", "10.1.0.3"}
        assert ai(c2.store)["spec"]["values"]["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.26.0.0/16"]

        agents = agent_pods(s)
        assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(n["metadata"]["name"] for n in nodes)
        assert {p["status"]["podIP"] for p in agents} == ips
        assert all(p["spec"]["containers"][0]["image"] == "quay.io/cilium/cilium:v1.13.8" for p in agents)
        config = s.get("v1/configmaps", NS, "cilium-config")["data"]
        assert (config["cluster-name"], config["cluster-id"]) == ("default", "0")
        await idle(world)
        dns = s.get("v1/endpoints", NS, "kube-dns")["subsets"][0]
        coredns = [p for p in s.list("v1/pods", NS) if p["metadata"]["labels"].get("k8s-app") == "kube-dns"]
        assert {a["ip"] for a in dns["addresses"]} == {p["status"]["podIP"] for p in coredns}
        assert len(coredns) == 2 and applied(s)  # settling wrote nothing that re-triggers KKP

    run(body)


def test_bootstrap_on_kkp_227_uses_values_block_and_atomic_installs() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        obj = ai(world.clusters[0].store)
        assert obj["spec"]["values"] == {}
        parsed = yaml.safe_load(obj["spec"]["valuesBlock"])
        assert parsed["kubeProxyReplacement"] == "true" and parsed["operator"]["replicas"] == 1
        assert obj["spec"]["deployOptions"]["helm"]["atomic"] is True
        assert obj["spec"]["applicationRef"]["version"] == "1.16.9"

    run(body)


# ---- enabling the mesh -------------------------------------------------------------------------


def test_guide_step_2_creates_the_apiserver_its_address_and_certs_from_cilium_ca() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.13", kkp_version="2.22")
        s = world.clusters[0].store
        edit_values(s, GUIDE_STEP_2)
        await wait_for(lambda: applied(s) and ai(s)["metadata"]["generation"] > 1, what="mesh enabled")
        svc = s.get("v1/services", NS, "clustermesh-apiserver")
        assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["nodePort"] == 32379
        lb_ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        assert lb_ip == "203.0.113.10"
        dep = s.get("apps/v1/deployments", NS, "clustermesh-apiserver")
        assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["etcd", "apiserver"]
        assert dep["status"]["readyReplicas"] == 1
        ca = secret(s, "cilium-ca")
        assert ca is not None
        for name in ("server", "admin", "remote"):
            leaf = secret(s, f"clustermesh-apiserver-{name}-cert")
            assert leaf is not None and issued_by(pem(leaf["tls.crt"]), pem(ca["ca.crt"]))
            assert pki.matches_key(pem(leaf["tls.crt"]), pem(leaf["tls.key"]))
            assert s.get("v1/secrets", NS, f"clustermesh-apiserver-{name}-cert")["type"] == "kubernetes.io/tls"
        server = x509.load_pem_x509_certificate(pem(secret(s, "clustermesh-apiserver-server-cert")["tls.crt"]))  # type: ignore[index]
        sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "*.mesh.cilium.io" in sans.get_values_for_type(x509.DNSName)
        assert lb_ip in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        admin = x509.load_pem_x509_certificate(pem(secret(s, "clustermesh-apiserver-admin-cert")["tls.crt"]))  # type: ignore[index]
        assert admin.subject.rfc4514_string() == "CN=root"
        config = s.get("v1/configmaps", NS, "cilium-config")["data"]
        assert (config["cluster-name"], config["cluster-id"]) == ("cluster-1", "1")
        assert secret(s, "cilium-clustermesh") == {}

    run(body)


def test_113_shared_ca_given_later_reissues_the_leaf_certs_by_that_ca() -> None:
    async def body() -> None:
        world = new_world(2, cilium_version="1.13", kkp_version="2.22")
        s1, s2 = (c.store for c in world.clusters)
        edit_values(s1, GUIDE_STEP_2)
        step2_for_c2 = deep_merge(GUIDE_STEP_2, {"cluster": {"name": "cluster-2", "id": 2}})
        edit_values(s2, step2_for_c2)
        await wait_for(lambda: secret(s1, "cilium-ca") and secret(s2, "clustermesh-apiserver-remote-cert"))
        await idle(world)
        ca1 = secret(s1, "cilium-ca")
        assert ca1 is not None
        remote_before = secret(s2, "clustermesh-apiserver-remote-cert")
        assert remote_before is not None and not issued_by(pem(remote_before["tls.crt"]), pem(ca1["ca.crt"]))

        shared = {"cert": ca1["ca.crt"], "key": ca1["ca.key"]}
        edit_values(s2, {"clustermesh": {"apiserver": {"tls": {"ca": shared}}}})
        await wait_for(lambda: applied(s2) and ai(s2)["metadata"]["generation"] > 2)
        await idle(world)
        assert secret(s2, "cilium-ca") == ca1
        assert secret(s2, "clustermesh-apiserver-ca-cert") == ca1
        for name in ("server", "admin", "remote"):
            leaf = secret(s2, f"clustermesh-apiserver-{name}-cert")
            assert leaf is not None and issued_by(pem(leaf["tls.crt"]), pem(ca1["ca.crt"]))

    run(body)


def test_old_ca_key_on_1169_fails_the_installation_with_the_render_error() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.26")
        s = world.clusters[0].store
        ca = pki.make_ca("x")
        snippet = deep_merge(GUIDE_STEP_2, {"clustermesh": {"apiserver": {"tls": {"auto": {"method": "helm"}}}}})
        snippet["clustermesh"]["apiserver"]["tls"]["ca"] = {
            "cert": base64.b64encode(ca.cert_pem).decode(),
            "key": base64.b64encode(ca.key_pem).decode(),
        }
        edit_values(s, snippet)
        cond = await wait_for(lambda: failed(s), what="a failed installation")
        assert cond["reason"] == "InstallationFailed"
        assert cond["message"].startswith("execution error at (cilium/templates/validate.yaml:")
        assert "tls.ca" in cond["message"]
        assert s.try_get("apps/v1/deployments", NS, "clustermesh-apiserver") is None
        assert s.get("v1/configmaps", NS, "cilium-config")["data"]["cluster-name"] == "default"

    run(body)


def test_cronjob_on_116_deadlocks_until_the_helm_timeout_and_rolls_back() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        seen = record_ready_conditions(s)
        waiting: list[str] = []
        s.add_listener(
            lambda _e, rt, o: waiting.extend(
                cs["state"]["waiting"].get("message", "")
                for cs in o.get("status", {}).get("containerStatuses", [])
                if rt.key == "v1/pods" and "waiting" in cs.get("state", {})
            )
        )
        edit_values(s, GUIDE_STEP_2)
        await wait_for(lambda: any(c.get("reason") == "InstallationFailed" for c in seen), what="first failure")
        first = next(c for c in seen if c.get("reason") == "InstallationFailed")
        assert "context deadline exceeded" in first["message"] and "rolled back" in first["message"]
        assert any('secret "clustermesh-apiserver-admin-cert" not found' in m for m in waiting)
        # atomic: rolled back to the release without the mesh, and retried until KKP gives up
        cond = await wait_for(
            lambda: (r := failed(s)) and r["reason"] == "InstallationFailedRetriesExceeded" and r,
            what="give up",
        )
        assert "context deadline exceeded" in cond["message"]
        assert ai(s)["status"]["failures"] == 6
        assert secret(s, "clustermesh-apiserver-admin-cert") is None
        assert s.try_get("apps/v1/deployments", NS, "clustermesh-apiserver") is None

    run(body)


def test_helm_method_on_116_works_and_adds_the_kvstoremesh_pieces() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        edit_values(s, deep_merge(GUIDE_STEP_2, {"clustermesh": {"apiserver": {"tls": {"auto": {"method": "helm"}}}}}))
        await wait_for(lambda: applied(s) and ai(s)["metadata"]["generation"] > 1, what="applied")
        ca = secret(s, "cilium-ca")
        local = secret(s, "clustermesh-apiserver-local-cert")
        assert ca is not None and local is not None and issued_by(pem(local["tls.crt"]), pem(ca["ca.crt"]))
        admin = x509.load_pem_x509_certificate(pem(secret(s, "clustermesh-apiserver-admin-cert")["tls.crt"]))  # type: ignore[index]
        assert admin.subject.rfc4514_string() == "CN=admin-cluster-1"
        dep = s.get("apps/v1/deployments", NS, "clustermesh-apiserver")
        assert "kvstoremesh" in [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
        assert secret(s, "cilium-kvstoremesh") is not None

    run(body)


def test_cronjob_on_119_and_113_does_not_deadlock() -> None:
    async def body() -> None:
        for version, kkp in (("1.19", "2.31"), ("1.13", "2.22")):
            world = new_world(cilium_version=version, kkp_version=kkp)
            s = world.clusters[0].store
            edit_values(s, GUIDE_STEP_2)
            await wait_for(lambda s=s: applied(s) and ai(s)["metadata"]["generation"] > 1, what=f"{version} applied")
            world.stop()

    run(body)


def test_atomic_failures_stop_after_five_retries_until_the_spec_changes() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        edit_values(s, {"cluster": {"id": 3}})  # name stays "default": the chart refuses
        cond = await wait_for(
            lambda: (r := failed(s)) and r["reason"] == "InstallationFailedRetriesExceeded" and r,
            what="give up",
        )
        assert "cannot use default value" in cond["message"]
        assert ai(s)["status"]["failures"] == 6
        await idle(world)
        assert ai(s)["status"]["failures"] == 6  # no more retries on its own
        edit_values(s, {"cluster": {"name": "cluster-1"}})
        await wait_for(lambda: applied(s), what="applied after the fix")
        assert "failures" not in ai(s)["status"]

    run(body)


def test_bad_yaml_and_both_values_fields_fail_the_installation() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        obj = ai(s)
        obj["spec"]["valuesBlock"] = "cluster:\n  name: cluster-1\n id: 1\n"
        s.replace(AI_KEY, NS, "cilium", obj)
        cond = await wait_for(lambda: failed(s), what="yaml failure")
        assert cond["reason"] == "InstallationFailed" and "yaml" in cond["message"]

        obj = ai(s)
        obj["spec"]["valuesBlock"] = "cluster:\n  name: cluster-1\n"
        obj["spec"]["values"] = {"cluster": {"id": 1}}
        s.replace(AI_KEY, NS, "cilium", obj)
        await wait_for(
            lambda: (r := failed(s)) and "Only values or valuesBlock can be set" in r["message"], what="both"
        )

    run(body)


def test_kkp_reasserts_its_keys_and_reserialises_values_block_sorted() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        obj = ai(s)
        values = yaml.safe_load(obj["spec"]["valuesBlock"])
        values["kubeProxyReplacement"] = "false"
        values["cni"] = {"exclusive": True}
        values["cluster"] = {"name": "cluster-1", "id": 1}
        obj["spec"]["valuesBlock"] = "# my comment\nzzz: 1\n" + yaml.safe_dump(values, sort_keys=False)
        s.replace(AI_KEY, NS, "cilium", obj)
        await wait_for(lambda: applied(s) and "# my comment" not in ai(s)["spec"]["valuesBlock"], what="applied")
        block = ai(s)["spec"]["valuesBlock"]
        parsed = yaml.safe_load(block)
        assert parsed["kubeProxyReplacement"] == "true" and parsed["cni"] == {"exclusive": False}
        assert parsed["cluster"] == {"name": "cluster-1", "id": 1} and parsed["zzz"] == 1
        assert block == yaml.safe_dump(parsed, sort_keys=True)
        assert s.get("v1/configmaps", NS, "cilium-config")["data"]["kube-proxy-replacement"] == "true"

    run(body)


# ---- workloads -------------------------------------------------------------------------------------


def nginx(replicas: int) -> Obj:
    labels = {"app": "nginx"}
    return {
        "metadata": {"name": "nginx", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "nginx",
                            "image": "nginx",
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def test_deployments_scale_with_pod_ips_in_the_cluster_pod_cidr_and_feed_endpoints() -> None:
    async def body() -> None:
        world = new_world(2)
        s = world.clusters[1].store  # cluster-2: 172.26.0.0/16
        s.create(
            "v1/services",
            {
                "metadata": {"name": "nginx", "namespace": "default"},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "nginx"},
                    "ports": [{"port": 80, "targetPort": "http"}],
                },
            },
        )
        s.create("apps/v1/deployments", nginx(3))

        def pods() -> list[Obj]:
            return s.list("v1/pods", "default")

        await wait_for(lambda: len(pods()) == 3 and all(p["status"].get("phase") == "Running" for p in pods()))
        for p in pods():
            assert ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network("172.26.0.0/16")
            assert re.fullmatch(r"nginx-[a-z0-9]{10}-[a-z0-9]{5}", p["metadata"]["name"])
        assert len({p["spec"]["nodeName"] for p in pods()}) == 2
        await idle(world)
        svc = s.get("v1/services", "default", "nginx")
        assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network("10.240.16.0/20")
        assert 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
        assert svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "203.0.113.20"
        subset = s.get("v1/endpoints", "default", "nginx")["subsets"][0]
        assert {a["ip"] for a in subset["addresses"]} == {p["status"]["podIP"] for p in pods()}
        assert subset["ports"][0]["port"] == 8080
        (eps,) = s.list("discovery.k8s.io/v1/endpointslices", "default")
        assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "nginx" and len(eps["endpoints"]) == 3
        dep = s.get("apps/v1/deployments", "default", "nginx")
        assert dep["status"]["readyReplicas"] == 3 and dep["status"]["observedGeneration"] == 1

        oldest = sorted(p["metadata"]["name"] for p in pods())
        s.mutate("apps/v1/deployments", "default", "nginx", lambda d: d["spec"].__setitem__("replicas", 0))
        await wait_for(lambda: not pods(), what="scaled to 0")
        await idle(world)
        assert s.get("v1/endpoints", "default", "nginx")["subsets"] == []
        dep = s.get("apps/v1/deployments", "default", "nginx")
        assert dep["status"]["readyReplicas"] == 0 and dep["status"]["observedGeneration"] == 2
        assert oldest  # scale-down removed all three

    run(body)


def test_scale_down_removes_the_newest_pods_first() -> None:
    async def body() -> None:
        world = new_world()
        s = world.clusters[0].store
        s.create("apps/v1/deployments", nginx(1))
        await wait_for(lambda: len(s.list("v1/pods", "default")) == 1)
        (first,) = (p["metadata"]["name"] for p in s.list("v1/pods", "default"))
        s.mutate("apps/v1/deployments", "default", "nginx", lambda d: d["spec"].__setitem__("replicas", 3))
        await wait_for(lambda: len(s.list("v1/pods", "default")) == 3)
        s.mutate("apps/v1/deployments", "default", "nginx", lambda d: d["spec"].__setitem__("replicas", 1))
        await wait_for(lambda: len(s.list("v1/pods", "default")) == 1)
        assert [p["metadata"]["name"] for p in s.list("v1/pods", "default")] == [first]

    run(body)


# ---- agents, peers, certificates ---------------------------------------------------------------


def test_peer_config_change_writes_the_mesh_secret_and_restarts_the_agents() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.14", kkp_version="2.25")
        s = world.clusters[0].store
        edit_values(s, deep_merge(GUIDE_STEP_2, {"clustermesh": {"apiserver": {"tls": {"auto": {"method": "helm"}}}}}))
        await wait_for(lambda: applied(s) and ai(s)["metadata"]["generation"] > 1)
        await idle(world)
        restarts_before = {
            p["spec"]["nodeName"]: p["status"]["containerStatuses"][0]["restartCount"] for p in agent_pods(s)
        }
        seen_not_ready: list[str] = []
        s.add_listener(
            lambda _e, rt, o: (
                seen_not_ready.append(o["metadata"]["name"])
                if rt.key == "v1/pods"
                and o["metadata"]["labels"].get("k8s-app") == "cilium"
                and not o["status"]["containerStatuses"][0]["ready"]
                else None
            )
        )
        peer = {"name": "cluster-2", "address": "", "port": 2379, "ips": ["203.0.113.20"]}
        edit_values(s, {"clustermesh": {"config": {"clusters": [peer]}}})
        await wait_for(lambda: applied(s) and secret(s, "cilium-clustermesh"), what="peer applied")
        await idle(world)

        data = secret(s, "cilium-clustermesh")
        assert data is not None
        assert base64.b64decode(data["cluster-2"]).decode() == (
            "endpoints:\n- https://cluster-2.mesh.cilium.io:2379\n"
            "trusted-ca-file: /var/lib/cilium/clustermesh/cluster-2.etcd-client-ca.crt\n"
            "key-file: /var/lib/cilium/clustermesh/cluster-2.etcd-client.key\n"
            "cert-file: /var/lib/cilium/clustermesh/cluster-2.etcd-client.crt\n"
        )
        remote, ca = secret(s, "clustermesh-apiserver-remote-cert"), secret(s, "cilium-ca")
        assert remote is not None and ca is not None
        assert data["cluster-2.etcd-client.crt"] == remote["tls.crt"]  # 1.14+: no tls → the local remote cert
        assert data["cluster-2.etcd-client-ca.crt"] == ca["ca.crt"]
        ds = s.get("apps/v1/daemonsets", NS, "cilium")
        assert ds["spec"]["template"]["spec"]["hostAliases"] == [
            {"ip": "203.0.113.20", "hostnames": ["cluster-2.mesh.cilium.io"]}
        ]
        assert seen_not_ready  # they went down ...
        for p in agent_pods(s):  # ... and came back, restarted once more
            assert p["status"]["containerStatuses"][0]["ready"] is True
            assert p["status"]["containerStatuses"][0]["restartCount"] > restarts_before[p["spec"]["nodeName"]]
            assert p["spec"]["hostAliases"] == ds["spec"]["template"]["spec"]["hostAliases"]

    run(body)


def test_113_entry_without_tls_is_refused_as_the_real_chart_refuses_it() -> None:
    """The real 1.13 chart reads ``.tls.key`` of every entry: one without ``tls`` fails the render (a nil
    pointer), so KKP's install fails and nothing of it is applied (tests/contracts/test_chart_conformance.py);
    entries that carry ``tls`` are written as given."""

    async def body() -> None:
        world = new_world(cilium_version="1.13", kkp_version="2.22")
        s = world.clusters[0].store
        with_tls = {
            "name": "cluster-3",
            "address": "c3.example.com",
            "port": 32379,
            "tls": {"cert": "Q0VSVA==", "key": "S0VZ"},
        }
        without_tls = {"name": "cluster-2", "address": "", "port": 2379, "ips": ["203.0.113.20"]}
        edit_values(s, deep_merge(GUIDE_STEP_2, {"clustermesh": {"config": {"clusters": [without_tls, with_tls]}}}))
        cond = await wait_for(lambda: failed(s), what="a failed installation")
        assert cond["reason"] == "InstallationFailed"
        assert "nil pointer evaluating interface {}.key" in cond["message"], cond["message"]
        assert secret(s, "cilium-clustermesh") is None  # the failed release applied nothing

        edit_values(s, deep_merge(GUIDE_STEP_2, {"clustermesh": {"config": {"clusters": [with_tls]}}}))
        await wait_for(lambda: applied(s))
        data = secret(s, "cilium-clustermesh")
        assert data is not None
        assert (data["cluster-3.etcd-client.crt"], data["cluster-3.etcd-client.key"]) == ("Q0VSVA==", "S0VZ")
        assert "https://c3.example.com:32379" in base64.b64decode(data["cluster-3"]).decode()

    run(body)


def test_rotate_ca_and_expire_certificates() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.16", kkp_version="2.27")
        s = world.clusters[0].store
        edit_values(s, deep_merge(GUIDE_STEP_2, {"clustermesh": {"apiserver": {"tls": {"auto": {"method": "helm"}}}}}))
        await wait_for(lambda: applied(s) and ai(s)["metadata"]["generation"] > 1)
        await idle(world)
        old_ca = secret(s, "cilium-ca")
        assert old_ca is not None

        world.rotate_ca("cluster-1")
        new_ca = secret(s, "cilium-ca")
        assert new_ca is not None and new_ca["ca.crt"] != old_ca["ca.crt"]
        await idle(world)
        for name in ("server", "admin", "remote", "local"):
            leaf = secret(s, f"clustermesh-apiserver-{name}-cert")
            assert leaf is not None
            assert issued_by(pem(leaf["tls.crt"]), pem(new_ca["ca.crt"]))
            assert not issued_by(pem(leaf["tls.crt"]), pem(old_ca["ca.crt"]))
            assert leaf["ca.crt"] == new_ca["ca.crt"]

        world.expire_certificates(1)
        for name in ("server", "admin", "remote", "local"):
            leaf = secret(s, f"clustermesh-apiserver-{name}-cert")
            assert leaf is not None and not pki.valid_now(pem(leaf["tls.crt"]))
            assert issued_by(pem(leaf["tls.crt"]), pem(new_ca["ca.crt"]))

    run(body)


def test_lb_never_makes_the_helm_wait_time_out() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.13", kkp_version="2.22")
        s = world.clusters[0].store
        world.set_lb_never("cluster-1", True)
        edit_values(s, GUIDE_STEP_2)
        cond = await wait_for(lambda: failed(s), what="timeout")
        assert "context deadline exceeded" in cond["message"]
        svc = s.get("v1/services", NS, "clustermesh-apiserver")
        assert not svc["status"]["loadBalancer"].get("ingress")
        assert ai(s)["status"]["helmRelease"]["info"]["status"] == "failed"  # non-atomic on KKP 2.22

    run(body)


def test_set_pod_cidr_moves_nodes_values_and_pods() -> None:
    async def body() -> None:
        world = new_world(2)
        s2 = world.clusters[1].store
        world.set_pod_cidr("cluster-2", "172.25.0.0/16")
        await wait_for(lambda: applied(s2) and ai(s2)["metadata"]["generation"] > 1)
        await idle(world)
        net = ipaddress.ip_network("172.25.0.0/16")
        for node in s2.list("v1/nodes"):
            assert ipaddress.ip_network(node["spec"]["podCIDR"]).subnet_of(net)
        assert values_of(ai(s2))["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["172.25.0.0/16"]
        assert s2.get("v1/configmaps", NS, "cilium-config")["data"]["cluster-pool-ipv4-cidr"] == "172.25.0.0/16"
        coredns = [p for p in s2.list("v1/pods", NS) if p["metadata"]["labels"].get("k8s-app") == "kube-dns"]
        assert coredns and all(ipaddress.ip_address(p["status"]["podIP"]) in net for p in coredns)

    run(body)


def test_with_a_time_scale_the_steps_happen_in_their_order() -> None:
    async def body() -> None:
        world = new_world(cilium_version="1.13", kkp_version="2.22", time_scale=0.01)
        s = world.clusters[0].store
        order: list[str] = []

        def listen(_e: str, rt: Any, o: Obj) -> None:
            name = o["metadata"]["name"]
            if (
                rt.key == "v1/services"
                and name == "clustermesh-apiserver"
                and o["status"]["loadBalancer"].get("ingress")
            ):
                order.append("lb")
            elif rt.key == "v1/secrets" and name == "clustermesh-apiserver-server-cert":
                order.append("certs")
            elif rt.key == AI_KEY:
                ready = o["status"]["conditions"]["Ready"]
                if ready["status"] == "Unknown":
                    order.append("in-progress")
                elif ready["status"] == "True" and ready["observedGeneration"] == o["metadata"]["generation"] > 1:
                    order.append("ready")

        s.add_listener(listen)
        edit_values(s, GUIDE_STEP_2)
        await wait_for(lambda: "ready" in order, timeout=30)
        firsts = [x for i, x in enumerate(order) if x not in order[:i]]
        assert firsts == ["in-progress", "lb", "certs", "ready"]
        world.stop()

    run(body)
