"""The sandbox API server, driven by the official Python client over real HTTPS."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import urllib3
from kubernetes import client, dynamic, watch
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from sandbox.kubeapi import ApiFaults
from sandbox.patching import json_merge_patch, strategic_merge_patch
from sandbox.resources import builtin_types
from sandbox.selectors import matcher
from sandbox.store import ApiError, Store

from .conftest import KubeServer

AI_GROUP, AI_VERSION, AI_PLURAL = "apps.kubermatic.k8c.io", "v1", "applicationinstallations"


def _pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}], **spec},
    }


def _deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "api:1",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 80}],
                        },
                        {"name": "sidecar", "image": "side:1"},
                    ]
                },
            },
        },
    }


def _appinstall(name: str, version: str = "1.15.16") -> dict[str, Any]:
    return {
        "apiVersion": f"{AI_GROUP}/{AI_VERSION}",
        "kind": "ApplicationInstallation",
        "metadata": {"name": name},
        "spec": {
            "applicationRef": {"name": "cilium", "version": version},
            "namespace": {"name": "kube-system"},
            "values": {"cluster": {"name": "c1", "id": 1}},
        },
    }


@pytest.fixture
def core(kube_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api_client)


@pytest.fixture
def apps(kube_api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube_api_client)


@pytest.fixture
def custom(kube_api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api_client)


@pytest.fixture
def raw(kube_server: KubeServer) -> Iterator[httpx.Client]:
    """A plain HTTP client, for what the official client hides (status codes, headers, bodies)."""
    ctx = ssl.create_default_context(cafile=str(kube_server.ca_file))
    with httpx.Client(
        base_url=kube_server.url,
        verify=ctx,
        headers={"Authorization": f"Bearer {kube_server.token}"},
        timeout=10,
    ) as c:
        yield c


@pytest.fixture
def faults(kube_server: KubeServer) -> Iterator[ApiFaults]:
    """The server's fault switches, reset after the test whatever it did."""
    yield kube_server.faults
    kube_server.faults.error_rate = 0.0
    kube_server.faults.latency_s = 0.0
    kube_server.faults.down = False


# ---- discovery -------------------------------------------------------------------------------------


def test_version_reports_the_configured_minor(kube_api_client: client.ApiClient) -> None:
    info = client.VersionApi(kube_api_client).get_code()
    assert (info.major, info.minor) == ("1", "32")


def test_legacy_discovery_lists_groups_and_subresources(raw: httpx.Client) -> None:
    core = raw.get("/api/v1").json()
    assert core["groupVersion"] == "v1"
    names = {r["name"]: r for r in core["resources"]}
    assert {
        "pods",
        "pods/exec",
        "pods/log",
        "pods/status",
        "namespaces",
        "secrets",
        "services/status",
    } <= set(names)
    assert names["namespaces"]["namespaced"] is False
    groups = {g["name"] for g in raw.get("/apis").json()["groups"]}
    assert {"apps", "discovery.k8s.io", AI_GROUP} <= groups
    apps = {r["name"]: r for r in raw.get("/apis/apps/v1").json()["resources"]}
    assert apps["deployments/scale"].items() >= {"group": "autoscaling", "version": "v1", "kind": "Scale"}.items()
    ai = {r["name"]: r for r in raw.get(f"/apis/{AI_GROUP}/v1").json()["resources"]}
    assert ai[AI_PLURAL]["shortNames"] == ["appinstall"]
    assert raw.get("/apis/nope.example.com/v1").status_code == 404


