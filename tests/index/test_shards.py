"""Sharded indexes built in this process: the plan, equality with one index, completion and its checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_helpers import seed_read_all
from shard_helpers import assert_same_rows, mixed_inputs, tree

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.executors import build_all
from fm9g.index.reader import IndexedDataset
from fm9g.index.sharded_reader import ShardedDataset, open_indexed
from fm9g.index.shards import (PLAN_FILE, build_shard, finalize_dataset, make_plan, missing_shards, parse_shard,
                               plan_basis, read_plan)


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    return mixed_inputs(tmp_path / "raw")


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"workers": 1, "progress": False, "tokenizer": "byte", **changes})


@pytest.mark.parametrize("count", [1, 2, 5, 16, 5000])
def test_the_plan_cuts_only_at_line_starts_and_covers_every_byte_once(inputs: list[Path], count: int) -> None:
    plan = make_plan(inputs, plan_basis(inputs, count, _options()))
    assert plan == make_plan(inputs, plan_basis(inputs, count, _options()))
    assert len(plan["shards"]) == count
    covered = b"".join(inputs[number].read_bytes()[start:end]
                       for shard in plan["shards"] for number, start, end in shard["pieces"])
    assert covered == b"".join(path.read_bytes() for path in inputs)
    for shard in plan["shards"]:
        for number, start, _ in shard["pieces"]:
            assert start == 0 or inputs[number].read_bytes()[start - 1:start] == b"\n"
    if count <= 5:  # balanced to within a line
        sizes = [shard["bytes"] for shard in plan["shards"]]
        assert max(sizes) - min(sizes) < 2 * 2000


@pytest.mark.parametrize("count,tokenizer", [(3, "byte"), (4, None), (7, "byte")])
def test_shards_hold_the_rows_and_statistics_of_one_index(tmp_path: Path, inputs: list[Path], count: int,
                                                          tokenizer: str | None) -> None:
    single = build_index(inputs, tmp_path / "one", _options(tokenizer=tokenizer, workers=2)).output
    build_all(inputs, tmp_path / "sharded", count, _options(tokenizer=tokenizer))
    sharded = open_indexed(tmp_path / "sharded")
    assert isinstance(sharded, ShardedDataset) and len(sharded.shards) == count
    assert_same_rows(open_indexed(single), sharded)
    languages = {shard.meta["language"] for shard in sharded.shards}
    if tokenizer is None:  # each shard detects its own language, the aggregate the whole input's
        assert languages == {"zh", "en"}


def test_each_shard_is_an_index_the_seed_reads(tmp_path: Path, inputs: list[Path]) -> None:
    build_all(inputs, tmp_path / "sharded", 3, _options())
    sharded = ShardedDataset(tmp_path / "sharded")
    rows = [record for shard in sharded.shards for record in seed_read_all(shard.path)]
    assert rows == list(sharded)


def test_random_access_by_global_row(tmp_path: Path, inputs: list[Path]) -> None:
    single = build_index(inputs, tmp_path / "one", _options()).output
    build_all(inputs, tmp_path / "sharded", 4, _options())
    one, sharded = open_indexed(single), ShardedDataset(tmp_path / "sharded")
    for row in (0, 1, len(one) - 1, -1, -len(one), *sharded.starts[1:-1].tolist()):
        assert sharded[row] == one[row]
    assert sharded.read_many([5, 0, len(one) - 1, 5]) == one.read_many([5, 0, len(one) - 1, 5])
    for bad in (len(one), -len(one) - 1):
        with pytest.raises(IndexError):
            sharded[bad]
    import pickle

    copy = pickle.loads(pickle.dumps(sharded))
    assert len(copy) == len(sharded) and copy[len(one) // 2] == one[len(one) // 2]


def test_tasks_in_any_order_complete_it_once_and_a_rerun_skips(tmp_path: Path, inputs: list[Path]) -> None:
    output = tmp_path / "sharded"
    first = build_shard(inputs, output, 2, 3, _options())
    assert first.built
    with pytest.raises(Fm9gError, match="2 of 3 shards are not complete"):
        ShardedDataset(output)
    with pytest.raises(Fm9gError, match=r"not complete: 0, 1"):
        finalize_dataset(output)
    build_shard(inputs, output, 0, 3, _options())
    assert not (output / "meta.json").exists()
    again = build_shard(inputs, output, 0, 3, _options())
    assert not again.built and again.record == json.loads((output / "shard-00000-of-00003" / "shard.json").read_text())
    build_shard(inputs, output, 1, 3, _options())  # the last one writes the aggregate
    assert (output / "meta.json").is_file()
    build_all(inputs, tmp_path / "whole", 3, _options())
    assert tree(output) == tree(tmp_path / "whole")


def test_another_plan_against_an_existing_directory_is_an_error(tmp_path: Path, inputs: list[Path]) -> None:
    output = tmp_path / "sharded"
    build_shard(inputs, output, 0, 3, _options())
    with pytest.raises(Fm9gError, match="planned for 3 shards and this task asks for 4"):
        build_shard(inputs, output, 1, 4, _options())
    with pytest.raises(Fm9gError, match="tokenizer='byte'"):
        build_shard(inputs, output, 1, 3, _options(tokenizer=None))
    with pytest.raises(Fm9gError, match="does not name"):
        build_shard(inputs[:1], output, 1, 3, _options())
    with open(inputs[0], "ab") as handle:
        handle.write(b'{"input": "", "output": "late"}\n')
    with pytest.raises(Fm9gError, match=f"the input {inputs[0].resolve()} changed"):
        build_shard(inputs, output, 1, 3, _options())
    assert missing_shards(output, read_plan(output)) == [1, 2]


def test_a_changed_or_missing_shard_never_reads_as_complete(tmp_path: Path, inputs: list[Path]) -> None:
    output = tmp_path / "sharded"
    build_all(inputs, output, 3, _options())
    data = output / "shard-00001-of-00003" / "data.jsonl"
    content = bytearray(data.read_bytes())
    content[10] = ord("Z") if content[10] != ord("Z") else ord("Y")
    data.write_bytes(bytes(content))
    with pytest.raises(Fm9gError, match="checksum"):
        ShardedDataset(output)
    shutil.rmtree(output / "shard-00001-of-00003")
    with pytest.raises(Fm9gError, match="shard shard-00001-of-00003 is missing"):
        ShardedDataset(output)
    os.remove(output / "meta.json")
    with pytest.raises(Fm9gError, match="1 of 3 shards are not complete"):
        ShardedDataset(output)
    build_shard(inputs, output, 1, 3, _options())
    assert len(ShardedDataset(output)) == json.loads((output / "meta.json").read_text())["nlines"]


def test_a_shard_killed_before_publishing_is_rebuilt(tmp_path: Path, inputs: list[Path]) -> None:
    """What a killed task leaves — a hidden temp directory of a dead process, holding data but no
    record — is neither read nor kept: the rerun removes it and builds the shard."""
    output = tmp_path / "sharded"
    build_all(inputs, output, 2, _options())
    expected = tree(output)
    final = output / "shard-00001-of-00002"
    dead = output / f".{final.name}.fm9g-tmp-{2 ** 22 + 12345}"
    shutil.move(final, dead)
    (dead / "shard.json").unlink()
    os.remove(output / "meta.json")
    assert missing_shards(output, read_plan(output)) == [1]
    build_shard(inputs, output, 1, 2, _options())
    assert not dead.exists() and tree(output) == expected


def test_empty_shards_and_more_shards_than_lines(tmp_path: Path) -> None:
    source = tmp_path / "raw" / "tiny.jsonl"
    source.parent.mkdir()
    source.write_text("".join(json.dumps({"input": "", "output": f"row {i}"}) + "\n" for i in range(3)))
    build_all([source], tmp_path / "sharded", 5, _options())
    sharded = ShardedDataset(tmp_path / "sharded")
    assert [len(shard) for shard in sharded.shards].count(0) == 2
    assert [sharded[i]["output"] for i in range(3)] == ["row 0", "row 1", "row 2"]


def test_shards_of_only_bad_lines_give_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "raw" / "bad.jsonl"
    source.parent.mkdir()
    source.write_text("{oops\n" * 50)
    with pytest.raises(Fm9gError, match="no valid records in any shard"):
        build_all([source], tmp_path / "sharded", 2, _options())
    assert not (tmp_path / "sharded" / "meta.json").exists()


def test_force_replaces_only_a_whole_dataset_build(tmp_path: Path, inputs: list[Path]) -> None:
    output = tmp_path / "sharded"
    build_all(inputs, output, 2, _options())
    with pytest.raises(Fm9gError, match="another plan"):
        build_all(inputs, output, 3, _options())
    build_all(inputs, output, 3, _options(force=True))
    assert read_plan(output)["count"] == 3 and len(ShardedDataset(output).shards) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Fm9gError, match="not a sharded index"):
        build_shard(inputs, foreign, 0, 2, _options())
    assert (foreign / "notes.txt").exists() and not (foreign / PLAN_FILE).exists()


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "2", "1/0"])
def test_shard_argument_must_be_i_of_n(text: str) -> None:
    with pytest.raises(Fm9gError, match="I/N"):
        parse_shard(text)
    assert parse_shard("0/1") == (0, 1) and parse_shard("7/8") == (7, 8)


def test_the_command_line_finalize_and_its_errors(tmp_path: Path, inputs: list[Path], capsys) -> None:
    from fm9g.cli import main

    output = str(tmp_path / "sharded")
    common = ["index", "--input", *map(str, inputs), "--output", output, "--tokenizer", "byte", "--no-progress"]
    assert main([*common, "--shard", "0/2"]) == 0
    assert main(["index", "--finalize", output]) != 0
    assert "1 of 2 shards are not complete: 1" in capsys.readouterr().err
    assert main([*common, "--shard", "1/2", "--force"]) != 0
    assert "would delete the other tasks' shards" in capsys.readouterr().err
    assert main([*common, "--shard", "1/2", "--executor", "ray"]) != 0
    assert "--shards 2 --executor ray" in capsys.readouterr().err
    assert main([*common, "--shard", "1/2"]) == 0
    assert "sharded index complete" in capsys.readouterr().out
    os.remove(Path(output) / "meta.json")
    assert main(["index", "--finalize", output]) == 0
    assert f"in 2 shards under {output}" in capsys.readouterr().out
    assert main(["index", "--finalize", str(inputs[0].parent)]) != 0
    assert "not a sharded index" in capsys.readouterr().err


def test_rows_grouped_by_shard_read_as_one_index_reads_them(tmp_path: Path, inputs: list[Path]) -> None:
    from fm9g.mixer.sources import read_records

    single = IndexedDataset(build_index(inputs, tmp_path / "one", _options(workers=2)).output)
    build_all(inputs, tmp_path / "sharded", 5, _options())
    sharded = ShardedDataset(tmp_path / "sharded")
    rows = np.random.default_rng(3).integers(0, len(single), size=700).tolist() + [0, 0, len(single) - 1]
    assert read_records(sharded, rows) == read_records(single, rows) == [single[row] for row in rows]
    assert read_records(sharded, [-1, -len(single)]) == [single[len(single) - 1], single[0]]
    assert read_records(sharded, []) == []
    with pytest.raises(IndexError, match="out of range"):
        sharded.group_rows([0, len(single)])
