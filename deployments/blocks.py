"""``clustermesh blocks register``: everything a deployed mesh needs on the Prefect server, idempotently.

- one Prefect ``Secret`` block per cluster holding its kubeconfig FILE content
  (``kubeconfig-<mesh>-<cluster>``; a ``context`` from the spec becomes the block's current-context),
  so deployment parameters carry block names only;
- the Slack bot token and the result-encryption key as ``Secret`` blocks, read from environment
  variables (never from command-line values, which end up in shell history and ``ps``);
- the strict global concurrency limit ``mesh-<name>`` (limit 1) held by setup and nightly;
- the spec with block references as the Prefect Variables ``clustermesh-spec`` (what prefect.yaml's
  nightly and drill deployments read at the start of each run: registering again changes what the next
  run checks, no redeploy) and ``clustermesh-spec-<mesh>``;
- with a webhook URL in the environment: a ``Webhook`` block and an Automation that calls it when a
  run of these deployments (tag ``clustermesh``) fails or crashes — crash-safe, unlike flow hooks. It
  matches the state *names* ``Failed`` and ``Crashed``: a nightly whose FAIL summary reached Slack ends
  in a Failed-type state named ``ReportedFailure`` (flows/mesh_verify.py), so one FAIL stays one message.

Before anything is saved, the Slack bot token and channel are checked with Slack itself (``auth.test``,
then ``conversations.info`` for an ID or ``conversations.list`` for a name; nothing is posted): a
refused token or an unknown or archived channel raises :class:`RegistrationError` with the fix.

Re-running updates what exists (blocks overwritten, limit reset to 1, automation updated in place);
nothing is duplicated. Secret values are never printed; the spec snippet names blocks only.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import SecretStr

from clustermesh.errors import KubeconfigError, RegistrationError, SlackConfigError
from clustermesh.kube import KubeconfigSource, decode_kubeconfig
from clustermesh.notify import SlackCheck, check_target, resolve_target
from clustermesh.spec import MeshSpec
from flows.spec_source import SPEC_VARIABLE  # what prefect.yaml's nightly and drill read at run time

DEPLOYMENT_TAG = "clustermesh"
RESULT_KEY_BLOCK = "clustermesh-result-key"
SLACK_TOKEN_BLOCK = "clustermesh-slack-bot-token"
WEBHOOK_BLOCK = "clustermesh-alert-webhook"
AUTOMATION_NAME = "clustermesh-run-failed-or-crashed"
# State names, not types: a reported FAIL (state name ReportedFailure, type FAILED) is not matched.
FAILURE_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")

# Slack incoming-webhook body; every value JSON-escaped by the server's ``tojson`` filter.
WEBHOOK_PAYLOAD = (
    '{"text": {{ (":rotating_light: Prefect flow run " ~ flow.name ~ " / " ~ flow_run.name ~ " is "'
    ' ~ flow_run.state.name ~ ": " ~ (flow_run.state.message or "no message") ~ " " ~ (flow_run|ui_url))'
    " | tojson }}}"
)


@dataclass
class Registration:
    """What ``register`` did; names only, never values."""

    mesh: str
    kubeconfig_blocks: dict[str, str] = field(default_factory=dict)
    slack_token_block: str | None = None
    result_key_block: str | None = None
    concurrency_limit: str = ""
    automation: str | None = None
    slack: str | None = None  # what Slack said about the token and the channel
    spec_variables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snippet: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"mesh {self.mesh}: registered on the Prefect server"]
        for cluster, block in self.kubeconfig_blocks.items():
            lines.append(f"  Secret block {block}: kubeconfig of {cluster}")
        if self.slack_token_block:
            lines.append(f"  Secret block {self.slack_token_block}: Slack bot token")
        if self.slack:
            lines.append(f"  Slack: {self.slack}")
        if self.result_key_block:
            lines.append(f"  Secret block {self.result_key_block}: result-encryption key")
        lines.append(f"  global concurrency limit {self.concurrency_limit}: limit 1 (setup and nightly)")
        if self.automation:
            lines.append(
                f"  automation {self.automation}: runs tagged {DEPLOYMENT_TAG} that end Failed or Crashed"
                " without having reported to Slack → webhook"
            )
        for variable in self.spec_variables:
            lines.append(f"  variable {variable}: the spec below (the nightly and the drill read it when they start)")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append("")
        lines.append("# Spec for deployment parameters (kubeconfigs referenced by Secret block name only):")
        lines.append(yaml.safe_dump(self.snippet, sort_keys=False).rstrip())
        return "\n".join(lines)


def kubeconfig_block_name(mesh: str, cluster: str) -> str:
    return f"kubeconfig-{mesh}-{cluster}"


def kubeconfig_text(spec: MeshSpec, cluster_name: str) -> str | None:
    """The kubeconfig file content of a cluster referenced by path or env var; None if already a block."""
    ref = spec.cluster(cluster_name).kubeconfig
    if ref is None or ref.secret_block is not None:  # a KKP reference, or already a block
        return None
    if ref.path is not None:
        path = Path(ref.path).expanduser()
    else:
        assert ref.env is not None
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise RegistrationError(
                f"cluster {cluster_name}: environment variable {ref.env} (kubeconfig path) is not set; "
                f"export it, or reference the kubeconfig by path"
            )
        path = Path(value).expanduser()
    text = _read_kubeconfig(path, cluster_name)
    data: object = None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # raised below, outside the handler: PyYAML's error holds the whole text (and its token)
    if data is None:
        raise RegistrationError(f"cluster {cluster_name}: {path} is not YAML; is it a kubeconfig?")
    if not isinstance(data, dict) or "clusters" not in data:
        raise RegistrationError(f"cluster {cluster_name}: {path} has no 'clusters'; is it a kubeconfig?")
    if ref.context is not None:
        contexts = [c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict)]
        if ref.context not in contexts:
            raise RegistrationError(
                f"cluster {cluster_name}: context {ref.context!r} is not in {path} (it has {contexts})"
            )
        if data.get("current-context") != ref.context:
            data["current-context"] = ref.context  # the block is read with its current-context
            text = yaml.safe_dump(data, sort_keys=False)
    return text


def _read_kubeconfig(path: Path, cluster_name: str) -> str:
    """The file as UTF-8 text; a UTF-16 or binary file is refused with the fix, never echoed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = type(exc).__name__
    else:
        try:
            return decode_kubeconfig(raw, cluster_name, KubeconfigSource.file(path))
        except KubeconfigError as exc:
            reason = str(exc)
        raise RegistrationError(f"cluster {cluster_name}: {reason}")
    raise RegistrationError(f"cluster {cluster_name}: cannot read kubeconfig file {path} ({reason}); check the path")


