"""The mixer over a sharded index: the same batches, bit for bit, as over one index of the same rows,
with a stream state of the same size (one global row numbering, one permutation per dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mixer_helpers import numbered_records, write_manifest

from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.executors import build_all
from fm9g.mixer.stream import MixtureStream

FIELDS = ("input_ids", "targets", "position_ids", "task_ids", "cu_seqlens")


def _records(path: Path, task: str, rows: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in numbered_records(task, rows)))
    return path


def _manifests(tmp_path: Path) -> tuple[Path, Path]:
    options = BuildOptions(tokenizer="byte", workers=1, progress=False)
    big = [_records(tmp_path / "raw" / f"big{part}.jsonl", "big", 70 + part) for part in range(3)]
    small = _records(tmp_path / "raw" / "small.jsonl", "small", 40)
    build_index(big, tmp_path / "idx" / "big-one", options)
    build_all(big, tmp_path / "idx" / "big-sharded", 5, options)
    build_index([small], tmp_path / "idx" / "small", options)
    paths = []
    for form in ("one", "sharded"):
        datasets = [{"task_name": "big", "path": f"idx/big-{form}", "abs_weight": 0.7},
                    {"task_name": "small", "path": "idx/small", "abs_weight": 0.3}]
        paths.append(write_manifest(tmp_path / f"mix-{form}.json", datasets, max_length=96, batch_size=2, seed=5))
    return paths[0], paths[1]


def _take(stream: MixtureStream, count: int) -> list:
    batches = []
    for batch in stream:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _assert_same(left: list, right: list) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        for name in FIELDS:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_batches_and_state_equal_those_of_one_index(tmp_path: Path) -> None:
    one_manifest, sharded_manifest = _manifests(tmp_path)
    one, sharded = MixtureStream.from_manifest(one_manifest), MixtureStream.from_manifest(sharded_manifest)
    _assert_same(_take(one, 100), _take(sharded, 100))
    one_state, sharded_state = json.dumps(one.state_dict()), json.dumps(sharded.state_dict())
    assert one_state == sharded_state
    assert json.loads(sharded_state)["datasets"][0]["epoch"] == 1  # the sharded dataset's second permutation too

    resumed = MixtureStream.from_manifest(sharded_manifest, state=json.loads(sharded_state))
    _assert_same(_take(one, 10), _take(resumed, 10))


def test_worker_processes_read_the_sharded_index_alike(tmp_path: Path) -> None:
    one_manifest, sharded_manifest = _manifests(tmp_path)
    in_workers = MixtureStream.from_manifest(sharded_manifest, workers=1)
    try:
        _assert_same(_take(MixtureStream.from_manifest(one_manifest), 20), _take(in_workers, 20))
    finally:
        in_workers.close()
