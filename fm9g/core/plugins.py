"""The plugin manager: built-in plugins plus every distribution in the ``fm9g`` entry-point group.

Registered objects are looked up by kind and name; unknown names raise :class:`UnknownName`
with the known ones and a did-you-mean. ``FM9G_DISABLE_PLUGINS=1`` loads built-ins only.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
import pluggy

from fm9g import __version__
from fm9g.core import hookspecs
from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed

KINDS = {
    "adapter": "register_adapters",
    "transform": "register_transforms",
    "tokenizer": "register_tokenizers",
    "backend": "register_backends",
    "delta_engine": "register_delta_engines",
    "logger": "register_loggers",
}

BUILTIN_MODULES = (
    "fm9g.adapters.txt",
    "fm9g.adapters.jsonl",
    "fm9g.adapters.sharegpt",
    "fm9g.adapters.openai",
    "fm9g.mixer.transforms.identity",
    "fm9g.mixer.transforms.chatml",
    "fm9g.mixer.transforms.fm9g_template",
    "fm9g.mixer.transforms.chat_template",
    "fm9g.tokenizers.byte",
    "fm9g.tokenizers.hf",
    "fm9g.tokenizers.sentencepiece",
    "fm9g.backends.torch_backend.plugin",
    "fm9g.backends.bmtrain_backend.plugin",
    "fm9g.backends.lora.peft_engine",
    "fm9g.backends.lora.opendelta_engine",
    "fm9g.backends.training.trackers.tensorboard_tracker",
    "fm9g.backends.training.trackers.mlflow_tracker",
    "fm9g.backends.training.trackers.wandb_tracker",
)
"""Modules holding fm9g's own hook implementations, registered like any installed plugin."""


@dataclass(frozen=True)
class PluginInfo:
    """A registered object and where it came from."""

    kind: str
    name: str
    obj: Any
    version: str
    distribution: str

    @property
    def description(self) -> str:
        return getattr(self.obj, "description", "")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "distribution": self.distribution,
            "description": self.description,
        }


