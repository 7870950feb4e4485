"""The ``identity`` transform: the seed's ``script_cpmc.py`` — keep ``input`` and ``output`` as they are."""

from __future__ import annotations

import random
from typing import Any

import fm9g
from fm9g.core.protocols import Record, TransformFn


def _identity(record: Record, num_sample: int, rng: random.Random) -> Record:
    if "messages" in record:
        raise TypeError("the identity transform keeps input/output and this record holds 'messages': give its "
                        "dataset a transform that renders conversations (chat_template, chatml or fm9g)")
    return {"input": record.get("input", ""), "output": record.get("output", "")}


class IdentityTransform:
    name = "identity"
    description = "keep input and output unchanged (the seed's script_cpmc.py)"
    options_schema: dict[str, Any] = {"type": "object", "additionalProperties": False}

    def bind(self, options: dict[str, Any]) -> TransformFn:
        return _identity


@fm9g.hookimpl
def register_transforms(register):
    register(IdentityTransform())
