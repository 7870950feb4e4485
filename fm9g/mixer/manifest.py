"""The mix manifest: the seed's list form, unchanged, or fm9g's object form.

``load_manifest`` validates a manifest against ``schemas/mix.schema.json`` *and* its meaning
(duplicate task names, zero total weight, dataset directories that are missing or not indexed,
unknown transform plugins, bad transform options) and reports every problem at once, each with its
JSON path. Dataset paths and tokenizer paths resolve relative to the manifest's directory.
Statistics (``nlines``, ``ave_tokens_per_line``, ``total_tokens``) come from each dataset's
``meta.json``; a written value that disagrees produces a warning, not an error.

The seed's list form has no global settings; they come from the command line or the train config
(defaults: seed 42, max_length 4096, batch_size 1, tokenizer ``byte``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema

from fm9g.core.documents import read_document
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.core.schemas import schema_problems
from fm9g.mixer.transforms import DEFAULT_TRANSFORM, TransformRef, looks_like_script

DEFAULTS: dict[str, Any] = {"seed": 42, "max_length": 4096, "batch_size": 1, "tokenizer": "byte"}
PATH_TOKENIZERS = ("hf", "sentencepiece", "sp")
RELATIVE_TOLERANCE = 0.05
MAX_LENGTH_LIMIT = 1 << 20
"""The largest ``max_length`` (1,048,576 tokens, also the schema's maximum): a packed row is
allocated whole and filled before it is yielded, so a mistyped 1e11 would never yield a batch."""


@dataclass(frozen=True)
class DatasetSpec:
    """One resolved manifest entry. ``where`` is its JSON path (``$[1]`` or ``$.datasets[1]``)."""

    task_name: str
    path: Path
    abs_weight: float
    transform: TransformRef
    where: str
    allow_repeat: bool = True
    max_epochs: int | None = None
    max_rows: int | None = None
    """Only the dataset's first ``max_rows`` rows (index order) take part, as if it had no others."""
    oversize_rule: str = "segment"
    max_transform_errors: int = 0
    dataset_name: str | None = None
    eval_path: Path | None = None
    """This task's held-out indexed set, when the manifest names one (``eval_path``)."""
    nlines: int | None = None
    ave_tokens_per_line: float | None = None
    total_tokens: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "task_name": self.task_name,
            "dataset_name": self.dataset_name,
            "path": str(self.path),
            "abs_weight": self.abs_weight,
            "transform": self.transform.as_json(),
            "allow_repeat": self.allow_repeat,
            "max_epochs": self.max_epochs,
            "max_rows": self.max_rows,
            "oversize_rule": self.oversize_rule,
            "max_transform_errors": self.max_transform_errors,
            "eval_path": str(self.eval_path) if self.eval_path else None,
            "nlines": self.nlines,
            "ave_tokens_per_line": self.ave_tokens_per_line,
        }


@dataclass(frozen=True)
class Manifest:
    """A validated manifest with global settings resolved (``form`` is ``"seed"`` or ``"fm9g"``)."""

    source: str
    form: str
    datasets: tuple[DatasetSpec, ...]
    seed: int = DEFAULTS["seed"]
    max_length: int = DEFAULTS["max_length"]
    batch_size: int = DEFAULTS["batch_size"]
    tokenizer: str = DEFAULTS["tokenizer"]
    warnings: tuple[str, ...] = field(default=())

    @property
    def task_names(self) -> list[str]:
        return [spec.task_name for spec in self.datasets]

    def with_overrides(self, **overrides: Any) -> Manifest:
        """A copy with the given global settings replaced; ``None`` values are ignored. An override
        of ``max_length`` or ``batch_size`` (command line, train config) gets the schema's bounds."""
        given = {key: value for key, value in overrides.items() if value is not None}
        for key, low, high in (("max_length", 8, MAX_LENGTH_LIMIT), ("batch_size", 1, None)):
            value = given.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low
                                      or (high is not None and value > high)):
                bounds = f"from {low} to {high:,}" if high else f"at least {low}"
                raise Fm9gError(f"{key} must be an integer {bounds}, got {value!r}", where=key,
                                fix=f"give {key} {bounds}")
        return replace(self, **given)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "form": self.form,
            "seed": self.seed,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "tokenizer": self.tokenizer,
            "datasets": [spec.as_json() for spec in self.datasets],
        }


