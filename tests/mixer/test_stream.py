"""The global stream: epochs and repetition, resume across mix changes, state size, workers."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest

from mixer_helpers import batch_samples, numbered_records, write_manifest, write_seed_dataset
from fm9g.core.errors import Fm9gError
from fm9g.mixer.stream import MixtureStream, PackedBatch


def drain(stream: MixtureStream, limit: int | None = None) -> list[PackedBatch]:
    batches = []
    for batch in stream:
        batches.append(batch)
        if limit is not None and len(batches) >= limit:
            break
    return batches


def first_rows(batches, stream) -> Counter:
    seen: Counter = Counter()
    for batch in batches:
        for task, row, first in batch_samples(batch, stream.task_names, stream.tokenizer):
            if first:
                seen[(task, row)] += 1
    return seen


def test_packed_batch_layout(make_mix):
    stream = MixtureStream.from_manifest(make_mix({"a": (20, 1.0)}, max_length=80, batch_size=2))
    batch = next(stream)
    capacity = 160
    for field in ("input_ids", "targets", "position_ids", "task_ids"):
        array = getattr(batch, field)
        assert array.dtype == np.int32 and array.shape == (capacity,)
    assert batch.cu_seqlens.dtype == np.int32 and batch.cu_seqlens[0] == 0 and batch.cu_seqlens[-1] == capacity
    real = batch.task_ids >= 0
    assert batch.num_tokens == int(real.sum()) and real[: batch.num_tokens].all()
    assert (batch.input_ids[~real] == stream.tokenizer.pad_id).all() and (batch.targets[~real] == -100).all()
    bounds = batch.cu_seqlens.tolist()
    for begin, end in zip(bounds[:-1], bounds[1:]):
        np.testing.assert_array_equal(batch.position_ids[begin:end], np.arange(end - begin))
        if batch.task_ids[begin] >= 0:
            assert batch.input_ids[begin] == stream.tokenizer.bos_id
            assert batch.targets[end - 1] == stream.tokenizer.eos_id
            np.testing.assert_array_equal(batch.targets[begin:end - 1][batch.targets[begin:end - 1] != -100],
                                          batch.input_ids[begin + 1:end][batch.targets[begin:end - 1] != -100])
    assert len(bounds) == len(batch_samples(batch, stream.task_names, stream.tokenizer)) + 1 + (batch.num_tokens < capacity)


def test_max_epochs_repeats_each_row_exactly_that_often(make_mix, caplog):
    manifest = make_mix({"a": (13, 1.0), "b": (7, 1.0)}, max_length=128,
                        dataset_options={"a": {"max_epochs": 3}, "b": {"allow_repeat": False}})
    stream = MixtureStream.from_manifest(manifest)
    with caplog.at_level(logging.INFO, logger="fm9g.mixer"):
        seen = first_rows(drain(stream), stream)
    assert {key: count for key, count in seen.items() if key[0] == "a"} == {("a", row): 3 for row in range(13)}
    assert {key: count for key, count in seen.items() if key[0] == "b"} == {("b", row): 1 for row in range(7)}
    left = [record.getMessage() for record in caplog.records if "left the mix" in record.getMessage()]
    assert len(left) == 2 and "'b'" in left[0] and "exhausted" in left[0] and "max_epochs" in left[1]
    assert stream.progress[0].left_reason == "max_epochs reached"


def test_max_rows_trains_on_the_first_rows_only_each_once_per_epoch(make_mix):
    manifest = make_mix({"a": (13, 1.0), "b": (7, 1.0)}, max_length=128,
                        dataset_options={"a": {"max_rows": 5, "max_epochs": 2}, "b": {"allow_repeat": False}})
    stream = MixtureStream.from_manifest(manifest)
    seen = first_rows(drain(stream), stream)
    assert {key: count for key, count in seen.items() if key[0] == "a"} == {("a", row): 2 for row in range(5)}
    assert stream.progress[0].nlines == 5 and stream.progress[1].nlines == 7


def test_epochs_use_different_orders(make_mix):
    stream = MixtureStream.from_manifest(make_mix({"a": (40, 1.0)}, max_length=128, dataset_options={"a": {"max_epochs": 2}}))
    order = [row for batch in drain(stream) for _, row, first in batch_samples(batch, stream.task_names, stream.tokenizer) if first]
    assert sorted(order[:40]) == sorted(order[40:]) == list(range(40))
    assert order[:40] != order[40:] and order[:40] != list(range(40))


def test_weight_change_on_resume_does_not_repeat_rows_of_the_epoch(tmp_path, make_mix):
    manifest = make_mix({"a": (60, 1.0), "b": (60, 1.0)}, max_length=128)
    stream = MixtureStream.from_manifest(manifest)
    before = drain(stream, 6)
    state = json.loads(json.dumps(stream.state_dict()))
    document = json.loads(manifest.read_text())
    document["datasets"][0]["abs_weight"] = 4.0
    manifest.write_text(json.dumps(document))
    resumed = MixtureStream.from_manifest(manifest, state=state)
    after = drain(resumed, 12)
    seen = first_rows(before + after, resumed)
    assert all(count == 1 for count in seen.values())
    tokens_after = sum(np.bincount(batch.task_ids[batch.task_ids >= 0], minlength=2) for batch in after)
    assert tokens_after[0] / tokens_after.sum() == pytest.approx(0.8, abs=0.05)


def test_adding_and_removing_datasets_on_resume(tmp_path, make_mix):
    manifest = make_mix({"a": (50, 1.0), "b": (50, 1.0)}, max_length=128)
    stream = MixtureStream.from_manifest(manifest)
    before = drain(stream, 5)
    state = json.loads(json.dumps(stream.state_dict()))
    write_seed_dataset(tmp_path / "idx" / "c", numbered_records("c", 30))
    document = json.loads(manifest.read_text())
    document["datasets"] = [document["datasets"][0], {"task_name": "c", "path": "idx/c", "abs_weight": 1.0}]
    manifest.write_text(json.dumps(document))
    resumed = MixtureStream.from_manifest(manifest, state=state)
    assert resumed.task_names == ["a", "c"]
    after = drain(resumed, 10)
    seen_before, seen_after = first_rows(before, stream), first_rows(after, resumed)
    assert not {key for key in seen_after if key[0] == "a"} & {key for key in seen_before if key[0] == "a"}
    assert {task for task, _ in seen_after} == {"a", "c"}
    tokens_after = sum(np.bincount(batch.task_ids[batch.task_ids >= 0], minlength=2) for batch in after)
    assert tokens_after[1] / tokens_after.sum() == pytest.approx(0.5, abs=0.1)


def test_state_size_does_not_grow_with_rows(tmp_path):
    sizes = []
    for rows in (100, 100_000):
        write_seed_dataset(tmp_path / str(rows), numbered_records("a", rows, max_len=5))
        manifest = write_manifest(tmp_path / f"{rows}.json", [{"task_name": "a", "path": str(rows), "abs_weight": 1}],
                                  max_length=64)
        stream = MixtureStream.from_manifest(manifest)
        drain(stream, 3)
        sizes.append(len(json.dumps(stream.state_dict())))
    assert abs(sizes[0] - sizes[1]) <= 8


def test_resume_refuses_a_different_max_length_or_seed(make_mix):
    manifest = make_mix({"a": (10, 1.0)})
    stream = MixtureStream.from_manifest(manifest)
    drain(stream, 2)
    state = stream.state_dict()
    with pytest.raises(Fm9gError, match="max_length"):
        MixtureStream.from_manifest(manifest, state=state, max_length=32)
    with pytest.raises(Fm9gError, match="seed"):
        MixtureStream.from_manifest(manifest, state=state, seed=7)
    with pytest.raises(Fm9gError, match="not a mixture stream state"):
        MixtureStream.from_manifest(manifest, state={"next_batch": 3})
    with pytest.raises(Fm9gError, match="rank"):
        MixtureStream.from_manifest(manifest, rank=2, world_size=2)


def test_batch_size_may_change_on_resume(make_mix):
    manifest = make_mix({"a": (30, 1.0)}, max_length=64, dataset_options={"a": {"allow_repeat": False}})
    stream = MixtureStream.from_manifest(manifest)
    before = drain(stream, 3)
    resumed = MixtureStream.from_manifest(manifest, state=stream.state_dict(), batch_size=3)
    after = drain(resumed)
    assert all(batch.input_ids.shape == (192,) for batch in after)
    seen = first_rows(before + after, resumed)
    assert sorted(seen) == [("a", row) for row in range(30)] and set(seen.values()) == {1}


@pytest.mark.slow
def test_output_does_not_depend_on_the_number_of_workers(make_mix):
    manifest = make_mix({"a": (300, 1.0), "b": (200, 0.5)}, max_length=96,
                        dataset_options={"b": {"transform": "chatml"}, "a": {"allow_repeat": False}}, batch_size=2)
    in_process = drain(MixtureStream.from_manifest(manifest, max_length=512), 40)
    with_workers = MixtureStream.from_manifest(manifest, max_length=512, workers=2)
    try:
        parallel = drain(with_workers, 40)
    finally:
        with_workers.close()
    assert len(in_process) == len(parallel) == 40
    for left, right in zip(in_process, parallel):
        for field in ("input_ids", "targets", "position_ids", "task_ids", "cu_seqlens"):
            np.testing.assert_array_equal(getattr(left, field), getattr(right, field))
