"""The Hugging Face ``datasets`` side of ``mix_bench.py``: the strongest recipe we know for the same mixture.

What HF is given, so that both sides do the same work:

* the same prepared JSONL that fm9g indexed, turned into Arrow by ``load_dataset("json")`` before the
  clock starts (the analogue of ``fm9g index``, which is not timed either; its seconds are reported);
* ``interleave_datasets(probabilities=…)`` first, then only the rows the mixture consumes are
  tokenized: ``select(range(samples))`` + ``map(batched=True, num_proc=…)`` (map path), or
  ``IterableDataset.map(batched=True)`` over the interleaved JSON stream (streaming path);
* the ``tokenizers`` fast tokenizer fm9g uses, called batched (``encode_batch_fast``), the seed's
  ChatML template, the same pre-shifted targets with -100 on the prompt, truncation to max_length;
* greedy packing (a row closes when the next sample does not fit) into ``max_length`` rows with
  input ids, labels, position ids and sequence boundaries, as numpy arrays, the flat ids read out of
  Arrow without Python lists in the map path.

Two kinds of ``probabilities``: the weights as *example* probabilities (HF's documented use), and
length-corrected ones, ``p_i ∝ weight_i / mean_sample_tokens_i`` (the seed's ``abs_weight /
avg_tokens``), with each dataset's mean sample length estimated by tokenizing ``LENGTH_SAMPLE``
random rows (timed with the run). fm9g needs neither: its scheduler picks by realized tokens.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

LENGTH_SAMPLE = 4096
"""Rows per dataset tokenized to estimate the mean sample length for length-corrected probabilities."""
CHATML_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>User\n{}<|im_end|>\n"
                 "<|im_start|>assistant\n")


class Encoder:
    """Template (ChatML where ``task_chat``) + batched fast tokenization + masking (picklable for ``num_proc``)."""

    def __init__(self, tokenizer_file: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.bos, self.eos = self.tokenizer.token_to_id("<s>"), self.tokenizer.token_to_id("</s>")
        self.max_length = max_length

    def __call__(self, batch: dict) -> dict:
        texts = []
        for prompt, output, is_chat in zip(batch["input"], batch["output"], batch["task_chat"]):
            texts += [CHATML_PROMPT.format(prompt), f"{output}<|im_end|>"] if is_chat else [prompt, output]
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        input_ids, labels = [], []
        for prompt, output in zip(encodings[0::2], encodings[1::2]):
            p, o = prompt.ids, output.ids
            input_ids.append(([self.bos] + p + o)[: self.max_length])
            labels.append(([-100] * len(p) + o + [self.eos])[: self.max_length])
        return {"input_ids": input_ids, "labels": labels}


def load_sources(work: Path, names: list[str], cache: Path, *, streaming: bool = False) -> list:
    """Each prepared ``train.jsonl`` as a dataset of input, output, task (int) and task_chat (bool)."""
    import datasets

    sources = []
    for task, name in enumerate(names):
        raw = datasets.load_dataset("json", data_files=str(work / "prepared" / name / "train.jsonl"),
                                    split="train", cache_dir=str(cache), streaming=streaming)
        raw = raw.select_columns(["input", "output"])
        chat = name != "pretrain"
        if streaming:
            raw = raw.map(lambda batch, task=task, chat=chat: {"task": [task] * len(batch["input"]),
                                                              "task_chat": [chat] * len(batch["input"])},
                          batched=True)
        else:
            raw = raw.add_column("task", [task] * len(raw)).add_column("task_chat", [chat] * len(raw))
        sources.append(raw)
    return sources


def length_corrected(sources: list, weights: list[float], tokenizer_file: Path, max_length: int) -> list[float]:
    """``weight / mean sample tokens`` per source, normalized; means from LENGTH_SAMPLE random rows."""
    rng = np.random.default_rng(0)
    encoder = Encoder(tokenizer_file, max_length)
    means = []
    for source in sources:
        rows = source.select(rng.choice(len(source), size=min(LENGTH_SAMPLE, len(source)), replace=False))
        means.append(float(np.mean([len(ids) for ids in encoder(rows[:])["input_ids"]])))
    raw = np.array(weights) / np.array(means)
    return (raw / raw.sum()).tolist()


def pack_lengths(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Greedy packing: the row index of every sample (a row closes when the next one does not fit)."""
    rows, row, fill = np.empty(len(lengths), dtype=np.int64), 0, 0
    for k, length in enumerate(lengths.tolist()):
        if fill + length > max_length:
            row, fill = row + 1, 0
        fill += length
        rows[k] = row
    return rows


