"""fm9g prepare on input it cannot use: the wrong adapter, compressed or binary files, lone
surrogates, and output directories it must not replace."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from cli_helpers import run_fm9g

from fm9g.core.atomic import OUTPUT_MARKER
from fm9g.core.errors import Fm9gError
from fm9g.core.plugins import registry
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.reader import IndexedDataset
from fm9g.prepare.prepare import prepare

ROWS = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _one_line_error(*args: str) -> str:
    result = run_fm9g("prepare", *args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fm9g prepare: error: "), result.stderr
    return lines[0].removeprefix("fm9g prepare: error: ")


def test_wrong_adapter_names_the_adapter_that_fits(tmp_path: Path) -> None:
    if not {"alpaca", "medical-o1"} <= set(registry().names("adapter")):
        pytest.skip("needs the fm9g-alpaca and fm9g-medical-o1 plugins installed")
    rows = [{"instruction": f"指令{i}", "input": "", "output": f"输出{i}"} for i in range(30)]
    raw = tmp_path / "alpaca.json"
    raw.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    line = _one_line_error("--adapter", "medical-o1", "--input", str(raw), "--output", str(tmp_path / "o"))
    assert line.startswith(f"{raw}: adapter medical-o1 kept no record of 30 items (dropped: missing_Question 30)")
    assert "the data fits adapter alpaca (kept 30 of the first 30 items) or jsonl (kept 30 of the first 30 items)" \
        in line and "rerun with --adapter alpaca" in line
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.fm9g-tmp-*"))


def test_json_adapter_on_plain_text_suggests_txt(tmp_path: Path) -> None:
    raw = tmp_path / "notes.txt"
    raw.write_text("first line\nsecond line\n", encoding="utf-8")
    with pytest.raises(Fm9gError, match=r"adapter jsonl kept no record of 2 items \(dropped: invalid_json 2\)") as caught:
        prepare(raw, tmp_path / "o", "jsonl", progress=False)
    assert "the data fits adapter txt (kept 2 of the first 2 items): rerun with --adapter txt" in caught.value.fix
    assert not (tmp_path / "o").exists()


def test_objects_no_adapter_keeps_name_their_fields(tmp_path: Path) -> None:
    raw = _jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(Fm9gError, match="kept no record of 3 items") as caught:
        prepare(raw, tmp_path / "o", "jsonl", progress=False)
    assert "fields are question, answer" in caught.value.fix and "--map input=FIELD,output=FIELD" in caught.value.fix
    assert "txt" not in caught.value.fix  # txt keeps any line, but these are JSON objects


@pytest.mark.parametrize("adapter", ["jsonl", "txt"])
def test_gzip_input_says_to_decompress(tmp_path: Path, adapter: str) -> None:
    raw = tmp_path / "data.jsonl.gz"
    raw.write_bytes(gzip.compress(b"".join(json.dumps(row).encode() + b"\n" for row in ROWS)))
    line = _one_line_error("--adapter", adapter, "--input", str(raw), "--output", str(tmp_path / "o"))
    assert line == (f"{raw}: this is a gzip-compressed file, not text or JSON (decompress it first (gunzip -k {raw}) "
                    "and pass the decompressed file to --input)")
    assert not (tmp_path / "o").exists()


def test_binary_input_is_named_binary(tmp_path: Path) -> None:
    raw = tmp_path / "blob.bin"
    raw.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(Fm9gError, match="kept no record") as caught:
        prepare(raw, tmp_path / "o", "jsonl", progress=False)
    assert "NUL bytes" in caught.value.fix and "binary" in caught.value.fix


@pytest.mark.parametrize("layout", ["lines", "array"])
def test_lone_surrogates_are_a_counted_skip(tmp_path: Path, layout: str) -> None:
    good = ['{"input": "", "output": "fine"}', '{"input": "pair", "output": "\\ud83d\\ude00"}']
    bad = ['{"input": "", "output": "lone \\ud800 high"}', '{"input": "\\udfff", "output": "lone low"}']
    items = [good[0], bad[0], good[1], bad[1]]
    raw = tmp_path / "raw.json"
    raw.write_text("\n".join(items) + "\n" if layout == "lines" else "[" + ",\n".join(items) + "]", encoding="utf-8")
    result = prepare(raw, tmp_path / "o", "jsonl", progress=False)
    assert result.report["dropped"] == {"lone_surrogate": 2} and result.report["kept"] == 2
    assert result.first_dropped["lone_surrogate"] == f"{raw} item 2"
    lines = (tmp_path / "o" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["output"] for line in lines] == ["fine", "😀"]
    build_index([tmp_path / "o" / "train.jsonl"], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    assert IndexedDataset(tmp_path / "idx").meta["skipped"] == {}


def test_force_replaces_only_directories_fm9g_wrote(tmp_path: Path) -> None:
    raw = _jsonl(tmp_path / "r.jsonl", ROWS)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(Fm9gError, match="already exists"):
        prepare(raw, precious, "jsonl", progress=False)
    with pytest.raises(Fm9gError, match=f"replaces only directories fm9g wrote.*{OUTPUT_MARKER}"):
        prepare(raw, precious, "jsonl", force=True, progress=False)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    prepare(raw, tmp_path / "empty", "jsonl", progress=False)  # an empty directory needs no --force
    assert (tmp_path / "empty" / OUTPUT_MARKER).is_file()
    prepare(raw, tmp_path / "empty", "jsonl", force=True, test_size=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [
        OUTPUT_MARKER, "prepare_report.json", "test.jsonl", "train.jsonl"]
    prepare(raw, tmp_path / "empty", "jsonl", force=True, progress=False)  # without a split: no stale test.jsonl
    assert not (tmp_path / "empty" / "test.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if ".fm9g-tmp-" in p.name]


def test_input_inside_the_output_is_refused(tmp_path: Path) -> None:
    prepare(_jsonl(tmp_path / "r.jsonl", ROWS), tmp_path / "o", "jsonl", progress=False)
    with pytest.raises(Fm9gError, match="lies inside the output directory"):
        prepare(tmp_path / "o" / "train.jsonl", tmp_path / "o", "jsonl", force=True, progress=False)
    assert len((tmp_path / "o" / "train.jsonl").read_text().splitlines()) == len(ROWS)
