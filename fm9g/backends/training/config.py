"""Reading a train config: dotted ``key=value`` overrides, unknown keys, relative paths, defaults.

Order: read the JSON or YAML file; resolve its paths against the file's directory; apply command-line
overrides (their paths resolve against the current directory); reject unknown keys with a
did-you-mean; fill schema defaults; validate against ``schemas/train.schema.json``; validate the
backend's ``backend_options`` against its plugin's schema and fill its defaults. Every key the
schemas give a default is then present, so the training code reads ``config[key]`` directly.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from fm9g.backends.models.presets import PRESETS
from fm9g.backends.training.trackers import resolve_report_to
from fm9g.core.documents import SourceDocument, read_document
from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed
from fm9g.core.plugins import get_plugin, validate_options
from fm9g.core.schemas import NonFiniteNumber, load_schema, parse_json, schema_problems

PATH_KEYS = (("data", "manifest"), ("data", "mixture"), ("eval", "manifest"), ("model", "hf_path"), ("model", "seed_pt"),
             ("mixing", "online", "reference_log"), ("save",))
_TOKENIZER_FILE_PREFIXES = ("hf", "sp", "sentencepiece")


def parse_value(text: str) -> Any:
    """JSON when it parses (``1e-4``, ``true``, ``[..]``, ``null``), else the string itself;
    ``NaN``, ``Infinity`` and overflowing numbers are errors."""
    try:
        return parse_json(text)
    except NonFiniteNumber as error:
        raise Fm9gError(f"override value {text!r}: {error}", where="command line",
                        fix="give a finite number") from None
    except json.JSONDecodeError:
        return text


def _object_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    return schema if "properties" in schema else None


def _check_keys(document: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    """Unknown keys anywhere the schema closes an object, with a suggestion."""
    if not isinstance(document, dict) or _object_schema(schema) is None:
        return
    properties = schema["properties"]
    for key, value in document.items():
        if key in properties:
            _check_keys(value, properties[key], f"{path}.{key}", problems)
        elif schema.get("additionalProperties", True) is False:
            close = difflib.get_close_matches(key, list(properties), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(f"{path}.{key}: unknown key ({hint}known: {', '.join(properties)})")


def unknown_key_problems(document: Any) -> list[str]:
    problems: list[str] = []
    _check_keys(document, load_schema("train"), "$", problems)
    return problems


def apply_override(document: dict[str, Any], assignment: str, *, cwd: Path) -> None:
    """Apply one ``a.b.c=value`` to ``document`` (creating intermediate objects)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise Fm9gError(f"override '{assignment}' is not KEY=VALUE", where="command line",
                        fix="write e.g. lr=1e-4 or delta.lora_r=8")
    parts = key.split(".")
    schema = load_schema("train")
    target = document
    for depth, part in enumerate(parts):
        properties = schema.get("properties", {})
        free_form = schema.get("type") == "object" and not properties and schema.get("additionalProperties", True)
        if part not in properties and not free_form:  # free-form: backend_options, checked by the backend
            close = difflib.get_close_matches(part, list(properties), n=1)
            hint = f"did you mean '{'.'.join(parts[:depth] + [close[0]])}'? " if close else ""
            raise Fm9gError(f"unknown config key '{key}'", where=f"command line override '{assignment}'",
                            fix=f"{hint}known keys here: {', '.join(properties) or 'none'}")
        schema = properties.get(part, {})
        if depth == len(parts) - 1:
            value = parse_value(raw)
            if tuple(parts) in PATH_KEYS and isinstance(value, str):
                value = str((cwd / value).resolve())
            if tuple(parts) == ("tokenizer",) and isinstance(value, str):
                value = _resolve_tokenizer(value, cwd)
            target[part] = value
        else:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]


def _resolve_tokenizer(spec: str, base: Path) -> str:
    name, sep, argument = spec.partition(":")
    if sep and name in _TOKENIZER_FILE_PREFIXES and argument:
        return f"{name}:{(base / argument).resolve()}"
    return spec


def resolve_paths(document: dict[str, Any], base: Path) -> None:
    """Make the config's file paths absolute, relative to ``base`` (the config file's directory)."""
    for parts in PATH_KEYS:
        holder = document
        for part in parts[:-1]:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(parts[-1]), str):
            holder[parts[-1]] = str((base / holder[parts[-1]]).resolve())
    if isinstance(document.get("tokenizer"), str):
        document["tokenizer"] = _resolve_tokenizer(document["tokenizer"], base)


