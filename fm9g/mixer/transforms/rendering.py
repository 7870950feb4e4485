"""Rendering a ``messages`` record with a Jinja chat template into a rendered conversation.

The template is rendered by transformers' own renderer (``render_jinja_template``: the same Jinja
environment, extensions and special-token variables ``apply_chat_template`` uses), so the text is
exactly the prompt a Hugging Face tokenizer builds from the same messages. Each assistant turn's
trainable character span comes from one of two places:

* a template with ``{% generation %}`` blocks: the blocks' spans, which is what transformers'
  ``return_assistant_tokens_mask`` uses (one block per assistant turn is required);
* any other template: the text each assistant turn adds, found by rendering the conversation up to
  the turn with the generation prompt and up to the end of the turn. Trailing whitespace (the
  newline between turns) is left untrained, so a ChatML template without tags trains on exactly
  what its tagged twin does. This needs a template that renders incrementally (each turn only
  appends text), which ChatML, Llama 3, Gemma, Mistral and the like do; a template that rewrites
  earlier turns (dropping past reasoning, say) is refused with a message asking for tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fm9g.core.protocols import Record

GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
STRATEGIES = ("assistant", "last", "all")
"""Which assistant turns are trained: all of them, the last one of the sample, or every token."""

STRATEGY_OPTION: dict[str, Any] = {
    "enum": list(STRATEGIES), "default": "assistant",
    "description": "trained tokens of a conversation: every assistant turn (assistant), only the last "
                   "one (last), or every token (all); a message's weight 0 leaves its turn untrained",
}


class TemplateError(ValueError):
    """A conversation this template cannot be trained on (a transform error for its sample)."""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special-token strings it is rendered with (``bos_token``, ...)."""

    source: str
    specials: dict[str, str] = field(default_factory=dict)

    @property
    def has_generation_blocks(self) -> bool:
        return GENERATION_BLOCK.search(self.source) is not None

    def render_text(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                    tools: Any = None) -> str:
        """The template's text for ``messages`` (what ``apply_chat_template(tokenize=False)`` gives)."""
        return self._render(messages, add_generation_prompt=add_generation_prompt, tools=tools)[0]

    def _render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, tools: Any,
                spans: bool = False) -> tuple[str, list[tuple[int, int]]]:
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError:
            raise TemplateError("rendering chat templates needs transformers' render_jinja_template "
                                "(pip install 'transformers>=4.51')") from None
        try:
            rendered, indices = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.source,
                return_assistant_tokens_mask=spans, add_generation_prompt=add_generation_prompt, **self.specials)
        except Exception as error:  # noqa: BLE001 - jinja's raise_exception and template bugs alike
            raise TemplateError(f"the chat template failed: {type(error).__name__}: {error}") from None
        return rendered[0], (indices[0] if spans and indices else [])

    def assistant_spans(self, messages: list[dict[str, Any]], tools: Any = None) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and one ``(start, end)`` character span per assistant message, in order."""
        assistants = [number for number, message in enumerate(messages) if message["role"] == "assistant"]
        if self.has_generation_blocks:
            text, blocks = self._render(messages, add_generation_prompt=False, tools=tools, spans=True)
            if len(blocks) != len(assistants):
                raise TemplateError(f"the chat template marked {len(blocks)} generation blocks for "
                                    f"{len(assistants)} assistant turns; it needs one {{% generation %}} per turn")
            return text, [tuple(block) for block in blocks]
        text = self.render_text(messages, tools=tools)
        found = []
        for number in assistants:
            before = self.render_text(messages[:number], add_generation_prompt=True, tools=tools) if number else ""
            through = self.render_text(messages[: number + 1], tools=tools)
            if not (through.startswith(before) and text.startswith(through)):
                raise TemplateError(
                    f"the chat template does not render turn by turn (assistant turn {number} changes the text "
                    "before it), so its turns cannot be found without tags: add {% generation %} ... "
                    "{% endgeneration %} around each assistant message's content in the template")
            start = len(before)
            found.append((start, max(start, len(through.rstrip()))))
        return text, found


def render_conversation(template: ChatTemplate, record: Record, *, train: str, train_eos: bool) -> Record:
    """A ``messages`` record (or an ``input``/``output`` one, as a user and an assistant turn)
    rendered into the rendered-conversation form a transform returns (see
    :data:`fm9g.core.protocols.TransformFn`)."""
    messages = conversation_of(record)
    text, spans = template.assistant_spans(messages, tools=record.get("tools"))
    weights = [int(message.get("weight", 1)) for message in messages if message["role"] == "assistant"]
    return {"text": text, "turns": [[start, end, weight] for (start, end), weight in zip(spans, weights)],
            "train": train, "train_eos": train_eos}


def conversation_of(record: Record) -> list[dict[str, Any]]:
    """The record's messages; a single-turn record becomes ``[user input, assistant output]``
    (no user turn when the input is empty)."""
    if "messages" in record:
        return record["messages"]
    if not isinstance(record.get("output"), str) or not isinstance(record.get("input", ""), str):
        raise TemplateError("the record has neither 'messages' nor string 'input'/'output'")
    prompt = [{"role": "user", "content": record["input"]}] if record.get("input") else []
    return [*prompt, {"role": "assistant", "content": record["output"]}]
