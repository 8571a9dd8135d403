"""pydantic's ValidationError → one SpecError of "field: message (got: value) — fix", secrets hidden."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from clustermesh.errors import SpecError, SpecProblem
from clustermesh.spec.display import display, int_text, key_text

__all__ = ["spec_error_from"]


_GENERIC_FIXES: dict[str, str] = {
    "missing": "add this field",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "int_from_float": "give a whole number",
    "float_parsing": "give a number of seconds",
    "float_type": "give a number of seconds",
    "finite_number": "give a finite number",
    "string_type": "give a text value",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "list_type": "give a list",
    "model_type": "give a mapping with the fields listed in the docs",
    "model_attributes_type": "give a mapping with the fields listed in the docs",
    "dict_type": "give a mapping",
    "too_short": "add entries",
    "too_long": "remove entries",
    "string_too_short": "give a longer value",
    "string_too_long": "shorten it",
    "greater_than": "give a larger value",
    "greater_than_equal": "give a larger value",
    "less_than": "give a smaller value",
    "less_than_equal": "give a smaller value",
    "ip_v4_network": "give a network like 172.26.0.0/16 (host bits zero)",
    "ip_v6_network": "give a network like fd00:26::/64 (host bits zero)",
    "ip_any_network": "give a network like 172.26.0.0/16 (host bits zero)",
}

_SECRET_FIELDS = {"kubeconfig", "token_block", "token_env", "webhook_env"}


def _field_path(loc: tuple[str | int, ...]) -> str:
    """('clusters', 1, 'id') → 'clusters[1].id'; pydantic's model/function tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{int_text(part)}]"
        elif "[" in part or part.startswith("function-"):
            continue
        else:
            part = key_text(part)
            out += f".{part}" if out else part
    return out


def _allowed_fields(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str] | None:
    """Field names of the model at ``loc`` below ``root`` (the parent of an unknown key), for "did you mean"."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def spec_error_from(exc: ValidationError, root: type[BaseModel], *, source: str | None = None) -> SpecError:
    """pydantic's errors from validating ``root`` → SpecProblems of "field: message (got: value) — fix".

    Secrets are hidden; an unknown key's fix lists the fields allowed at its place in ``root``.
    """
    problems: list[SpecProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = _field_path(loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        message = err["msg"]
        fix = str(ctx.get("fix", "")) or _GENERIC_FIXES.get(kind, "")
        redact = any(part in _SECRET_FIELDS for part in loc if isinstance(part, str))
        if kind == "extra_forbidden":
            allowed = _allowed_fields(root, loc[:-1])
            message = "unknown field"
            fix = "remove it or fix the spelling" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            redact = True
        elif kind == "literal_error":
            fix = f"use one of {ctx.get('expected', 'the listed values')}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bound = ctx.get("gt", ctx.get("ge", ctx.get("lt", ctx.get("le"))))
            fix = f"{fix} (limit {bound})"
        elif kind in ("too_short", "too_long") and field == "clusters":
            fix = "list 2..255 clusters (..511 with cilium.max_connected_clusters 511)"
        shown = "nothing" if kind == "missing" else display(err.get("input"), redact=redact)
        problems.append(SpecProblem(field, message, shown, fix))
    return SpecError(problems, source=source)
