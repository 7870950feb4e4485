"""JSON Schemas in ``schemas/`` and validation that reports every problem with its JSON path.

jsonschema is the authoritative validator; this module only turns its errors into one useful line
each. For ``anyOf``/``oneOf`` it reports the errors of the alternative the document evidently meant
(the one whose type matches) instead of jsonschema's "is not valid under any of the given schemas",
and alternatives that only differ in required keys become "needs exactly one of 'a' or 'b'".
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed

SCHEMA_NAMES = ("mix", "meta", "train", "checkpoint")

_JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")


def schema_dir() -> Path:
    """``schemas/`` of a source checkout, or the copy packaged as ``fm9g/_schemas`` in a wheel."""
    packaged = Path(str(resources.files("fm9g"))) / "_schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.schema.json``; unknown names raise :class:`UnknownName`."""
    if name not in SCHEMA_NAMES:
        raise UnknownName("schema", name, SCHEMA_NAMES)
    return json.loads((schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))


class NonFiniteNumber(ValueError):
    """A JSON document holds NaN, Infinity or a number too large for a float."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise NonFiniteNumber(f"{text} is too large for a number")
    return value


def _no_constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a number JSON allows")


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and numbers that overflow to infinity:
    Python's parser accepts them, and a learning rate or weight of infinity trains on NaN."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error or a non-finite number names the file, line and column."""
    path = Path(path)
    return parse_json_file(read_text(path, "JSON"), path)


def read_text(path: str | Path, kind: str) -> str:
    """The UTF-8 text of a ``kind`` (``"JSON"``, ``"YAML"``) file that is not empty; else one clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Fm9gError("file not found", where=str(path), fix="check the path") from None
    except IsADirectoryError:
        raise Fm9gError(f"is a directory, not a {kind} file", where=str(path)) from None
    except UnicodeDecodeError as error:
        raise Fm9gError(f"not UTF-8 text ({error.reason} at byte {error.start})", where=str(path)) from None
    if not text.strip():
        raise Fm9gError(f"empty file, expected a {kind} document", where=str(path))
    return text


def parse_json_file(text: str, path: Path) -> Any:
    """:func:`parse_json` of the text of ``path``, its errors naming the file, line and column."""
    try:
        return parse_json(text)
    except NonFiniteNumber as error:
        raise Fm9gError(f"invalid JSON: {error}", where=str(path), fix="write a finite number") from None
    except json.JSONDecodeError as error:
        raise Fm9gError(
            f"invalid JSON: {error.msg}", where=f"{path}:{error.lineno}:{error.colno}",
            fix="fix the syntax; a trailing comma or a missing quote is typical",
        ) from None


def schema_problems(document: Any, name: str) -> list[str]:
    """Every schema violation as ``"$.json.path: message"``, in document order, without duplicates."""
    validator = jsonschema.Draft202012Validator(load_schema(name))
    leaves = [leaf for error in validator.iter_errors(document) for leaf in _leaf_errors(error)]
    leaves.sort(key=lambda leaf: _path_key(leaf[0]))
    return list(dict.fromkeys(f"{_json_path(path)}: {message}" for path, message in leaves))


def validate(document: Any, name: str, source: str) -> None:
    """Raise :class:`ValidationFailed` listing every problem (``source`` names the file)."""
    problems = schema_problems(document, name)
    if problems:
        raise ValidationFailed(source, problems)


Leaf = tuple[tuple[Any, ...], str]
"""An absolute document path and a message for it."""


def _leaf_errors(error: ValidationError) -> list[Leaf]:
    """The specific problems behind ``error`` (recursing into ``anyOf``/``oneOf`` alternatives)."""
    path = tuple(error.absolute_path)
    if error.validator in ("anyOf", "oneOf"):
        return _alternative_errors(error, path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return _unknown_keys(error, path)
    return [(path, _shorten_instance(error))]


def _alternative_errors(error: ValidationError, path: tuple[Any, ...]) -> list[Leaf]:
    branches = error.validator_value
    required_only = all(isinstance(b, dict) and set(b) == {"required"} for b in branches)
    if required_only:
        return [(path, _required_alternatives_message(error, branches))]
    if not error.context:  # oneOf matched more than one alternative
        return [(path, error.message)]
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    type_matching = [
        index for index, subs in sorted(by_branch.items())
        if not any(sub.validator in ("type", "const", "enum") and tuple(sub.absolute_path) == path for sub in subs)
    ]
    if len(type_matching) == 1:
        return [leaf for sub in by_branch[type_matching[0]] for leaf in _leaf_errors(sub)]
    if not type_matching:
        return [(path, _no_matching_type_message(error.instance, branches))]
    best = jsonschema.exceptions.best_match(error.context)
    return _leaf_errors(best) if best is not None else [(path, error.message)]


def _required_alternatives_message(error: ValidationError, branches: list[dict[str, Any]]) -> str:
    """``oneOf``/``anyOf`` of ``{"required": [...]}`` alternatives, as a sentence about keys."""
    options = [" and ".join(repr(key) for key in branch["required"]) for branch in branches]
    listing = " or ".join(options)
    present = [option for option, branch in zip(options, branches)
               if isinstance(error.instance, dict) and all(key in error.instance for key in branch["required"])]
    if error.validator == "oneOf" and len(present) > 1:
        return f"has both {' and '.join(present)}: give exactly one of {listing}"
    quantity = "exactly one of" if error.validator == "oneOf" else "one of"
    return f"needs {quantity} {listing}"


def _no_matching_type_message(instance: Any, branches: list[dict[str, Any]]) -> str:
    types: list[str] = []
    for branch in branches:
        branch_types = branch.get("type", []) if isinstance(branch, dict) else []
        for name in [branch_types] if isinstance(branch_types, str) else branch_types:
            if name not in types:
                types.append(name)
    if not types:
        return f"{_short(instance)} is not valid under any of the given schemas"
    types.sort(key=_JSON_TYPES.index)
    expected = " or ".join(repr(t) for t in types)
    return f"{_short(instance)} is not of type {expected}"


def _unknown_keys(error: ValidationError, path: tuple[Any, ...]) -> list[Leaf]:
    """``additionalProperties: false`` violations, one per unknown key, with a did-you-mean."""
    known = sorted(error.schema.get("properties", {}))
    patterns = list(error.schema.get("patternProperties", {}))
    unknown = [key for key in error.instance
               if key not in known and not any(re.search(pattern, key) for pattern in patterns)]
    if not unknown:
        return [(path, error.message)]
    leaves = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        leaves.append((path + (key,), f"unknown key '{key}' ({hint}known keys: {', '.join(known)})"))
    return leaves


def _shorten_instance(error: ValidationError) -> str:
    """jsonschema's message, with a long leading repr of the offending value abbreviated."""
    message = error.message
    shown = repr(error.instance)
    if len(shown) > 80 and message.startswith(shown):
        return _short(error.instance) + message[len(shown):]
    return message


def _short(instance: Any, limit: int = 60) -> str:
    text = json.dumps(instance, ensure_ascii=False) if not isinstance(instance, str) else repr(instance)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path_key(path: Iterable[Any]) -> list[tuple[int, Any]]:
    """Sort key keeping list indexes numeric, so ``$[2]`` comes before ``$[10]``."""
    return [(0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path]


def _json_path(path: Iterable[Any]) -> str:
    """``("datasets", 0, "transform")`` -> ``$.datasets[0].transform`` (odd keys in brackets)."""
    text = "$"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text
