"""The sharegpt and openai adapters: role mapping, kept fields, and counted skips for malformed turns."""

from __future__ import annotations

import json

import pytest

from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Skipped


def _run(name, items, options=None):
    adapter = registry().get("adapter", name)
    return list(adapter.records(items, validate_options(adapter, options, where="test")))


def test_sharegpt_maps_roles_and_keeps_the_system_and_weights() -> None:
    item = {"id": 3, "system": "be brief", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "loss_weight": 0},
        {"from": "human", "value": "again"}, {"from": "gpt", "value": "sure"}]}
    [record] = _run("sharegpt", [item])
    assert record == {"id": 3, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "weight": 0}, {"role": "user", "content": "again"},
        {"role": "assistant", "content": "sure"}]}


def test_openai_keeps_tools_and_joins_text_parts() -> None:
    item = {"tools": [{"type": "function", "function": {"name": "f"}}], "messages": [
        {"role": "developer", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"}, {"role": "assistant", "content": "done"}]}
    [record] = _run("openai", [item])
    assert record["tools"] == item["tools"]
    assert [(m["role"], m["content"]) for m in record["messages"]] == [
        ("system", "sys"), ("user", "ab"), ("assistant", ""), ("tool", "42"), ("assistant", "done")]
    assert record["messages"][2]["tool_calls"] == [{"id": "1"}]


@pytest.mark.parametrize("name,item,reason", [
    ("sharegpt", [], "not_an_object"),
    ("sharegpt", {"text": "x"}, "missing_conversations"),
    ("sharegpt", {"conversations": []}, "empty_conversation"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "x"}]}, "no_assistant_turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "y"}]},
     "content_not_string"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                    {"from": "gpt", "value": "c"}]}, "consecutive_roles"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b", "weight": 2}]},
     "bad_weight"),
    ("openai", {"messages": "hi"}, "messages_not_list"),
    ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                             {"role": "assistant", "content": "b"}]}, "misplaced_system"),
    ("openai", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                             {"role": "assistant", "content": "b"}]}, "non_text_content"),
    ("openai", {"messages": [{"role": "critic", "content": "a"}]}, "unknown_role"),
])
def test_malformed_conversations_are_counted_skips(name, item, reason) -> None:
    [result] = _run(name, [item])
    assert isinstance(result, Skipped) and result.reason == reason


def test_role_options_add_names_and_alternation_can_be_allowed() -> None:
    item = {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                              {"from": "bot", "value": "c"}]}
    [record] = _run("sharegpt", [item], {"roles": {"bot": "assistant"}, "alternate": False})
    assert [m["role"] for m in record["messages"]] == ["user", "user", "assistant"]


def test_prepare_and_index_a_sharegpt_file(tmp_path) -> None:
    from fm9g.index.builder import BuildOptions, build_index
    from fm9g.prepare.prepare import prepare

    raw = tmp_path / "chat.json"
    raw.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "answer"},
                           {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}]), encoding="utf-8")
    report = prepare(raw, tmp_path / "prepared", "sharegpt", {}, progress=False).report
    assert report["dropped"] == {"no_assistant_turn": 1}
    summary = build_index([tmp_path / "prepared" / "train.jsonl"], tmp_path / "index",
                          BuildOptions(tokenizer="byte", workers=1, progress=False))
    assert summary.meta["nlines"] == 2 and summary.meta["skipped"] == {}
    assert summary.meta["total_tokens"] == len("hiyo") + len("qanswerq2a2") + 2  # contents, newline-joined


def test_meta_counts_the_record_forms_of_a_mixed_dataset(tmp_path) -> None:
    from fm9g.core.schemas import validate
    from fm9g.index.builder import BuildOptions, build_index

    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(record) for record in [
        {"input": "q", "output": "a"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "no reply"}]}]) + "\n", encoding="utf-8")
    summary = build_index([data], tmp_path / "index", BuildOptions(workers=1, progress=False))
    assert summary.meta["record_forms"] == {"input_output": 1, "messages": 1}
    assert summary.meta["skipped"] == {"no_assistant_turn": 1}
    validate(summary.meta, "meta", "meta.json")
