"""The ``fm9g`` transform: FM9G's own chat format, ``<用户>{input}<AI>`` followed by the output.

A ``messages`` record is rendered turn after turn as MiniCPM/FM9G chat does: ``<用户>{user}<AI>``
then the assistant's reply, with nothing between turns; a system turn's text comes first, as is.
Assistant replies and the EOS after the last one are trained (the single-turn case exactly).
"""

from __future__ import annotations

import random
from typing import Any

import fm9g
from fm9g.core.protocols import Record, TransformFn
from fm9g.mixer.transforms.rendering import STRATEGY_OPTION, ChatTemplate, render_conversation

FM9G_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{% generation %}{{- message.content -}}{% endgeneration %}"
    "{%- elif message.role == 'user' -%}"
    "{{- '<用户>' + message.content + '<AI>' -}}"
    "{%- else -%}"
    "{{- message.content -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
FM9G_TEMPLATE = ChatTemplate(FM9G_JINJA)


def _fm9g_template(record: Record, num_sample: int, rng: random.Random) -> Record:
    if "input" in record:
        return {"input": f"<用户>{record['input']}<AI>", "output": record.get("output", "")}
    return {"input": "", "output": record.get("output", "")}


class Fm9gTemplateTransform:
    name = "fm9g"
    description = "FM9G chat format: <用户>{input}<AI> then the output; multi-turn messages"
    options_schema: dict[str, Any] = {"type": "object", "properties": {"train": STRATEGY_OPTION},
                                      "additionalProperties": False}

    def bind(self, options: dict[str, Any]) -> TransformFn:
        train = options.get("train", "assistant")

        def fm9g_chat(record: Record, num_sample: int, rng: random.Random) -> Record:
            if "messages" in record:
                return render_conversation(FM9G_TEMPLATE, record, train=train, train_eos=True)
            return _fm9g_template(record, num_sample, rng)

        return fm9g_chat

    @staticmethod
    def template(options: dict[str, Any]) -> ChatTemplate:
        """The template this transform renders conversations with (also what an export writes)."""
        return FM9G_TEMPLATE


@fm9g.hookimpl
def register_transforms(register):
    register(Fm9gTemplateTransform())