def _entries(document: Any) -> tuple[str, list[tuple[str, Any]]]:
    """(form, [(json path, entry)]) for either manifest form, tolerating schema-invalid documents."""
    if isinstance(document, list):
        return "seed", [(f"$[{i}]", entry) for i, entry in enumerate(document)]
    datasets = document.get("datasets") if isinstance(document, dict) else None
    if isinstance(datasets, list):
        return "fm9g", [(f"$.datasets[{i}]", entry) for i, entry in enumerate(datasets)]
    return "fm9g", []


def _transform_field(entry: dict[str, Any]) -> tuple[str, Any]:
    key = "transform" if "transform" in entry else "transforms"
    return key, entry.get(key, DEFAULT_TRANSFORM)


def _transform_problems(value: Any, where: str, base_dir: Path | None, check_paths: bool) -> list[str]:
    from fm9g.core.plugins import registry

    if isinstance(value, str):
        name, options, options_where = value, {}, None
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, options, options_where = value["name"], value.get("options", {}), f"{where}.options"
        where = f"{where}.name"
    else:
        return []
    if looks_like_script(name):
        if check_paths and base_dir is not None and not (base_dir / name).is_file():
            return [f"{where}: transform script does not exist: {base_dir / name}"]
        return []
    known = registry().names("transform")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return [f"{where}: unknown transform '{name}' ({hint}known transforms: {', '.join(known)})"]
    if not isinstance(options, dict):
        return []
    validator = jsonschema.Draft202012Validator(registry().get("transform", name).options_schema)
    return [
        f"{options_where}{error.json_path[1:]}: {error.message}"
        for error in sorted(validator.iter_errors(options), key=lambda e: list(map(str, e.path)))
    ]


def _path_problems(value: Any, where: str, base_dir: Path) -> list[str]:
    """Problems with an indexed dataset directory named at ``where`` (a JSON path to the field)."""
    if not isinstance(value, str) or not value:
        return []
    directory = (base_dir / value).resolve()
    if not directory.exists():
        return [f"{where}: directory does not exist: {directory}"]
    if not directory.is_dir():
        return [f"{where}: not a directory: {directory}"]
    if (directory / "shards.json").is_file():  # a sharded index: complete once its aggregate is written
        from fm9g.index.sharded_reader import incomplete

        problem = incomplete(directory)
        return [f"{where}: {problem} in {directory} (see fm9g index --finalize)"] if problem else []
    if not (directory / "data.jsonl").is_file():
        return [f"{where}: not an indexed dataset (no data.jsonl): {directory} (build it with fm9g index)"]
    if not (directory / "index").is_file() and not (directory / "index.h5").is_file():
        return [f"{where}: no index or index.h5 in {directory} (build it with fm9g index)"]
    return []


def manifest_problems(document: Any, base_dir: Path | str | None, *, check_paths: bool = True) -> list[str]:
    """Every problem with a manifest document, one line each with its JSON path; ``[]`` when valid.

    ``base_dir`` is the directory relative paths resolve against (the manifest's); ``None`` or
    ``check_paths=False`` skips the file-system checks.
    """
    problems = schema_problems(document, "mix")
    base = Path(base_dir) if base_dir is not None else None
    form, entries = _entries(document)
    first_use: dict[str, str] = {}
    total_weight, weights_seen = 0.0, False
    for where, entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("task_name")
        if isinstance(name, str):
            if name in first_use:
                problems.append(f"{where}.task_name: duplicate task name '{name}' (first used at {first_use[name]})")
            else:
                first_use[name] = where
        weight = entry.get("abs_weight")
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0:
            total_weight += weight
            weights_seen = True
        if form == "fm9g" and "transform" in entry and "transforms" in entry:
            problems.append(f"{where}: both 'transform' and 'transforms' are set; keep one")
        key, value = _transform_field(entry)
        problems.extend(_transform_problems(value, f"{where}.{key}", base, check_paths))
        if check_paths and base is not None:
            problems.extend(_path_problems(entry.get("path"), f"{where}.path", base))
            problems.extend(_path_problems(entry.get("eval_path"), f"{where}.eval_path", base))
    if weights_seen and total_weight <= 0:
        container = "$" if form == "seed" else "$.datasets"
        problems.append(f"{container}: the abs_weight values sum to 0; give at least one dataset a positive weight")
    return list(dict.fromkeys(problems))


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _disagrees(written: float, actual: float) -> bool:
    return abs(written - actual) > RELATIVE_TOLERANCE * max(abs(actual), 1e-12)


