"""fm9g-medical-o1: the ``medical-o1`` adapter (Question → input, [CoT +] Response → output).

Reproduces the FM9G guide's conversion of medical-o1-reasoning-SFT, including its ``is_chinese``
filter (more than half of the question's characters in U+4E00..U+9FA5) for ``language: zh``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.core.protocols import Record, Skipped
from fm9g.core.text import is_chinese

__all__ = ["MedicalO1Adapter", "register_adapters", "is_chinese"]


class MedicalO1Adapter:
    name = "medical-o1"
    description = "medical-o1-reasoning-SFT: Question -> input, [Complex_CoT +] Response -> output; language filter"
    input_kind = "json"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "language": {"enum": ["zh", "en", "all"], "default": "all",
                         "description": "zh: CJK share of the question > 0.5 (the seed's filter); en: the rest"},
            "include_cot": {"type": "boolean", "default": False,
                            "description": "prepend Complex_CoT to the output"},
            "cot_separator": {"type": "string", "default": "\n\n"},
        },
        "additionalProperties": False,
    }

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        for item in items:
            yield self.convert(item, options.get("language", "all"), options.get("include_cot", False),
                               options.get("cot_separator", "\n\n"))

    @staticmethod
    def convert(item: Any, language: str = "all", include_cot: bool = False,
                cot_separator: str = "\n\n") -> Record | Skipped:
        """One raw object → a record, or the reason it was dropped."""
        if not isinstance(item, dict):
            return Skipped("not_an_object", type(item).__name__)
        fields = ("Question", "Response") + (("Complex_CoT",) if include_cot else ())
        for field in fields:
            if field not in item:
                return Skipped(f"missing_{field}")
            if not isinstance(item[field], str):
                return Skipped(f"{field}_not_string")
        if not item["Response"].strip():  # training on it would teach only the end-of-turn token
            return Skipped("empty_Response")
        question = item["Question"]
        if language != "all" and is_chinese(question) != (language == "zh"):
            return Skipped(f"not_{language}")
        output = item["Response"]
        if include_cot:
            output = item["Complex_CoT"] + cot_separator + output
        return {"input": question, "output": output}


@fm9g.hookimpl
def register_adapters(register):
    register(MedicalO1Adapter())
