"""The ``sentencepiece`` tokenizer plugin (alias ``sp``) on a model trained at test time."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from fm9g.core.errors import Fm9gError
from fm9g.tokenizers import load_tokenizer
from fm9g.tokenizers.sentencepiece import SentencePieceTokenizerFactory

TEXTS = ["the quick brown fox", "医学 问题 回答", "", "data mixing training"]


def test_round_trip_and_special_ids(sp_model: Path) -> None:
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    tokenizer = load_tokenizer(f"sp:{sp_model}")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (1, 2, 0)
    assert tokenizer.pad_id == 0, "pad is disabled by default, so it falls back to unk"
    assert tokenizer.vocab_size == reference.get_piece_size()
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text)
        assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
        assert tokenizer.decode(ids) == text


def test_pad_id_from_model_when_enabled(tmp_path: Path, train_sp, make_lines) -> None:
    model = train_sp(tmp_path / "pad.model", make_lines(200), pad_id=3)
    tokenizer = load_tokenizer(f"sp:{model}")
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (3, 1, 2)


def test_batch_equals_single_and_counts(sp_model: Path, make_lines) -> None:
    tokenizer = load_tokenizer(f"sentencepiece:{sp_model}")
    texts = TEXTS + make_lines(40, seed=3)
    singles = [tokenizer.encode(text) for text in texts]
    assert tokenizer.encode_batch(texts) == singles
    assert tokenizer.count_batch(texts) == [len(ids) for ids in singles]


def test_fingerprint_depends_on_content_not_path(sp_model: Path, tmp_path: Path, train_sp, make_lines) -> None:
    original = load_tokenizer(f"sp:{sp_model}")
    copy = shutil.copy(sp_model, tmp_path / "renamed.model")
    assert load_tokenizer(f"sp:{copy}").fingerprint == original.fingerprint
    other = train_sp(tmp_path / "other.model", make_lines(400, seed=5), vocab_size=50)
    assert load_tokenizer(f"sp:{other}").fingerprint != original.fingerprint


def test_pickles_for_worker_processes(sp_model: Path) -> None:
    tokenizer = load_tokenizer(f"sp:{sp_model}")
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("the lazy fox") == tokenizer.encode("the lazy fox")
    assert clone.fingerprint == tokenizer.fingerprint


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.model"
    with pytest.raises(Fm9gError, match="not found") as caught:
        load_tokenizer(f"sp:{missing}")
    assert str(missing) in str(caught.value)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"definitely not a protobuf")
    with pytest.raises(Fm9gError, match="not a SentencePiece model"):
        SentencePieceTokenizerFactory().load(str(corrupt))
    with pytest.raises(Fm9gError, match="needs a model file"):
        load_tokenizer("sp")
