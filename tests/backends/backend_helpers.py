"""Packed batches built in the tests from real byte-tokenized text, in the mixer's PackedBatch layout.

``ListStream`` follows the stream contract (rank r of W gets global batches b ≡ r mod W, JSON
state, ``task_names``, ``tokenizer``) so the backend can be tested in-process; the CLI tests use
the real mixer (:func:`build_mixture`, :func:`write_train_config`, :func:`run_fm9g`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fm9g.mixer.packing import PackedBatch
from fm9g.tokenizers import load_tokenizer

WORDS = ("the model reads packed rows of text and learns to predict the next token while attention "
         "stays inside each sample 模型 训练 数据 混合 gradient optimizer schedule warmup cosine checkpoint "
         "resume exactly tokens loss mean target prompt answer question medical alpaca").split()


def make_text(rng: np.random.RandomState, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words))


def make_sample(prompt: str, answer: str, tokenizer) -> tuple[list[int], list[int]]:
    """The seed's sample: src = [bos]+prompt+answer, tgt = [-100]*len(prompt)+answer+[eos]."""
    p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
    return [tokenizer.bos_id] + p + a, [-100] * len(p) + a + [tokenizer.eos_id]


def pack_samples(index: int, samples: list[tuple[int, list[int], list[int]]], capacity: int, pad_id: int) -> PackedBatch:
    """Lay (task, src, tgt) samples back to back; the padding tail is one more pseudo-sequence."""
    input_ids = np.full(capacity, pad_id, np.int32)
    targets = np.full(capacity, -100, np.int32)
    task_ids = np.full(capacity, -1, np.int32)
    position_ids = np.zeros(capacity, np.int32)
    cursor, bounds = 0, [0]
    for task, src, tgt in samples:
        end = cursor + len(src)
        input_ids[cursor:end], targets[cursor:end], task_ids[cursor:end] = src, tgt, task
        position_ids[cursor:end] = np.arange(len(src))
        cursor = end
        bounds.append(cursor)
    if cursor < capacity:
        position_ids[cursor:] = np.arange(capacity - cursor)
        bounds.append(capacity)
    return PackedBatch(index, input_ids, targets, position_ids, task_ids, np.array(bounds, np.int32), cursor)


def make_batches(count: int, *, batch_size: int = 2, max_length: int = 64, seed: int = 0,
                 task_names=("chat", "book")) -> list[tuple[PackedBatch, list]]:
    """``count`` packed global batches with the samples each holds, from seeded random text."""
    tokenizer = load_tokenizer("byte")
    rng = np.random.RandomState(seed)
    capacity = batch_size * max_length
    batches, pending = [], None
    for index in range(count):
        samples, used = [], 0
        while True:
            if pending is None:
                task = int(rng.randint(len(task_names)))
                src, tgt = make_sample(make_text(rng, rng.randint(1, 4)), make_text(rng, rng.randint(2, 12)), tokenizer)
                pending = (task, src[:max_length], tgt[:max_length])
            if used + len(pending[1]) > capacity:
                break
            samples.append(pending)
            used += len(pending[1])
            pending = None
        batches.append((pack_samples(index, samples, capacity, tokenizer.pad_id), samples))
    return batches


class ListStream:
    """A finite packed stream with the mixer stream's iteration and JSON state API."""

    def __init__(self, count: int = 64, *, rank: int = 0, world_size: int = 1, state: dict | None = None,
                 batch_size: int = 2, max_length: int = 64, seed: int = 0):
        self.batches = [b for b, _ in make_batches(count, batch_size=batch_size, max_length=max_length, seed=seed)]
        self.rank, self.world_size = rank, world_size
        self.next_index = (state or {}).get("next_index", 0)
        self.task_names = ["chat", "book"]
        self.tokenizer = load_tokenizer("byte")

    def __iter__(self):
        while self.next_index < len(self.batches):
            index = self.next_index
            self.next_index += 1
            if index % self.world_size == self.rank:
                yield self.batches[index]

    def state_dict(self) -> dict:
        return {"next_index": self.next_index}


def list_stream_factory(count: int = 64, **kwargs):
    """A ``RunContext.stream_factory`` making :class:`ListStream` from the config's geometry."""
    def factory(config, *, rank, world_size, state):
        return ListStream(count, rank=rank, world_size=world_size, state=state,
                          batch_size=config["batch_size"], max_length=config["max_length"], **kwargs)
    return factory


def build_mixture(root: Path, *, max_length: int = 128, batch_size: int = 2) -> Path:
    """Index two small byte-tokenized datasets (``chat`` with ChatML, ``book``) and write ``root/mix.json``;
    each has a held-out split indexed at ``idx/<name>/test`` (23 and 17 rows), where fm9g train finds it."""
    from fm9g.index.builder import BuildOptions, build_index

    rng = np.random.RandomState(0)
    for name, lines, held_out in (("chat", 300, 23), ("book", 200, 17)):
        for split, count, output in (("train", lines, root / "idx" / name), ("test", held_out, root / "idx" / name / "test")):
            path = root / f"{name}.{split}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                for _ in range(count):
                    record = {"input": make_text(rng, rng.randint(1, 5)) if name == "chat" else "",
                              "output": make_text(rng, rng.randint(2, 14))}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            build_index([path], output, BuildOptions(tokenizer="byte", workers=1, progress=False))
    manifest = {"max_length": max_length, "batch_size": batch_size, "tokenizer": "byte", "seed": 7, "datasets": [
        {"task_name": "chat", "path": "idx/chat", "abs_weight": 0.6, "transform": "chatml"},
        {"task_name": "book", "path": "idx/book", "abs_weight": 0.4}]}
    (root / "mix.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return root


def write_train_config(directory: Path, manifest: Path, name: str = "train.json", **fields) -> Path:
    """A train config in ``directory`` over ``manifest`` (written relative to the config file)."""
    config = {"data": {"manifest": os.path.relpath(manifest, directory)}, "model": {"preset": "tiny-llama"},
              "save": "run", "train_iters": 8, "save_iters": 4, "batch_size": 2, "max_length": 128,
              "lr": 2e-3, "warmup_iters": 2}
    config.update(fields)
    path = directory / name
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def fm9g_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fm9g", *args]


def run_fm9g(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(fm9g_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