def test_dynamic_client_discovers_and_reads(kube_api_client: client.ApiClient, tmp_path: Path) -> None:
    dyn = dynamic.DynamicClient(kube_api_client, cache_file=str(tmp_path / "discovery.json"))
    dyn.resources.get(api_version="v1", kind="ConfigMap").create(
        body={"metadata": {"name": "dyn-cm"}, "data": {"k": "v"}}, namespace="team-a"
    )
    cm = dyn.resources.get(api_version="v1", kind="ConfigMap").get(name="dyn-cm", namespace="team-a")
    assert cm.data.k == "v"
    ai = dyn.resources.get(api_version=f"{AI_GROUP}/v1", kind="ApplicationInstallation")
    assert ai.namespaced and ai.short_names == ["appinstall"]
    scale = dyn.resources.get(api_version="apps/v1", kind="Deployment").subresources["scale"]
    assert scale.kind == "Scale"


def test_openapi_index_points_at_hashed_documents_with_field_validation(raw: httpx.Client) -> None:
    index = raw.get("/openapi/v3").json()["paths"]
    url = index["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    assert index["api/v1"]["serverRelativeURL"] != index["apis/apps/v1"]["serverRelativeURL"].replace(
        "apis/apps", "api"
    )
    doc = raw.get(url).json()
    item = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]
    for op in ("put", "patch"):
        assert item[op]["x-kubernetes-group-version-kind"] == {
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
        }
        assert "fieldValidation" in [p["name"] for p in item[op]["parameters"]]
    post = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"]
    assert "fieldValidation" in [p["name"] for p in post["parameters"]]
    assert raw.get("/openapi/v2").status_code == 404


# ---- CRUD ------------------------------------------------------------------------------------------


def test_create_returns_201_with_server_set_metadata(raw: httpx.Client, core: client.CoreV1Api) -> None:
    resp = raw.post("/api/v1/namespaces/team-a/configmaps", content=json.dumps({"metadata": {"name": "cm-201"}}))
    assert resp.status_code == 201  # no Content-Type: treated as JSON, like the Python client sends
    meta = resp.json()["metadata"]
    assert meta["namespace"] == "team-a" and meta["uid"] and meta["creationTimestamp"]
    assert isinstance(meta["resourceVersion"], str) and meta["generation"] == 1
    later = core.create_namespaced_config_map("team-a", {"metadata": {"name": "cm-201b"}})
    assert int(later.metadata.resource_version) > int(meta["resourceVersion"])


def test_duplicate_create_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("team-a", {"metadata": {"name": "dup"}, "stringData": {"a": "b"}})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("team-a", {"metadata": {"name": "dup"}})
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "AlreadyExists"
    assert core.read_namespaced_secret("dup", "team-a").data == {"a": "Yg=="}


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "x"}})
    assert err.value.status == 404
    assert "no-such-ns" in json.loads(err.value.body)["message"]


def test_get_missing_object_is_404_status(raw: httpx.Client) -> None:
    resp = raw.get("/api/v1/namespaces/team-a/pods/missing")
    assert resp.status_code == 404
    assert resp.json().items() >= {"kind": "Status", "reason": "NotFound", "code": 404}.items()


def test_list_filters_by_label_and_field_selectors(core: client.CoreV1Api, raw: httpx.Client) -> None:
    core.create_namespaced_pod("team-b", _pod("web-1", {"app": "web", "tier": "front"}, nodeName="n1"))
    core.create_namespaced_pod("team-b", _pod("web-2", {"app": "web"}, nodeName="n2"))
    core.create_namespaced_pod("team-b", _pod("db-1", {"app": "db"}, nodeName="n1"))

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("team-b", **kw).items]

    assert names(label_selector="app=web") == ["web-1", "web-2"]
    assert names(label_selector="app in (web,db),!tier") == ["db-1", "web-2"]
    assert names(label_selector="app!=web") == ["db-1"]
    assert names(label_selector="tier") == ["web-1"]
    assert names(field_selector="spec.nodeName=n1") == ["db-1", "web-1"]
    assert names(field_selector="metadata.name!=web-1", label_selector="app notin (db)") == ["web-2"]
    everywhere = core.list_pod_for_all_namespaces(field_selector="metadata.namespace=team-b")
    assert len(everywhere.items) == 3
    listing = raw.get("/api/v1/namespaces/team-b/pods").json()
    assert listing["kind"] == "PodList" and listing["metadata"]["resourceVersion"]
    assert raw.get("/api/v1/pods", params={"labelSelector": "app in (web"}).status_code == 400
    assert raw.get("/api/v1/pods", params={"fieldSelector": "spec.bogus=1"}).status_code == 400