def _statistics(entry: dict[str, Any], directory: Path, where: str, warnings: list[str]) -> dict[str, Any]:
    """nlines / ave_tokens_per_line / total_tokens from meta.json, warning where the manifest disagrees."""
    meta = _read_meta(directory)
    nlines, average = meta.get("nlines"), meta.get("avg_token_per_line")
    stats = {
        "nlines": nlines if isinstance(nlines, int) else entry.get("nlines"),
        "ave_tokens_per_line": average if isinstance(average, (int, float)) else entry.get("ave_tokens_per_line"),
    }
    if isinstance(nlines, int) and isinstance(entry.get("nlines"), int) and entry["nlines"] != nlines:
        warnings.append(f"{where}.nlines: the manifest says {entry['nlines']} but meta.json says {nlines}; using meta.json")
    written_average = entry.get("ave_tokens_per_line")
    if isinstance(average, (int, float)) and isinstance(written_average, (int, float)) and _disagrees(written_average, average):
        warnings.append(
            f"{where}.ave_tokens_per_line: the manifest says {written_average} but meta.json says "
            f"{average:.1f}; using meta.json"
        )
    if stats["nlines"] is not None and stats["ave_tokens_per_line"] is not None:
        stats["total_tokens"] = stats["nlines"] * stats["ave_tokens_per_line"] / 1e9
        written_total = entry.get("total_tokens")
        if isinstance(written_total, (int, float)) and _disagrees(written_total, stats["total_tokens"]):
            warnings.append(
                f"{where}.total_tokens: the manifest says {written_total}B tokens but meta.json implies "
                f"{stats['total_tokens']:.6g}B; using meta.json"
            )
    else:
        stats["total_tokens"] = entry.get("total_tokens")
    return stats


def _transform_ref(value: Any, base_dir: Path) -> TransformRef:
    if isinstance(value, dict):
        name, options = value["name"], value.get("options", {})
    else:
        name, options = value, {}
    if looks_like_script(name):
        return TransformRef(script=(base_dir / name).resolve())
    return TransformRef(name=name, options=options)


def resolve_tokenizer_spec(spec: str, base_dir: Path) -> str:
    """``hf:./ckpt`` in a manifest means ./ckpt next to the manifest; other specs are unchanged."""
    name, sep, argument = spec.partition(":")
    if sep and name in PATH_TOKENIZERS and argument and not Path(argument).is_absolute():
        candidate = base_dir / argument
        if candidate.exists():
            return f"{name}:{candidate.resolve()}"
    return spec


def manifest_from_document(document: Any, base_dir: Path, source: str, *, check_paths: bool = True) -> Manifest:
    """Validate and resolve a parsed manifest; raise :class:`ValidationFailed` listing every problem."""
    problems = manifest_problems(document, base_dir, check_paths=check_paths)
    if problems:
        raise ValidationFailed(source, problems)
    form, entries = _entries(document)
    settings = {key: document.get(key, default) for key, default in DEFAULTS.items()} if form == "fm9g" else dict(DEFAULTS)
    warnings: list[str] = []
    datasets = []
    for where, entry in entries:
        directory = (base_dir / entry["path"]).resolve()
        stats = _statistics(entry, directory, where, warnings) if check_paths else {
            key: entry.get(key) for key in ("nlines", "ave_tokens_per_line", "total_tokens")
        }
        datasets.append(
            DatasetSpec(
                task_name=entry["task_name"],
                path=directory,
                abs_weight=float(entry["abs_weight"]),
                transform=_transform_ref(_transform_field(entry)[1], base_dir),
                where=where,
                allow_repeat=entry.get("allow_repeat", True),
                max_epochs=entry.get("max_epochs"),
                max_rows=entry.get("max_rows"),
                oversize_rule=entry.get("oversize_rule", "segment"),
                max_transform_errors=int(entry.get("max_transform_errors", 0)) if form == "fm9g" else 0,
                dataset_name=entry.get("dataset_name"),
                eval_path=(base_dir / entry["eval_path"]).resolve() if isinstance(entry.get("eval_path"), str) else None,
                **stats,
            )
        )
    return Manifest(
        source=source,
        form=form,
        datasets=tuple(datasets),
        seed=settings["seed"],
        max_length=int(settings["max_length"]),
        batch_size=int(settings["batch_size"]),
        tokenizer=resolve_tokenizer_spec(settings["tokenizer"], base_dir),
        warnings=tuple(warnings),
    )


def load_manifest(path: str | Path, *, check_paths: bool = True) -> Manifest:
    """Read, validate and resolve ``mix.json`` or ``mix.yaml`` (either form, by extension); every problem
    is reported at once, each with its line in the file."""
    document = read_document(path)
    with document.problems_located():
        return manifest_from_document(document.data, document.path.resolve().parent, document.source,
                                      check_paths=check_paths)
