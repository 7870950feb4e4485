"""The ``chatml`` transform: the seed's ``add_template.py`` ChatML template, system text configurable.

The seed writes the user turn as ``<|im_start|>User`` (capital U); fm9g keeps that byte for byte
so that data mixed by fm9g matches data the seed produced. Records without ``input`` pass their
``output`` through with an empty prompt, as the seed does.

A ``messages`` record is rendered with :func:`chatml_template`, the same format turn after turn
(a system turn of its own replaces the default one; turns are separated by a newline; a
conversation of one user and one assistant turn gives exactly the seed's text). Assistant turns,
their ``<|im_end|>`` and the EOS after the last one are trained, as in the single-turn case.
"""

from __future__ import annotations

import json
import random
from typing import Any

import fm9g
from fm9g.core.protocols import Record, TransformFn
from fm9g.mixer.transforms.rendering import STRATEGY_OPTION, ChatTemplate, render_conversation

DEFAULT_SYSTEM = "You are a helpful assistant."
PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>User\n{input}<|im_end|>\n<|im_start|>assistant\n"
)
OUTPUT_TEMPLATE = "{output}<|im_end|>"
CHATML_JINJA = (
    "{%- set default_system = SYSTEM -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- message.content + '<|im_end|>' -}}{% endgeneration %}"
    "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + ('User' if message.role == 'user' else message.role) + '\\n' + message.content"
    " + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def chatml_template(system: str = DEFAULT_SYSTEM) -> ChatTemplate:
    """The Jinja form of this transform (what ``fm9g export`` gives the exported tokenizer)."""
    return ChatTemplate(CHATML_JINJA.replace("SYSTEM", json.dumps(system), 1))


class ChatMLTransform:
    name = "chatml"
    description = "ChatML chat template of the seed's add_template.py (system text configurable); multi-turn messages"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"system": {"type": "string", "default": DEFAULT_SYSTEM}, "train": STRATEGY_OPTION},
        "additionalProperties": False,
    }

    def bind(self, options: dict[str, Any]) -> TransformFn:
        system = options.get("system", DEFAULT_SYSTEM)
        train = options.get("train", "assistant")
        conversation_template = chatml_template(system)

        def chatml(record: Record, num_sample: int, rng: random.Random) -> Record:
            if "messages" in record:
                return render_conversation(conversation_template, record, train=train, train_eos=True)
            if "input" in record:
                return {
                    "input": PROMPT_TEMPLATE.format(system=system, input=record["input"]),
                    "output": OUTPUT_TEMPLATE.format(output=record.get("output", "")),
                }
            return {"input": "", "output": record.get("output", "")}

        return chatml

    @staticmethod
    def template(options: dict[str, Any]) -> ChatTemplate:
        """The template these options render conversations with (also what an export writes)."""
        return chatml_template(options.get("system", DEFAULT_SYSTEM))


@fm9g.hookimpl
def register_transforms(register):
    register(ChatMLTransform())