def test_replace_bumps_generation_and_stale_rv_conflicts(core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    dep = apps.create_namespaced_deployment("team-a", _deployment("rep"))
    dep.spec.replicas = 5
    updated = apps.replace_namespaced_deployment("rep", "team-a", dep)
    assert updated.spec.replicas == 5 and updated.metadata.generation == 2
    dep.spec.replicas = 7  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment("rep", "team-a", dep)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    assert apps.read_namespaced_deployment("rep", "team-a").spec.replicas == 5


def test_delete_removes_the_object(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team-a", {"metadata": {"name": "gone"}})
    core.delete_namespaced_config_map("gone", "team-a")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("gone", "team-a")
    assert err.value.status == 404


def test_protobuf_body_is_415(raw: httpx.Client) -> None:
    resp = raw.post(
        "/api/v1/namespaces/team-a/secrets",
        content=b"k8s\x00\x0a",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    )
    assert resp.status_code == 415


def test_table_accept_returns_kind_columns(raw: httpx.Client, core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "team-a",
        {
            "metadata": {"name": "tbl"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 443, "nodePort": 32379}]},
        },
    )
    accept = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    body = raw.get("/api/v1/namespaces/team-a/services", headers={"Accept": accept}, params={"limit": 500}).json()
    assert body["kind"] == "Table"
    cols = [c["name"] for c in body["columnDefinitions"] if c["priority"] == 0]
    assert cols == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"]
    row = next(r for r in body["rows"] if r["cells"][0] == "tbl")
    assert row["cells"][1:5] == ["LoadBalancer", "<none>", "<pending>", "443:32379/TCP"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["namespace"] == "team-a"


# ---- patches ---------------------------------------------------------------------------------------


def test_strategic_merge_patch_merges_containers_by_name(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment("team-a", _deployment("smp"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "api"}, {"name": "sidecar"}],
                    "containers": [{"name": "api", "image": "api:2", "env": [{"name": "B", "value": "3"}]}],
                }
            }
        }
    }
    out = apps.patch_namespaced_deployment("smp", "team-a", patch)  # the client's default is strategic
    containers = out.spec.template.spec.containers
    assert [c.name for c in containers] == ["api", "sidecar"]
    assert containers[0].image == "api:2" and containers[0].ports[0].container_port == 80
    assert {e.name: e.value for e in containers[0].env} == {"A": "1", "B": "3"}


def test_strategic_merge_patch_directives() -> None:
    current = {
        "spec": {
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
            "volumes": [{"name": "v1"}],
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "finalizers": ["f1", "f2"],
        }
    }
    patch = {
        "spec": {
            "containers": [{"name": "a", "$patch": "delete"}],
            "volumes": [{"$patch": "replace"}, {"name": "v2"}],
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "$deleteFromPrimitiveList/finalizers": ["f1"],
        }
    }
    out = strategic_merge_patch(current, patch, "Pod")
    assert out["spec"]["containers"] == [{"name": "b", "image": "y"}]
    assert out["spec"]["volumes"] == [{"name": "v2"}]
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    assert out["spec"]["finalizers"] == ["f2"]
    assert "$patch" not in json.dumps(out) and "$retainKeys" not in json.dumps(out)


def test_service_ports_merge_by_port() -> None:
    current = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    out = strategic_merge_patch(current, {"spec": {"ports": [{"port": 443, "nodePort": 30443}]}}, "Service")
    assert out["spec"]["ports"] == [
        {"port": 80, "name": "http"},
        {"port": 443, "name": "https", "nodePort": 30443},
    ]


def test_json_merge_patch_replaces_lists_and_deletes_nulls() -> None:
    out = json_merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]})
    assert out == {"a": {"c": 2}, "l": [3]}


