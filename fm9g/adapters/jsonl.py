"""The ``jsonl`` adapter: records already in fm9g's format, optionally with renamed fields.

``map`` renames source fields to ``input``/``output`` (``{"input": "question", "output": "answer"}``;
on the command line ``--map input=question,output=answer``). Other fields are kept for transforms.
``input_default`` fills a missing ``input`` (``""`` for pretraining-style ``{"text": ...}`` data).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.core.protocols import Record, Skipped


class JsonlAdapter:
    name = "jsonl"
    description = "JSON records with string input/output (JSONL, JSON array or one object); optional field map"
    input_kind = "json"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "map": {
                "type": "object",
                "description": "target field -> source field, e.g. {\"input\": \"question\", \"output\": \"answer\"}",
                "propertyNames": {"enum": ["input", "output"]},
                "additionalProperties": {"type": "string", "minLength": 1},
                "default": {},
            },
            "input_default": {
                "type": ["string", "null"],
                "description": "value for a missing input (null: drop such records)",
                "default": None,
            },
        },
        "additionalProperties": False,
    }

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        mapping: dict[str, str] = options.get("map") or {}
        input_default = options.get("input_default")
        sources = set(mapping.values())
        for item in items:
            if not isinstance(item, dict):
                yield Skipped("not_an_object", type(item).__name__)
                continue
            record = {key: value for key, value in item.items() if key not in sources}
            for target, source in mapping.items():
                if source in item:
                    record[target] = item[source]
            if "input" not in record and input_default is not None:
                record["input"] = input_default
            yield check_record(record, mapping)


def check_record(record: dict[str, Any], mapping: dict[str, str] | None = None) -> Record | Skipped:
    """The record itself, or why it is not one (missing or non-string ``input``/``output``)."""
    for field in ("output", "input"):
        source = (mapping or {}).get(field, field)
        if field not in record:
            return Skipped(f"missing_{field}", f"no field '{source}'")
        if not isinstance(record[field], str):
            return Skipped(f"{field}_not_string", f"'{source}' is {type(record[field]).__name__}")
    return record


@fm9g.hookimpl
def register_adapters(register):
    register(JsonlAdapter())
