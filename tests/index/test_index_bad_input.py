"""fm9g index on bad input: every bad line counted by reason (or a clear error), index still exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_fm9g
from index_helpers import seed_index_text

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.reader import IndexedDataset

GOOD = {"input": "问", "output": "答"}


def _line(record: object) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def _build(tmp_path: Path, content: bytes, **options) -> IndexedDataset:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    options.setdefault("workers", 1)
    build_index([source], tmp_path / "idx", BuildOptions(progress=False, **options))
    ds = IndexedDataset(tmp_path / "idx")
    ds.verify()
    assert (tmp_path / "idx" / "index").read_bytes() == seed_index_text(tmp_path / "idx" / "data.jsonl")
    return ds


BAD_LINES = {
    "invalid_json": b'{"input": "x", "output": \n',
    "invalid_utf8": b'{"input": "", "output": "\xff\xfe"}\n',
    "not_an_object": b'["input", "output"]\n',
    "missing_output": _line({"input": "only input"}),
    "missing_input": _line({"output": "only output"}),
    "output_not_string": _line({"input": "", "output": 42}),
    "input_not_string": _line({"input": ["a"], "output": "x"}),
    "blank_line": b"   \t\n",
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_each_bad_line_is_skipped_and_counted(tmp_path: Path, reason: str) -> None:
    content = _line(GOOD) + BAD_LINES[reason] + _line({"input": "", "output": "last"})
    ds = _build(tmp_path, content)
    assert len(ds) == 2 and ds[0] == GOOD and ds[1]["output"] == "last"
    assert ds.meta["skipped"] == {reason: 1}
    assert (tmp_path / "idx" / "data.jsonl").read_bytes() == _line(GOOD) + _line({"input": "", "output": "last"})


@pytest.mark.parametrize("reason", ["invalid_json", "output_not_string"])
def test_strict_stops_at_the_first_bad_line(tmp_path: Path, reason: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(_line(GOOD) * 3 + BAD_LINES[reason] + _line(GOOD))
    with pytest.raises(Fm9gError, match=f"in.jsonl:4.*{reason}"):
        build_index([source], tmp_path / "idx", BuildOptions(strict=True, workers=2, chunk_bytes=8, progress=False))
    assert not (tmp_path / "idx").exists()
    assert not [p for p in tmp_path.iterdir() if ".fm9g-tmp-" in p.name]


def test_lone_surrogate_is_invalid(tmp_path: Path) -> None:
    ds = _build(tmp_path, _line(GOOD) + b'{"input": "", "output": "\\ud800"}\n')
    assert len(ds) == 1 and ds.meta["skipped"] == {"invalid_json": 1}


def test_bom_crlf_and_missing_final_newline_are_normalized(tmp_path: Path) -> None:
    records = [GOOD, {"input": "a", "output": "b"}, {"input": "", "output": "c"}]
    content = b"\xef\xbb\xbf" + b"".join(_line(r).replace(b"\n", b"\r\n") for r in records)
    ds = _build(tmp_path, content.removesuffix(b"\r\n"))
    assert [ds[i] for i in range(3)] == records
    assert b"\r" not in (tmp_path / "idx" / "data.jsonl").read_bytes()
    assert ds.meta["normalized"] == {"bom_removed": 1, "crlf_lines": 2, "final_newline_added": 1}
    assert ds.meta["skipped"] == {}


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_input_is_an_error(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    with pytest.raises(Fm9gError, match="empty|no valid records"):
        build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    assert not (tmp_path / "idx").exists()


def test_all_bad_lines_is_an_error_listing_reasons(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(BAD_LINES["invalid_json"] * 2 + BAD_LINES["missing_output"])
    with pytest.raises(Fm9gError, match=r"no valid records \(skipped: invalid_json 2, missing_output 1; first at .*in.jsonl:1"):
        build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))


@pytest.mark.parametrize("content,kind", [
    (json.dumps([GOOD, GOOD], indent=2).encode(), "JSON array"),
    (json.dumps([GOOD, GOOD]).encode(), "JSON array"),
    (json.dumps(GOOD, indent=2).encode(), "pretty-printed"),
])
def test_json_that_is_not_json_lines_is_a_clear_error(tmp_path: Path, content: bytes, kind: str) -> None:
    source = tmp_path / "in.json"
    source.write_bytes(content)
    result = run_fm9g("index", "--input", str(source), "--output", str(tmp_path / "idx"))
    assert result.returncode == 2
    assert kind in result.stderr and "fm9g prepare --adapter jsonl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ten_megabyte_line(tmp_path: Path) -> None:
    big = {"input": "", "output": "长" * ((10 << 20) // 3) + "x" * 64}
    content = _line(GOOD) + _line(big) + _line(GOOD)
    assert len(_line(big)) > 10 << 20
    ds = _build(tmp_path, content, workers=2, chunk_bytes=1 << 20, tokenizer="byte")
    assert len(ds) == 3 and ds[1] == big
    assert ds.token_counts[1].tolist() == [0, len(big["output"].encode())]
    assert ds.meta["length_distribute"]["more_256k"] == 1


def test_line_limit_skips_overlong_lines(tmp_path: Path) -> None:
    content = _line(GOOD) + _line({"input": "", "output": "y" * 5000}) + _line(GOOD)
    ds = _build(tmp_path, content, max_line_bytes=4096)
    assert len(ds) == 2 and ds.meta["skipped"] == {"line_too_long": 1}


def test_many_bad_lines_across_chunks_and_workers(tmp_path: Path) -> None:
    lines = []
    expected = []
    for i in range(3000):
        if i % 7 == 3:
            lines.append(BAD_LINES["invalid_json"])
        elif i % 11 == 5:
            lines.append(BAD_LINES["output_not_string"])
        else:
            record = {"input": f"q{i}", "output": "答" * (i % 50)}
            lines.append(_line(record))
            expected.append(record)
    ds = _build(tmp_path, b"".join(lines), workers=2, chunk_bytes=4096, tokenizer="byte")
    assert len(ds) == len(expected)
    assert [ds[i] for i in (0, 1, len(ds) // 3, len(ds) - 1)] == [expected[i] for i in (0, 1, len(ds) // 3, -1)]
    bad_json = sum(1 for i in range(3000) if i % 7 == 3)
    assert ds.meta["skipped"] == {"invalid_json": bad_json, "output_not_string": 3000 - bad_json - len(expected)}