def packed_rows(flat_ids: np.ndarray, flat_labels: np.ndarray, lengths: np.ndarray, max_length: int,
                pad_id: int) -> Iterator[dict[str, np.ndarray]]:
    """The packed rows as numpy arrays (input_ids, labels, position_ids, cu_seqlens)."""
    rows = pack_lengths(lengths, max_length)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    row_starts = np.searchsorted(rows, np.arange(rows[-1] + 2)) if len(rows) else np.zeros(1, dtype=np.int64)
    ramp = np.arange(max_length, dtype=np.int32)
    for row in range(len(row_starts) - 1):
        first, last = row_starts[row], row_starts[row + 1]
        begin, end = starts[first], starts[last]
        fill = end - begin
        input_ids = np.full(max_length, pad_id, dtype=np.int32)
        labels = np.full(max_length, -100, dtype=np.int32)
        input_ids[:fill], labels[:fill] = flat_ids[begin:end], flat_labels[begin:end]
        cu_seqlens = (starts[first:last + 1] - begin).astype(np.int32)
        positions = ramp[:fill] - np.repeat(cu_seqlens[:-1], np.diff(cu_seqlens))
        yield {"input_ids": input_ids, "labels": labels, "cu_seqlens": cu_seqlens,
               "position_ids": np.concatenate([positions, ramp[: max_length - fill]])}


