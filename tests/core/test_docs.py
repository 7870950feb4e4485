"""Every plugin hook has its own section in docs/plugins.md (a heading naming it), so none goes undocumented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fm9g.core import hookspecs

PLUGINS_DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    """The functions of ``fm9g/core/hookspecs.py`` marked with ``@hookspec`` (pluggy sets ``fm9g_spec``)."""
    return [name for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, "fm9g_spec")]


def documented_hooks(markdown: str) -> set[str]:
    """Hook names in backticks (`name` or `name(...)`) on heading lines outside fenced code blocks.

    A mention in running text does not count, and neither does a ``# comment`` in a fenced example.
    """
    names: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            names.update(re.findall(r"`(\w+)(?:\([^`]*\))?`", line))
    return names


def test_hookspecs_are_found() -> None:
    assert {"register_adapters", "register_transforms"} <= set(hook_names())


def test_only_headings_outside_code_count() -> None:
    markdown = "## `a(register)`: one\n### The `b` hook\nsee `c`\n```python\n# `d(register)`\n```\n"
    assert documented_hooks(markdown) == {"a", "b"}


@pytest.mark.parametrize("hook", hook_names())
def test_plugin_hook_is_documented(hook: str) -> None:
    assert hook in documented_hooks(PLUGINS_DOC.read_text(encoding="utf-8")), (
        f"docs/plugins.md has no section for the hook {hook}: add a heading such as '## `{hook}(register)`'")
