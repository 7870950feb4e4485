"""Streaming JSON readers: arrays parsed value by value in a small window, JSONL with bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm9g.core.errors import Fm9gError
from fm9g.prepare import raw_input
from fm9g.prepare.raw_input import ReadFailure, detect_layout, iter_json, iter_text_lines

VALUES = [{"Question": f"问题{i}" * (i % 7 + 1), "n": i, "x": [1.5, None, True], "s": "a\"b\\c"} for i in range(300)]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force 64-byte reads so values straddle block boundaries everywhere."""
    monkeypatch.setattr(raw_input, "_BLOCK", 64)


@pytest.mark.parametrize("indent", [None, 2])
def test_array_streams_in_small_blocks(tmp_path: Path, small_blocks: None, indent: int | None) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(VALUES, ensure_ascii=False, indent=indent), encoding="utf-8")
    assert detect_layout(path) == "array"
    assert list(iter_json(path)) == VALUES


def test_array_of_numbers_split_across_blocks(tmp_path: Path, small_blocks: None) -> None:
    path = tmp_path / "n.json"
    numbers = [123456789012345, -2.5e-10, 7, True, None, "x"] * 40
    path.write_text(json.dumps(numbers), encoding="utf-8")
    assert list(iter_json(path)) == numbers


def test_window_stays_small_for_a_big_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw_input, "_BLOCK", 4096)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(VALUES * 20, ensure_ascii=False), encoding="utf-8")
    seen = []
    original = raw_input._Window.fill

    def spy(window):
        result = original(window)
        seen.append(len(window.text))
        return result

    monkeypatch.setattr(raw_input._Window, "fill", spy)
    assert sum(1 for _ in iter_json(path)) == len(VALUES) * 20
    assert max(seen) < 3 * 4096 < path.stat().st_size / 10


def test_single_and_concatenated_objects_and_jsonl(tmp_path: Path, small_blocks: None) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps(VALUES[0], indent=2, ensure_ascii=False), encoding="utf-8")
    assert detect_layout(single) == "concatenated" and list(iter_json(single)) == [VALUES[0]]
    several = tmp_path / "several.json"
    several.write_text("\n".join(json.dumps(v, indent=2) for v in VALUES[:5]), encoding="utf-8")
    assert list(iter_json(several)) == VALUES[:5]
    lines = tmp_path / "l.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(v).encode() + b"\r\n" for v in VALUES[:5]))
    assert detect_layout(lines) == "lines" and list(iter_json(lines)) == VALUES[:5]


def test_jsonl_bad_lines_become_failures(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n\n{"a": "\xff"}\n{"a": 2}\n')
    items = list(iter_json(path))
    assert items[0] == {"a": 1} and items[-1] == {"a": 2}
    assert [(f.reason, f.where) for f in items[1:3]] == [("invalid_json", f"{path}:2"), ("invalid_utf8", f"{path}:4")]


@pytest.mark.parametrize("text,message,where", [
    ('[{"a": 1},\n {"a": 2,}]', "invalid JSON", ":2:"),
    ('[{"a": 1}\n {"a": 2}]', "expected ',' or ']'", ":2:2"),
    ('[{"a": 1}, {"a": 2}', "not closed", ""),
    ('[{"a": 1}] [2]', "extra data", ":1:12"),
    ('[{"a": "unterminated}]', "invalid JSON", ":1:"),
])
def test_array_syntax_errors_name_line_and_column(tmp_path: Path, small_blocks: None, text: str, message: str,
                                                  where: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(Fm9gError, match=message) as caught:
        list(iter_json(path))
    assert str(path) + where in str(caught.value)


def test_invalid_utf8_in_array_is_an_error_with_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"a": "ok"}, {"a": "\xff"}]')
    with pytest.raises(Fm9gError, match="not valid UTF-8 at byte 21"):
        list(iter_json(path))


def test_oversized_value_is_reported(tmp_path: Path, small_blocks: None) -> None:
    path = tmp_path / "huge.json"
    path.write_text(json.dumps([{"a": "x" * 5000}]), encoding="utf-8")
    with pytest.raises(Fm9gError, match="longer than"):
        list(iter_json(path, max_value_bytes=1000))


def test_empty_files(tmp_path: Path) -> None:
    for content in (b"", b"  \n\n", b"\xef\xbb\xbf"):
        path = tmp_path / "e.json"
        path.write_bytes(content)
        assert detect_layout(path) == "empty" and list(iter_json(path)) == []


def test_text_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\xff\xfe\nlast")
    items = list(iter_text_lines(path))
    assert items[:2] == ["one", "two"] and items[3] == "last"
    assert isinstance(items[2], ReadFailure) and items[2].reason == "invalid_utf8"