def pack_table(table, max_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack an Arrow table of input_ids/labels/task (flat ids read out of Arrow, no Python lists);
    returns each sample's task and length and the number of packed rows."""
    ids_column, labels_column = table.column("input_ids").combine_chunks(), table.column("labels").combine_chunks()
    lengths = np.diff(ids_column.offsets.to_numpy())
    flat_ids = ids_column.flatten().to_numpy().astype(np.int32)
    flat_labels = labels_column.flatten().to_numpy().astype(np.int32)
    rows = sum(1 for _ in packed_rows(flat_ids, flat_labels, lengths, max_length, pad_id=0))
    return table.column("task").to_numpy(), lengths, rows


def share_errors(tasks: np.ndarray, lengths: np.ndarray, targets: np.ndarray, checkpoints: tuple[int, ...]) -> dict:
    """Max |realized token share - target| in percentage points after each checkpoint's samples."""
    errors = {}
    for checkpoint in checkpoints:
        if checkpoint <= len(tasks):
            tokens = np.bincount(tasks[:checkpoint], weights=lengths[:checkpoint], minlength=len(targets))
            errors[f"{checkpoint // 1000}k"] = float(100 * np.abs(tokens / tokens.sum() - targets).max())
    return errors


def run_map(work: Path, corpus: Path, cache: Path, names: list[str], weights: list[float], *, samples: int,
            corrected: bool, num_proc: int, max_length: int, checkpoints: tuple[int, ...]) -> dict:
    """Map path, cold: fresh cache, Arrow load (untimed), then interleave → select → map → pack (timed)."""
    import datasets

    datasets.disable_progress_bars()
    shutil.rmtree(cache, ignore_errors=True)
    loaded = time.perf_counter()
    sources = load_sources(work, names, cache)
    started = time.perf_counter()
    tokenizer_file = corpus / "tokenizer" / "tokenizer.json"
    probabilities = length_corrected(sources, weights, tokenizer_file, max_length) if corrected else list(weights)
    estimated_at = time.perf_counter()
    mixed = datasets.interleave_datasets(sources, probabilities=probabilities, seed=42,
                                         stopping_strategy="all_exhausted")
    consumed = mixed.select(range(min(samples, len(mixed))))
    mapped = consumed.map(Encoder(tokenizer_file, max_length), batched=True,
                          batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                          remove_columns=["input", "output", "task_chat"])
    mapped_at = time.perf_counter()
    tasks, lengths, rows = pack_table(mapped.with_format("arrow")[:], max_length)
    seconds = time.perf_counter() - started
    targets = np.array(weights) / sum(weights)
    return {"probabilities": probabilities, "num_proc": num_proc, "samples": len(lengths),
            "tokens": int(lengths.sum()), "rows": rows, "load_seconds": started - loaded, "seconds": seconds,
            "estimate_seconds": estimated_at - started, "map_seconds": mapped_at - estimated_at, "tokens_per_s": float(lengths.sum()) / seconds,
            "share_error_pp": share_errors(tasks, lengths, targets, checkpoints)}


def run_streaming(work: Path, corpus: Path, cache: Path, names: list[str], weights: list[float], *,
                  samples: int, probabilities: list[float], max_length: int, checkpoints: tuple[int, ...]) -> dict:
    """Streaming path: interleaved JSON streams → IterableDataset.map(batched) → take → pack (all timed)."""
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    tokenizer_file = corpus / "tokenizer" / "tokenizer.json"
    sources = load_sources(work, names, cache, streaming=True)
    mixed = datasets.interleave_datasets(sources, probabilities=probabilities, seed=42,
                                         stopping_strategy="all_exhausted")
    mapped = mixed.map(Encoder(tokenizer_file, max_length), batched=True, batch_size=1000,
                       remove_columns=["input", "output", "task_chat"]).take(samples)
    tables = list(mapped.with_format("arrow").iter(batch_size=1000))
    tasks, lengths, rows = pack_table(pa.concat_tables(tables), max_length)
    seconds = time.perf_counter() - started
    targets = np.array(weights) / sum(weights)
    return {"probabilities": probabilities, "samples": len(lengths), "tokens": int(lengths.sum()), "rows": rows,
            "seconds": seconds, "tokens_per_s": float(lengths.sum()) / seconds,
            "share_error_pp": share_errors(np.array(tasks), lengths, targets, checkpoints)}


def materialize_and_read(materialized: Path, arrow_dir: Path, batch_size: int) -> dict:
    """fm9g's materialized rows (same rows, same dtypes) saved with ``save_to_disk`` once, then read
    back with ``load_from_disk(...).with_format("numpy")`` ``batch_size`` rows at a time (timed)."""
    import datasets

    from fm9g.mixer.materialized import MaterializedStream

    datasets.disable_progress_bars()
    if not (arrow_dir / "dataset_info.json").is_file():
        stream = MaterializedStream(materialized)
        columns = {"input_ids": [], "targets": [], "task_ids": [], "cu_seqlens": []}
        for batch in stream:
            columns["input_ids"].append(batch.input_ids)
            columns["targets"].append(batch.targets)
            columns["task_ids"].append(batch.task_ids.astype(np.int16))
            columns["cu_seqlens"].append(batch.cu_seqlens)
        features = datasets.Features({
            "input_ids": datasets.Sequence(datasets.Value("int32"), length=stream.capacity),
            "targets": datasets.Sequence(datasets.Value("int32"), length=stream.capacity),
            "task_ids": datasets.Sequence(datasets.Value("int16"), length=stream.capacity),
            "cu_seqlens": datasets.Sequence(datasets.Value("int32"))})
        datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(arrow_dir))
    started, tokens, rows = time.perf_counter(), 0, 0
    dataset = datasets.load_from_disk(str(arrow_dir)).with_format("numpy")
    for batch in dataset.iter(batch_size=batch_size):
        tokens += int(np.count_nonzero(batch["task_ids"] >= 0))
        rows += len(batch["task_ids"])
    seconds = time.perf_counter() - started
    disk = sum(path.stat().st_size for path in arrow_dir.glob("*.arrow"))
    return {"rows": rows, "tokens": tokens, "batch_size": batch_size, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "arrow_bytes": disk}
