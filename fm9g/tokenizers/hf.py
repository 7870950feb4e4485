"""The ``hf`` tokenizer: a local Hugging Face tokenizer (``hf:DIR`` or ``hf:path/to/tokenizer.json``).

Token ids come from the fast ``tokenizers`` library directly (no ``transformers`` import on the hot
path). Special tokens come from the directory's ``tokenizer_config.json`` / ``special_tokens_map.json``;
only a directory without ``tokenizer.json`` goes through ``transformers.AutoTokenizer``
(``local_files_only``: the network is never touched). Nothing adds special tokens in ``encode``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

import fm9g
from fm9g.core.errors import Fm9gError

SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")
"""Files (beside tokenizer.json) that name the bos/eos/pad/unk tokens, read in this order."""

CONVENTIONAL_TOKENS = {
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
}
"""Fallback token strings for a bare tokenizer.json that has no config naming its special tokens."""


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids fm9g needs (pad falls back to unk, then eos)."""

    def __init__(self, spec: str, backend: Any, specials: dict[str, str], content: bytes):
        self.spec = spec
        self._backend = backend
        self._content = content
        ids = {role: backend.token_to_id(token) for role, token in specials.items() if token is not None}
        ids = {role: token_id for role, token_id in ids.items() if token_id is not None}
        for role in ("bos", "eos"):
            if role not in ids:
                raise Fm9gError(
                    f"cannot tell which token is {role}", where=spec,
                    fix=f"use a tokenizer directory whose tokenizer_config.json sets '{role}_token'",
                )
        self.bos_id: int = ids["bos"]
        self.eos_id: int = ids["eos"]
        self.unk_id: int | None = ids.get("unk")
        self.pad_id: int = ids.get("pad", ids.get("unk", ids["eos"]))
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    def _encode_many(self, texts: Sequence[str]) -> list[Any]:
        """Batch encoding on the library's thread pool; ``encode_batch_fast`` skips offsets (tokenizers>=0.21)."""
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return encode(list(texts), add_special_tokens=False)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer's content (not its path) and the special ids fm9g adds."""
        digest = hashlib.sha256(self._content)
        digest.update(repr((self.bos_id, self.eos_id, self.pad_id)).encode())
        return "hf-v1:" + digest.hexdigest()[:32]

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._encode_many(texts)]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids back to back (int32) and each text's token count (int64): the mixer's
        hot path, without one flat Python list of every id."""
        return self.encode_batch_deferred(texts)()

    def encode_batch_deferred(self, texts: Sequence[str]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """Tokenize now (on the library's threads, outside the GIL) and return a function that
        gives :meth:`encode_batch_flat`'s arrays. Reading ids out of the encodings holds the GIL
        (~5 % of the tokenization's time), so a caller tokenizing in a background thread calls
        the function in its own thread, where it overlaps with the next batch's tokenization."""
        encodings = self._encode_many(texts)

        def arrays() -> tuple[np.ndarray, np.ndarray]:
            lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
            ids = np.fromiter(chain.from_iterable(encoding.ids for encoding in encodings), dtype=np.int32,
                              count=int(lengths.sum()))
            return ids, lengths

        return arrays

    def encode_batch_offsets(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`encode_batch_flat`'s arrays plus each token's ``(start, end)`` character offsets
        (int64 ``[tokens, 2]``): what assistant masks of rendered conversations are computed from,
        exactly as transformers computes them from the same encodings."""
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        total = int(lengths.sum())
        ids = np.fromiter(chain.from_iterable(encoding.ids for encoding in encodings), dtype=np.int32, count=total)
        offsets = np.fromiter(chain.from_iterable(chain.from_iterable(encoding.offsets for encoding in encodings)),
                              dtype=np.int64, count=2 * total).reshape(total, 2)
        return ids, lengths, offsets

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Token counts only (what the indexer stores)."""
        return [len(encoding) for encoding in self._encode_many(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=True)


class HFTokenizerFactory:
    name = "hf"
    aliases: tuple[str, ...] = ("huggingface",)
    description = "a local Hugging Face tokenizer: hf:DIR (with tokenizer.json) or hf:path/to/tokenizer.json"
    options_schema = {"type": "object", "additionalProperties": False}

    def load(self, argument: str | None) -> HFTokenizer:
        spec = f"hf:{argument}" if argument else "hf"
        if not argument:
            raise Fm9gError("the hf tokenizer needs a path", where=f"tokenizer spec '{spec}'",
                            fix="write hf:DIR (a tokenizer directory) or hf:path/to/tokenizer.json")
        path = Path(argument).expanduser()
        if not path.exists():
            raise Fm9gError(f"tokenizer path does not exist: {path}", where=f"tokenizer spec '{spec}'",
                            fix="point hf: at a local tokenizer directory (save_pretrained output) "
                                "or a tokenizer.json file; fm9g never downloads tokenizers")
        if path.is_file():
            return _from_tokenizer_json(spec, path, path.parent if _has_config(path.parent) else None)
        if (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(spec, path / "tokenizer.json", path)
        return _from_auto_tokenizer(spec, path)


def _has_config(directory: Path) -> bool:
    return any((directory / name).is_file() for name in SPECIAL_FILES)


def _from_tokenizer_json(spec: str, file: Path, config_dir: Path | None) -> HFTokenizer:
    from tokenizers import Tokenizer

    content = file.read_bytes()
    try:
        backend = Tokenizer.from_str(content.decode("utf-8"))
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
        raise Fm9gError(f"cannot read tokenizer: {error}", where=str(file),
                        fix="check that it is a tokenizer.json written by the tokenizers library") from None
    specials = _configured_specials(config_dir) if config_dir else {}
    vocab = backend.get_vocab(with_added_tokens=True)
    for role, candidates in CONVENTIONAL_TOKENS.items():
        if specials.get(role) is None:
            specials[role] = next((token for token in candidates if token in vocab), None)
    return HFTokenizer(spec, backend, specials, content)


def _configured_specials(directory: Path) -> dict[str, str | None]:
    """bos/eos/pad/unk token strings named by the directory's config files (first file wins)."""
    specials: dict[str, str | None] = {}
    for name in SPECIAL_FILES:
        file = directory / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Fm9gError(f"invalid JSON: {error}", where=str(file)) from None
        for role in CONVENTIONAL_TOKENS:
            value = config.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and specials.get(role) is None:
                specials[role] = value
    return specials


def _from_auto_tokenizer(spec: str, directory: Path) -> HFTokenizer:
    """A directory without tokenizer.json: let transformers build the fast tokenizer, offline."""
    from transformers import AutoTokenizer

    try:
        auto = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise Fm9gError(f"no usable tokenizer in {directory}: {error}".splitlines()[0], where=f"tokenizer spec '{spec}'",
                        fix="the directory needs tokenizer.json (or files transformers can load offline)") from None
    if not getattr(auto, "is_fast", False):
        raise Fm9gError(f"{directory} holds only a slow tokenizer", where=f"tokenizer spec '{spec}'",
                        fix="save a fast tokenizer (tokenizer.json) with save_pretrained, or use sp:PATH.model")
    backend = auto.backend_tokenizer
    specials = {role: getattr(auto, f"{role}_token", None) for role in CONVENTIONAL_TOKENS}
    return HFTokenizer(spec, backend, specials, backend.to_str().encode("utf-8"))


@fm9g.hookimpl
def register_tokenizers(register):
    register(HFTokenizerFactory())