class Registry:
    """Every registered plugin object, by kind and name."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self._by_kind: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.broken: list[Fm9gError] = list(getattr(manager, "fm9g_broken", []))
        """Installed plugins that failed to load or register: warned about, and named when a lookup fails."""
        sources = _plugin_sources(manager)
        for kind, hook_name in KINDS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                distribution, version = sources.get(id(impl.plugin), ("fm9g", __version__))
                try:
                    impl.function(register=self._registrar(kind, distribution, version))
                except Fm9gError:
                    raise
                except Exception as error:  # noqa: BLE001 - a broken plugin must not look like an fm9g bug
                    self.broken.append(Fm9gError(
                        f"plugin {impl.plugin_name} failed in {hook_name}: {type(error).__name__}: {error}",
                        where=f"distribution {distribution} {version}",
                        fix=f"fix or uninstall {distribution}, or set FM9G_DISABLE_PLUGINS=1"))
        for problem in self.broken:
            print(f"fm9g: warning: {problem}; its plugins are unavailable", file=sys.stderr)

    def _registrar(self, kind: str, distribution: str, version: str):
        def register(obj: Any) -> None:
            for attribute in ("name", "description", "options_schema"):
                if not hasattr(obj, attribute):
                    raise Fm9gError(
                        f"{kind} plugin object {obj!r} has no '{attribute}'",
                        where=f"distribution {distribution}",
                        fix="see docs/plugins.md for the attributes every plugin object needs",
                    )
            existing = self._by_kind[kind].get(obj.name)
            if existing is not None:
                raise Fm9gError(
                    f"{kind} '{obj.name}' is registered twice "
                    f"(by {existing.distribution} and by {distribution})",
                    fix="uninstall one of them or set FM9G_DISABLE_PLUGINS=1",
                )
            self._by_kind[kind][obj.name] = PluginInfo(kind, obj.name, obj, version, distribution)
            for alias in getattr(obj, "aliases", ()):
                self._aliases[kind][alias] = obj.name

        return register

    def all(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = [kind] if kind else list(KINDS)
        return [info for k in kinds for info in sorted(self._by_kind[k].values(), key=lambda i: i.name)]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def info(self, kind: str, name: str, *, where: str | None = None) -> PluginInfo:
        name = self._aliases[kind].get(name, name)
        try:
            return self._by_kind[kind][name]
        except KeyError:
            known = list(self._by_kind[kind]) + list(self._aliases[kind])
            error = UnknownName(kind.replace("_", " "), name, known, where=where)
            if self.broken:  # the name may be one a broken plugin would have registered
                error.fix += "; not loaded: " + "; ".join(problem.message for problem in self.broken)
            raise error from None

    def get(self, kind: str, name: str, *, where: str | None = None) -> Any:
        return self.info(kind, name, where=where).obj


def _plugin_sources(manager: pluggy.PluginManager) -> dict[int, tuple[str, str]]:
    """Map each entry-point plugin object to its (distribution name, version)."""
    return dict(getattr(manager, "fm9g_sources", {}))


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    """Register every ``fm9g`` entry point (as pluggy's ``load_setuptools_entrypoints`` does); one
    that fails to import or register is recorded in ``manager.fm9g_broken`` (one clear error each)
    and skipped, so a broken third-party plugin does not block the commands that do not use it."""
    sources: dict[int, tuple[str, str]] = {}
    manager.fm9g_sources = sources
    manager.fm9g_broken = []
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if (entry_point.group != "fm9g" or manager.get_plugin(entry_point.name) is not None
                    or manager.is_blocked(entry_point.name)):
                continue
            distribution = dist.metadata["Name"]
            try:
                plugin = entry_point.load()
                manager.register(plugin, name=entry_point.name)
            except Exception as error:  # noqa: BLE001 - import errors, pluggy validation errors, ...
                manager.fm9g_broken.append(Fm9gError(
                    f"plugin distribution {distribution} {dist.version} failed to load: "
                    f"{type(error).__name__}: {error}",
                    where=f"entry point {entry_point.name} = {entry_point.value}",
                    fix=f"fix or uninstall {distribution}, or set FM9G_DISABLE_PLUGINS=1"))
                continue
            sources[id(plugin)] = (distribution, dist.version)


def make_manager(load_entry_points: bool | None = None) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("fm9g")
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_MODULES:
        manager.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points is None:
        load_entry_points = os.environ.get("FM9G_DISABLE_PLUGINS", "") in ("", "0")
    if load_entry_points:
        _load_entry_points(manager)
    return manager


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (built once; call ``registry.cache_clear()`` after installing)."""
    return Registry(make_manager())


def get_plugin(kind: str, name: str, *, where: str | None = None) -> Any:
    """The registered object of ``kind`` called ``name``; unknown names raise :class:`UnknownName`."""
    return registry().get(kind, name, where=where)


def validate_options(plugin: Any, options: dict[str, Any] | None, *, where: str) -> dict[str, Any]:
    """Check ``options`` against the plugin's ``options_schema``; return them with defaults filled in."""
    options = dict(options or {})
    schema = plugin.options_schema
    validator = jsonschema.Draft202012Validator(schema)
    known = list(schema.get("properties", {}))
    closed = schema.get("additionalProperties", True) is False
    problems = [
        f"{error.json_path.replace('$', 'options', 1)}: {error.message}"
        for error in sorted(validator.iter_errors(options), key=lambda e: list(e.path))
        if not (closed and error.validator == "additionalProperties" and not error.path)
    ]
    for key in (key for key in options if closed and key not in known):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(f"options.{key}: unknown option ({hint}known: {', '.join(known) or 'none'})")
    if problems:
        raise ValidationFailed(f"{where} ({plugin.name})", problems)
    for key, spec in schema.get("properties", {}).items():
        if "default" in spec:
            options.setdefault(key, spec["default"])
    return options
