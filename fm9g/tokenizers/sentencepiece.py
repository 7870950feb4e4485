"""The ``sentencepiece`` tokenizer (alias ``sp``): ``sp:PATH.model``, a trained SentencePiece model.

Special ids are the model's own (``bos_id``/``eos_id``/``pad_id``; pad falls back to unk, then eos,
since SentencePiece disables pad by default). ``encode`` adds no special tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import fm9g
from fm9g.core.errors import Fm9gError


class SentencePieceTokenizer:
    """A ``sentencepiece.SentencePieceProcessor`` loaded from the model file's bytes."""

    def __init__(self, spec: str, model_bytes: bytes, where: str):
        import sentencepiece

        self.spec = spec
        self._model_bytes = model_bytes
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError, TypeError) as error:
            raise Fm9gError(f"not a SentencePiece model: {error}".splitlines()[0], where=where,
                            fix="pass the .model file written by spm_train / SentencePieceTrainer") from None
        processor = self._processor
        for role, value in (("bos", processor.bos_id()), ("eos", processor.eos_id())):
            if value < 0:
                raise Fm9gError(f"the model has no {role} token", where=where,
                                fix=f"train it with --{role}_id set (SentencePiece enables bos and eos by default)")
        self.bos_id: int = processor.bos_id()
        self.eos_id: int = processor.eos_id()
        self.unk_id: int = processor.unk_id()
        candidates = [processor.pad_id(), self.unk_id, self.eos_id]
        self.pad_id: int = next(value for value in candidates if value >= 0)
        self.vocab_size: int = processor.get_piece_size()

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the model file's content (the path does not matter)."""
        return "sp-v1:" + hashlib.sha256(self._model_bytes).hexdigest()[:32]

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor.encode(list(texts))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Token counts only (what the indexer stores)."""
        return [len(ids) for ids in self._processor.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "model_bytes": self._model_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["model_bytes"], state["spec"])


class SentencePieceTokenizerFactory:
    name = "sentencepiece"
    aliases: tuple[str, ...] = ("sp",)
    description = "a SentencePiece model file: sp:PATH.model (or sentencepiece:PATH.model)"
    options_schema = {"type": "object", "additionalProperties": False}

    def load(self, argument: str | None) -> SentencePieceTokenizer:
        if not argument:
            raise Fm9gError("the sentencepiece tokenizer needs a model file", where="tokenizer spec 'sp'",
                            fix="write sp:path/to/tokenizer.model")
        spec = f"sp:{argument}"
        path = Path(argument).expanduser()
        if path.is_dir():
            models = sorted(path.glob("*.model"))
            if len(models) != 1:
                raise Fm9gError(f"{path} is a directory with {len(models)} .model files",
                                where=f"tokenizer spec '{spec}'", fix="name the .model file itself")
            path = models[0]
        if not path.is_file():
            raise Fm9gError(f"SentencePiece model not found: {path}", where=f"tokenizer spec '{spec}'",
                            fix="pass the path of an existing .model file (relative to the current directory)")
        return SentencePieceTokenizer(spec, path.read_bytes(), str(path))


@fm9g.hookimpl
def register_tokenizers(register):
    register(SentencePieceTokenizerFactory())
