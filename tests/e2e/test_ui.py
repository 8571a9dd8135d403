"""The Prefect UI as an operator uses it, in headless Chromium driven by Playwright (issue [4/5]).

Shares the e2e session stack of ``conftest.py`` (``prefect server start``, the sandbox, ``prefect deploy
--all``, a process worker, the blocks from ``clustermesh blocks register``), SQLite variant only: the UI
does not depend on the database, and one more server start would cost ~30 s.

- ``test_custom_run_form_...``: Deployments → mesh-setup → Run → Custom run; the MeshSpec is typed into
  the **form** (not its JSON mode): mesh name, each cluster's name, id and kubeconfig Secret block name;
  Submit; the run page shows Completed; the artifacts tab and the values-changes / health-matrix pages.
- ``test_approval_gate_...``: the same form with the ``require_approval`` toggle on; the run shows Paused
  with its plan artifact; Resume → the ``Approve`` toggle → Submit; the run completes.

Screenshots go to the test's tmp dir; with ``CLUSTERMESH_UPDATE_SCREENSHOTS=1`` they are also written to
``docs/screenshots/`` (what docs/ui.md shows). On a failure the page's screenshot and HTML are saved under
pytest's tmp dir and their paths are in the assertion message.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh.spec import ClusterSpec
from tests.conftest import kube_client
from tests.e2e.conftest import MESH, REPO, Deployed

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`; .ci/run does)",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev dependency)")
expect = playwright_sync.expect

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("e2e"),
    pytest.mark.parametrize("prefect_server", ["sqlite"], indirect=True),
]

# the flags Chromium needs on these machines; Playwright adds --headless and a fresh --user-data-dir
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
UI_TIMEOUT_MS = 60_000  # any single UI step (navigation, a field appearing)
RUN_TIMEOUT_S = 240.0  # a setup run from Scheduled to Completed (pull step, process start, 8 steps)
PAUSE_TIMEOUT_S = 180.0
SCREENSHOTS = REPO / "docs" / "screenshots"
RETRIES = 5  # clicks on Submit while the SQLite server answers 503 (see click_until_accepted)
BAD_STATES = {"Failed", "Crashed", "Cancelled", "Cancelling"}
KUBECONFIG_TITLE = str(ClusterSpec.model_fields["kubeconfig"].title)  # "Kubeconfig — one of this or KKP reference"
AI = ("apps.kubermatic.k8c.io", "v1", "kube-system", "applicationinstallations", "cilium")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class UI:
    """One browser page on the Prefect UI, with what the browser reported (for failure messages)."""

    page: Any
    base: str
    shots: Path
    deployed: Deployed
    problems: list[str] = field(default_factory=list)

    def save(self, name: str, **kwargs: Any) -> Path:
        """Screenshot to the tmp dir (and to docs/screenshots with CLUSTERMESH_UPDATE_SCREENSHOTS=1)."""
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), **kwargs)
        if os.environ.get("CLUSTERMESH_UPDATE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS / path.name)
        return path


@pytest.fixture
def ui(browser: Any, deployed: Deployed, tmp_path: Path) -> Iterator[UI]:
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    session = UI(page, deployed.server.ui_url, shots, deployed)
    page.on("console", lambda m: session.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: session.problems.append(f"page error: {e}"))
    page.on(
        "response",
        lambda r: session.problems.append(f"HTTP {r.status} {r.request.method} {r.url}") if r.status >= 400 else None,
    )
    try:
        yield session
    finally:
        context.close()


@contextmanager
def evidence(ui: UI, tmp_path: Path) -> Iterator[None]:
    """On any failure: the page's screenshot and HTML under tmp_path, their paths in the message."""
    try:
        yield
    except Exception as exc:
        png, html = tmp_path / "failure.png", tmp_path / "failure.html"
        with suppress(Exception):
            ui.page.screenshot(path=str(png), full_page=True)
        with suppress(Exception):
            html.write_text(ui.page.content())
        problems = "\n".join(ui.problems[-20:]) or "(none)"
        raise AssertionError(
            f"{type(exc).__name__}: {exc}\n"
            f"page: {ui.page.url}\nscreenshot: {png}\nHTML: {html}\n"
            f"browser errors:\n{problems}\nworker log:\n{ui.deployed.worker.tail(40)}"
        ) from exc


