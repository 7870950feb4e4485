"""Experiment trackers: where a run's scalars, train config and mixture plan go besides the JSONL logs.

A train config's ``report_to`` lists them (default ``["tensorboard"]``), each a name or ``{"name",
"options"}``; ``tensorboard``, ``mlflow`` and ``wandb`` are built in, and a plugin adds more with
the ``register_loggers`` hook. A registered logger has ``name``, ``description``, ``options_schema``
and ``open(run, options) -> session``, where ``run`` is a :class:`TrackerRun`; the session gets
:meth:`~TrackerSession.log_scalars` for every step and evaluation (the same tags and values
TensorBoard gets), :meth:`~TrackerSession.flush` before each checkpoint and
:meth:`~TrackerSession.close` at the end, however the run ends. Only rank 0 opens trackers.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fm9g.core.errors import Fm9gError

DEFAULT_REPORT_TO = ("tensorboard",)


@dataclass(frozen=True)
class TrackerRun:
    """What a tracker is told about the run it records."""

    save_dir: Path
    """The run's ``save`` directory (local trackers write below it)."""
    name: str
    """A name for the tracker's run: the save directory's name."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved train config (paths absolute, defaults filled), as checkpoints record it."""
    mixture: dict[str, Any] = field(default_factory=dict)
    """The mixture plan (:func:`mixture_plan`): each task's weight, target share, data and transform."""
    resume_step: int = 0
    """The step this process resumes after (0: a fresh run); a tracker's new run starts at the next."""


class TrackerSession(Protocol):
    """An open tracker run."""

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Record finite ``scalars`` (``{"Loss/train": 2.31, ...}``) at optimizer ``step``."""

    def flush(self, step: int) -> None:
        """Make everything logged through ``step`` durable, where the tracker can (before a checkpoint)."""

    def close(self) -> None:
        """End the tracker's run (called once, also when training fails)."""


def _entry(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    return entry["name"], dict(entry.get("options") or {})


def resolve_report_to(entries: Any, *, where: str) -> list[dict[str, Any]]:
    """``report_to`` with every tracker known, installed and its options valid (defaults filled), as
    ``[{"name", "options"}]``; checked when the config is read, before any model is built."""
    from fm9g.core.plugins import get_plugin, validate_options

    resolved = []
    for index, entry in enumerate(DEFAULT_REPORT_TO if entries is None else entries):
        name, options = _entry(entry)
        logger = get_plugin("logger", name, where=f"{where}[{index}]")
        options = validate_options(logger, options, where=f"{where}[{index}].options")
        for module, extra in getattr(logger, "requires", ()):
            if importlib.util.find_spec(module) is None:
                raise Fm9gError(f"tracker '{name}' needs the {module} package, which is not installed",
                                where=f"{where}[{index}]", fix=f"pip install 'fm9g[{extra}]'")
        resolved.append({"name": name, "options": options})
    return resolved


def open_trackers(entries: Any, run: TrackerRun, *, where: str = "train config: $.report_to") -> list[TrackerSession]:
    """A session per ``report_to`` entry; those opened are closed again if a later one fails."""
    from fm9g.core.plugins import get_plugin

    sessions: list[TrackerSession] = []
    try:
        for entry in resolve_report_to(entries, where=where):
            sessions.append(get_plugin("logger", entry["name"]).open(run, entry["options"]))
    except BaseException:
        for session in sessions:
            session.close()
        raise
    return sessions


def mixture_plan(stream: Any) -> dict[str, Any]:
    """What the run mixes, from its stream: the manifest's tasks with weight, target share, data and
    transform (a mixture on the fly has its manifest; a materialized one the manifest it was made from)."""
    manifest = getattr(stream, "manifest", None)
    document = manifest.as_json() if hasattr(manifest, "as_json") else None
    if document is None:
        document = (getattr(stream, "description", None) or {}).get("manifest")
    if not isinstance(document, dict) or not document.get("datasets"):
        return {"tasks": [{"task_name": name} for name in getattr(stream, "task_names", [])]}
    datasets = document["datasets"]
    total = sum(float(spec.get("abs_weight") or 0.0) for spec in datasets) or 1.0
    tasks = [{"task_name": spec.get("task_name"), "abs_weight": spec.get("abs_weight"),
              "target_share": float(spec.get("abs_weight") or 0.0) / total, "path": spec.get("path"),
              "transform": spec.get("transform"), "eval_path": spec.get("eval_path")} for spec in datasets]
    settings = {key: document.get(key) for key in ("source", "seed", "max_length", "batch_size", "tokenizer")}
    if getattr(stream, "description", None) is not None:
        settings["mixture"] = str(getattr(stream, "directory", ""))
    return {**settings, "tasks": tasks}


def flat_params(document: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"delta.lora_r": "8", "report_to": '["tensorboard"]', ...}`` (lists as JSON),
    for trackers whose run parameters are flat strings."""
    if isinstance(document, dict) and document:
        flat: dict[str, str] = {}
        for key, value in document.items():
            flat.update(flat_params(value, f"{prefix}{key}."))
        return flat
    value = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    return {prefix.removesuffix("."): value}
