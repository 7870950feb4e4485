"""The ``byte`` tokenizer: UTF-8 bytes plus four special tokens. Needs no files; the default."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

import fm9g
from fm9g.core.errors import Fm9gError

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
OFFSET = len(SPECIALS)


class ByteTokenizer:
    """Token id = byte value + 4; ids 0-3 are ``<pad>``, ``<s>``, ``</s>``, ``<unk>``."""

    spec = "byte"
    pad_id, bos_id, eos_id, unk_id = range(OFFSET)
    vocab_size = 256 + OFFSET

    @property
    def fingerprint(self) -> str:
        return "byte-v1:" + hashlib.sha256(repr((SPECIALS, OFFSET)).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return (np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + OFFSET).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def encode_batch_offsets(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All texts' ids back to back, each text's token count, and each token's ``(start, end)``
        character offsets (a byte belongs to the character it encodes)."""
        ids = [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + OFFSET for text in texts]
        chars = [np.repeat(np.arange(len(text), dtype=np.int64), [len(char.encode("utf-8")) for char in text])
                 if not text.isascii() else np.arange(len(text), dtype=np.int64) for text in texts]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        starts = np.concatenate(chars) if chars else np.zeros(0, dtype=np.int64)
        return (np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32), lengths,
                np.stack([starts, starts + 1], axis=1))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Token counts without building id lists (a byte count per text)."""
        return [len(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - OFFSET for i in ids if i >= OFFSET)
        return data.decode("utf-8", errors="replace")


class ByteTokenizerFactory:
    name = "byte"
    aliases: tuple[str, ...] = ()
    description = "UTF-8 bytes + <pad>/<s>/</s>/<unk>; no files needed (the embedded default)"
    options_schema = {"type": "object", "additionalProperties": False}

    def load(self, argument: str | None) -> ByteTokenizer:
        if argument:
            raise Fm9gError(
                f"the byte tokenizer takes no argument, got '{argument}'",
                where="tokenizer spec",
                fix="write just 'byte'",
            )
        return ByteTokenizer()


@fm9g.hookimpl
def register_tokenizers(register):
    register(ByteTokenizerFactory())