# ------------------------------------------------------------------------------------- helpers


def field_of(scope: Any, label: str) -> Any:
    """The form property titled ``label`` (the UI marks optional ones "<title> (Optional)").

    Prefect's schema form does not tie its <label>s to the inputs, so: the label's text, then its
    enclosing property block.
    """
    title = scope.get_by_text(re.compile(rf"^{re.escape(label)}( \(Optional\))?$")).first
    return title.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' p-label ')][1]")


def open_custom_run(ui: UI) -> None:
    page = ui.page
    page.goto(f"{ui.base}/deployments")
    page.get_by_role("link", name="mesh-setup", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    expect(page.get_by_text("Parameters", exact=True).first).to_be_visible()


def fill_mesh_spec(ui: UI, spec: dict[str, Any]) -> None:
    """Type the spec's name and clusters (name, id, kubeconfig Secret block) into the form."""
    page = ui.page
    field_of(page, "Mesh name").locator("textarea").first.fill(spec["name"])
    items = page.locator(".schema-form-property-array-item")
    for i, cluster in enumerate(spec["clusters"]):
        # the Clusters list's own "Add item" is its last one (each item has one for its pod CIDRs)
        field_of(page, "Clusters").get_by_role("button", name="Add item").last.click()
        expect(items).to_have_count(i + 1)
        item = items.nth(i)
        field_of(item, "Cilium cluster name").locator("textarea").first.fill(cluster["name"])
        field_of(item, "Cilium cluster id").locator("input").first.fill(str(cluster["id"]))
        kubeconfig = field_of(item, KUBECONFIG_TITLE)
        kubeconfig.get_by_role("button", name="KubeconfigRef", exact=True).click()
        secret = field_of(kubeconfig, "Prefect Secret block")
        secret.get_by_role("button", name="str", exact=True).click()
        secret.locator("textarea").first.fill(cluster["kubeconfig"]["secret_block"])
    expect(field_of(page, "Clusters").locator(".p-label__message")).to_have_count(0)


def save_form(ui: UI, name: str) -> None:
    """The form from its top to the end of the Clusters list, in one picture (a tall viewport)."""
    page = ui.page
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height) + 200, 16_000)})
    try:
        box = field_of(page, "Clusters").bounding_box()
        assert box is not None, "the Clusters field is not rendered"
        ui.save(name, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": box["y"] + box["height"] + 24})
    finally:
        page.set_viewport_size(VIEWPORT)


def click_until_accepted(ui: UI, button: Any, path: str) -> Any:
    """Click ``button`` until the POST to ``.../path`` is accepted; return that response.

    On SQLite the server answers a write that hit "database is locked" with 503 "Service Unavailable"
    (retryable: Prefect's Python client retries it, the UI shows "Oops. Something went wrong."). An
    operator clicks again; so does this, a few times.
    """
    for _ in range(RETRIES):
        with ui.page.expect_response(lambda r: r.url.endswith(path) and r.request.method == "POST") as info:
            button.click()
        response = info.value
        if response.status != 503:
            assert response.status < 300, f"POST {path} answered {response.status}: {response.text()[:2000]}"
            return response
        ui.problems.append(f"POST {path} answered 503 (SQLite busy); clicked again")
        ui.page.wait_for_timeout(2_000)
        dismiss_toasts(ui)
    raise AssertionError(f"POST {path} answered 503 {RETRIES} times")


def submit_run(ui: UI) -> tuple[str, str]:
    """Submit the form; return the created flow run's (id, name) and open its page from the toast."""
    page = ui.page
    submit = page.get_by_role("button", name="Submit", exact=True)
    run = click_until_accepted(ui, submit, "/create_flow_run").json()
    view = page.get_by_role("button", name="View run").first
    try:
        view.click(timeout=10_000)  # the "<name> scheduled to start now" toast
    except playwright_sync.TimeoutError:  # toast gone already: the run's link on the deployment page
        page.get_by_role("link", name=run["name"], exact=True).first.click()
    page.wait_for_url(f"**/runs/flow-run/{run['id']}**")
    return str(run["id"]), str(run["name"])


def wait_state(ui: UI, want: str, timeout: float) -> None:
    """Wait until the run page's state badge reads ``want`` (reloading now and then); fail fast on an end state."""
    badge = ui.page.locator("header .state-badge").first
    deadline = time.monotonic() + timeout
    while True:
        try:
            expect(badge).to_have_text(want, timeout=15_000)
            return
        except AssertionError:
            seen = badge.inner_text(timeout=5_000).strip() if badge.count() else "(no state badge)"
            if seen in BAD_STATES - {want}:
                raise AssertionError(f"the run page shows {seen}, expected {want}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"the run page still shows {seen!r} after {timeout:g}s, expected {want}") from None
            ui.page.reload()


def dismiss_toasts(ui: UI) -> None:
    for close in ui.page.locator(".p-toast-container").get_by_role("button", name="Close").all():
        with suppress(Exception):
            close.click(timeout=2_000)


def open_tab(ui: UI, name: str) -> None:
    ui.page.get_by_text(name, exact=True).first.click()


def flow_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def drop_peers(deployed: Deployed, cluster: str) -> None:
    """Someone removed ``cluster``'s mesh peers by hand (official client): the next setup has something to write."""
    from kubernetes import client

    api = kube_client(deployed.sandbox.kubeconfigs[cluster])
    try:
        objects = client.CustomObjectsApi(api)
        install = objects.get_namespaced_custom_object(*AI)
        spec = install["spec"]
        values = yaml.safe_load(spec["valuesBlock"]) if spec.get("valuesBlock") else spec.get("values") or {}
        peers = ((values.get("clustermesh") or {}).get("config") or {}).get("clusters")
        if not peers:
            return  # not meshed yet: the plan has changes anyway
        values["clustermesh"]["config"]["clusters"] = []
        if spec.get("valuesBlock"):
            spec["valuesBlock"] = yaml.safe_dump(values, sort_keys=False)
        else:
            spec["values"] = values
        objects.replace_namespaced_custom_object(*AI, install)
    finally:
        api.close()


def plan_artifact_id(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    [plan] = [a for a in found if a.key == f"{MESH}-setup-plan"]
    return str(plan.id)


def form_spec(deployed: Deployed) -> dict[str, Any]:
    """What an operator types: the registered spec's name and clusters (Secret block names only)."""
    spec = deployed.spec
    assert spec["name"] == MESH
    clusters = [
        {"name": c["name"], "id": c["id"], "kubeconfig": {"secret_block": c["kubeconfig"]["secret_block"]}}
        for c in spec["clusters"]
    ]
    assert all(c["kubeconfig"]["secret_block"] for c in clusters), spec
    return {"name": spec["name"], "clusters": clusters}


# ------------------------------------------------------------------------------------------ tests


def test_custom_run_form_runs_the_setup_to_completed_and_shows_its_artifacts(ui: UI, tmp_path: Path) -> None:
    spec = form_spec(ui.deployed)
    page = ui.page
    with evidence(ui, tmp_path):
        open_custom_run(ui)
        fill_mesh_spec(ui, spec)
        save_form(ui, "form")
        run_id, run_name = submit_run(ui)

        # what the form sent is the spec typed in: references only, approval off
        params = flow_run(run_id).parameters
        assert params["spec"]["name"] == spec["name"]
        assert [(c["name"], c["id"], c["kubeconfig"]["secret_block"]) for c in params["spec"]["clusters"]] == [
            (c["name"], c["id"], c["kubeconfig"]["secret_block"]) for c in spec["clusters"]
        ]
        assert not params.get("require_approval")

        wait_state(ui, "Completed", RUN_TIMEOUT_S)
        expect(page.get_by_text(run_name, exact=True).first).to_be_visible()
        dismiss_toasts(ui)
        ui.save("run-completed")
        assert flow_run(run_id).state.name == "Completed"

        open_tab(ui, "Artifacts")
        for key in (f"{MESH}-values-changes", f"{MESH}-health-matrix", f"{MESH}-firewall-rules"):
            expect(page.get_by_text(key, exact=True).first).to_be_visible()
        ui.save("artifacts")

        page.get_by_text(f"{MESH}-health-matrix", exact=True).click()
        page.wait_for_url("**/artifacts/artifact/**")
        # one row per cluster: its name, then every cluster's nodes reachable from it ("k/k ✓")
        healthy = re.compile(r"^(\d+)\/\1 ✓$")  # "/" escaped: Playwright passes the pattern to JS as /…/
        rows = [[c["name"]] + [healthy] * len(spec["clusters"]) for c in spec["clusters"]]
        expect(page.get_by_role("cell")).to_have_text([cell for row in rows for cell in row])
        ui.save("artifact-health-matrix")

        page.go_back()
        page.wait_for_url(f"**/runs/flow-run/{run_id}**")
        open_tab(ui, "Artifacts")
        page.get_by_text(f"{MESH}-values-changes", exact=True).click()
        page.wait_for_url("**/artifacts/artifact/**")
        expect(page.get_by_role("heading", name=re.compile(rf"Values changes for mesh\s*{MESH}"))).to_be_visible()
        for cluster in spec["clusters"]:
            step = re.compile(rf"Enable Cluster Mesh in {cluster['name']}:")
            expect(page.get_by_role("heading", name=step)).to_be_visible()
        ui.save("artifact-values-changes")


def test_approval_gate_pauses_and_resumes_from_the_ui_form(ui: UI, tmp_path: Path) -> None:
    spec = form_spec(ui.deployed)
    page = ui.page
    comment = "approved in the UI test"
    # the test before meshed the clusters, and a converged mesh has nothing to approve (no pause): drift first
    drop_peers(ui.deployed, "cluster-2")
    with evidence(ui, tmp_path):
        open_custom_run(ui)
        fill_mesh_spec(ui, spec)
        toggle = field_of(page, "require_approval").get_by_role("switch")
        toggle.click()
        expect(toggle).to_be_checked()
        run_id, _ = submit_run(ui)
        assert flow_run(run_id).parameters["require_approval"] is True

        wait_state(ui, "Paused", PAUSE_TIMEOUT_S)
        dismiss_toasts(ui)
        open_tab(ui, "Artifacts")
        expect(page.get_by_text(f"{MESH}-setup-plan", exact=True).first).to_be_visible()

        page.get_by_role("button", name="Resume", exact=True).click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Resume Flow Run")).to_be_visible()
        # the dialog links the plan artifact of this run
        link = dialog.get_by_role("link", name=f"{MESH}-setup-plan", exact=True)
        expect(link).to_have_attribute("href", f"{ui.base}/artifacts/artifact/{plan_artifact_id(run_id)}")
        approve = field_of(dialog, "Approve").get_by_role("switch")
        expect(approve).not_to_be_checked()  # the default is "reject": nothing is written unless ticked
        approve.click()
        expect(approve).to_be_checked()
        remark = field_of(dialog, "Comment")
        remark.get_by_role("button", name="str", exact=True).click()
        remark.locator("textarea").first.fill(comment)
        ui.save("approval")
        click_until_accepted(ui, dialog.get_by_role("button", name="Submit", exact=True), f"/flow_runs/{run_id}/resume")

        wait_state(ui, "Completed", RUN_TIMEOUT_S)
        assert flow_run(run_id).state.name == "Completed"
        logs = flow_run_logs(run_id)
        assert any(f"Approval answer: approved ({comment})" in m for m in logs), logs[-20:]
