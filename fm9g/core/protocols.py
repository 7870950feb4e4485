"""What each kind of plugin object provides, and the record type that flows between stages."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Record = dict[str, Any]
"""A record in one of two forms; other fields are kept for transforms.

* single turn: string fields ``input`` (the prompt) and ``output`` (what is trained on);
* conversation: ``messages``, a non-empty list of ``{"role", "content"}`` objects (role one of
  :data:`ROLES`, content a string), with at least one ``assistant`` turn. A message may carry
  ``"weight": 0`` (never trained on) or ``1``, and other keys (``name``, ``tool_calls``, ...),
  which chat templates may use.
"""

ROLES = ("system", "user", "assistant", "tool")
"""The roles of a ``messages`` record (adapters map their sources' role names onto these)."""

INPUT_OUTPUT, MESSAGES = "input_output", "messages"
"""The names of the two record forms, as ``meta.json``'s ``record_forms`` counts them."""


def messages_problem(messages: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` saying why ``messages`` is not a valid conversation, or ``None``.

    The reasons are the counted skip reasons of adapters and ``fm9g index``: ``messages_not_list``,
    ``empty_conversation``, ``message_not_object``, ``unknown_role``, ``content_not_string``,
    ``bad_weight`` and ``no_assistant_turn``."""
    if not isinstance(messages, list):
        return "messages_not_list", f"'messages' is {type(messages).__name__}"
    if not messages:
        return "empty_conversation", ""
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            return "message_not_object", f"message {number} is {type(message).__name__}"
        role = message.get("role")
        if role not in ROLES:
            return "unknown_role", f"message {number} has role {role!r}"
        if not isinstance(message.get("content"), str):
            return "content_not_string", f"message {number} ({role}) content is {type(message.get('content')).__name__}"
        if "weight" in message and (type(message["weight"]) not in (int, float) or message["weight"] not in (0, 1)):
            return "bad_weight", f"message {number} has weight {message['weight']!r} (0 or 1)"
    if not any(message["role"] == "assistant" for message in messages):
        return "no_assistant_turn", ""
    return None


def record_form(record: Any) -> str | None:
    """:data:`MESSAGES` for a record holding ``messages``, :data:`INPUT_OUTPUT` for one holding
    ``output``, ``None`` for neither (``messages`` wins when a record has both)."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return MESSAGES
    return INPUT_OUTPUT if "output" in record else None

TransformFn = Callable[[Record, int, random.Random], Record]
"""A bound transform: ``(record, num_sample, rng) -> record`` as in the seed's transform scripts.

It returns ``{"input", "output"}`` strings (a single-turn sample: the input is masked, the output
and the EOS after it trained), or a rendered conversation, ``{"text": str, "turns": [[start, end],
...], "train": "assistant" | "last" | "all", "train_eos": bool}``: ``text`` is the whole sample
after BOS, ``turns`` its assistant turns as ``[start, end, weight]`` character spans (in order;
tokens overlapping a span are trained, as transformers' ``return_assistant_tokens_mask`` does,
unless the turn's weight is 0), ``train`` which turns are ("assistant": all, "last": the last one
in the sample, "all": every token of the sample) and ``train_eos`` whether the EOS target that
ends the sample is. The ends of the spans are where a too-long conversation may be cut."""


@dataclass(frozen=True)
class Skipped:
    """A raw item an adapter dropped, with a short machine-readable reason (counted, not fatal)."""

    reason: str
    detail: str = ""


@runtime_checkable
class Plugin(Protocol):
    name: str
    description: str
    options_schema: dict[str, Any]


@runtime_checkable
class Adapter(Plugin, Protocol):
    """Turns raw items into records.

    ``input_kind`` is ``"text"`` (items are lines of text without their line ending) or ``"json"``
    (items are decoded JSON values from a JSON array, a single JSON value or JSONL).
    """

    input_kind: Literal["text", "json"]

    def records(self, items: Iterable[Any], options: dict[str, Any]) -> Iterator[Record | Skipped]:
        """Yield one record or one :class:`Skipped` per raw item, in order."""
        ...


@runtime_checkable
class Transform(Plugin, Protocol):
    def bind(self, options: dict[str, Any]) -> TransformFn:
        """Return the per-record function for these (already validated) options."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    """A loaded tokenizer. ``encode`` never adds special tokens; callers add bos/eos."""

    spec: str
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    @property
    def fingerprint(self) -> str:
        """A stable hash of everything that affects token ids (vocabulary, merges, normalizer)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@runtime_checkable
class TokenizerFactory(Plugin, Protocol):
    aliases: tuple[str, ...]

    def load(self, argument: str | None) -> Tokenizer:
        """Load from the part of the spec after ``NAME:`` (``None`` when there was none)."""
        ...


@runtime_checkable
class Backend(Plugin, Protocol):
    def train(self, config: dict[str, Any], run: Any) -> Any:
        """Train according to a validated train config; ``run`` carries paths, logging and resume."""
        ...


@runtime_checkable
class DeltaEngine(Plugin, Protocol):
    def apply(self, model: Any, lora: dict[str, Any]) -> Any:
        """Wrap ``model`` with LoRA modules described by ``lora`` and freeze everything else."""
        ...
