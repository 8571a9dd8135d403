"""Every error the pipeline raises on purpose: one root, and subclasses that say what the user must fix.

Messages name the object, the field or value, and the fix. They never carry secret material.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CertificateError",
    "CiliumOutputError",
    "ClusterMeshError",
    "KkpOwnedKeyError",
    "SpecError",
    "SpecProblem",
    "UnsupportedVersionError",
    "ValuesError",
]


class ClusterMeshError(Exception):
    """Root of the project's own errors: anything else escaping is a bug."""


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
        self.line = None if line is None or len(line) <= 120 else line[:119] + "…"
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Survive pickling (Prefect moves task exceptions between processes)."""
        return (
            _rebuild_cilium_output_error,
            (self.command, self.problem, self.expected, self.line_no, self.line, self.json_path),
        )


def _rebuild_cilium_output_error(
    command: str,
    problem: str,
    expected: str,
    line_no: int | None,
    line: str | None,
    json_path: str | None,
) -> CiliumOutputError:
    return CiliumOutputError(
        command, problem, expected=expected, line_no=line_no, line=line, json_path=json_path
    )


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

    def __reduce__(self) -> tuple[Any, ...]:
        """Survive pickling (Prefect moves task exceptions between processes)."""
        return (_rebuild_spec_error, (self.problems, self.source))


def _rebuild_spec_error(problems: list[SpecProblem], source: str | None) -> SpecError:
    return SpecError(problems, source=source)


class UnsupportedVersionError(ClusterMeshError):
    """A Cilium version outside the lines we keep profiles for: guessing its values could break the CNI."""

    def __init__(self, version: str, supported: tuple[str, ...]) -> None:
        self.version = version
        self.supported = tuple(supported)
        super().__init__(
            f"unsupported Cilium version {version!r}: supported lines are {', '.join(self.supported)}; "
            "use one of those (e.g. '1.16' or '1.16.9'), or upgrade the cluster's Cilium first"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnsupportedVersionError, (self.version, self.supported))


class ValuesError(ClusterMeshError):
    """Cilium Helm values we cannot read or must not write; nothing has been written when it is raised."""

    def __init__(self, obj: str, problem: str, *, fix: str) -> None:
        self.obj = obj
        self.problem = problem
        self.fix = fix
        super().__init__(f"{obj}: {problem} — {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_values_error, (type(self), self.obj, self.problem, self.fix))


def _rebuild_values_error(cls: type[ValuesError], obj: str, problem: str, fix: str) -> ValuesError:
    return cls(obj, problem, fix=fix)


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (CertificateError, (self.source, self.problem))
