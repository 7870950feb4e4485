"""The ``fm9g`` transform: FM9G's own chat format, ``<用户>{input}<AI>`` followed by the output."""

from __future__ import annotations

import random
from typing import Any

import fm9g
from fm9g.core.protocols import Record, TransformFn


def _fm9g_template(record: Record, num_sample: int, rng: random.Random) -> Record:
    if "input" in record:
        return {"input": f"<用户>{record['input']}<AI>", "output": record.get("output", "")}
    return {"input": "", "output": record.get("output", "")}


class Fm9gTemplateTransform:
    name = "fm9g"
    description = "FM9G chat format: <用户>{input}<AI> then the output"
    options_schema: dict[str, Any] = {"type": "object", "additionalProperties": False}

    def bind(self, options: dict[str, Any]) -> TransformFn:
        return _fm9g_template


@fm9g.hookimpl
def register_transforms(register):
    register(Fm9gTemplateTransform())