def _spec_snippet(
    spec: MeshSpec, blocks: dict[str, str], slack_block: str | None, channel: str | None = None
) -> dict[str, Any]:
    """The spec for deployment parameters; ``channel`` (from SLACK_CHANNEL) fills a missing Slack section."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_defaults=True)
    data["name"] = spec.name
    for cluster in data["clusters"]:
        block = blocks.get(cluster["name"])
        if block is not None:
            cluster["kubeconfig"] = {"secret_block": block}
    slack = data.get("notify", {}).get("slack")
    if slack is None and slack_block is not None and channel is not None:
        slack = {"channel": channel}
    if slack is not None and slack_block is not None:
        slack.pop("token_env", None)
        slack["token_block"] = slack_block
        data.setdefault("notify", {})["slack"] = slack
    return data


def _private_host(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_private or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(
    spec: MeshSpec,
    *,
    slack_token_env: str | None = "SLACK_BOT_TOKEN",
    result_key_env: str | None = "CLUSTERMESH_RESULT_KEY",
    webhook_env: str | None = "CLUSTERMESH_ALERT_WEBHOOK_URL",
    set_default_spec: bool = True,
) -> Registration:
    """Create or update the blocks, the mesh's concurrency limit and the failure automation.

    Everything is read and checked first (kubeconfigs, the result key), so bad input saves nothing.
    """
    from prefect.blocks.system import Secret

    out = Registration(mesh=spec.name, concurrency_limit=f"mesh-{spec.name}")
    texts = {c.name: kubeconfig_text(spec, c.name) for c in spec.clusters}
    result_key = _checked_result_key(result_key_env)
    slack_channel = _checked_slack(spec, slack_token_env, out)
    for cluster, text in texts.items():
        if text is None:
            ref = spec.cluster(cluster).kubeconfig
            if ref is None:
                out.notes.append(f"{cluster} is a KKP reference: its kubeconfig is fetched at run time, none stored")
            else:
                out.notes.append(f"{cluster} already references Secret block {ref.secret_block}: left as it is")
            continue
        name = kubeconfig_block_name(spec.name, cluster)
        Secret(value=SecretStr(text)).save(name, overwrite=True)
        out.kubeconfig_blocks[cluster] = name
    out.slack_token_block = _save_env_secret(slack_token_env, SLACK_TOKEN_BLOCK, "Slack token", out.notes)
    if result_key_env and result_key:
        Secret(value=SecretStr(result_key)).save(RESULT_KEY_BLOCK, overwrite=True)
        out.result_key_block = RESULT_KEY_BLOCK
    elif result_key_env:
        out.notes.append(f"{result_key_env} is not set: no result-key block registered")
    _upsert_limit(out.concurrency_limit)
    if webhook_env:
        url = os.environ.get(webhook_env, "").strip()
        if url:
            out.automation = _upsert_alert_automation(url)
        else:
            out.notes.append(f"{webhook_env} is not set: no failure automation (flow hooks still alert)")
    out.snippet = _spec_snippet(spec, out.kubeconfig_blocks, out.slack_token_block, slack_channel)
    if set_default_spec:
        from prefect.variables import Variable

        for variable in (SPEC_VARIABLE, f"{SPEC_VARIABLE}-{spec.name}"):
            Variable.set(variable, out.snippet, overwrite=True)
            out.spec_variables.append(variable)
    return out


def _checked_result_key(env: str | None) -> str | None:
    """The result-encryption key from ``env``, refused unless it is a Fernet key; None when unset."""
    key = os.environ.get(env, "").strip() if env else ""
    if not key:
        return None
    from cryptography.fernet import Fernet

    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise RegistrationError(
            f"{env} is not a Fernet key; make one with: python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        ) from None
    return key


def _checked_slack(spec: MeshSpec, token_env: str | None, out: Registration) -> str | None:
    """Ask Slack about the token in ``token_env`` and the channel, before anything is saved.

    The channel is the spec's ``notify.slack.channel``, else ``SLACK_CHANNEL``; returns it when it comes
    from the environment (the spec snippet then gets a Slack section). A refused token, an unknown or
    archived channel, or a token without any channel raise :class:`RegistrationError` with the fix; an
    unreachable Slack is a note (this machine may not reach Slack while the workers do).
    """
    if not token_env:
        return None
    token = os.environ.get(token_env, "").strip()
    if not token:
        return None
    settings = spec.notify.slack
    channel = settings.channel if settings is not None else os.environ.get("SLACK_CHANNEL", "").strip()
    where = "mesh.yaml's notify.slack.channel" if settings is not None else "SLACK_CHANNEL"
    if not channel:
        raise RegistrationError(
            f"{token_env} is set but no Slack channel is: nothing registered. Fix: add "
            "`notify: {slack: {channel: '#your-channel'}}` to mesh.yaml (or export SLACK_CHANNEL) and run this again"
        )
    try:
        target = resolve_target(token, channel, None)
    except SlackConfigError as exc:
        raise RegistrationError(f"{token_env}: {exc.problem}: nothing registered. Fix: {exc.fix}") from None
    assert target is not None
    check = check_target(target)
    _refuse_slack(check, token_env, channel, where)
    out.notes.extend(f"Slack: {n}" for n in check.notes)
    if check.team is not None:
        out.slack = f"token accepted (workspace {check.team}, bot {check.bot})"
        if check.channel_id is not None:
            out.slack += f"; channel {channel} is {check.channel_id}"
    return channel if settings is None else None


def _refuse_slack(check: SlackCheck, token_env: str, channel: str, where: str) -> None:
    if check.token_error is not None:
        raise RegistrationError(
            f"Slack refused the bot token in {token_env} ({check.token_error}): nothing registered. Fix: copy the "
            f"Bot User OAuth Token (xoxb-…) from the Slack app's OAuth & Permissions page into {token_env}"
            + (" and add the chat:write scope" if check.token_error == "missing_scope" else "")
            + ", then run this again"
        )
    if check.channel_error == "is_archived":
        raise RegistrationError(
            f"Slack channel {channel} ({where}) is archived: nothing registered. Fix: unarchive it or name "
            "another channel there, then run this again"
        )
    if check.channel_error is not None:
        raise RegistrationError(
            f"Slack channel {channel} ({where}) is unknown to the bot ({check.channel_error}): "
            f"nothing registered. Fix: name an existing channel (#name or its ID) in {where}; a private channel "
            f"needs the bot invited first (/invite @{check.bot or 'your-bot'}); then run this again"
        )


def _save_env_secret(env: str | None, block: str, what: str, notes: list[str]) -> str | None:
    """Save the value of env var ``env`` as Secret block ``block``; a note instead when it is unset."""
    if not env:
        return None
    from prefect.blocks.system import Secret

    value = os.environ.get(env, "").strip()
    if not value:
        notes.append(f"{env} is not set: no {what} block registered")
        return None
    Secret(value=SecretStr(value)).save(block, overwrite=True)
    return block


def _upsert_limit(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)


def _upsert_alert_automation(url: str) -> str:
    """A Webhook block with the URL (a SecretStr: masked by the API) and one automation calling it."""
    from prefect.blocks.fields import SecretDict
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    webhook: Any = Webhook(
        method="POST",
        url=SecretStr(url),
        headers=SecretDict({"Content-Type": "application/json"}),
        allow_private_urls=_private_host(url),
    )
    block_id = webhook.save(WEBHOOK_BLOCK, overwrite=True)
    automation = AutomationCore(
        name=AUTOMATION_NAME,
        description="A clustermesh run failed or crashed (works even when the flow process died).",
        enabled=True,
        trigger=EventTrigger(
            expect=set(FAILURE_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{DEPLOYMENT_TAG}"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=WEBHOOK_PAYLOAD)],
    )
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if existing:
            client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                client.delete_automation(duplicate.id)
        else:
            client.create_automation(automation)
    return AUTOMATION_NAME


def snippet_json(reg: Registration) -> str:
    """The spec snippet as JSON: what ``prefect deployment run --params`` takes."""
    return json.dumps({"spec": reg.snippet})


__all__ = ["SPEC_VARIABLE", "Registration", "RegistrationError", "kubeconfig_block_name", "register", "snippet_json"]
