"""The single-turn path is unchanged by conversations: {"input", "output"} records give the same
token ids, targets, layout and statuses, bit for bit, as before the messages form existed.

The digests were computed with the code of commit 6e7cd0a (the last one without conversations)
over the same records; the formula check recomputes the seed's samples independently, with a
real BPE tokenizer as well."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from fm9g.mixer.samples import IGNORE_INDEX, build_chunk
from fm9g.mixer.transforms import TransformRef, bind_transform
from fm9g.tokenizers import load_tokenizer

from conversation_helpers import qwen2_tokenizer_dir

WORDS = "the quick brown fox 医学 问题 回答 数据 模型 训练 你好 世界 ✓ émigré tab\tline\nnew".split(" ")
DIGESTS = {
    ("identity", "segment"): "536a0be9fffe519ac100038536a56544",
    ("identity", "head"): "1950dfbd31ee499cc71c3396fc42e18d",
    ("identity", "drop"): "55599067a6137207cac9fcaf905bc69a",
    ("chatml", "segment"): "d266b309c49394f8d49df6bcb0e3e9bb",
    ("chatml", "head"): "8155a3e19f74fd2183ca3838face5de1",
    ("chatml", "drop"): "0951c674c9fffdef71f283712bd22470",
    ("fm9g", "segment"): "f824fcfb60f206c281bf49fc73c02448",
    ("fm9g", "head"): "2196ee5b33aeea91c1f4e335b788038e",
    ("fm9g", "drop"): "f4ba63420ec8419b697c3f5f8d0ca7fb",
}


def golden_records(count: int = 40, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records = []
    for number in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
        records.append({"output": answer} if number % 9 == 4 else {"input": prompt, "output": answer})
    return records


def chunk_of(name: str, rule: str, tokenizer, records, max_length: int = 160):
    transform = bind_transform(TransformRef(name, {}), trust_scripts=False)
    return build_chunk(records, np.arange(len(records)), epoch=0, start=0, nlines=len(records), transform=transform,
                       tokenizer=tokenizer, max_length=max_length, oversize_rule=rule, base_key=11)


@pytest.mark.parametrize("name,rule", sorted(DIGESTS))
def test_single_turn_samples_are_bit_for_bit_those_of_before(name: str, rule: str) -> None:
    chunk = chunk_of(name, rule, load_tokenizer("byte"), golden_records())
    digest = hashlib.sha256()
    for array in (chunk.src, chunk.tgt, chunk.offsets, chunk.kept, chunk.status):
        digest.update(np.ascontiguousarray(array).astype(np.int64).tobytes())
    assert digest.hexdigest()[:32] == DIGESTS[(name, rule)]


@pytest.mark.parametrize("name", ["identity", "chatml", "fm9g"])
def test_single_turn_samples_follow_the_seed_formula_with_a_bpe(name: str, tmp_path) -> None:
    """src = [bos] + enc(input) + enc(output); tgt = [-100] * len(enc(input)) + enc(output) + [eos]."""
    tokenizer = load_tokenizer(f"hf:{qwen2_tokenizer_dir(tmp_path / 'tok')}")
    records = golden_records()
    chunk = chunk_of(name, "segment", tokenizer, records, max_length=100_000)
    transform = bind_transform(TransformRef(name, {}), trust_scripts=False)
    for k, record in enumerate(records):
        rendered = transform(record, k, random.Random(0))
        prompt, output = tokenizer.encode(rendered["input"]), tokenizer.encode(rendered["output"])
        begin, kept = int(chunk.offsets[k]), int(chunk.kept[k])
        assert chunk.src[begin:begin + kept].tolist() == [tokenizer.bos_id, *prompt, *output]
        assert chunk.tgt[begin:begin + kept].tolist() == [IGNORE_INDEX] * len(prompt) + output + [tokenizer.eos_id]
