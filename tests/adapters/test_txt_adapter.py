"""The built-in txt adapter: the seed's convert_txt2jsonl, registered as a plugin."""

from __future__ import annotations

from fm9g.core.plugins import registry
from fm9g.core.protocols import Adapter, Skipped


def test_registered_with_schema() -> None:
    info = registry().info("adapter", "txt")
    assert info.distribution == "fm9g" and isinstance(info.obj, Adapter) and info.obj.input_kind == "text"
    assert info.obj.options_schema["type"] == "object"


def test_lines_become_records_and_blank_lines_are_skipped() -> None:
    adapter = registry().get("adapter", "txt")
    lines = ["  中国的首都是北京。 ", "", " \t", "\u3000\u3000全角缩进", "plain"]
    results = list(adapter.records(lines, {}))
    assert results == [
        {"input": "", "output": "中国的首都是北京。"},
        Skipped("blank_line"),
        Skipped("blank_line"),
        {"input": "", "output": "全角缩进"},
        {"input": "", "output": "plain"},
    ]
