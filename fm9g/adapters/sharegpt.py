"""The ``sharegpt`` adapter: ShareGPT conversations, ``{"conversations": [{"from", "value"}, ...]}``.

Roles ``human``/``user`` become ``user``, ``gpt``/``assistant``/``chatgpt``/``bard``/``bing`` become
``assistant``, ``system`` stays, ``observation``/``tool``/``function`` become ``tool`` (option
``roles`` adds or overrides names). A top-level ``system`` string (LLaMA-Factory's ShareGPT form)
becomes the first turn. A per-turn ``weight`` (or LLaMA-Factory's ``loss_weight``) of 0 or 1 is kept.
Other fields of the item are kept for transforms. Malformed conversations are counted skips (see
:func:`fm9g.adapters.conversation.finish_conversation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fm9g
from fm9g.adapters.conversation import CONVERSATION_OPTIONS, finish_conversation, map_role
from fm9g.core.protocols import Record, Skipped

DEFAULT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "system": "system", "observation": "tool", "tool": "tool",
    "function": "tool",
}


class ShareGPTAdapter:
    name = "sharegpt"
    description = "ShareGPT conversations ({conversations: [{from, value}]}) -> messages records"
    input_kind = "json"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "field": {"type": "string", "minLength": 1, "default": "conversations",
                      "description": "the field holding the turns"},
            **CONVERSATION_OPTIONS,
        },
        "additionalProperties": False,
    }

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        field = options.get("field", "conversations")
        roles = {**DEFAULT_ROLES, **(options.get("roles") or {})}
        alternate = options.get("alternate", True)
        for item in items:
            yield self.convert(item, field, roles, alternate)

    @staticmethod
    def convert(item: Any, field: str, roles: dict[str, str], alternate: bool) -> Record | Skipped:
        if not isinstance(item, dict):
            return Skipped("not_an_object", type(item).__name__)
        if field not in item:
            return Skipped("missing_conversations", f"no field '{field}'")
        turns = item[field]
        if not isinstance(turns, list):
            return Skipped("messages_not_list", f"'{field}' is {type(turns).__name__}")
        messages: list[dict[str, Any]] = []
        system = item.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        for number, turn in enumerate(turns):
            if not isinstance(turn, dict):
                return Skipped("message_not_object", f"turn {number} is {type(turn).__name__}")
            role = map_role(turn.get("from"), roles)
            if role is None:
                return Skipped("unknown_role", f"turn {number} is from {turn.get('from')!r}")
            message: dict[str, Any] = {"role": role, "content": turn.get("value")}
            weight = turn.get("weight", turn.get("loss_weight"))
            if weight is not None:
                message["weight"] = weight
            messages.append(message)
        extra = {key: value for key, value in item.items() if key not in (field, "system")}
        return finish_conversation(messages, extra, alternate=alternate)


@fm9g.hookimpl
def register_adapters(register):
    register(ShareGPTAdapter())
