"""``fm9g validate FILE...``: check mix manifests, meta.json, train configs and checkpoint.json files.

The schema is detected from the content (or given with ``--schema``). Every problem is printed, one
per line, as ``FILE: $.json.path: message``; mix manifests are also checked semantically (paths that
do not exist, duplicate task names, unknown transforms, ...) by the mixer's ``manifest_problems``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError

NAME = "validate"
HELP = "check mix manifests, meta.json, train configs and checkpoint.json against their schemas"
ORDER = 20

DETECTION_HINT = (
    "a list or an object with 'datasets' is a mix manifest, 'nlines' a meta.json, "
    "'data' and 'model' a train config, 'format_version' and 'step' a checkpoint.json"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fm9g.core.schemas import SCHEMA_NAMES

    parser.add_argument("files", nargs="+", metavar="FILE", type=Path, help="JSON file(s) to check")
    parser.add_argument("--schema", choices=SCHEMA_NAMES,
                        help="schema to check against (default: detected from the content)")


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            problems, schema = check_file(path, args.schema)
        except Fm9gError as error:  # unreadable file or undetectable schema: one line, next file
            failed = True
            print(error if error.where else f"{path}: {error}")
            continue
        failed = failed or bool(problems)
        for problem in problems:
            print(problem)
        if not problems:
            print(f"{path}: valid ({schema})")
            for note in script_notes(path) if schema == "mix" else ():
                print(f"{path}: note: {note}")
    return 2 if failed else 0


def script_notes(path: Path) -> list[str]:
    """A line for each dataset whose transform is a script: running it executes code the manifest
    names, so ``fm9g mix`` and ``fm9g train`` refuse it unless the user trusts it explicitly."""
    from fm9g.mixer.manifest import load_manifest

    return [f"dataset '{dataset.task_name}': transform script {dataset.transform.script} runs only with "
            "--trust-scripts (fm9g mix, fm9g train) or \"trust_scripts\": true in the train config"
            for dataset in load_manifest(path, check_paths=False).datasets if dataset.transform.script]


def check_file(path: Path, schema: str | None = None) -> tuple[list[str], str]:
    """All problems of one file (``"FILE:LINE: $.path: message"`` lines, JSON or YAML by extension)
    and the schema it was checked against.

    Raises :class:`Fm9gError` when the file is not readable or its schema cannot be detected.
    """
    from fm9g.core.documents import read_document
    from fm9g.core.errors import ValidationFailed

    source = read_document(path)
    problems, schema = _problems(source.data, path, schema)
    located = source.locate(ValidationFailed(source.source, problems))
    return (str(located).splitlines() if problems else []), schema


def _problems(document: Any, path: Path, schema: str | None) -> tuple[list[str], str]:
    from fm9g.core.schemas import schema_problems

    schema = schema or detect_schema(document, path)
    problems = schema_problems(document, schema)
    if schema == "mix":
        from fm9g.mixer.manifest import manifest_problems

        problems += manifest_problems(document, path.parent)
    if schema == "train" and not problems:
        problems += backend_option_problems(document)
    return list(dict.fromkeys(problems)), schema


def backend_option_problems(config: dict[str, Any]) -> list[str]:
    """A schema-valid train config's ``backend`` and ``backend_options`` against the backend plugin
    (its own options schema), as ``fm9g train`` will check them."""
    from fm9g.core.errors import ValidationFailed
    from fm9g.core.plugins import get_plugin, validate_options

    try:
        backend = get_plugin("backend", config.get("backend", "torch"), where="$.backend")
        validate_options(backend, config.get("backend_options"), where="$.backend_options")
    except ValidationFailed as error:
        return [f"{error.source}: {problem}" for problem in error.problems]
    except Fm9gError as error:
        return [str(error)]
    return []


def detect_schema(document: Any, path: Path) -> str:
    """Which schema a document is meant for, from its shape."""
    if isinstance(document, list):
        return "mix"
    if isinstance(document, dict):
        if "datasets" in document:
            return "mix"
        if "nlines" in document:
            return "meta"
        if "data" in document and "model" in document:
            return "train"
        if "format_version" in document and "step" in document:
            return "checkpoint"
    raise Fm9gError("cannot tell which schema this file follows", where=str(path),
                    fix=f"pass --schema NAME; {DETECTION_HINT}")
