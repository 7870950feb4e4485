"""JSON Schemas in ``schemas/`` and validation that reports every problem with its JSON path."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from fm9g.core.errors import Fm9gError, ValidationFailed

SCHEMA_NAMES = ("mix", "meta", "train", "checkpoint")


def schema_dir() -> Path:
    """``schemas/`` of a source checkout, or the copy packaged as ``fm9g/_schemas`` in a wheel."""
    packaged = Path(str(resources.files("fm9g"))) / "_schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        from fm9g.core.errors import UnknownName

        raise UnknownName("schema", name, SCHEMA_NAMES)
    return json.loads((schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Fm9gError("file not found", where=str(path), fix="check the path") from None
    except UnicodeDecodeError as error:
        raise Fm9gError(f"not UTF-8 text ({error.reason} at byte {error.start})", where=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise Fm9gError(
            f"invalid JSON: {error.msg}", where=f"{path}:{error.lineno}:{error.colno}",
            fix="fix the syntax (a trailing comma or a missing quote is typical)",
        ) from None


def schema_problems(document: Any, name: str) -> list[str]:
    """Every schema violation as ``"$.json.path: message"``, in document order."""
    validator = jsonschema.Draft202012Validator(load_schema(name))
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]):
        leaves = _leaf_errors(error)
        problems.extend(f"{leaf.json_path}: {leaf.message}" for leaf in leaves)
    return list(dict.fromkeys(problems))


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For anyOf/oneOf failures, the most specific sub-errors instead of 'is not valid under any'."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None and best.json_path != error.json_path:
            return [best]
    return [error]


def validate(document: Any, name: str, source: str) -> None:
    """Raise :class:`ValidationFailed` listing every problem (``source`` names the file)."""
    problems = schema_problems(document, name)
    if problems:
        raise ValidationFailed(source, problems)
