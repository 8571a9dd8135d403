"""Every error the pipeline raises on purpose: one root, and subclasses that say what the user must fix.

Messages name the object, the field or value, and the fix. They never carry secret material.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

__all__ = [
    "AlreadyExistsError",
    "CertificateError",
    "ChartRenderError",
    "CiliumOutputError",
    "ClusterMeshError",
    "ClusterStateError",
    "ConflictError",
    "DrillError",
    "EndpointError",
    "ForbiddenError",
    "InstallFailedError",
    "InvalidError",
    "KkpApiError",
    "KkpClusterNotFoundError",
    "KkpForbiddenError",
    "KkpImmutableSettingsError",
    "KkpInvalidRequestError",
    "KkpOwnedKeyError",
    "KkpPoolExhaustedError",
    "KkpProjectNotFoundError",
    "KkpTokenError",
    "KkpTransientError",
    "KkpUnauthorizedError",
    "KubeApiError",
    "KubeconfigError",
    "MeshBusyError",
    "MeshUnhealthyError",
    "NotFoundError",
    "PrerequisiteError",
    "RegistrationError",
    "ReportedFailure",
    "ResultKeyError",
    "SlackConfigError",
    "SpecError",
    "SpecProblem",
    "StopRequested",
    "TLSVerificationError",
    "TransientKubeError",
    "UnauthorizedError",
    "UnsupportedVersionError",
    "ValuesError",
    "WaitTimeoutError",
]


class ClusterMeshError(Exception):
    """Root of the project's own errors: anything else escaping is a bug.

    Subclasses build their message from their own constructor arguments, so an error is pickled (Prefect
    moves task exceptions between processes) as its class and those arguments, and rebuilt by calling
    the constructor again: one rule here instead of a ``__reduce__`` per class.
    """

    _init_args: tuple[Any, ...] = ()
    _init_kwargs: dict[str, Any] = {}  # noqa: RUF012 - a class default, replaced per instance in __new__

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls, *args)
        self._init_args = args
        self._init_kwargs = kwargs
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        notes = tuple(getattr(self, "__notes__", ()))  # context added on the way up (what was written before)
        return (_rebuild, (type(self), self._init_args, self._init_kwargs, notes))


def _rebuild(
    cls: type[ClusterMeshError], args: tuple[Any, ...], kwargs: dict[str, Any], notes: tuple[str, ...] = ()
) -> ClusterMeshError:
    error = cls(*args, **kwargs)
    for note in notes:
        error.add_note(note)
    return error


class ChartRenderError(ClusterMeshError):
    """A Cilium Helm chart that Helm's own engine would not render with these values (or cannot be found).

    ``problem`` is Helm's message verbatim (a failed template, the schema check naming the key), so the
    reader sees what `helm install` would have said; never the values themselves.
    """

    def __init__(self, chart: str, problem: str, *, fix: str) -> None:
        self.chart = chart
        self.problem = problem
        self.fix = fix
        super().__init__(f"chart {chart}: {problem} — {fix}")


class CiliumOutputError(ClusterMeshError):
    """Output of a Cilium command that cannot be read: acting on a guess could hide a broken mesh.

    Carries the command, where it went wrong (line number or JSON path), the offending line (cut to
    120 characters) and what was expected there, so the reader can tell a version mismatch from a
    truncated capture.
    """

    def __init__(
        self,
        command: str,
        problem: str,
        *,
        expected: str,
        line_no: int | None = None,
        line: str | None = None,
        json_path: str | None = None,
    ) -> None:
        self.command = command
        self.problem = problem
        self.expected = expected
        self.line_no = line_no
        self.line = line if line is None or len(line) <= 120 else line[:119] + "…"
        self.json_path = json_path
        where = ""
        if line_no is not None:
            where = f" at line {line_no}"
        elif json_path is not None:
            where = f" at {json_path}"
        message = f"cannot read `{command}` output{where}: {problem}; expected {expected}"
        if self.line is not None:
            message += f"; line: {self.line!r}"
        super().__init__(message)


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong in a MeshSpec, in the words a user needs to fix it.

    ``value`` is already made safe for display (secret-looking input is replaced, long input is cut).
    """

    field: str
    message: str
    value: str
    fix: str

    def __str__(self) -> str:
        text = f"{self.field or '(spec)'}: {self.message} (got: {self.value})"
        return f"{text} — {self.fix}" if self.fix else text


