"""Config documents (train configs, mix manifests) read from JSON or YAML, with line numbers for errors.

The format follows the file's extension: ``.yaml`` / ``.yml`` is YAML, anything else JSON. Both
give the same data and are checked against the same schemas. YAML is read with PyYAML's safe
loader restricted to what JSON can say, resolving plain scalars as YAML 1.2 does rather than
PyYAML's YAML 1.1 defaults: ``1e-4`` is a number (not the string ``"1e-4"``), ``no`` / ``on`` stay
strings (only ``true`` / ``false`` are booleans), dates stay strings. ``.inf``, ``.nan``, numbers
that overflow, non-string keys, duplicate keys and tags without a JSON value (``!!binary``,
``!!set``) are errors naming the line, as JSON's parser refuses its counterparts.

Validation problems are ``"$.json.path: message"`` lines; :meth:`SourceDocument.locate` adds the
line of the file that the path points at (from PyYAML's node marks; a JSON file is a YAML flow
document, so the same marks serve it), giving ``train.yaml:12: $.lr: ...``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.core.schemas import parse_json_file, read_text

YAML_SUFFIXES = (".yaml", ".yml")

JsonPath = tuple[Any, ...]
"""Keys (str) and list indexes (int) from the document's root."""

_PRUNED_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp"}


class _JsonCompatibleLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core-schema booleans, integers and floats, and no dates."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in _PRUNED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_JsonCompatibleLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_JsonCompatibleLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_JsonCompatibleLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _finite_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        mark = node.start_mark
        raise Fm9gError(f"{node.value} is not a finite number", where=f"{mark.name}:{mark.line + 1}:{mark.column + 1}",
                        fix="write a finite number: JSON has no infinity or NaN, and a learning rate of one trains on NaN")
    return value


_JsonCompatibleLoader.add_constructor("tag:yaml.org,2002:float", _finite_float)


@dataclass
class SourceDocument:
    """A parsed config file: its data, and where in the file each JSON path is."""

    path: Path
    data: Any
    format: str
    """``"json"`` or ``"yaml"``."""
    text: str = field(repr=False)
    _lines: dict[JsonPath, int] | None = field(default=None, repr=False)
    _forgotten: list[JsonPath] = field(default_factory=list, repr=False)

    @property
    def source(self) -> str:
        return str(self.path)

    def line(self, path: JsonPath) -> int | None:
        """The 1-based line of the key (or list item) at ``path``; ``None`` when the file has none there
        or a command-line override replaced it."""
        if any(path[:len(prefix)] == prefix for prefix in self._forgotten):
            return None
        if self._lines is None:
            self._lines = _lines_of_text(self.text)
        return self._lines.get(tuple(path))

    def forget(self, path: JsonPath) -> None:
        """The value at ``path`` no longer comes from the file (an override set it): no line for it."""
        self._forgotten.append(tuple(path))

    def locate(self, error: ValidationFailed) -> ValidationFailed:
        """``error`` (about this file) with each problem's line; other errors are returned unchanged."""
        if error.source != self.source or isinstance(error, LocatedValidationFailed):
            return error
        lines = [self.line(path) if (path := problem_path(problem)) is not None else None
                 for problem in error.problems]
        return LocatedValidationFailed(error.source, error.problems, lines)

    @contextlib.contextmanager
    def problems_located(self) -> Iterator[None]:
        """Re-raise a :class:`ValidationFailed` about this file with line numbers."""
        try:
            yield
        except ValidationFailed as error:
            located = self.locate(error)
            if located is error:
                raise
            raise located from None


class LocatedValidationFailed(ValidationFailed):
    """A :class:`ValidationFailed` whose problems print as ``FILE:LINE: $.path: message``."""

    def __init__(self, source: str, problems: list[str], lines: list[int | None]):
        super().__init__(source, problems)
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(f"{self.source}:{line}: {problem}" if line else f"{self.source}: {problem}"
                         for problem, line in zip(self.problems, self.lines))


