"""Finding each task's held-out set, and its packed evaluation batches (every row once, in order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.mixer.held_out import HeldOutBatches, find_held_out
from fm9g.mixer.manifest import load_manifest
from fm9g.mixer.samples import IGNORE_INDEX
from fm9g.tokenizers import load_tokenizer

OPTIONS = BuildOptions(tokenizer="byte", workers=1, progress=False)


def _index(path: Path, records: list[dict], *, tokenizer: str = "byte") -> Path:
    source = path.parent / f"{path.name}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    build_index([source], path, BuildOptions(tokenizer=tokenizer, workers=1, progress=False))
    return path


def _records(count: int, seed: int, *, words: int = 12) -> list[dict]:
    rng = np.random.RandomState(seed)
    vocabulary = "held out rows are read once in row order 训练 数据 评估".split()
    return [{"input": "", "output": " ".join(rng.choice(vocabulary, size=rng.randint(1, words)))} for _ in range(count)]


@pytest.fixture()
def tasks(tmp_path):
    """Three tasks: ``a`` with a test split inside its index, ``b`` with an eval_path, ``c`` with neither."""
    _index(tmp_path / "idx" / "a", _records(40, 0))
    _index(tmp_path / "idx" / "a" / "test", _records(9, 1))
    _index(tmp_path / "idx" / "b", _records(40, 2))
    _index(tmp_path / "held" / "b", _records(5, 3))
    _index(tmp_path / "idx" / "c", _records(40, 4))
    manifest = {"max_length": 64, "batch_size": 2, "tokenizer": "byte", "datasets": [
        {"task_name": "a", "path": "idx/a", "abs_weight": 1},
        {"task_name": "b", "path": "idx/b", "abs_weight": 3, "eval_path": "held/b"},
        {"task_name": "c", "path": "idx/c", "abs_weight": 1}]}
    (tmp_path / "mix.json").write_text(json.dumps(manifest), encoding="utf-8")
    return tmp_path


def test_held_out_sets_come_from_eval_manifest_then_eval_path_then_the_test_split(tasks):
    manifest = load_manifest(tasks / "mix.json")
    plan = find_held_out(manifest, tokenizer_fingerprint=load_tokenizer("byte").fingerprint)
    assert [(h.spec.task_name, h.task_id, h.origin, h.rows) for h in plan.sets] == [
        ("a", 0, "test split", 9), ("b", 1, "eval_path", 5)]
    assert plan.notes == ["c: no held-out set (not evaluated)"]
    assert plan.weights == {"a": 1.0, "b": 3.0}

    _index(tasks / "other" / "c", _records(4, 5))
    eval_manifest = {"datasets": [{"task_name": "c", "path": "other/c", "abs_weight": 1},
                                  {"task_name": "a", "path": "held/b", "abs_weight": 1}]}
    (tasks / "eval.json").write_text(json.dumps(eval_manifest), encoding="utf-8")
    plan = find_held_out(manifest, eval_manifest=load_manifest(tasks / "eval.json"))
    assert [(h.spec.task_name, h.origin, h.path) for h in plan.sets] == [
        ("a", "eval manifest", (tasks / "held" / "b").resolve()), ("b", "eval_path", (tasks / "held" / "b").resolve()),
        ("c", "eval manifest", (tasks / "other" / "c").resolve())]


def test_bad_held_out_sets_are_clear_errors_or_stated_skips(tasks):
    manifest = load_manifest(tasks / "mix.json")
    (tasks / "eval.json").write_text(json.dumps({"datasets": [{"task_name": "nope", "path": "held/b", "abs_weight": 1}]}))
    with pytest.raises(Fm9gError, match="task 'nope' is not in the training mixture") as error:
        find_held_out(manifest, eval_manifest=load_manifest(tasks / "eval.json"))
    assert "$.datasets[0].task_name" in str(error.value)

    with pytest.raises(Fm9gError, match="indexed with tokenizer byte-v1.* but training uses other-v1:1"):
        find_held_out(manifest, tokenizer_fingerprint="other-v1:1")

    shutil.rmtree(tasks / "held" / "b")
    (tasks / "held" / "b").mkdir()  # an empty seed-style index: no lines, one offset
    (tasks / "held" / "b" / "data.jsonl").write_bytes(b"")
    (tasks / "held" / "b" / "index").write_text("0\n")
    plan = find_held_out(manifest)
    assert [h.spec.task_name for h in plan.sets] == ["a"]
    assert any(note.startswith("b: the held-out set") and "has no rows (skipped)" in note for note in plan.notes)


def _batches(tasks, **kwargs) -> tuple[HeldOutBatches, list]:
    manifest = load_manifest(tasks / "mix.json")
    tokenizer = load_tokenizer("byte")
    held = HeldOutBatches(find_held_out(manifest), tokenizer=tokenizer, max_length=kwargs.pop("max_length", 64),
                          batch_size=2, seed=manifest.seed, **kwargs)
    return held, list(held)


def _samples(batch) -> list[tuple[int, list[int], list[int]]]:
    """(task id, input ids, targets) of each sample in a packed batch (its positions restart at 0)."""
    starts = [int(i) for i in np.flatnonzero(batch.position_ids[: batch.num_tokens] == 0)] + [batch.num_tokens]
    return [(int(batch.task_ids[b]), batch.input_ids[b:e].tolist(), batch.targets[b:e].tolist())
            for b, e in zip(starts, starts[1:])]


def test_every_held_out_row_is_one_sample_in_row_order_and_a_second_pass_is_the_same(tasks):
    held, batches = _batches(tasks)
    tokenizer = load_tokenizer("byte")
    samples = [sample for batch in batches for sample in _samples(batch)]
    expected = []
    for task_id, records in ((0, _records(9, 1)), (1, _records(5, 3))):
        for record in records:  # identity transform: [bos] + output, targets shifted with eos
            ids = tokenizer.encode(record["output"])
            expected.append((task_id, [tokenizer.bos_id] + ids, ids + [tokenizer.eos_id]))
    assert samples == expected
    assert [b.index for b in batches] == list(range(len(batches)))
    assert all(len({int(t) for t in b.task_ids if t >= 0}) == 1 for b in batches)  # each set starts a batch
    assert {name: c.as_json() for name, c in held.counts.items()} == {
        "a": {"rows": 9, "samples": 9, "skipped": {}}, "b": {"rows": 5, "samples": 5, "skipped": {}}}
    assert list(held) == batches and list(held)[0] is batches[0]  # the first pass is kept and reused
    uncached, rebuilt = _batches(tasks, cache_bytes=0)
    again = list(uncached)  # built afresh: the same batches
    assert uncached._cache is None and len(again) == len(batches) == len(rebuilt)
    assert all(np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.targets, y.targets) and
               np.array_equal(x.position_ids, y.position_ids) for x, y in zip(batches, again))


def test_eval_tokens_keeps_whole_samples_until_the_limit_and_long_samples_follow_the_oversize_rule(tasks):
    held, batches = _batches(tasks, max_target_tokens=60)
    per_task: dict[int, list[int]] = {}
    for batch in batches:
        for task, _, targets in _samples(batch):
            per_task.setdefault(task, []).append(sum(t != IGNORE_INDEX for t in targets))
    for counts in per_task.values():
        assert sum(counts) >= 60 and sum(counts[:-1]) < 60  # stops after the sample that reaches the limit
    assert held.counts["a"].samples == len(per_task[0]) < 9

    _index(tasks / "idx" / "a" / "long", [{"input": "", "output": "x" * 150}])
    manifest = json.loads((tasks / "mix.json").read_text())
    manifest["datasets"][0]["eval_path"] = "idx/a/long"
    for rule, windows, skipped in (("segment", 3, {}), ("head", 1, {}), ("drop", 0, {"too_long": 1})):
        manifest["datasets"][0]["oversize_rule"] = rule
        (tasks / "mix.json").write_text(json.dumps(manifest))
        held, batches = _batches(tasks)
        pieces = [s for b in batches for s in _samples(b) if s[0] == 0]
        assert len(pieces) == windows, rule
        assert held.counts["a"].as_json() == {"rows": 1, "samples": 1 if windows else 0, "skipped": skipped}
