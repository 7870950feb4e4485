"""Record transforms: built-in plugins (``identity``, ``chatml``, ``fm9g``) and seed transform scripts.

A manifest names a transform either by plugin name (preferred) or, for seed compatibility, by
the path of a Python file defining ``transform(data, num_sample, r)``. Running such a file runs
arbitrary code, so it only happens when the caller passes ``trust_scripts=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError
from fm9g.core.protocols import TransformFn

DEFAULT_TRANSFORM = "identity"


def looks_like_script(reference: str) -> bool:
    """Plugin names never contain a path separator or end in ``.py``; script paths do."""
    return reference.endswith(".py") or "/" in reference or "\\" in reference


@dataclass(frozen=True)
class TransformRef:
    """What a manifest entry asks for: a plugin ``name`` with ``options``, or a seed ``script`` path."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    script: Path | None = None

    def as_json(self) -> dict[str, Any]:
        if self.script:
            return {"script": str(self.script)}
        return {"name": self.name, "options": self.options}


def untrusted_script_error(script: Path, where: str | None) -> Fm9gError:
    return Fm9gError(
        f"'{script}' is a transform script; running it executes arbitrary Python code named by the manifest",
        where=where,
        fix="pass --trust-scripts (or \"trust_scripts\": true in the train config) if you trust this file, "
        "or better, "
        "turn it into a transform plugin and name it instead: see docs/plugins.md, "
        "'Migrating a seed transforms script'",
    )


def load_script_transform(script: Path, *, where: str | None = None) -> TransformFn:
    """Import a seed transform script and return its ``transform(data, num_sample, r)`` function."""
    if not script.is_file():
        raise Fm9gError(f"transform script not found: {script}", where=where, fix="check the path")
    module_name = "fm9g_seed_script_" + hashlib.sha1(str(script.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise Fm9gError(f"cannot load transform script {script}", where=where)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any failure in user code becomes one clear line
        raise Fm9gError(
            f"transform script {script} failed to import: {type(error).__name__}: {error}", where=where
        ) from error
    function = getattr(module, "transform", None)
    if not callable(function):
        raise Fm9gError(
            f"transform script {script} defines no function 'transform'",
            where=where,
            fix="define transform(data, num_sample, r) returning {'input': ..., 'output': ...}",
        )
    try:
        inspect.signature(function).bind(None, 0, None)
    except TypeError:
        raise Fm9gError(
            f"transform script {script}: 'transform' must accept (data, num_sample, r)", where=where
        ) from None
    return function


def bind_transform(ref: TransformRef, *, trust_scripts: bool, where: str | None = None) -> TransformFn:
    """The per-record function for ``ref``: a plugin bound to validated options, or a trusted script."""
    if ref.script is not None:
        if not trust_scripts:
            raise untrusted_script_error(ref.script, where)
        return load_script_transform(ref.script, where=where)
    from fm9g.core.plugins import get_plugin, validate_options

    plugin = get_plugin("transform", ref.name or DEFAULT_TRANSFORM, where=where)
    options = validate_options(plugin, ref.options, where=where or "transform")
    return plugin.bind(options)
