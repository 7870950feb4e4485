"""The ``txt`` adapter: one non-blank line of text → ``{"input": "", "output": line.strip()}``.

This is the seed's ``convert_txt2jsonl.py`` (pretraining text: the loss covers the whole line).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.core.protocols import Record, Skipped


class TxtAdapter:
    name = "txt"
    description = "plain text, one record per non-blank line (output = the stripped line, input empty)"
    input_kind = "text"
    options_schema: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

    def records(self, items: Iterable[str], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        for line in items:
            text = line.strip()
            if not text:
                yield Skipped("blank_line")
            else:
                yield {"input": "", "output": text}


@fm9g.hookimpl
def register_adapters(register):
    register(TxtAdapter())
