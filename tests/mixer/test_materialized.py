"""A materialized mixture is checked when opened: every listed shard present, arrays with their
dtypes and shapes, token and task ids in range, batch boundaries increasing; errors name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fm9g.mixer.materialized as materialized
from fm9g.core.errors import Fm9gError
from fm9g.mixer.materialized import MaterializedStream, MaterializedWriter
from fm9g.mixer.stream import MixtureStream

BATCHES_PER_SHARD = 5


@pytest.fixture
def mixture(make_mix, tmp_path, monkeypatch) -> Callable[..., Path]:
    """``mixture(vocab_size=True)``: one pass of a real stream, written in shards of 5 batches."""

    def write(vocab_size: bool = True) -> Path:
        once = {"allow_repeat": False}
        manifest = make_mix({"a": (40, 1.0), "b": (40, 1.0)}, max_length=32, batch_size=2,
                            dataset_options={"a": once, "b": once})
        stream = MixtureStream.from_manifest(manifest)
        monkeypatch.setattr(materialized, "SHARD_TOKENS", stream.capacity * BATCHES_PER_SHARD)
        writer = MaterializedWriter(tmp_path / "mixed", capacity=stream.capacity)
        for batch in stream:
            writer.add(batch)
        settings = {"task_names": stream.task_names, "tokenizer": "byte", "max_length": 32, "batch_size": 2}
        if vocab_size:
            settings["vocab_size"] = stream.tokenizer.vocab_size
        return writer.finish(settings=settings, final_state=stream.state_dict(), report={})

    return write


def rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    np.save(path, change(np.load(path).copy()))


def put(index: tuple, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array[index] = value
        return array

    return change


def unordered(cu_seqlens: np.ndarray) -> np.ndarray:
    cu_seqlens[1], cu_seqlens[2] = cu_seqlens[2], cu_seqlens[1]
    return cu_seqlens


CORRUPTIONS = {
    "missing shard": ("shard-00001", None, "a shard listed in mixture.json is missing"),
    "missing file": ("shard-00000/targets.npy", None, "a shard file of the mixture is missing"),
    "wrong dtype": ("shard-00001/input_ids.npy", lambda a: a.astype(np.int64), "dtype int64, expected int32"),
    "wrong shape": ("shard-00000/task_ids.npy", lambda a: a[:-1], "shape (4, 64), expected (5, 64)"),
    "id beyond vocab": ("shard-00001/input_ids.npy", put((2, 7), 260), "holds 260, expected a token id below vocab_size 260"),
    "negative target": ("shard-00000/targets.npy", put((0, 3), -7), "holds -7, expected a token id below vocab_size"),
    "unknown task": ("shard-00000/task_ids.npy", put((1, 0), 2), "holds 2, expected a task id below 2"),
    "unordered boundaries": ("shard-00001/cu_seqlens.npy", unordered, "boundaries do not increase from 0 to the capacity 64"),
    "boundaries past the end": ("shard-00000/cu_seqlens.npy", put(-1, 65), "boundaries do not increase"),
    "offsets short": ("shard-00000/cu_offsets.npy", lambda a: a[:-1], "shape (5,), expected (6,)"),
    "offsets off the array": ("shard-00000/cu_offsets.npy", put(-1, 10**6), "batch boundaries do not index"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_damaged_shard_is_refused_naming_the_file(mixture, name):
    directory = mixture()
    target, change, problem = CORRUPTIONS[name]
    path = directory / target
    if change is None:
        if path.is_dir():
            for file in path.iterdir():
                file.unlink()
            path.rmdir()
        else:
            path.unlink()
    else:
        rewrite(path, change)
    with pytest.raises(Fm9gError) as caught:
        MaterializedStream(directory)
    assert problem in caught.value.message
    assert caught.value.where == str(path)


def test_a_sound_mixture_opens_and_reads_every_shard(mixture):
    directory = mixture()
    stream = MaterializedStream(directory)
    description = json.loads((directory / "mixture.json").read_text())
    assert len(description["shards"]) >= 3 and len(list(stream)) == description["batches"]


def test_the_shard_list_must_add_up_to_the_batches(mixture):
    directory = mixture()
    description = json.loads((directory / "mixture.json").read_text())
    description["shards"].pop()
    (directory / "mixture.json").write_text(json.dumps(description))
    with pytest.raises(Fm9gError, match="the shards hold .* batches but mixture.json says"):
        MaterializedStream(directory)


def test_without_a_recorded_vocab_size_ids_must_be_non_negative(mixture):
    directory = mixture(vocab_size=False)
    rewrite(directory / "shard-00000/input_ids.npy", put((0, 5), 100_000))
    MaterializedStream(directory)
    rewrite(directory / "shard-00000/input_ids.npy", put((0, 5), -3))
    with pytest.raises(Fm9gError, match="holds -3, expected a non-negative token id"):
        MaterializedStream(directory)
