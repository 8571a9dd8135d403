"""Spec text from a file, and YAML into plain data: every failure a SpecError that never echoes the text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clustermesh.errors import SpecError, SpecProblem

__all__ = ["parse_yaml", "read_spec_file"]


def read_spec_file(path: Path) -> str:
    """The file's text; unreadable files are SpecErrors naming the path and what to check."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = SpecProblem("", f"cannot read the spec file: {type(exc).__name__}", str(path), _read_fix(exc))
        raise SpecError([problem], source=str(path)) from None


def _read_fix(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "check the path"
    if isinstance(exc, UnicodeDecodeError):
        return "save the file as UTF-8"
    return "check the file's permissions"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: a second `id:` silently winning is a typo hidden."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key: let SafeLoader raise its own error
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str | None) -> object:
    """YAML → data; errors give line and column but never the document's text (it may hold secrets)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = exc.problem or exc.context or "invalid YAML"
        if problem.startswith("found duplicate key"):
            problem = "duplicate key"
        raise SpecError(
            [SpecProblem("", f"YAML syntax error at {where}: {problem}", "-", "fix the YAML at that position")],
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(
            [SpecProblem("", f"YAML error: {type(exc).__name__}", "-", "check the file is YAML")],
            source=source,
        ) from None
    except RecursionError:
        raise SpecError(
            [SpecProblem("", "YAML nested too deeply to read", "-", "a mesh spec needs only a few levels")],
            source=source,
        ) from None
    except ValueError:  # e.g. an integer of thousands of digits (Python's int string limit)
        raise SpecError(
            [SpecProblem("", "YAML holds a value too large to read", "-", "check the numbers in the spec")],
            source=source,
        ) from None