class SpecError(ClusterMeshError):
    """The MeshSpec is invalid: raised before any cluster is contacted, listing every problem at once."""

    def __init__(self, problems: list[SpecProblem], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"invalid mesh spec{where}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class UnsupportedVersionError(ClusterMeshError):
    """A Cilium version outside the lines we keep profiles for: guessing its values could break the CNI."""

    def __init__(self, version: str, supported: tuple[str, ...]) -> None:
        self.version = version
        self.supported = tuple(supported)
        super().__init__(
            f"unsupported Cilium version {version!r}: supported lines are {', '.join(self.supported)}; "
            "use one of those (e.g. '1.16' or '1.16.9'), or upgrade the cluster's Cilium first"
        )


class ValuesError(ClusterMeshError):
    """Cilium Helm values we cannot read or must not write; nothing has been written when it is raised."""

    def __init__(self, obj: str, problem: str, *, fix: str) -> None:
        self.obj = obj
        self.problem = problem
        self.fix = fix
        super().__init__(f"{obj}: {problem} — {fix}")


class KkpOwnedKeyError(ValuesError):
    """Our overlay would touch a key KKP enforces or its webhook keeps immutable: a bug on our side."""


class CertificateError(ClusterMeshError):
    """Certificate or key data that cannot be read; names where it came from, never the data itself."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(
            f"{source}: {problem} — expected a PEM block or the base64 of one, as stored in a Secret's data"
        )


class KubeconfigError(ClusterMeshError):
    """A kubeconfig we will not use as given; raised before anything is sent to a cluster.

    Names the cluster, the context and the field at fault, never a credential.
    """

    def __init__(self, cluster: str, problem: str, *, fix: str) -> None:
        self.cluster = cluster
        self.problem = problem
        self.fix = fix
        super().__init__(f"kubeconfig for cluster {cluster!r}: {problem} — {fix}")


class KubeApiError(ClusterMeshError):
    """A Kubernetes API call that failed; the subclass tells the caller whether to retry, re-read or fix.

    Carries the cluster, the verb, the object (``kube-system/applicationinstallations/cilium``), the
    HTTP status and reason when there was a response, and the API's own Status message. Never headers.
    """

    default_fix = "see the API server's message above"

    def __init__(
        self,
        cluster: str,
        verb: str,
        target: str,
        problem: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.verb = verb
        self.target = target
        self.problem = problem
        self.status = status
        self.reason = reason
        self.fix = fix if fix is not None else self.default_fix
        http = ""
        if status:
            http = f"HTTP {status}{' ' + reason if reason else ''}: "
        super().__init__(f"cluster {cluster!r}: {verb} {target} failed: {http}{problem} — {self.fix}")


class TransientKubeError(KubeApiError):
    """Connection refused or reset, a timeout, 429 or 5xx: the same call may well succeed if repeated."""

    default_fix = "the API server was unreachable, slow or overloaded; retrying is safe"


class ConflictError(KubeApiError):
    """409: the object changed since we read it; overwriting would lose someone else's write."""

    default_fix = "read the object again and recompute the change from what it holds now"


class AlreadyExistsError(ConflictError):
    """409 AlreadyExists on create: someone created it between our read and our write."""

    default_fix = "read the existing object and replace it instead of creating it"


class NotFoundError(KubeApiError):
    """404: the object, its namespace or its kind (a CRD) does not exist on this cluster."""

    default_fix = "check the namespace and name, and that the kind is installed on this cluster"


class UnauthorizedError(KubeApiError):
    """401: the API server did not accept the kubeconfig's credentials at all."""

    default_fix = "check that the kubeconfig's token or client certificate is current and for this cluster"


class ForbiddenError(KubeApiError):
    """403: the credentials are valid but RBAC does not allow this call."""

    default_fix = "grant the kubeconfig's user this permission, or use the cluster's admin kubeconfig"


class InvalidError(KubeApiError):
    """400 or 422: the API (or an admission webhook) refused the object as written."""

    default_fix = "fix the fields named in the message; retrying the same request will fail again"


class TLSVerificationError(KubeApiError):
    """The server's certificate did not verify against the kubeconfig's CA: never retried, never skipped."""

    default_fix = (
        "check that the kubeconfig's certificate-authority-data is this cluster's CA and that the server "
        "address is one the certificate names"
    )


class WaitTimeoutError(ClusterMeshError):
    """A wait ran out of time: says what was expected, what was last seen and what to check."""

    def __init__(self, cluster: str, expected: str, last_seen: str, *, timeout: float, check: str) -> None:
        self.cluster = cluster
        self.expected = expected
        self.last_seen = last_seen
        self.timeout = timeout
        self.check = check
        super().__init__(
            f"cluster {cluster!r}: timed out after {timeout:g}s waiting for {expected}; "
            f"last seen: {last_seen} — check {check}"
        )


class SlackConfigError(ClusterMeshError):
    """Slack settings that cannot work together; names the setting, never the token or webhook URL."""

    def __init__(self, setting: str, problem: str, *, fix: str) -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem} — {fix}")


class MeshUnhealthyError(ClusterMeshError):
    """The mesh did not become healthy in time; ``matrix`` (a ``HealthMatrix``) holds what was last seen.

    Typed as ``Any`` here so the error module stays free of domain models; the matrix never carries
    secrets (node names, IPs and probe errors only).
    """

    def __init__(self, expected: str, last_seen: str, *, timeout: float, check: str, matrix: Any) -> None:
        self.expected = expected
        self.last_seen = last_seen
        self.timeout = timeout
        self.check = check
        self.matrix = matrix
        super().__init__(
            f"mesh not healthy after {timeout:g}s: expected {expected}; last seen: {last_seen} — check {check}"
        )


