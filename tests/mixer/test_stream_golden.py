"""Pinned output of the stream: a SHA-256 of the first batches of a fixed manifest.

The stream is a pure function of (manifest, data, tokenizer, seed, max_length, batch_size), and
saved states, materialized mixtures and training resumes all rely on that function never changing
silently. These hashes were taken before the stream's hot path was optimized; any optimization
(bulk reads, array-level tokenization, vectorized packing) must reproduce them bit for bit. A
deliberate change of the stream's behaviour must update the hashes *and* bump ``STATE_VERSION``.

The HF tokenizer here is a byte-level BPE built from an explicit vocabulary and merge list (not
trained), so the hash does not depend on the trainer of the installed ``tokenizers`` version.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from mixer_helpers import WORDS, build_tokenizer, write_manifest, write_seed_dataset
from fm9g.mixer.stream import MixtureStream

GOLDEN = {
    "hf": "f2110259a1e471795bfb900a7ddaf0d1633ae11f4534d57671df7f5eed72268b",
    "byte": "e262d1a92359b7ebda224ebfdcd0b97ed7524acfc850029e2809d53741a26702",
}
BATCHES = 120


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def build_mix(root: Path, tokenizer: str) -> Path:
    """Three datasets exercising identity/chatml/fm9g, segment/head/drop, prompt drops and epochs."""
    rng = random.Random(1234)
    pretrain = [{"input": "", "output": text(rng, 1, 60)} for _ in range(40)]
    chat = [{"input": text(rng, 1, 25), "output": text(rng, 1, 60)} for _ in range(50)]
    fm = [{"input": text(rng, 1, 70 if row % 9 == 0 else 10), "output": text(rng, 1, 40)} for row in range(30)]
    fm.append({"instruction": "no input or output keys"})
    for name, records in (("pretrain", pretrain), ("chat", chat), ("fm", fm)):
        write_seed_dataset(root / name, records)
    datasets = [
        {"task_name": "pretrain", "path": "pretrain", "abs_weight": 0.5, "transform": "identity",
         "oversize_rule": "segment"},
        {"task_name": "chat", "path": "chat", "abs_weight": 0.3, "oversize_rule": "head",
         "transform": {"name": "chatml", "options": {"system": "sys"}}},
        {"task_name": "fm", "path": "fm", "abs_weight": 0.2, "transform": "fm9g", "oversize_rule": "drop",
         "max_epochs": 3},
    ]
    return write_manifest(root / "mix.json", datasets, tokenizer=tokenizer, max_length=128, batch_size=2, seed=7)


def digest(batches, state: dict) -> str:
    hasher = hashlib.sha256()
    for batch in batches:
        hasher.update(np.int64([batch.index, batch.num_tokens]).tobytes())
        for field in ("input_ids", "targets", "position_ids", "task_ids", "cu_seqlens"):
            array = getattr(batch, field)
            assert array.dtype == np.int32
            hasher.update(field.encode() + array.tobytes())
    hasher.update(json.dumps(state, sort_keys=True).encode())
    return hasher.hexdigest()


def take(stream: MixtureStream, count: int) -> list:
    return [batch for _, batch in zip(range(count), stream)]


@pytest.fixture(params=["hf", "byte"])
def golden_mix(request, tmp_path: Path) -> tuple[str, Path]:
    spec = f"hf:{build_tokenizer(tmp_path / 'tokenizer')}" if request.param == "hf" else "byte"
    return request.param, build_mix(tmp_path, spec)


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_first_batches_match_the_pinned_hash(golden_mix, prefetch):
    kind, manifest = golden_mix
    stream = MixtureStream.from_manifest(manifest, prefetch=prefetch)
    assert (stream._thread is not None) == (prefetch and kind == "hf")
    batches = take(stream, BATCHES)
    assert len(batches) == BATCHES
    assert digest(batches, stream.state_dict()) == GOLDEN[kind]


def test_chunk_sizes_do_not_change_the_stream(golden_mix, monkeypatch):
    """Chunks of 1..3 rows (every sample a chunk boundary, prefetching across epochs) give the
    same stream as the default sizes."""
    import fm9g.mixer.sources as sources

    kind, manifest = golden_mix
    monkeypatch.setattr(sources, "FIRST_CHUNK", 1)
    monkeypatch.setattr(sources, "MAX_CHUNK", 3)
    stream = MixtureStream.from_manifest(manifest)
    assert digest(take(stream, BATCHES), stream.state_dict()) == GOLDEN[kind]


def test_resumed_and_two_rank_streams_match_the_pinned_hash(golden_mix):
    kind, manifest = golden_mix
    first = MixtureStream.from_manifest(manifest)
    head = take(first, 37)
    resumed = MixtureStream.from_manifest(manifest, state=json.loads(json.dumps(first.state_dict())))
    tail = take(resumed, BATCHES - 37)
    assert digest(head + tail, resumed.state_dict()) == GOLDEN[kind]
    ranks = [MixtureStream.from_manifest(manifest, rank=rank, world_size=2) for rank in range(2)]
    shards = [take(stream, BATCHES // 2) for stream in ranks]
    interleaved = [batch for pair in zip(*shards) for batch in pair]
    assert digest(interleaved, ranks[0].state_dict()) == GOLDEN[kind]


def test_a_forked_process_continues_a_prefetching_stream(tmp_path: Path):
    """A process forked after the prefetch thread started (a fork-based data loader) gets its own
    thread and continues with exactly the parent's batches."""
    import os
    import select

    manifest = build_mix(tmp_path, f"hf:{build_tokenizer(tmp_path / 'tokenizer')}")
    stream = MixtureStream.from_manifest(manifest)
    take(stream, 10)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.write(write_end, digest(take(stream, 40), stream.state_dict()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        child_digest = os.read(read_end, 100).decode() if ready else "timed out"
    finally:
        os.close(read_end)
        if not ready:
            os.kill(child, 9)
        os.waitpid(child, 0)
    assert child_digest == digest(take(stream, 40), stream.state_dict())
