"""The built-in jsonl adapter: records already in the format, with an optional field map."""

from __future__ import annotations

import pytest

from fm9g.core.errors import ValidationFailed
from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Skipped


@pytest.fixture
def adapter():
    return registry().get("adapter", "jsonl")


def _run(adapter, items, options=None):
    return list(adapter.records(items, validate_options(adapter, options, where="test")))


def test_records_pass_through_with_extra_fields(adapter) -> None:
    items = [{"input": "q", "output": "a", "meta": {"k": 1}}, {"input": "", "output": ""}]
    assert _run(adapter, items) == items


def test_map_renames_fields_and_keeps_the_rest(adapter) -> None:
    items = [{"question": "q", "answer": "a", "id": 7}]
    assert _run(adapter, items, {"map": {"input": "question", "output": "answer"}}) == [
        {"id": 7, "input": "q", "output": "a"}]


def test_input_default_for_text_only_records(adapter) -> None:
    items = [{"text": "pretraining text"}]
    assert _run(adapter, items, {"map": {"output": "text"}}) == [Skipped("missing_input", "no field 'input'")]
    assert _run(adapter, items, {"map": {"output": "text"}, "input_default": ""}) == [
        {"output": "pretraining text", "input": ""}]


@pytest.mark.parametrize("item,reason", [
    ([1, 2], "not_an_object"),
    ("text", "not_an_object"),
    ({"input": "q"}, "missing_output"),
    ({"output": "a"}, "missing_input"),
    ({"input": "q", "output": None}, "output_not_string"),
    ({"input": 3, "output": "a"}, "input_not_string"),
])
def test_bad_items_are_skipped_with_a_reason(adapter, item, reason: str) -> None:
    [result] = _run(adapter, [item])
    assert isinstance(result, Skipped) and result.reason == reason


def test_options_schema_rejects_unknown_targets_and_keys(adapter) -> None:
    with pytest.raises(ValidationFailed):
        validate_options(adapter, {"map": {"prompt": "question"}}, where="test")
    with pytest.raises(ValidationFailed):
        validate_options(adapter, {"mapping": {}}, where="test")