def test_merge_and_json_patch_over_http(core: client.CoreV1Api, kube_api_client: client.ApiClient) -> None:
    core.create_namespaced_config_map("team-a", {"metadata": {"name": "mp"}, "data": {"a": "1", "b": "2"}})
    merged = core.patch_namespaced_config_map(
        "mp", "team-a", {"data": {"a": None, "c": "3"}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_config_map("mp", "team-a", [{"op": "replace", "path": "/data/b", "value": "9"}])
    assert patched.data == {"b": "9", "c": "3"}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("mp", "team-a", [{"op": "test", "path": "/data/b", "value": "0"}])
    assert err.value.status == 422


def test_patch_with_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("team-a", {"metadata": {"name": "mp-rv"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("mp-rv", "team-a", {"data": {"a": "2"}})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "mp-rv",
            "team-a",
            {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"a": "3"}},
        )
    assert err.value.status == 409


def test_server_side_apply_creates_then_merges(apps: client.AppsV1Api, raw: httpx.Client) -> None:
    body = _deployment("ssa")
    ssa = "application/apply-patch+yaml"  # without it the client sends a strategic merge patch
    created = apps.patch_namespaced_deployment(
        "ssa", "team-a", body, field_manager="pipeline", force=True, _content_type=ssa
    )
    assert created.spec.replicas == 2
    again = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ssa"},
        "spec": {"replicas": 4},
    }
    merged = apps.patch_namespaced_deployment(
        "ssa", "team-a", again, field_manager="pipeline", force=True, _content_type=ssa
    )
    assert merged.spec.replicas == 4
    assert [c.name for c in merged.spec.template.spec.containers] == ["api", "sidecar"]
    yaml_body = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ssa\nspec:\n  replicas: 3\n"
    resp = raw.patch(
        "/apis/apps/v1/namespaces/team-a/deployments/ssa",
        params={"fieldManager": "kubectl", "force": "false"},
        content=yaml_body,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert resp.status_code == 200 and resp.json()["spec"]["replicas"] == 3


# ---- subresources ----------------------------------------------------------------------------------


def test_status_subresource_updates_only_status(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "team-a", {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 2379}]}}
    )
    svc = core.patch_namespaced_service_status(
        "lb",
        "team-a",
        {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}}, "spec": {"type": "ClusterIP"}},
    )
    assert svc.status.load_balancer.ingress[0].ip == "10.0.0.9" and svc.spec.type == "LoadBalancer"
    ignored = core.patch_namespaced_service(
        "lb", "team-a", {"status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}}
    )
    assert ignored.status.load_balancer.ingress[0].ip == "10.0.0.9"
    read = core.read_namespaced_service_status("lb", "team-a")
    read.status.load_balancer.ingress[0].ip = "10.0.0.10"
    assert (
        core.replace_namespaced_service_status("lb", "team-a", read).status.load_balancer.ingress[0].ip == "10.0.0.10"
    )


def test_scale_subresource_speaks_autoscaling_v1(apps: client.AppsV1Api, raw: httpx.Client) -> None:
    apps.create_namespaced_deployment("team-a", _deployment("scaled", replicas=3))
    scale = apps.read_namespaced_deployment_scale("scaled", "team-a")
    assert scale.spec.replicas == 3 and scale.status.selector == "app=scaled"
    out = apps.patch_namespaced_deployment_scale("scaled", "team-a", {"spec": {"replicas": 0}})
    assert out.kind == "Scale" and out.spec.replicas == 0
    assert apps.read_namespaced_deployment("scaled", "team-a").spec.replicas == 0
    resp = raw.patch(
        "/apis/apps/v1/namespaces/team-a/deployments/scaled/scale",
        content=json.dumps({"spec": {"replicas": 2}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.json()["apiVersion"] == "autoscaling/v1" and resp.json()["spec"]["replicas"] == 2
    scale = apps.read_namespaced_deployment_scale("scaled", "team-a")
    scale.spec.replicas = 1
    assert apps.replace_namespaced_deployment_scale("scaled", "team-a", scale).spec.replicas == 1


# ---- custom objects --------------------------------------------------------------------------------


def test_custom_objects_create_get_patch_replace(custom: client.CustomObjectsApi) -> None:
    args = (AI_GROUP, AI_VERSION, "kube-system", AI_PLURAL)
    created = custom.create_namespaced_custom_object(*args, _appinstall("cilium"))
    assert created["metadata"]["generation"] == 1 and created["kind"] == "ApplicationInstallation"
    got = custom.get_namespaced_custom_object(*args, "cilium")
    assert got["spec"]["values"] == {"cluster": {"name": "c1", "id": 1}}
    patched = custom.patch_namespaced_custom_object(
        *args, "cilium", {"spec": {"values": {"clustermesh": {"useAPIServer": True}}}}
    )
    assert patched["spec"]["values"] == {
        "cluster": {"name": "c1", "id": 1},
        "clustermesh": {"useAPIServer": True},
    }
    assert patched["metadata"]["generation"] == 2
    patched["spec"]["applicationRef"]["version"] = "1.16.5"
    replaced = custom.replace_namespaced_custom_object(*args, "cilium", patched)
    assert replaced["spec"]["applicationRef"]["version"] == "1.16.5"
    status = custom.patch_namespaced_custom_object_status(
        *args, "cilium", {"status": {"helmRelease": {"info": {"status": "deployed"}}}}
    )
    assert status["status"]["helmRelease"]["info"]["status"] == "deployed"
    assert status["metadata"]["generation"] == 3
    stale = dict(patched, spec={**patched["spec"], "values": {}})
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(*args, "cilium", stale)
    assert err.value.status == 409


def test_strategic_merge_on_custom_resource_is_415(raw: httpx.Client, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(AI_GROUP, AI_VERSION, "kube-system", AI_PLURAL, _appinstall("smp-ai"))
    resp = raw.patch(
        f"/apis/{AI_GROUP}/v1/namespaces/kube-system/{AI_PLURAL}/smp-ai",
        content=json.dumps({"spec": {"values": {}}}),
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert resp.status_code == 415


# ---- watch -----------------------------------------------------------------------------------------


def test_watch_sends_current_state_then_ends_at_timeout(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "watch-a"}})
    core.create_namespaced_config_map("watch-a", {"metadata": {"name": "w1"}})
    events = list(watch.Watch().stream(core.list_namespaced_config_map, "watch-a", timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "w1")]


def test_watch_from_resource_version_sees_later_changes_filtered(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "watch-b"}})
    listing = core.list_namespaced_config_map("watch-b")
    rv = listing.metadata.resource_version
    core.create_namespaced_config_map("watch-b", {"metadata": {"name": "seen", "labels": {"w": "yes"}}})
    core.create_namespaced_config_map("watch-b", {"metadata": {"name": "hidden", "labels": {"w": "no"}}})
    core.patch_namespaced_config_map("seen", "watch-b", {"data": {"x": "1"}})
    core.delete_namespaced_config_map("seen", "watch-b")
    events = list(
        watch.Watch().stream(
            core.list_namespaced_config_map,
            "watch-b",
            resource_version=rv,
            label_selector="w=yes",
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "seen"),
        ("MODIFIED", "seen"),
        ("DELETED", "seen"),
    ]


def test_watch_delivers_live_events(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "watch-c"}})
    rv = core.list_namespaced_config_map("watch-c").metadata.resource_version
    w = watch.Watch()
    seen: list[tuple[str, str]] = []

    def consume() -> None:
        for e in w.stream(core.list_namespaced_config_map, "watch-c", resource_version=rv, timeout_seconds=20):
            seen.append((e["type"], e["object"].metadata.name))
            if len(seen) == 2:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    core.create_namespaced_config_map("watch-c", {"metadata": {"name": "live"}})
    core.delete_namespaced_config_map("live", "watch-c")
    t.join(30)
    assert seen == [("ADDED", "live"), ("DELETED", "live")]


