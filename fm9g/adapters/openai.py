"""The ``openai`` adapter: OpenAI chat-format records, ``{"messages": [{"role", "content"}, ...]}``.

Roles ``system``/``user``/``assistant``/``tool`` are kept, ``developer`` becomes ``system`` and
``function`` becomes ``tool`` (option ``roles`` adds or overrides names). Content given as a list
of parts keeps its text parts, joined; a part of another type (an image) skips the record as
``non_text_content``. An assistant turn with ``tool_calls`` and no content gets ``""``. Other keys
of a message (``name``, ``tool_calls``, ``tool_call_id``, ``weight``) and of the item (``tools``)
are kept for chat templates. Malformed conversations are counted skips (see
:func:`fm9g.adapters.conversation.finish_conversation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.adapters.conversation import CONVERSATION_OPTIONS, finish_conversation, map_role
from fm9g.core.protocols import Record, Skipped

DEFAULT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool", "function": "tool"}


def _text_of(content: Any) -> Any:
    """Content as a string where it is text (a string, or a list of text parts); else as given,
    or ``None`` for a list holding a part that is not text."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            return None
    return "".join(texts)


class OpenAIAdapter:
    name = "openai"
    description = "OpenAI chat records ({messages: [{role, content}]}, tools kept) -> messages records"
    input_kind = "json"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "field": {"type": "string", "minLength": 1, "default": "messages",
                      "description": "the field holding the messages"},
            **CONVERSATION_OPTIONS,
        },
        "additionalProperties": False,
    }

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        field = options.get("field", "messages")
        roles = {**DEFAULT_ROLES, **(options.get("roles") or {})}
        alternate = options.get("alternate", True)
        for item in items:
            yield self.convert(item, field, roles, alternate)

    @staticmethod
    def convert(item: Any, field: str, roles: dict[str, str], alternate: bool) -> Record | Skipped:
        if not isinstance(item, dict):
            return Skipped("not_an_object", type(item).__name__)
        if field not in item:
            return Skipped("missing_messages", f"no field '{field}'")
        source = item[field]
        if not isinstance(source, list):
            return Skipped("messages_not_list", f"'{field}' is {type(source).__name__}")
        messages: list[dict[str, Any]] = []
        for number, raw in enumerate(source):
            if not isinstance(raw, dict):
                return Skipped("message_not_object", f"message {number} is {type(raw).__name__}")
            role = map_role(raw.get("role"), roles)
            if role is None:
                return Skipped("unknown_role", f"message {number} has role {raw.get('role')!r}")
            content = raw.get("content")
            if content is None and raw.get("tool_calls"):
                content = ""
            content = _text_of(content)
            if content is None and isinstance(raw.get("content"), list):
                return Skipped("non_text_content", f"message {number} has a content part that is not text")
            messages.append({**raw, "role": role, "content": content})
        extra = {key: value for key, value in item.items() if key != field}
        return finish_conversation(messages, extra, alternate=alternate)


@fm9g.hookimpl
def register_adapters(register):
    register(OpenAIAdapter())
