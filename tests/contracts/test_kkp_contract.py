"""The KKP REST API contract: what the pipeline sends and what the sandbox answers, against KKP's swagger.

``kkp-swagger-subset.json`` is a verbatim subset of kubermatic/dashboard's
``modules/api/cmd/kubermatic-api/swagger.json`` (see README.md). Swagger 2.0 schemas are JSON Schema
draft 4 (plus ``x-`` keys, ignored); ``$ref``s to definitions left out of the subset (cloud provider
specs and other parts the pipeline never sends or reads) resolve to an open schema.

Swagger objects accept unknown keys, which KKP's Go decoder drops silently; a misspelt field would be
lost without an error. So on top of the schema, every key we send or the sandbox returns must be a
property the contract declares.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

SUBSET = Path(__file__).with_name("kkp-swagger-subset.json")
CLUSTERS = re.compile(r"^/api/v2/projects/[^/]+/clusters$")
CLUSTER = re.compile(r"^/api/v2/projects/[^/]+/clusters/[^/]+$")
HEALTH = re.compile(r"^/api/v2/projects/[^/]+/clusters/[^/]+/health$")
KUBECONFIG = re.compile(r"^/api/v2/projects/[^/]+/clusters/[^/]+/kubeconfig$")


def _load() -> dict[str, Any]:
    doc = json.loads(SUBSET.read_text())
    definitions = doc["definitions"]

    def open_missing(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.split("/")[-1] not in definitions:
                return {}
            return {k: open_missing(v) for k, v in node.items()}
        if isinstance(node, list):
            return [open_missing(v) for v in node]
        return node

    return {name: open_missing(schema) for name, schema in definitions.items()}


DEFINITIONS = _load()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DEFINITIONS[schema["$ref"].split("/")[-1]]
    return schema


def unknown_keys(instance: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Keys of ``instance`` that the (resolved) schema does not declare, as JSON paths."""
    schema = _resolve(schema)
    found: list[str] = []
    if isinstance(instance, dict) and "properties" in schema and "additionalProperties" not in schema:
        for key, value in instance.items():
            if key not in schema["properties"]:
                found.append(f"{where}.{key}")
            else:
                found.extend(unknown_keys(value, schema["properties"][key], f"{where}.{key}"))
    elif isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in instance.items():
            found.extend(unknown_keys(value, schema["additionalProperties"], f"{where}.{key}"))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            found.extend(unknown_keys(value, schema["items"], f"{where}[{i}]"))
    return found


def conform(instance: Any, definition: str) -> list[str]:
    """Every way ``instance`` breaks the contract's ``definition`` (empty when it conforms)."""
    root = {"$ref": f"#/definitions/{definition}", "definitions": DEFINITIONS}
    validator = jsonschema.Draft4Validator(root)
    problems = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)
    ]
    problems += [
        f"{path}: not in the contract" for path in unknown_keys(instance, {"$ref": f"#/definitions/{definition}"})
    ]
    return problems


def exchange_problems(exchanges: list[Any]) -> list[str]:
    """Check each recorded exchange (sandbox side) against the operation's request and response schemas."""
    problems: list[str] = []
    for ex in exchanges:
        tag = f"{ex.method} {ex.path} -> {ex.status}"
        if ex.status >= 400:
            problems += [f"{tag}: {p}" for p in conform(ex.response, "errorResponse")]
            if ex.response.get("error", {}).get("code") != ex.status:
                problems.append(f"{tag}: error.code is not the HTTP status")
            if ex.method == "POST" and ex.request is not None and isinstance(ex.request, dict):
                problems += [f"{tag} request: {p}" for p in conform(ex.request, "CreateClusterSpec")]
            continue
        if ex.method == "POST" and CLUSTERS.match(ex.path):
            problems += [f"{tag} request: {p}" for p in conform(ex.request, "CreateClusterSpec")]
            problems += [f"{tag}: {p}" for p in conform(ex.response, "Cluster")]
            if ex.status != 201:
                problems.append(f"{tag}: createClusterV2 answers 201")
        elif CLUSTERS.match(ex.path):
            problems += [f"{tag}: {p}" for p in conform(ex.response, "ClusterList")]
        elif HEALTH.match(ex.path):
            problems += [f"{tag}: {p}" for p in conform(ex.response, "ClusterHealth")]
        elif KUBECONFIG.match(ex.path):
            if ex.content_type != "application/octet-stream" or not isinstance(ex.response, bytes):
                problems.append(f"{tag}: the Kubeconfig response is bytes as application/octet-stream")
        elif CLUSTER.match(ex.path):
            problems += [f"{tag}: {p}" for p in conform(ex.response, "Cluster")]
        else:
            problems.append(f"{tag}: an endpoint outside the contract")
    return problems


# ------------------------------------------------------------------------------------- the checker


def test_the_subset_is_swagger_2_with_every_definition_the_pipeline_uses() -> None:
    doc = json.loads(SUBSET.read_text())
    assert doc["swagger"] == "2.0"
    for name in ("CreateClusterSpec", "Cluster", "ClusterList", "ClusterHealth", "errorResponse"):
        jsonschema.Draft4Validator.check_schema(DEFINITIONS[name])
    assert doc["responses"]["Kubeconfig"]["schema"]["items"]["format"] == "uint8"


