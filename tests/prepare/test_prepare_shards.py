"""Sharded ``fm9g prepare`` in this process: equal to the one-process prepare byte for byte (with and
without a split), tasks in any order, reruns, another plan, unfinished merges and the test split of
a sharded index found by training's evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_fm9g
from prepare_shard_helpers import alpaca_input, assert_same_prepare, jsonl_input, text_input

from fm9g.core.errors import Fm9gError
from fm9g.core.sharding import PLAN_FILE
from fm9g.prepare.prepare import prepare
from fm9g.prepare.shards import PrepareJob, finalize_prepare, missing_shards, prepare_all, prepare_shard

CASES = {
    "jsonl": (jsonl_input, "in.jsonl", {"map": {"input": "q", "output": "a"}}),
    "txt": (text_input, "in.txt", {}),
    "alpaca": (alpaca_input, "in.json", {}),
}


@pytest.mark.parametrize("adapter,split,count", [
    *((adapter, split, 3) for adapter in sorted(CASES) for split in (None, 0.1, 37)),
    ("jsonl", 0.1, 1), ("jsonl", None, 8), ("txt", 37, 8), ("alpaca", 0.1, 8)])
def test_a_sharded_prepare_equals_one_process(tmp_path: Path, adapter: str, split, count: int) -> None:
    make, name, options = CASES[adapter]
    source = make(tmp_path / name)
    one = prepare(source, tmp_path / "one", adapter, options, test_size=split, seed=5, progress=False)
    job = PrepareJob(str(source), str(tmp_path / "sharded"), adapter, options, split, 5, count)
    outcomes, result = prepare_all(job, progress=False)
    assert [outcome.built for outcome in outcomes] == [True] * count
    assert_same_prepare(tmp_path / "one", tmp_path / "sharded")
    assert result.first_dropped == one.first_dropped and one.first_dropped
    plan = json.loads((tmp_path / "sharded" / PLAN_FILE).read_text(encoding="utf-8"))
    shares = [shard["bytes"] for shard in plan["shards"]]
    if adapter == "alpaca":  # a JSON array is not cut: all of it in one shard
        assert sorted(shares)[:-1] == [0] * (count - 1)
    elif count > 1:
        assert min(shares) > 0.5 * max(shares)


def test_tasks_in_any_order_merge_once_and_reruns_skip(tmp_path: Path) -> None:
    source = jsonl_input(tmp_path / "in.jsonl")
    options = {"map": {"input": "q", "output": "a"}}
    prepare(source, tmp_path / "one", "jsonl", options, test_size=0.2, seed=9, progress=False)
    job = PrepareJob(str(source), str(tmp_path / "sharded"), "jsonl", options, 0.2, 9, 4)
    merges = [prepare_shard(job, index).merge for index in (3, 1, 0)]
    assert merges == [None] * 3 and missing_shards(tmp_path / "sharded", _plan(tmp_path / "sharded")) == [2]
    assert not (tmp_path / "sharded" / "train.jsonl").exists()
    with pytest.raises(Fm9gError, match="1 of 4 shards are not complete: 2"):
        finalize_prepare(tmp_path / "sharded")
    last = prepare_shard(job, 2)
    assert last.built and last.merge is not None
    assert_same_prepare(tmp_path / "one", tmp_path / "sharded")
    again = prepare_shard(job, 1)
    assert not again.built and again.merge is None
    outcomes, _ = prepare_all(job, progress=False)
    assert [outcome.built for outcome in outcomes] == [False] * 4
    assert_same_prepare(tmp_path / "one", tmp_path / "sharded")


def _plan(directory: Path) -> dict:
    return json.loads((directory / PLAN_FILE).read_text(encoding="utf-8"))


def test_another_count_input_or_option_is_a_clear_error(tmp_path: Path) -> None:
    source = jsonl_input(tmp_path / "in.jsonl")
    options = {"map": {"input": "q", "output": "a"}}
    job = PrepareJob(str(source), str(tmp_path / "sharded"), "jsonl", options, 0.1, 5, 3)
    prepare_shard(job, 0)
    for changed, message in ((PrepareJob(**{**job.__dict__, "count": 4}), "planned for 3 shards and this task asks for 4"),
                             (PrepareJob(**{**job.__dict__, "test_size": 0.2}), "planned with test_size=0.1"),
                             (PrepareJob(**{**job.__dict__, "options": {}}), "planned with adapter_options")):
        with pytest.raises(Fm9gError, match=message):
            prepare_shard(changed, 1)
    with open(source, "ab") as handle:
        handle.write(b'\n{"q": "new", "a": "row"}\n')
    with pytest.raises(Fm9gError, match="changed since it was planned"):
        prepare_shard(job, 1)


def test_a_shard_changed_by_hand_or_killed_before_publishing_never_reads_as_complete(tmp_path: Path) -> None:
    source = jsonl_input(tmp_path / "in.jsonl")
    options = {"map": {"input": "q", "output": "a"}}
    job = PrepareJob(str(source), str(tmp_path / "sharded"), "jsonl", options, None, 5, 3)
    for index in (0, 1):
        prepare_shard(job, index)
    output = tmp_path / "sharded"
    with open(output / "shard-00001-of-00003" / "items.jsonl", "ab") as handle:
        handle.write(b"{}\n")
    assert missing_shards(output, _plan(output)) == [1, 2]
    with pytest.raises(Fm9gError, match="without a valid completion record"):
        prepare_shard(job, 1)
    shutil.rmtree(output / "shard-00001-of-00003")
    # what a task killed mid-build leaves: its temp directory, whose PID is gone
    shutil.copytree(output / "shard-00000-of-00003", output / ".shard-00002-of-00003.fm9g-tmp-999999999")
    assert missing_shards(output, _plan(output)) == [1, 2]
    prepare_shard(job, 2)
    prepare_shard(job, 1)
    prepare(source, tmp_path / "one", "jsonl", options, progress=False)
    assert_same_prepare(tmp_path / "one", output)


def test_the_command_line_shards_finalize_and_index_the_test_split(tmp_path: Path, tiny_corpus: Path) -> None:
    source = tiny_corpus / "pretrain.txt"
    common = ("prepare", "--adapter", "txt", "--input", str(source), "--split", "test=0.1", "--no-progress")
    assert run_fm9g(*common, "--output", str(tmp_path / "one")).returncode == 0
    for index in (1, 0):
        done = run_fm9g(*common, "--output", str(tmp_path / "sh"), "--shard", f"{index}/3")
        assert done.returncode == 0 and "prepared" in done.stdout, done.stderr
    refused = run_fm9g("prepare", "--finalize", str(tmp_path / "sh"))
    assert refused.returncode != 0 and "1 of 3 shards are not complete: 2" in refused.stderr
    last = run_fm9g(*common, "--output", str(tmp_path / "sh"), "--shard", "2/3")
    assert last.returncode == 0 and "(" in last.stdout and "test)" in last.stdout, last.stdout
    assert_same_prepare(tmp_path / "one", tmp_path / "sh")
    both = run_fm9g(*common, "--output", str(tmp_path / "sh"), "--shard", "1/3", "--shards", "3")
    assert both.returncode != 0 and "not both" in both.stderr

    # a merge killed between its renames: train.jsonl without the report is refused by fm9g index
    report = (tmp_path / "sh" / "prepare_report.json").read_bytes()
    (tmp_path / "sh" / "prepare_report.json").unlink()
    unfinished = run_fm9g("index", "-i", str(tmp_path / "sh" / "train.jsonl"), "-o", str(tmp_path / "x"), "--shards", "2")
    assert unfinished.returncode != 0 and "has not finished merging" in unfinished.stderr
    (tmp_path / "sh" / "prepare_report.json").write_bytes(report)

    for index in (0, 1):
        built = run_fm9g("index", "-i", str(tmp_path / "sh" / "train.jsonl"), "-o", str(tmp_path / "idx"),
                         "--shard", f"{index}/2", "--tokenizer", "byte", "--no-progress")
        assert built.returncode == 0, built.stderr
    assert "indexing it into" in built.stdout
    _assert_test_split_found(tmp_path, tmp_path / "idx", tmp_path / "sh" / "test.jsonl")
    all_at_once = run_fm9g("index", "-i", str(tmp_path / "sh" / "train.jsonl"), "-o", str(tmp_path / "idx2"),
                           "--shards", "3", "--tokenizer", "byte", "--no-progress")
    assert all_at_once.returncode == 0, all_at_once.stderr
    _assert_test_split_found(tmp_path, tmp_path / "idx2", tmp_path / "sh" / "test.jsonl")


def _assert_test_split_found(tmp_path: Path, index: Path, test_jsonl: Path) -> None:
    """``fm9g train``'s evaluation finds the sharded index's test split, with every test record."""
    from fm9g.mixer.held_out import find_held_out
    from fm9g.mixer.manifest import load_manifest
    from fm9g.mixer.sources import open_dataset
    from fm9g.tokenizers import load_tokenizer

    manifest_path = tmp_path / f"{index.name}.json"
    manifest_path.write_text(json.dumps({"max_length": 64, "batch_size": 2, "tokenizer": "byte", "datasets": [
        {"task_name": "pretrain", "path": str(index), "abs_weight": 1}]}), encoding="utf-8")
    plan = find_held_out(load_manifest(manifest_path), tokenizer_fingerprint=load_tokenizer("byte").fingerprint)
    rows = test_jsonl.read_bytes().count(b"\n")
    assert [(held.spec.task_name, held.origin, held.rows) for held in plan.sets] == [("pretrain", "test split", rows)]
    held_out = open_dataset(plan.sets[0].path)
    assert b"".join(held_out.raw(i) for i in range(len(held_out))) == test_jsonl.read_bytes()
    assert len(open_dataset(index)) == (test_jsonl.parent / "train.jsonl").read_bytes().count(b"\n")
