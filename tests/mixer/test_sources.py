"""The stream's bulk record reader: orjson on raw lines, the index reader's own path for the rest."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer_helpers import write_seed_dataset
from fm9g.core.errors import Fm9gError
from fm9g.index.reader import IndexedDataset
from fm9g.mixer.sources import read_records


def write_lines(directory: Path, lines: list[bytes]) -> IndexedDataset:
    """A seed-format dataset whose data.jsonl holds exactly ``lines`` (valid JSON or not)."""
    write_seed_dataset(directory, [{"output": "placeholder"}])
    data = b"".join(line + b"\n" for line in lines)
    (directory / "data.jsonl").write_bytes(data)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    (directory / "index").write_text("".join(f"{offset}\n" for offset in offsets))
    (directory / "meta.json").write_text(f'{{"nlines": {len(lines)}, "nbytes": {len(data)}}}')
    return IndexedDataset(directory)


def test_read_records_equals_the_reader_in_any_order(tmp_path: Path):
    records = [{"input": f"q{i}", "output": "é" * i, "n": i, "f": i / 3, "nested": {"a": [i, None, True]}}
               for i in range(20)]
    dataset = IndexedDataset(write_seed_dataset(tmp_path / "d", records))
    rows = [7, 0, 19, 7, 3]
    assert read_records(dataset, rows) == [dataset[row] for row in rows] == [records[row] for row in rows]


def test_lines_orjson_rejects_but_json_accepts_go_through_the_reader(tmp_path: Path):
    lines = [b'{"output": "ok"}', b'{"output": "x", "score": NaN}', b'{"output": "big", "n": 123456789012345678901234567890}',
             b'\xef\xbb\xbf{"output": "bom"}', b'{"output": "deep", "d": [{"v": -98765432109876543210}]}',
             b'{"output": "lone \\ud800 surrogate"}', b'{"output": "float", "f": 1e300, "g": 0.1}']
    dataset = write_lines(tmp_path / "d", lines)
    got = read_records(dataset, list(range(len(lines))))
    assert got[0] == {"output": "ok"} and math.isnan(got[1]["score"])
    assert got[2]["n"] == 123456789012345678901234567890 and got[3] == {"output": "bom"}
    assert got[4]["d"][0]["v"] == -98765432109876543210 and got[5]["output"] == "lone \ud800 surrogate"
    assert got[6] == {"output": "float", "f": 1e300, "g": 0.1}
    assert got[2:] == [dataset[row] for row in range(2, len(lines))]


def test_a_broken_line_raises_the_readers_error(tmp_path: Path):
    dataset = write_lines(tmp_path / "d", [b'{"output": "ok"}', b'{"output": "unterminated'])
    with pytest.raises(Fm9gError, match="not valid JSON") as error:
        read_records(dataset, [0, 1])
    assert "data.jsonl:2" in str(error.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), min_size=1, max_size=8),
       st.booleans())
def test_read_records_equals_json_on_arbitrary_records(records, ascii_only):
    """Whatever the record holds (huge integers, infinities, escapes, any text), the fast reader
    returns exactly what the index reader's ``json`` does."""
    with tempfile.TemporaryDirectory() as root:
        directory = Path(root) / "d"
        lines = [json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") for record in records]
        dataset = write_lines(directory, lines)
        rows = list(range(len(records)))[::-1]
        assert read_records(dataset, rows) == [dataset[row] for row in rows]