def is_yaml(path: str | Path) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def read_document(path: str | Path) -> SourceDocument:
    """Parse a JSON or YAML config file (by extension); syntax errors name the file, line and column."""
    path = Path(path)
    if not is_yaml(path):
        text = read_text(path, "JSON")
        return SourceDocument(path, parse_json_file(text, path), "json", text)
    text = read_text(path, "YAML")
    loader = _JsonCompatibleLoader(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            raise Fm9gError("empty file, expected a YAML document", where=str(path))
        _check_keys(node, path, set())
        data = loader.construct_document(node)
        lines: dict[JsonPath, int] = {}
        _walk(node, data, (), lines, path, set())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "syntax error"
        raise Fm9gError(f"invalid YAML: {problem}", where=where,
                        fix="fix the syntax; inconsistent indentation or a missing ': ' is typical") from None
    except yaml.YAMLError as error:
        raise Fm9gError(f"invalid YAML: {error}", where=str(path)) from None
    finally:
        loader.dispose()
    return SourceDocument(path, data, "yaml", text, lines)


def _error(message: str, node: yaml.Node, path: Path, fix: str | None = None) -> Fm9gError:
    mark = node.start_mark
    return Fm9gError(message, where=f"{path}:{mark.line + 1}:{mark.column + 1}", fix=fix)


def _check_keys(node: yaml.Node, path: Path, active: set[int]) -> None:
    """Mapping keys are strings and unique (``<<`` merges aside), before PyYAML silently keeps the last."""
    if id(node) in active:
        raise _error("a recursive alias: the document refers to itself", node, path)
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                raise _error(f"the key {key_node.value!r} is not a string", key_node, path,
                             fix="quote it: JSON keys are strings")
            if key_node.value in seen:
                raise _error(f"duplicate key '{key_node.value}' (first at line {seen[key_node.value]})", key_node,
                             path, fix="keep one of them")
            seen[key_node.value] = key_node.start_mark.line + 1
            _check_keys(value_node, path, active)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_keys(item, path, active)
    active.discard(id(node))


def _walk(node: yaml.Node, value: Any, at: JsonPath, lines: dict[JsonPath, int], path: Path,
          active: set[int]) -> None:
    """Record the line of every key and item, and refuse values JSON has no form for."""
    if id(node) in active:
        raise _error("a recursive alias: the document refers to itself", node, path)
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        active.add(id(node))
        for key_node, value_node in node.value:  # merges already flattened by the constructor: last wins
            lines[at + (key_node.value,)] = key_node.start_mark.line + 1
            _walk(value_node, value[key_node.value], at + (key_node.value,), lines, path, active)
        active.discard(id(node))
    elif isinstance(node, yaml.SequenceNode) and isinstance(value, list):
        active.add(id(node))
        for index, (item_node, item) in enumerate(zip(node.value, value)):
            lines[at + (index,)] = item_node.start_mark.line + 1
            _walk(item_node, item, at + (index,), lines, path, active)
        active.discard(id(node))
    elif not (value is None or isinstance(value, (str, bool, int, float))):
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise _error(f"a {tag} value ({type(value).__name__}) has no JSON form", node, path,
                     fix="write a string, number, boolean, null, list or mapping")


def _lines_of_text(text: str) -> dict[JsonPath, int]:
    """Lines of a JSON document's keys, read through PyYAML's composer (JSON is YAML flow syntax); ``{}``
    where it cannot read them (a tab PyYAML refuses, say): the error then names the path alone."""
    loader = _JsonCompatibleLoader(text)
    lines: dict[JsonPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            _node_lines(node, (), lines, set())
    except yaml.YAMLError:
        return {}
    finally:
        loader.dispose()
    return lines


def _node_lines(node: yaml.Node, at: JsonPath, lines: dict[JsonPath, int], active: set[int]) -> None:
    if id(node) in active:
        return
    lines.setdefault(at, node.start_mark.line + 1)
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[at + (key_node.value,)] = key_node.start_mark.line + 1
                _node_lines(value_node, at + (key_node.value,), lines, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[at + (index,)] = item.start_mark.line + 1
            _node_lines(item, at + (index,), lines, active)
    active.discard(id(node))


_PATH_PART = re.compile(r'\.([^.\[\]:\s]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def problem_path(problem: str) -> JsonPath | None:
    """The JSON path a ``"$.a[0].b: message"`` problem starts with, as keys and indexes; ``None`` if none."""
    if not problem.startswith("$"):
        return None
    parts: list[Any] = []
    position = 1
    while match := _PATH_PART.match(problem, position):
        key, index, quoted = match.groups()
        parts.append(key if key is not None else int(index) if index is not None else json.loads(quoted))
        position = match.end()
    if position < len(problem) and problem[position] != ":":
        return None
    return tuple(parts)
