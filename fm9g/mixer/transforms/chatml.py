"""The ``chatml`` transform: the seed's ``add_template.py`` ChatML template, system text configurable.

The seed writes the user turn as ``<|im_start|>User`` (capital U); fm9g keeps that byte for byte
so that data mixed by fm9g matches data the seed produced. Records without ``input`` pass their
``output`` through with an empty prompt, as the seed does.
"""

from __future__ import annotations

import random
from typing import Any

import fm9g
from fm9g.core.protocols import Record, TransformFn

DEFAULT_SYSTEM = "You are a helpful assistant."
PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>User\n{input}<|im_end|>\n<|im_start|>assistant\n"
)
OUTPUT_TEMPLATE = "{output}<|im_end|>"


class ChatMLTransform:
    name = "chatml"
    description = "ChatML chat template of the seed's add_template.py (system text configurable)"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"system": {"type": "string", "default": DEFAULT_SYSTEM}},
        "additionalProperties": False,
    }

    def bind(self, options: dict[str, Any]) -> TransformFn:
        system = options.get("system", DEFAULT_SYSTEM)

        def chatml(record: Record, num_sample: int, rng: random.Random) -> Record:
            if "input" in record:
                return {
                    "input": PROMPT_TEMPLATE.format(system=system, input=record["input"]),
                    "output": OUTPUT_TEMPLATE.format(output=record.get("output", "")),
                }
            return {"input": "", "output": record.get("output", "")}

        return chatml


@fm9g.hookimpl
def register_transforms(register):
    register(ChatMLTransform())
