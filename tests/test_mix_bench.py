"""The Hugging Face side of ``benchmarks/mix_bench.py``: its samples, packing and share errors are what
fm9g's are measured against, so a wrong mask, a row that overflows or a mis-counted share would make
the BENCHMARKS.md ratios compare different work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mix_bench_hf as hf  # noqa: E402


def test_encoder_masks_the_templated_prompt_and_shifts_targets(hf_tokenizer_dir):
    encoder = hf.Encoder(hf_tokenizer_dir / "tokenizer.json", max_length=4096)
    out = encoder({"input": ["what is 2+2", "plain text"], "output": ["four", " continues"], "task_chat": [True, False]})
    prompt = encoder.tokenizer.encode(hf.CHATML_PROMPT.format("what is 2+2"), add_special_tokens=False).ids
    answer = encoder.tokenizer.encode("four<|im_end|>", add_special_tokens=False).ids
    assert out["input_ids"][0] == [encoder.bos] + prompt + answer
    assert out["labels"][0] == [-100] * len(prompt) + answer + [encoder.eos]
    plain = encoder.tokenizer.encode("plain text", add_special_tokens=False).ids
    assert out["labels"][1][: len(plain)] == [-100] * len(plain) and out["labels"][1][-1] == encoder.eos
    short = hf.Encoder(hf_tokenizer_dir / "tokenizer.json", max_length=5)({"input": ["a b c d e f g"], "output": ["h"],
                                                                         "task_chat": [True]})
    assert len(short["input_ids"][0]) == len(short["labels"][0]) == 5


def test_packed_rows_are_greedy_and_carry_every_token_once():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 40, size=300)
    flat_ids = np.arange(lengths.sum(), dtype=np.int32) + 10
    flat_labels = -flat_ids
    rows = list(hf.packed_rows(flat_ids, flat_labels, lengths, max_length=64, pad_id=0))
    assert len(rows) == hf.pack_lengths(lengths, 64).max() + 1
    seen, sample = [], 0
    for row in rows:
        fill = int(row["cu_seqlens"][-1])
        assert fill <= 64 and np.all(row["input_ids"][fill:] == 0) and np.all(row["labels"][fill:] == -100)
        assert np.array_equal(row["labels"][:fill], -row["input_ids"][:fill])
        boundaries = row["cu_seqlens"]
        for begin, end in zip(boundaries[:-1], boundaries[1:]):
            assert end - begin == lengths[sample]
            assert np.array_equal(row["position_ids"][begin:end], np.arange(end - begin))
            sample += 1
        if sample < len(lengths):
            assert fill + lengths[sample] > 64  # greedy: the next sample did not fit
        seen.append(row["input_ids"][:fill])
    assert np.array_equal(np.concatenate(seen), flat_ids)


def test_share_errors_count_tokens_not_examples():
    tasks = np.array([0, 1] * 500)
    lengths = np.where(tasks == 0, 10, 30)  # half the examples, a quarter of the tokens
    errors = hf.share_errors(tasks, lengths, np.array([0.5, 0.5]), checkpoints=(1000, 10_000))
    assert errors == {"1k": 25.0}