def fill_defaults(document: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Schema defaults for absent keys, recursively into present sub-objects (``delta``)."""
    schema = schema or load_schema("train")
    for key, spec in schema.get("properties", {}).items():
        if key not in document and "default" in spec:
            document[key] = json.loads(json.dumps(spec["default"]))
        if isinstance(document.get(key), dict) and "properties" in spec:
            fill_defaults(document[key], spec)
    return document


def load_train_config(path: str | Path | None, overrides: list[str] = (), *, cwd: Path | None = None) -> dict[str, Any]:
    """The resolved, validated train config (defaults filled, paths absolute), from a JSON or YAML
    file (by extension); a problem with a key of the file names its line."""
    file = read_document(path) if path is not None else None
    try:
        return _resolved_config(file, overrides, cwd=cwd or Path.cwd())
    except ValidationFailed as error:
        raise (file.locate(error) if file is not None else error) from None


def _resolved_config(file: SourceDocument | None, overrides: list[str], *, cwd: Path) -> dict[str, Any]:
    if file is None:
        document: Any = {}
        source = "command line"
    else:
        document = file.data
        source = file.source
        if not isinstance(document, dict):
            raise ValidationFailed(source, ["$: the train config must be an object (a mapping of keys)"])
        resolve_paths(document, file.path.resolve().parent)
    for assignment in overrides:
        apply_override(document, assignment, cwd=cwd)
        if file is not None:  # the key's value comes from the command line now, not from a line of the file
            file.forget(tuple(assignment.partition("=")[0].split(".")))
    problems = unknown_key_problems(document)
    if problems:
        raise ValidationFailed(source, problems)
    fill_defaults(document)
    problems = schema_problems(document, "train")
    if problems:
        raise ValidationFailed(source, problems)
    if document["model"].get("seed_pt") and not document["model"].get("preset"):
        raise ValidationFailed(source, ["$.model.seed_pt: needs model.preset (the shape to load it into)"])
    if document["model"].get("hf_path") and document["model"].get("preset"):
        raise ValidationFailed(source, ["$.model: give either preset or hf_path, not both"])
    if document["keep_best"] and not document["eval_iters"]:
        raise ValidationFailed(source, ["$.keep_best: ranks checkpoints by held-out loss, so it needs eval_iters"])
    if document["keep_best"] and document["save_iters"] % max(document["eval_iters"], 1):
        raise ValidationFailed(source, [f"$.keep_best: checkpoints every save_iters={document['save_iters']} steps are "
                                        f"not all evaluated (eval_iters={document['eval_iters']}); make save_iters a "
                                        f"multiple of eval_iters"])
    online = (document.get("mixing") or {}).get("online")
    if online and online["method"] == "doremi" and (not document["eval_iters"] or online["every"] % document["eval_iters"]):
        raise ValidationFailed(source, [f"$.mixing.online.every: doremi steps on held-out losses, so every "
                                        f"({online['every']}) must be a multiple of eval_iters ({document['eval_iters']}, "
                                        f"which must be > 0)"])
    backend = get_plugin("backend", document["backend"], where=f"{source}: $.backend")
    document["backend_options"] = validate_options(backend, document["backend_options"],
                                                   where=f"{source}: $.backend_options")
    document["report_to"] = resolve_report_to(document["report_to"], where=f"{source}: $.report_to")
    return document


def check_references(config: dict[str, Any]) -> None:
    """Names and paths the config refers to exist: preset, model files, data, delta engine."""
    model = config["model"]
    if model.get("preset") and model["preset"] not in PRESETS:
        raise UnknownName("model preset", model["preset"], PRESETS, where="train config: model.preset")
    for key in ("hf_path", "seed_pt"):
        if model.get(key) and not Path(model[key]).exists():
            raise Fm9gError("not found", where=f"train config: model.{key} {model[key]}", fix="check the path")
    for key, value in config["data"].items():
        if not Path(value).exists():
            raise Fm9gError("not found", where=f"train config: data.{key} {value}", fix="check the path")
    eval_manifest = config.get("eval", {}).get("manifest")
    if eval_manifest and not Path(eval_manifest).exists():
        raise Fm9gError("not found", where=f"train config: eval.manifest {eval_manifest}", fix="check the path")
    if config["delta"]:
        get_plugin("delta_engine", config["delta"]["engine"], where="train config: delta.engine")
