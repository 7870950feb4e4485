"""fm9g index: seed-compatible output, token counts, statistics, workers, options."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import run_fm9g
from index_helpers import seed_index_text, seed_read_all, seed_write_dir, write_jsonl

from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import schema_problems
from fm9g.core.text import is_chinese
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.format import truncate_sample
from fm9g.index.reader import IndexedDataset, checksum
from fm9g.tokenizers import load_tokenizer


def test_cli_builds_seed_compatible_directory(tmp_path: Path, records: list[dict]) -> None:
    (tmp_path / "in").mkdir()
    source = write_jsonl(tmp_path / "in" / "records.jsonl", records)
    result = run_fm9g("index", "--input", str(source), "--output", str(tmp_path / "idx"), "--tokenizer", "byte",
                      "--language", "zh", check=True)
    assert "indexed 5 lines" in result.stdout
    out = tmp_path / "idx"
    # the seed's four files, plus the marker that lets --force replace what fm9g wrote
    assert sorted(p.name for p in out.iterdir()) == [".fm9g-output", "data.jsonl", "index", "index.h5", "meta.json"]
    assert (out / "data.jsonl").read_bytes() == source.read_bytes()
    assert (out / "index").read_bytes() == seed_index_text(out / "data.jsonl")
    assert seed_read_all(out) == records
    with h5py.File(out / "index.h5") as h5:
        assert h5["index"].dtype == np.int64 and h5["index"].shape == (6,)
        assert h5["tokens"].dtype == np.int32 and h5["tokens"].shape == (5, 2)
        assert h5.attrs["tokenizer"] == "byte" and h5.attrs["format_version"] == 1
        expected = [[len(r["input"].encode()), len(r["output"].encode())] for r in records]
        assert h5["tokens"][()].tolist() == expected
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert list(meta)[:7] == ["language", "nlines", "nbytes", "length_distribute", "avg_token_per_line",
                              "hdfs_path", "data_sample"]
    assert meta["nlines"] == 5 and meta["nbytes"] == source.stat().st_size and meta["hdfs_path"] == ""
    assert meta["data_sample"] == truncate_sample(records[0])
    assert meta["tokenizer"] == "byte" and meta["tokenizer_fingerprint"] == load_tokenizer("byte").fingerprint
    assert meta["data_checksum"] == checksum(out / "data.jsonl")
    assert meta["format_version"] == 1 and meta["skipped"] == {}
    total = sum(sum(pair) for pair in expected)
    assert meta["avg_token_per_line"] == pytest.approx(total / 5)
    assert meta["length_distribute"]["less_4k"] == 5 and sum(meta["length_distribute"].values()) == 5
    assert schema_problems(meta, "meta") == []


def test_data_sample_is_truncated_like_the_seed() -> None:
    long = "以下是保持健康的三个提示：\n\n1. 保持身体活动。每天做适当的身体运动，如散步、跑步或游泳，能促进心血管健康。"
    sample = truncate_sample({"input": "短", "output": long, "tags": ["a", "b"]})
    assert sample == {"input": "短", "output": long[:50] + "...", "tags": ["a"]}


def test_tokens_match_hf_tokenizer_and_workers_do_not_change_output(
        tmp_path: Path, pretrain_jsonl: Path, hf_tokenizer_dir: Path) -> None:
    spec = f"hf:{hf_tokenizer_dir}"
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"idx{workers}"
        build_index([pretrain_jsonl], out, BuildOptions(tokenizer=spec, workers=workers, chunk_bytes=64 << 10,
                                                        progress=False))
        outputs.append(out)
    for name in ("data.jsonl", "index", "meta.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    ds = IndexedDataset(outputs[1])
    tokenizer = load_tokenizer(spec)
    lines = pretrain_jsonl.read_text(encoding="utf-8").splitlines()
    assert len(ds) == len(lines)
    picks = [0, 1, len(ds) // 2, len(ds) - 1]
    for i in picks:
        record = json.loads(lines[i])
        assert ds[i] == record
        assert ds.token_counts[i].tolist() == [0, len(tokenizer.encode(record["output"]))]
    assert ds.tokenizer_spec == spec
    totals = ds.token_counts.sum(axis=1)
    assert ds.meta["avg_token_per_line"] == pytest.approx(totals.mean())
    assert ds.meta["length_distribute"]["less_4k"] == int((totals < 4000).sum())
    assert ds.meta["length_distribute"]["4k-8k"] == int(((totals >= 4000) & (totals < 8000)).sum())


def test_without_tokenizer_uses_the_seed_estimate(tmp_path: Path, records: list[dict]) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", records)
    for language in ("zh", "en"):
        out = tmp_path / language
        build_index([source], out, BuildOptions(language=language, workers=1, progress=False))
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        if language == "zh":
            expected = [0.7 * (len(r["input"]) + len(r["output"])) for r in records]
        else:
            expected = [1.5 * (len((r["input"] + r["output"]).split(" "))) for r in records]
        assert meta["avg_token_per_line"] == pytest.approx(sum(expected) / len(records))
        assert meta["tokenizer"] is None and meta["token_count_method"] == "seed-estimate"
        with h5py.File(out / "index.h5") as h5:
            assert "tokens" not in h5
        assert IndexedDataset(out).token_counts is None


def test_language_is_detected_when_not_given(tmp_path: Path) -> None:
    zh = write_jsonl(tmp_path / "zh.jsonl", [{"input": "", "output": "中文的句子很长很长"}] * 3)
    en = write_jsonl(tmp_path / "en.jsonl", [{"input": "", "output": "an English sentence"}] * 3)
    build_index([zh], tmp_path / "zh_idx", BuildOptions(workers=1, progress=False))
    build_index([en], tmp_path / "en_idx", BuildOptions(workers=1, progress=False))
    assert IndexedDataset(tmp_path / "zh_idx").meta["language"] == "zh"
    assert IndexedDataset(tmp_path / "en_idx").meta["language"] == "en"
    assert is_chinese("中文字a") and not is_chinese("中文ab") and not is_chinese("")


def test_glob_of_several_files_concatenates_in_order(tmp_path: Path, records: list[dict]) -> None:
    (tmp_path / "parts").mkdir()
    write_jsonl(tmp_path / "parts" / "b.jsonl", records[2:])
    write_jsonl(tmp_path / "parts" / "a.jsonl", records[:2])
    build_index([str(tmp_path / "parts" / "*.jsonl")], tmp_path / "idx", BuildOptions(workers=2, progress=False))
    ds = IndexedDataset(tmp_path / "idx")
    assert [ds[i] for i in range(len(ds))] == records
    assert len(ds.meta["sources"]) == 2


def test_output_rules(tmp_path: Path, records: list[dict]) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", records)
    with pytest.raises(Fm9gError, match="directory of the input"):
        build_index([source], tmp_path, BuildOptions(force=True, progress=False))
    build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    with pytest.raises(Fm9gError, match="already exists.*--force"):
        build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    write_jsonl(source, records[:2])
    build_index([source], tmp_path / "idx", BuildOptions(workers=1, force=True, progress=False))
    assert len(IndexedDataset(tmp_path / "idx")) == 2
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(Fm9gError, match="not an indexed dataset"):
        build_index([source], precious, BuildOptions(force=True, progress=False))
    assert (precious / "notes.txt").read_text() == "keep me"
    (precious / "meta.json").write_text("{}")  # one index-like name among the user's files is not an index
    with pytest.raises(Fm9gError, match=r"holds more than an index \(notes.txt\)"):
        build_index([source], precious, BuildOptions(force=True, progress=False))
    assert (precious / "notes.txt").read_text() == "keep me"
    seed = seed_write_dir(tmp_path / "seed", records)  # the seed's own index, without fm9g's marker
    build_index([source], seed, BuildOptions(workers=1, force=True, progress=False))
    assert len(IndexedDataset(seed)) == 2
    with pytest.raises(Fm9gError, match="no such file"):
        build_index([tmp_path / "missing*.jsonl"], tmp_path / "x", BuildOptions(progress=False))
    assert not [p for p in tmp_path.iterdir() if ".fm9g-tmp-" in p.name]


def test_force_never_replaces_the_current_directory(tmp_path: Path, records: list[dict],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", records)
    build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    monkeypatch.chdir(tmp_path / "idx")
    with pytest.raises(Fm9gError, match="holds the current or home directory"):
        build_index([source], tmp_path / "idx", BuildOptions(workers=1, force=True, progress=False))
    assert len(IndexedDataset(tmp_path / "idx")) == len(records)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = run_fm9g("index", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.jsonl" in lines[0] and "no such file" in lines[0]
