"""Where a cluster's credentials are found: a kubeconfig reference or a KKP cluster reference.

Credentials are referenced (file path, Prefect Secret block name, env var name), never embedded:
parameters are stored in the Prefect database in clear.
"""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from clustermesh.spec.base import SpecModel, block_name, custom_error, env_name, reference_only

__all__ = ["KkpRef", "KubeconfigRef"]


class KubeconfigRef(SpecModel):
    """Where to find a cluster's kubeconfig: exactly one of ``path``, ``secret_block`` or ``env``."""

    path: Annotated[
        str | None,
        Field(title="Kubeconfig file", description="Path of a kubeconfig file on the worker running the flow."),
    ] = None
    context: Annotated[
        str | None,
        Field(title="Context", description="Context inside the kubeconfig; its current-context when empty."),
    ] = None
    secret_block: Annotated[
        str | None,
        Field(
            title="Prefect Secret block",
            description="Name of a Prefect Secret block whose value is the kubeconfig text.",
        ),
    ] = None
    env: Annotated[
        str | None,
        Field(
            title="Environment variable",
            description="Name of an environment variable holding the kubeconfig file path.",
        ),
    ] = None

    @field_validator("path", "context", "secret_block", "env", mode="after")
    @classmethod
    def _no_inline_secrets(cls, value: str | None) -> str | None:
        return reference_only(
            value,
            "kubeconfig_inline",
            "this looks like kubeconfig or key text, not a reference",
            "never put the kubeconfig itself in the spec: store it in a file (path), a Prefect Secret "
            "block (secret_block) or point an env var at a file (env)",
        )

    @field_validator("env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return env_name(value, example="KUBECONFIG_CLUSTER_1")

    @field_validator("secret_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return block_name(value, example="kubeconfig-cluster-1")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        chosen = [n for n in ("path", "secret_block", "env") if getattr(self, n) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise custom_error(
                "kubeconfig_source",
                f"exactly one of path, secret_block, env must be set (set: {got})",
                "keep one way to find the kubeconfig",
            )
        if self.context is not None and self.path is None:
            raise custom_error(
                "kubeconfig_context",
                "context is only used with path",
                "remove context, or reference the kubeconfig by path",
            )
        return self

    def describe(self) -> str:
        """Safe one-line description for logs: says where, never what."""
        if self.path is not None:
            return f"file {self.path}" + (f" (context {self.context})" if self.context else "")
        if self.secret_block is not None:
            return f"Prefect Secret block {self.secret_block}"
        return f"env var {self.env}"


KKP_PROJECT_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KkpRef(SpecModel):
    """A KKP user cluster reached through the KKP REST API; its admin kubeconfig is fetched at run time.

    The bearer token (OIDC or project service-account token) is referenced: exactly one of
    ``token_block`` (Prefect Secret block) or ``token_env`` (env var holding the token).
    """

    api_url: Annotated[
        str,
        Field(title="KKP API URL", description="Base URL of the KKP dashboard/API, e.g. https://kkp.example.com."),
    ]
    project: Annotated[
        str,
        Field(title="Project ID", description="The KKP project ID (not its display name).", min_length=1),
    ]
    cluster_id: Annotated[
        str | None,
        Field(
            title="Cluster ID",
            description="The KKP cluster ID; empty = find the cluster by its name (the entry's name), "
            "as before `clustermesh clusters create` has made it.",
        ),
    ] = None
    token_block: Annotated[
        str | None,
        Field(title="Token Secret block", description="Prefect Secret block holding the KKP API token."),
    ] = None
    token_env: Annotated[
        str | None,
        Field(title="Token env var", description="Name of the env var holding the KKP API token."),
    ] = None
    ca_file: Annotated[
        str | None,
        Field(
            title="CA bundle",
            description="PEM file of the CA that signed the KKP API's certificate; empty = system trust.",
        ),
    ] = None

    @field_validator("api_url", "project", "cluster_id", "token_block", "token_env", "ca_file", mode="after")
    @classmethod
    def _references_only(cls, value: str | None) -> str | None:
        return reference_only(
            value,
            "kkp_inline_secret",
            "this looks like a token or key text, not a reference",
            "store the KKP token in a Prefect Secret block (token_block) or an env var (token_env) and give its name",
        )

    @field_validator("api_url", mode="after")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise custom_error("url", "not an http(s) URL", "give the KKP API's base URL, e.g. https://kkp.example.com")
        return value.rstrip("/")

    @field_validator("project", "cluster_id", mode="after")
    @classmethod
    def _kkp_id(cls, value: str | None) -> str | None:
        if value is not None and not KKP_PROJECT_RE.match(value):
            raise custom_error(
                "kkp_id",
                "not a KKP ID",
                "give the ID as shown in the KKP dashboard (lowercase letters and digits, e.g. x7k2pq9wzn)",
            )
        return value

    @field_validator("token_env", mode="after")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        return env_name(value, example="KKP_TOKEN")

    @field_validator("token_block", mode="after")
    @classmethod
    def _block_is_a_slug(cls, value: str | None) -> str | None:
        return block_name(value, example="kkp-token")

    @model_validator(mode="after")
    def _exactly_one_token(self) -> Self:
        chosen = [n for n in ("token_block", "token_env") if getattr(self, n) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise custom_error(
                "kkp_token_source",
                f"exactly one of token_block, token_env must be set (set: {got})",
                "keep one way to find the KKP API token",
            )
        return self

    def describe(self) -> str:
        """Safe one-line description for logs: says where, never the token."""
        what = f"cluster {self.cluster_id}" if self.cluster_id else "cluster by name"
        return f"KKP {self.api_url} project {self.project}, {what}"