class ClusterStateError(ClusterMeshError):
    """A cluster is not in a state the pipeline may build on; nothing is written on top of it.

    Raised by the prerequisite checks and when KKP reports an installation failed: names the cluster,
    the object, what is wrong and the fix.
    """

    def __init__(self, cluster: str, problem: str, *, fix: str) -> None:
        self.cluster = cluster
        self.problem = problem
        self.fix = fix
        super().__init__(f"cluster {cluster!r}: {problem} — {fix}")


class PrerequisiteError(ClusterStateError):
    """Step 1 found something the guide's prerequisites rule out (no eBPF, overlapping CIDRs, …)."""


class InstallFailedError(ClusterStateError):
    """KKP reported the cilium ApplicationInstallation failed for the values we wrote."""


class EndpointError(ClusterStateError):
    """A cluster's clustermesh-apiserver data is unusable (e.g. a remote certificate not matching its key)."""


class DrillError(ClusterMeshError):
    """The failover drill cannot start or continue as asked; names the cluster, the object and the fix."""

    def __init__(self, cluster: str, problem: str, *, fix: str) -> None:
        self.cluster = cluster
        self.problem = problem
        self.fix = fix
        super().__init__(f"cluster {cluster!r}: {problem} — {fix}")


# ------------------------------------------------------------------------------ KKP's REST API


class KkpApiError(ClusterMeshError):
    """A KKP API call failed or KKP holds something we must not build on; names project, cluster and fix."""

    default_fix = "see KKP's message above"

    def __init__(
        self,
        project: str,
        cluster: str | None,
        problem: str,
        *,
        status: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.project = project
        self.cluster = cluster
        self.problem = problem
        self.status = status
        self.fix = fix if fix is not None else self.default_fix
        where = f"KKP project {project!r}" + (f", cluster {cluster!r}" if cluster else "")
        http = f"HTTP {status}: " if status else ""
        super().__init__(f"{where}: {http}{problem} — {self.fix}")


class KkpTokenError(KkpApiError):
    """The token reference cannot be resolved (env var unset, no Secret loader); nothing was sent."""


class KkpUnauthorizedError(KkpApiError):
    """401: KKP did not accept the token."""

    default_fix = (
        "check the KKP API token: it must be a current OIDC token or a project service-account token "
        "(clusters[].kkp.token_env / token_block)"
    )


class KkpForbiddenError(KkpApiError):
    """403: the token is valid but may not do this in the project (or admin kubeconfigs are disabled)."""

    default_fix = (
        "use a token of a project member with editor or owner rights; for kubeconfigs the datacenter must "
        "not set disableAdminKubeconfig"
    )


class KkpProjectNotFoundError(KkpApiError):
    """404 for the project: wrong project ID, or a token of another KKP."""

    default_fix = "check clusters[].kkp.project: it is the project ID shown in the KKP dashboard, not its name"


class KkpClusterNotFoundError(KkpApiError):
    """404 for a cluster, or no cluster of that name in the project."""

    default_fix = (
        "check clusters[].kkp.cluster_id, or remove it to find the cluster by name; "
        "create missing clusters with `clustermesh clusters create --config <mesh.yaml>`"
    )


class KkpInvalidRequestError(KkpApiError):
    """400/409/422: KKP refused the request as written; repeating it fails again."""

    default_fix = "fix the settings KKP names (spec.kkp, clusters[].pod_cidrs); nothing was created"


class KkpTransientError(KkpApiError):
    """Unreachable, timed out, 429 or 5xx: the same call may succeed if repeated."""

    default_fix = "the KKP API was unreachable, slow or overloaded; retrying is safe"


class KkpImmutableSettingsError(KkpApiError):
    """An existing cluster has settings that KKP cannot change after creation."""

    default_fix = "these settings cannot be changed after creation: create a new cluster"


class KkpPoolExhaustedError(KkpApiError):
    """The pod CIDR pool has fewer free entries than clusters to create."""

    default_fix = "add non-overlapping /16 networks to kkp.pod_cidr_pool, or give clusters[].pod_cidrs"


# ------------------------------------------------------------------ running flows and deploying


class MeshBusyError(ClusterMeshError):
    """Another setup or nightly run holds the mesh, or the mesh's concurrency limit is missing."""


class ResultKeyError(ClusterMeshError):
    """The result-encryption key is missing or malformed."""


class ReportedFailure(ClusterMeshError):
    """The flow failed after its own summary already told Slack why: hooks do not alert twice."""


class StopRequested(ClusterMeshError):
    """The run was asked to stop (Ctrl-C, SIGTERM) before ``what``, which was therefore not done.

    Writes check for it right before they are sent (``clustermesh.stopping``): a rerun continues from
    what the clusters hold, so nothing is retried and nothing half-written is left behind.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"stopped ({reason or 'stop requested'}) before {what}: not done; a rerun continues safely")


class RegistrationError(ClusterMeshError):
    """A reference that cannot be registered (``clustermesh blocks register``); the message names it and the fix."""
