"""The ``llama2-chat`` transform: the Llama-2 chat template around a record's input."""

from __future__ import annotations

import random
from typing import Any

from fm9g.core.protocols import Record, TransformFn

DEFAULT_SYSTEM = "You are a helpful assistant."


class Llama2ChatTransform:
    name = "llama2-chat"
    description = "Llama-2 chat template: [INST] <<SYS>> system <</SYS>> input [/INST] output"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"system": {"type": "string", "default": DEFAULT_SYSTEM}},
        "additionalProperties": False,
    }

    def bind(self, options: dict[str, Any]) -> TransformFn:
        """Called once per dataset with validated options (defaults filled in)."""
        system = options["system"]

        def llama2_chat(record: Record, num_sample: int, rng: random.Random) -> Record:
            prompt = f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{record.get('input', '')} [/INST] "
            return {"input": prompt, "output": record.get("output", "")}

        return llama2_chat
