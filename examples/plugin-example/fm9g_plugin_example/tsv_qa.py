"""The ``tsv-qa`` adapter: ``question<TAB>answer`` text lines become ``{"input", "output"}`` records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fm9g.core.protocols import Record, Skipped


class TsvQaAdapter:
    name = "tsv-qa"
    description = "tab-separated question/answer lines -> input/output records"
    input_kind = "text"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"swap": {"type": "boolean", "default": False, "description": "the answer comes first"}},
        "additionalProperties": False,
    }

    def records(self, items: Iterable[str], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        swap = options.get("swap", False)
        for line in items:
            if "\t" not in line:
                yield Skipped("no_tab", line[:40])
                continue
            first, second = line.split("\t", 1)
            question, answer = (second, first) if swap else (first, second)
            if not answer.strip():
                yield Skipped("empty_answer")
                continue
            yield {"input": question.strip(), "output": answer.strip()}
