"""The ``hf`` tokenizer plugin on a BPE trained at test time and on the tiny corpus's tokenizer."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from fm9g.core.errors import Fm9gError
from fm9g.tokenizers import load_tokenizer
from fm9g.tokenizers.hf import HFTokenizerFactory

TEXTS = ["the quick brown fox", "医学 问题 回答", "", "zebra! 123 ünïcödé", "  leading and trailing  "]


def test_round_trip_and_special_ids(bpe_dir: Path) -> None:
    tokenizer = HFTokenizerFactory().load(str(bpe_dir))
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.pad_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 300
    assert tokenizer.spec == f"hf:{bpe_dir}"
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids, "encode must add no specials"
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("fox"), tokenizer.eos_id]) == "fox"


def test_batch_equals_single_and_counts(bpe_dir: Path, make_lines) -> None:
    tokenizer = HFTokenizerFactory().load(str(bpe_dir))
    texts = TEXTS + make_lines(50, seed=7)
    singles = [tokenizer.encode(text) for text in texts]
    assert tokenizer.encode_batch(texts) == singles
    assert tokenizer.count_batch(texts) == [len(ids) for ids in singles]
    assert tokenizer.encode_batch([]) == [] and tokenizer.count_batch([]) == []


def test_file_spec_matches_directory_spec(bpe_dir: Path) -> None:
    from_dir = HFTokenizerFactory().load(str(bpe_dir))
    from_file = HFTokenizerFactory().load(str(bpe_dir / "tokenizer.json"))
    assert from_file.encode("the lazy dog 数据") == from_dir.encode("the lazy dog 数据")
    assert (from_file.bos_id, from_file.eos_id, from_file.pad_id) == (0, 1, 3)
    assert from_file.fingerprint == from_dir.fingerprint


def test_fingerprint_depends_on_content_not_path(bpe_dir: Path, tmp_path: Path, train_bpe, make_lines) -> None:
    original = HFTokenizerFactory().load(str(bpe_dir))
    copy = shutil.copytree(bpe_dir, tmp_path / "copy")
    assert HFTokenizerFactory().load(str(copy)).fingerprint == original.fingerprint
    assert original.fingerprint == HFTokenizerFactory().load(str(bpe_dir)).fingerprint

    retrained = train_bpe(tmp_path / "retrained", make_lines(300, seed=1))
    assert HFTokenizerFactory().load(str(retrained)).fingerprint != original.fingerprint

    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["eos_token"] = "<pad>"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert HFTokenizerFactory().load(str(copy)).fingerprint != original.fingerprint


def test_pickles_for_worker_processes(bpe_dir: Path) -> None:
    tokenizer = HFTokenizerFactory().load(str(bpe_dir))
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("the brown dog") == tokenizer.encode("the brown dog")
    assert clone.fingerprint == tokenizer.fingerprint


def test_load_tokenizer_spec(bpe_dir: Path) -> None:
    tokenizer = load_tokenizer(f"hf:{bpe_dir}")
    assert tokenizer.encode("fox") == HFTokenizerFactory().load(str(bpe_dir)).encode("fox")
    assert load_tokenizer(f"huggingface:{bpe_dir}").fingerprint == tokenizer.fingerprint


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(Fm9gError) as caught:
        load_tokenizer(f"hf:{missing}")
    assert str(missing) in str(caught.value) and "never downloads" in str(caught.value)
    with pytest.raises(Fm9gError, match="needs a path"):
        load_tokenizer("hf")


def test_directory_without_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(Fm9gError, match="no usable tokenizer"):
        HFTokenizerFactory().load(str(tmp_path / "empty"))


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    with pytest.raises(Fm9gError, match="cannot read tokenizer") as caught:
        HFTokenizerFactory().load(str(tmp_path))
    assert "tokenizer.json" in str(caught.value)


def test_bare_tokenizer_json_without_specials_is_a_clear_error(bpe_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[X]": 2}, unk_token="[X]"))
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(Fm9gError, match="cannot tell which token is bos"):
        HFTokenizerFactory().load(str(tmp_path / "tokenizer.json"))


def test_tiny_corpus_tokenizer_agrees_with_transformers(hf_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    ours = load_tokenizer(f"hf:{hf_tokenizer_dir}")
    theirs = AutoTokenizer.from_pretrained(str(hf_tokenizer_dir), local_files_only=True)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    assert ours.vocab_size == len(theirs)
    lines = (hf_tokenizer_dir.parent / "pretrain.txt").read_text(encoding="utf-8").splitlines()[:40]
    assert ours.encode_batch(lines) == [theirs.encode(line, add_special_tokens=False) for line in lines]
    assert [ours.decode(ours.encode(line)) for line in lines] == lines
