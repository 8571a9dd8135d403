"""The nightly and the drill read their spec from the Prefect Variable their parameter names, when the run starts.

Against the session's real Prefect test server and instant sandboxes: a registration (the Variable) changes
what the next run checks; a missing or invalid Variable ends the run Failed, naming the Variable and
``clustermesh blocks register``; the failure hook finds Slack through the spec in the Variable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clustermesh.spec import MeshSpec
from flows.failover_drill import failover_drill
from flows.mesh_verify import VerificationResult, nightly_mesh_verification, verification_result
from flows.spec_source import SpecVariableError, alert_with_spec
from tests.flows.conftest import mesh_spec
from tests.slack_server import SlackTestServer

SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_API_URL", "PREFECT_UI_URL")


@pytest.fixture(autouse=True)
def _no_slack_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLACK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def variable() -> Iterator[str]:
    """A fresh Variable name for this test (deleted afterwards)."""
    from prefect.variables import Variable

    name = f"clustermesh-spec-test-{uuid.uuid4().hex[:8]}"
    yield name
    Variable.unset(name)


def store(name: str, spec: MeshSpec | dict[str, Any]) -> None:
    """What ``clustermesh blocks register`` does to the Variable: the spec as JSON, overwritten."""
    from prefect.variables import Variable

    value = spec.model_dump(mode="json", exclude_defaults=True) if isinstance(spec, MeshSpec) else spec
    if isinstance(spec, MeshSpec):
        value["name"] = spec.name
    Variable.set(name, value, overwrite=True)


def flow_run_parameters(state: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        return dict(prefect.read_flow_run(state.state_details.flow_run_id).parameters)


def test_a_new_spec_in_the_variable_changes_what_the_next_nightly_checks(
    sandbox_factory: Callable[..., Any], variable: str
) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16", nodes=1)
    spec = mesh_spec(sb, health=5)
    store(variable, spec)

    first = nightly_mesh_verification(run_drill=False, spec_variable=variable, return_state=True)
    seen = verification_result(first)
    assert isinstance(seen, VerificationResult), first
    assert seen.mesh == spec.name

    store(variable, spec.model_copy(update={"name": "renamed"}))  # a new registration; nothing redeployed
    second = nightly_mesh_verification(run_drill=False, spec_variable=variable, return_state=True)
    again = verification_result(second)
    assert isinstance(again, VerificationResult), second
    assert again.mesh == "renamed"
    # the run's parameters carry the Variable's name, not a copy of the spec
    parameters = flow_run_parameters(second)
    assert parameters.get("spec") is None and parameters["spec_variable"] == variable, parameters


@pytest.mark.parametrize("flow", ["nightly", "drill"])
def test_a_missing_variable_fails_the_run_naming_it_and_blocks_register(flow: str) -> None:
    name = f"clustermesh-spec-missing-{uuid.uuid4().hex[:8]}"
    if flow == "nightly":
        state = nightly_mesh_verification(spec_variable=name, return_state=True)
    else:
        state = failover_drill(spec_variable=name, return_state=True)

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SpecVariableError), repr(error)
    first_line = str(error).splitlines()[0]
    assert f"the Prefect Variable {name!r} (parameter spec_variable) does not exist" in first_line
    assert "clustermesh blocks register --config mesh.yaml" in first_line
    assert name in (state.message or "")


def test_an_invalid_spec_in_the_variable_fails_the_run_with_its_problems(variable: str) -> None:
    store(variable, {"name": "broken", "clusters": [{"name": "cluster-1", "id": 1}]})

    state = nightly_mesh_verification(spec_variable=variable, return_state=True)

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SpecVariableError), repr(error)
    lines = str(error).splitlines()
    assert f"{variable!r} (parameter spec_variable) does not hold a valid mesh spec" in lines[0]
    assert "clustermesh blocks register" in lines[0]
    assert any("clusters" in line for line in lines[1:]), lines  # the spec's own problems follow


def test_a_given_spec_is_used_and_the_variable_is_not_read(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory(clusters=2, cilium_version="1.16", nodes=1)
    spec = mesh_spec(sb, health=5)
    missing = f"clustermesh-spec-missing-{uuid.uuid4().hex[:8]}"

    state = nightly_mesh_verification(spec, run_drill=False, spec_variable=missing, return_state=True)

    result = verification_result(state)
    assert isinstance(result, VerificationResult), state
    assert result.mesh == spec.name


def test_the_failure_hook_posts_to_the_slack_of_the_spec_in_the_variable(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed

    with SlackTestServer() as slack:
        monkeypatch.setenv("SLACK_API_URL", slack.url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        store(
            variable,
            {
                "name": "hooked",
                "clusters": [
                    {"name": "cluster-1", "id": 1, "kubeconfig": {"secret_block": "kubeconfig-hooked-cluster-1"}},
                    {"name": "cluster-2", "id": 2, "kubeconfig": {"secret_block": "kubeconfig-hooked-cluster-2"}},
                ],
                "notify": {
                    "slack": {"channel": "mesh-drills", "token_env": "SLACK_BOT_TOKEN"},
                    "prefect_ui_url": "https://prefect.example.com",
                },
            },
        )
        run = FlowRun(
            name="calm-otter", flow_id=uuid.uuid4(), parameters={"run_drill": True, "spec_variable": variable}
        )
        state: Any = Failed(message="boom", data=RuntimeError("cluster-1 unreachable\ndetails"))

        alert_with_spec(nightly_mesh_verification, run, state)

        [message] = slack.messages
    # the spec's channel (mesh-drills), not the environment's (none is set), and the spec's UI link
    assert message["channel"] == "C0987654321", message
    text = message["text"] + str(message.get("blocks"))
    assert "cluster-1 unreachable" in text and "details" not in message["text"]
    assert f"https://prefect.example.com/runs/flow-run/{run.id}" in text
