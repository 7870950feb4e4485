"""What each kind of plugin object provides, and the record type that flows between stages."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Record = dict[str, Any]
"""A record: string fields ``input`` and ``output``; other fields are kept for transforms."""

TransformFn = Callable[[Record, int, random.Random], Record]
"""A bound transform: ``(record, num_sample, rng) -> record`` as in the seed's transform scripts."""


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