def test_watch_from_too_old_resource_version_is_410(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, "team-a", resource_version="1", timeout_seconds=1))
    assert err.value.status == 410


def test_watch_from_a_list_rv_survives_changes_to_other_kinds(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service_account("team-b").metadata.resource_version
    core.create_namespaced_config_map("team-b", {"metadata": {"name": "other-kind"}})  # moves the global RV on
    core.create_namespaced_service_account("team-b", {"metadata": {"name": "late-sa"}})
    events = list(
        watch.Watch().stream(core.list_namespaced_service_account, "team-b", resource_version=rv, timeout_seconds=1)
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "late-sa")]


def test_store_history_compaction_expires_old_resource_versions() -> None:
    store = Store(history_limit=2)
    store.register(builtin_types())
    first = store.create("v1/namespaces", {"metadata": {"name": "a"}})
    for name in ("b", "c", "d"):
        store.create("v1/namespaces", {"metadata": {"name": name}})
    assert store.events_since("v1/namespaces", int(first["metadata"]["resourceVersion"])) is None
    recent = store.events_since("v1/namespaces", int(first["metadata"]["resourceVersion"]) + 1)
    assert recent is not None and [e.object["metadata"]["name"] for e in recent] == ["c", "d"]


def test_watch_with_table_accept_sends_tables(raw: httpx.Client, core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("kube-public", {"metadata": {"name": "tw"}, "data": {"a": "Yg=="}})
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    with raw.stream(
        "GET",
        "/api/v1/namespaces/kube-public/secrets",
        params={"watch": "1", "timeoutSeconds": "1"},
        headers={"Accept": accept},
    ) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[0]["type"] == "ADDED" and lines[0]["object"]["kind"] == "Table"
    assert lines[0]["object"]["rows"][0]["cells"][:3] == ["tw", "Opaque", 1]


# ---- auth, exec, faults ----------------------------------------------------------------------------


def test_requests_without_the_token_are_401(kube_server: KubeServer) -> None:
    ctx = ssl.create_default_context(cafile=str(kube_server.ca_file))
    with httpx.Client(base_url=kube_server.url, verify=ctx) as anon:
        resp = anon.get("/api/v1/namespaces")
        assert resp.status_code == 401 and resp.json()["kind"] == "Status"
        wrong = anon.get("/version", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def _exec_client(kube_server: KubeServer) -> client.ApiClient:
    cfg = client.Configuration()
    k8s_config.load_kube_config(config_file=str(kube_server.kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def test_exec_streams_stdout_and_exit_code(kube_server: KubeServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("team-a", _pod("exec-me"))
    with _exec_client(kube_server) as api:
        exec_core = client.CoreV1Api(api)
        resp = stream(
            exec_core.connect_get_namespaced_pod_exec,
            "exec-me",
            "team-a",
            command=["cilium", "status", "--brief"],
            stderr=True,
            stdout=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
        resp.run_forever(timeout=10)
        assert resp.read_stdout() == "cilium status --brief\n"
        assert resp.returncode == 0
        failing = stream(
            exec_core.connect_get_namespaced_pod_exec,
            "exec-me",
            "team-a",
            command=["fail", "3"],
            container="main",
            stderr=True,
            stdout=True,
            _preload_content=False,
        )
        failing.run_forever(timeout=10)
        assert failing.read_stderr() == "failing with 3\n"
        assert failing.returncode == 3
    assert kube_server.exec_calls[-1] == ("team-a", "exec-me", "main", ["fail", "3"])


def test_exec_in_unknown_container_reports_an_error_status(kube_server: KubeServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("team-a", _pod("exec-bad"))
    calls_before = len(kube_server.exec_calls)
    with _exec_client(kube_server) as api:
        resp = stream(
            client.CoreV1Api(api).connect_get_namespaced_pod_exec,
            "exec-bad",
            "team-a",
            command=["true"],
            container="nope",
            stdout=True,
            _preload_content=False,
        )
        resp.run_forever(timeout=10)
        error = json.loads(resp.read_channel(3))
    assert error["status"] == "Failure" and "nope" in error["message"]
    assert len(kube_server.exec_calls) == calls_before


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v4.channel.k8s.io"], "v4.channel.k8s.io"),
        (["v4.channel.k8s.io", "v5.channel.k8s.io"], "v5.channel.k8s.io"),
    ],
)
def test_exec_frames_on_the_wire(
    kube_server: KubeServer, core: client.CoreV1Api, offered: list[str], chosen: str
) -> None:
    try:
        core.create_namespaced_pod("team-a", _pod("exec-wire"))
    except ApiException as exc:  # the other parametrization made it already
        assert exc.status == 409
    ctx = ssl.create_default_context(cafile=str(kube_server.ca_file))
    url = (
        f"wss://127.0.0.1:{kube_server.server.port}/api/v1/namespaces/team-a/pods/exec-wire/exec"
        "?command=fail&command=5&stdout=true&stderr=true"
    )
    with ws_connect(
        url,
        ssl=ctx,
        subprotocols=offered,
        additional_headers={"Authorization": f"Bearer {kube_server.token}"},
    ) as conn:
        assert conn.subprotocol == chosen
        frames = [bytes(f) for f in conn]  # iterates until the server closes
        assert conn.close_code == 1000
    assert frames[0] == b"\x02failing with 5\n"
    status = json.loads(frames[-1][1:])
    assert frames[-1][0] == 3 and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]


def test_exec_on_missing_pod_is_refused_before_the_upgrade(kube_server: KubeServer) -> None:
    ctx = ssl.create_default_context(cafile=str(kube_server.ca_file))
    url = f"wss://127.0.0.1:{kube_server.server.port}/api/v1/namespaces/team-a/pods/ghost/exec?command=ls"
    with pytest.raises(InvalidStatus) as err:
        ws_connect(
            url,
            ssl=ctx,
            subprotocols=["v5.channel.k8s.io"],
            additional_headers={"Authorization": f"Bearer {kube_server.token}"},
        )
    assert err.value.response.status_code == 404


def test_error_rate_one_fails_every_request(faults: ApiFaults, raw: httpx.Client, core: client.CoreV1Api) -> None:
    faults.error_rate = 1.0
    statuses: list[int | str] = []
    for _ in range(12):
        try:
            statuses.append(raw.get("/api/v1/namespaces").status_code)
        except httpx.TransportError:
            statuses.append("dropped")
    assert set(statuses) <= {500, "dropped"} and 500 in statuses
    with pytest.raises((ApiException, urllib3.exceptions.HTTPError)):
        core.list_namespace()


def test_down_answers_503_and_recovers(faults: ApiFaults, core: client.CoreV1Api) -> None:
    faults.down = True
    with pytest.raises(ApiException) as err:
        core.list_namespace()
    assert err.value.status == 503
    faults.down = False
    assert any(ns.metadata.name == "default" for ns in core.list_namespace().items)


def test_latency_delays_answers_past_a_short_client_timeout(faults: ApiFaults, core: client.CoreV1Api) -> None:
    faults.latency_s = 1.5
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.read_namespace("default", _request_timeout=0.2)
    assert core.read_namespace("default", _request_timeout=10).metadata.name == "default"


def test_bad_selectors_are_api_errors() -> None:
    with pytest.raises(ApiError) as err:
        matcher("a in (b", None)
    assert err.value.code == 400
    match = matcher("env in (prod, stage),team", "metadata.name==x")
    assert match is not None
    assert match({"metadata": {"name": "x", "labels": {"env": "prod", "team": "t"}}})
    assert not match({"metadata": {"name": "x", "labels": {"env": "dev", "team": "t"}}})
