"""Helpers for mixer tests: manifests, and indexed datasets written directly in the seed's layout.

The seed's on-disk format is tiny — ``data.jsonl``, a text ``index`` of nlines+1 byte offsets and a
``meta.json`` — so tests write it themselves and read it back with the real
``fm9g.index.reader.IndexedDataset``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_seed_dataset(directory: Path, records: Sequence[dict[str, Any]], *, meta: dict[str, Any] | None = None,
                       ensure_ascii: bool = False) -> Path:
    """Write ``records`` as a seed-format indexed dataset directory and return it (``ensure_ascii``:
    as ``\\u`` escapes, the only way a line can hold a lone surrogate)."""
    directory.mkdir(parents=True, exist_ok=True)
    offsets = [0]
    with open(directory / "data.jsonl", "wb") as handle:
        for record in records:
            line = (json.dumps(record, ensure_ascii=ensure_ascii) + "\n").encode("utf-8")
            handle.write(line)
            offsets.append(offsets[-1] + len(line))
    (directory / "index").write_text("".join(f"{offset}\n" for offset in offsets))
    average = sum(len(r.get("input", "")) + len(r.get("output", "")) for r in records) / max(len(records), 1)
    base_meta = {
        "language": "en", "nlines": len(records), "nbytes": offsets[-1],
        "length_distribute": {"less_4k": len(records)}, "avg_token_per_line": average,
        "hdfs_path": "", "data_sample": records[0] if records else {},
    }
    (directory / "meta.json").write_text(json.dumps({**base_meta, **(meta or {})}, ensure_ascii=False))
    return directory


def numbered_records(task: str, count: int, *, min_len: int = 3, max_len: int = 60, prompt: bool = True) -> list[dict[str, str]]:
    """Records whose text names their task and row, with lengths varying deterministically."""
    span = max_len - min_len + 1
    records = []
    for row in range(count):
        filler = "x" * (min_len + (row * 7919) % span)
        records.append({"input": f"{task}:{row}?" if prompt else "", "output": f"{task}:{row}:{filler}"})
    return records


def write_manifest(path: Path, datasets: list[dict[str, Any]], **settings: Any) -> Path:
    """Write an fm9g object-form manifest."""
    document = {"version": 1, "tokenizer": "byte", **settings, "datasets": datasets}
    path.write_text(json.dumps(document, indent=2))
    return path


def batch_samples(batch: Any, task_names: Sequence[str], tokenizer: Any) -> list[tuple[str, int | None, bool]]:
    """(task, row, starts_with_bos) for every packed piece of a batch; ``row`` parsed from the text
    ``task:row?`` that :func:`numbered_records` puts in each prompt (None for later segment windows)."""
    import re

    pattern = re.compile(r"([A-Za-z_]\w*):(\d+)[?:]")
    pieces = []
    bounds = batch.cu_seqlens.tolist()
    for begin, end in zip(bounds[:-1], bounds[1:]):
        task = int(batch.task_ids[begin])
        if task < 0:
            continue
        first = int(batch.input_ids[begin]) == tokenizer.bos_id
        row = None
        if first:
            match = pattern.search(tokenizer.decode(batch.input_ids[begin:end].tolist()))
            assert match is not None and match.group(1) == task_names[task]
            row = int(match.group(2))
        pieces.append((task_names[task], row, first))
    return pieces


WORDS = ("the quick brown fox jumps over lazy dog data mixing training token packing then there "
         "医学 问题 回答 患者 治疗 数据 模型 训练 你好 世界 🙂").split()
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "t"), ("o", "n"), ("e", "r"), ("Ġ", "d"),
          ("a", "ta"), ("t", "a"), ("Ġd", "ata"), ("i", "ng"), ("n", "g"), ("Ġ", "p"), ("a", "c"), ("k", "ing"),
          ("Ġp", "ac"), ("Ġpac", "king"), ("Ġthe", "n"), ("Ġthe", "re"), ("r", "e"), ("o", "w"), ("Ġ", "o")]


def build_tokenizer(directory: Path) -> Path:
    """A byte-level BPE from a fixed vocabulary: specials, the 256-symbol byte alphabet, the merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(["<s>", "</s>", "<unk>", "<pad>"])}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for left, right in MERGES:
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return directory
