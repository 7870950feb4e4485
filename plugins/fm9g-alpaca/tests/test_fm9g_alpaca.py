"""fm9g-alpaca: installed through its entry point; converts Alpaca records; prepare end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Adapter, Skipped
from fm9g.prepare.prepare import prepare
from fm9g_alpaca import AlpacaAdapter


def test_registered_through_the_entry_point() -> None:
    info = registry().info("adapter", "alpaca")
    assert info.distribution == "fm9g-alpaca" and info.version == "0.1.0"
    assert isinstance(info.obj, Adapter) and info.obj.input_kind == "json"


@pytest.mark.parametrize("item,expected", [
    ({"instruction": "翻译", "input": "cat", "output": "猫"}, {"input": "翻译\ncat", "output": "猫"}),
    ({"instruction": "写诗", "input": "", "output": "床前明月光"}, {"input": "写诗", "output": "床前明月光"}),
    ({"instruction": "写诗", "input": "  ", "output": "x"}, {"input": "写诗", "output": "x"}),
    ({"instruction": "hi", "output": "hello"}, {"input": "hi", "output": "hello"}),
    ({"instruction": "hi", "input": None, "output": "hello"}, {"input": "hi", "output": "hello"}),
    ({"instruction": "hi", "input": "x"}, Skipped("missing_output")),
    ({"input": "x", "output": "y"}, Skipped("missing_instruction")),
    ({"instruction": 1, "output": "y"}, Skipped("instruction_not_string")),
    ({"instruction": "a", "input": 5, "output": "y"}, Skipped("input_not_string")),
    ({"instruction": "", "input": "", "output": " "}, Skipped("empty_record")),
])
def test_convert(item: dict, expected) -> None:
    assert AlpacaAdapter.convert(item) == expected


def test_separator_option() -> None:
    adapter = registry().get("adapter", "alpaca")
    options = validate_options(adapter, {"separator": "\n\n"}, where="test")
    assert list(adapter.records([{"instruction": "a", "input": "b", "output": "c"}], options)) == [
        {"input": "a\n\nb", "output": "c"}]


def test_prepare_alpaca_file(tmp_path: Path) -> None:
    rows = [{"instruction": f"指令{i}", "input": "" if i % 2 else f"输入{i}", "output": f"输出{i}"} for i in range(40)]
    rows.append({"instruction": "no output"})
    raw = tmp_path / "alpaca_zh.json"
    raw.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    result = prepare(raw, tmp_path / "out", "alpaca", test_size=0.1, seed=3014, progress=False)
    assert result.report["items"] == 41 and result.report["dropped"] == {"missing_output": 1}
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [json.loads(x) for x in (tmp_path / "out" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) + len(test) == 40 and len(test) in (4, 5)
    assert {"input": "指令0\n输入0", "output": "输出0"} in train + test
