"""Tokenizer plugins and the spec-string loader (``byte``, ``hf:PATH``, ``sp:PATH.model``)."""

from __future__ import annotations

from functools import lru_cache

from fm9g.core.protocols import Tokenizer


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"hf:./ckpt"`` -> ``("hf", "./ckpt")``; ``"byte"`` -> ``("byte", None)``."""
    name, sep, argument = spec.partition(":")
    return name, (argument if sep else None)


@lru_cache(maxsize=16)
def load_tokenizer(spec: str = "byte") -> Tokenizer:
    """Load the tokenizer a spec names, through the registered tokenizer plugins."""
    from fm9g.core.plugins import get_plugin

    name, argument = split_spec(spec)
    factory = get_plugin("tokenizer", name, where=f"tokenizer spec '{spec}'")
    return factory.load(argument)
