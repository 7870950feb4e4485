"""fm9g-alpaca: the ``alpaca`` adapter (instruction [+ input] → input, output → output)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.core.protocols import Record, Skipped

__all__ = ["AlpacaAdapter", "register_adapters"]


class AlpacaAdapter:
    name = "alpaca"
    description = "Alpaca instruction data: instruction (+ non-blank input, newline-joined) -> input; output -> output"
    input_kind = "json"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "separator": {"type": "string", "default": "\n",
                          "description": "joins instruction and a non-blank input"},
        },
        "additionalProperties": False,
    }

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        separator = options.get("separator", "\n")
        for item in items:
            yield self.convert(item, separator)

    @staticmethod
    def convert(item: Any, separator: str = "\n") -> Record | Skipped:
        """One raw Alpaca object → a record, or the reason it was dropped."""
        if not isinstance(item, dict):
            return Skipped("not_an_object", type(item).__name__)
        for field in ("instruction", "output"):
            if field not in item:
                return Skipped(f"missing_{field}")
            if not isinstance(item[field], str):
                return Skipped(f"{field}_not_string")
        extra = item.get("input", "")
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            return Skipped("input_not_string")
        prompt = item["instruction"] + separator + extra if extra.strip() else item["instruction"]
        if not prompt.strip() and not item["output"].strip():
            return Skipped("empty_record")
        return {"input": prompt, "output": item["output"]}


@fm9g.hookimpl
def register_adapters(register):
    register(AlpacaAdapter())
