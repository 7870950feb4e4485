"""Tiny real tokenizers trained at test time: a byte-level BPE (tokenizers) and a SentencePiece model."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

WORDS = ("the quick brown fox jumps over lazy dog data mixing training token packing "
         "医学 问题 回答 患者 治疗 数据 模型 训练 你好 世界").split()


def sample_lines(count: int, seed: int = 0) -> list[str]:
    """Deterministic mixed English/Chinese lines for training and round trips."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def train_bpe_dir(directory: Path, lines: list[str], vocab_size: int = 300) -> Path:
    """Train a byte-level BPE with <s>=0 </s>=1 <unk>=2 <pad>=3 and save it HF-style into ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def train_sentencepiece(path: Path, lines: list[str], vocab_size: int = 64, **extra) -> Path:
    """Train a unigram SentencePiece model on ``lines`` and write it to ``path``."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, **extra,
    )
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_bpe_dir(tmp_path_factory.mktemp("bpe"), sample_lines(300))


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("sp") / "tiny.model", sample_lines(400))


@pytest.fixture(scope="session")
def make_lines():
    """``make_lines(count, seed=0)``: deterministic training/round-trip lines."""
    return sample_lines


@pytest.fixture(scope="session")
def train_bpe():
    """``train_bpe(directory, lines, vocab_size=300)``: a fresh HF tokenizer directory."""
    return train_bpe_dir


@pytest.fixture(scope="session")
def train_sp():
    """``train_sp(path, lines, vocab_size=64, **trainer_options)``: a fresh SentencePiece model."""
    return train_sentencepiece
