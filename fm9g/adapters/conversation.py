"""What the conversation adapters (``sharegpt``, ``openai``) share: role mapping, the options for
it, and the checks that turn a malformed conversation into a counted skip instead of a record."""

from __future__ import annotations

from typing import Any

from fm9g.core.protocols import Record, Skipped, messages_problem

CONVERSATION_OPTIONS: dict[str, Any] = {
    "roles": {
        "type": "object",
        "description": "source role name -> system, user, assistant or tool (added to the adapter's defaults); "
                       "an unmapped role skips the record as unknown_role",
        "additionalProperties": {"enum": ["system", "user", "assistant", "tool"]},
        "default": {},
    },
    "alternate": {
        "type": "boolean",
        "description": "skip conversations whose user/assistant turns do not alternate (consecutive_roles), "
                       "which most chat templates refuse; tool turns may follow one another",
        "default": True,
    },
}
"""Options every conversation adapter takes (merged into its ``options_schema``)."""


def finish_conversation(messages: list[dict[str, Any]], extra: dict[str, Any], *, alternate: bool) -> Record | Skipped:
    """The ``messages`` record of an already role-mapped conversation, or why it is skipped.

    ``extra`` holds the source item's other fields (kept for transforms, e.g. ``tools``). Besides
    :func:`~fm9g.core.protocols.messages_problem`'s reasons: ``misplaced_system`` (a system turn
    after the first) and, with ``alternate``, ``consecutive_roles``."""
    problem = messages_problem(messages)
    if problem is not None:
        return Skipped(*problem)
    for number, message in enumerate(messages):
        if message["role"] == "system" and number > 0:
            return Skipped("misplaced_system", f"message {number} is a system turn after the first")
    if alternate:
        previous = None
        for number, message in enumerate(messages):
            role = message["role"]
            if role in ("user", "assistant"):
                if role == previous:
                    return Skipped("consecutive_roles", f"messages {number - 1} and {number} are both {role}")
                previous = role
            elif role == "tool":
                previous = "tool"
    return {**extra, "messages": messages}


def map_role(role: Any, roles: dict[str, str]) -> str | None:
    """The fm9g role of a source role name (``None``: unknown)."""
    return roles.get(role) if isinstance(role, str) else None