def test_the_checker_refuses_wrong_types_unknown_keys_and_errors_without_code() -> None:
    good = {"cluster": {"name": "a", "spec": {"cniPlugin": {"type": "cilium", "version": "1.19.4"}}}}
    assert conform(good, "CreateClusterSpec") == []
    wrong_type = copy.deepcopy(good)
    wrong_type["cluster"]["spec"]["clusterNetwork"] = {"konnectivityEnabled": "yes"}
    assert any("konnectivityEnabled" in p for p in conform(wrong_type, "CreateClusterSpec"))
    misspelt = copy.deepcopy(good)
    misspelt["cluster"]["spec"]["cniPlugins"] = {"type": "cilium"}
    assert conform(misspelt, "CreateClusterSpec") == [".cluster.spec.cniPlugins: not in the contract"]
    assert conform({"error": {"message": "x"}}, "errorResponse") != []
    assert conform({"apiserver": 1}, "ClusterHealth") != []


# ------------------------------------------------------------------------ the pipeline and the sandbox


@pytest.fixture
def kkp_sandbox(sandbox_factory: Any) -> Any:
    return sandbox_factory(clusters=0, kkp=True, cilium_version="1.16")


def test_every_request_the_pipeline_sends_and_every_answer_conforms(
    kkp_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clustermesh.kkp import api as kkp
    from clustermesh.kkp import clusters
    from clustermesh.kube.credentials import open_cluster
    from clustermesh.spec import load_spec

    state = kkp_sandbox.kkp_state
    monkeypatch.setenv("CLUSTERMESH_KKP_TOKEN", state.token)
    spec = load_spec(kkp_sandbox.directory / "mesh-kkp.yaml")
    plan = clusters.plan_user_clusters(spec)
    assert spec.kkp is not None
    with clusters.kkp_clients(timeout=10) as apis:
        for entry in plan.to_create:
            cluster = spec.cluster(entry.name)
            made = clusters.create_cluster(apis.client(cluster), cluster, spec.kkp, entry.pod_cidr or "")
            clusters.wait_until_healthy(apis.client(cluster), cluster.name, made.id, timeout=10, poll_interval=0.05)
            apis.client(cluster).get_cluster(made.id)
    for cluster in spec.clusters:
        with open_cluster(cluster, request_timeout=10) as client:
            assert client.version()
    # errors, as the pipeline meets them
    api = kkp.client_for(spec.clusters[0], timeout=10)
    with pytest.raises(kkp.KkpClusterNotFoundError):
        api.get_cluster("doesnotexist")
    with pytest.raises(kkp.KkpInvalidRequestError):
        api.create_cluster(
            clusters.create_request(
                spec.clusters[0], spec.kkp.model_copy(update={"datacenter": "nowhere"}), "172.30.0.0/16"
            )
        )
    api.close()
    wrong = kkp.KkpClient(api.api_url, "not-the-token", project=state.project, ca_file=spec.clusters[0].kkp.ca_file)
    with pytest.raises(kkp.KkpUnauthorizedError):
        wrong.list_clusters()
    wrong.close()

    seen = {
        (
            ex.method,
            re.sub(r"/clusters/[^/]+", "/clusters/{c}", re.sub(r"projects/[^/]+", "projects/{p}", ex.path)),
            ex.status,
        )
        for ex in state.exchanges
    }
    assert {
        ("POST", "/api/v2/projects/{p}/clusters", 201),
        ("GET", "/api/v2/projects/{p}/clusters", 200),
        ("GET", "/api/v2/projects/{p}/clusters/{c}", 200),
        ("GET", "/api/v2/projects/{p}/clusters/{c}/health", 200),
        ("GET", "/api/v2/projects/{p}/clusters/{c}/kubeconfig", 200),
        ("GET", "/api/v2/projects/{p}/clusters/{c}", 404),
        ("POST", "/api/v2/projects/{p}/clusters", 400),
        ("GET", "/api/v2/projects/{p}/clusters", 401),
    } <= seen
    assert exchange_problems(state.exchanges) == []


def test_the_sandbox_answers_unknown_projects_and_bad_bodies_as_kkp_does(kkp_sandbox: Any) -> None:
    state = kkp_sandbox.kkp_state
    headers = {"Authorization": f"Bearer {state.token}"}
    ca = ssl.create_default_context(cafile=str(kkp_sandbox.directory / "kkp-ca.crt"))
    with httpx.Client(base_url=kkp_sandbox.kkp_url, verify=ca, headers=headers, timeout=10) as http:
        assert http.get("/api/v2/projects/nosuchproject/clusters").status_code == 404
        assert http.post(f"/api/v2/projects/{state.project}/clusters", content=b"{not json").status_code == 400
        bad_proxy = {
            "cluster": {
                "name": "x",
                "spec": {
                    "version": "1.32.4",
                    "cloud": {"dc": "sandbox-dc", "bringyourown": {}},
                    "cniPlugin": {"type": "canal", "version": "v3.29"},
                    "clusterNetwork": {"proxyMode": "ebpf"},
                },
            }
        }
        answer = http.post(f"/api/v2/projects/{state.project}/clusters", json=bad_proxy)
        assert answer.status_code == 400 and "canal" in answer.json()["error"]["message"]
    assert state.clusters == {}
    assert exchange_problems(state.exchanges) == []
