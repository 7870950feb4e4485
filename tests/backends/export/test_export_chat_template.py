"""The exported tokenizer carries the chat template training rendered with and begins with BOS, so
apply_chat_template on the export gives the ids training samples begin with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fm9g.backends.export.tokenizer import training_chat_template, write_tokenizer
from fm9g.mixer.samples import build_chunk
from fm9g.mixer.transforms import TransformRef, bind_transform
from fm9g.tokenizers import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "mixer"))
from conversation_helpers import CONVERSATIONS, QWEN2_TEMPLATE, qwen2_tokenizer_dir, transformers_tokenizer  # noqa: E402


def training_src(directory: Path, transform: TransformRef, conversation) -> list[int]:
    tokenizer = load_tokenizer(f"hf:{directory}")
    chunk = build_chunk([{"messages": conversation}], np.arange(1), epoch=0, start=0, nlines=1,
                        transform=bind_transform(transform, trust_scripts=False), tokenizer=tokenizer,
                        max_length=100_000, oversize_rule="segment", base_key=0)
    return chunk.src.tolist()


@pytest.mark.parametrize("transform", ["chat_template", "chatml"])
def test_export_renders_the_training_prompt(transform: str, tmp_path: Path) -> None:
    directory = qwen2_tokenizer_dir(tmp_path / "tok", chat_template=QWEN2_TEMPLATE)
    options = {"tokenizer": f"hf:{directory}"} if transform == "chat_template" else {"system": "Be brief."}
    manifest = tmp_path / "mix.json"
    manifest.write_text(json.dumps({"version": 1, "tokenizer": f"hf:{directory}", "datasets": [
        {"task_name": "chat", "path": "idx", "abs_weight": 1, "transform": {"name": transform, "options": options}}]}))
    template = training_chat_template(manifest)
    out = tmp_path / "export"
    out.mkdir()
    note, special_ids = write_tokenizer(f"hf:{directory}", out, chat_template=template)
    assert "chat template of the training transform" in note and "beginning with BOS" in note
    exported = transformers_tokenizer(out)
    conversation = CONVERSATIONS[1]
    src = training_src(directory, TransformRef(transform, options), conversation)
    prompt = exported.apply_chat_template(conversation[:-1], tokenize=True, add_generation_prompt=True,
                                          return_dict=True)["input_ids"]
    assert src[0] == special_ids["bos_token_id"] and list(prompt) == src[:len(prompt)]
    whole = exported.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    assert list(whole)[:len(src)] == src[:len(whole)]


def test_a_manifest_without_conversation_transforms_carries_none(tmp_path: Path) -> None:
    manifest = tmp_path / "mix.json"
    manifest.write_text(json.dumps({"version": 1, "tokenizer": "byte", "datasets": [
        {"task_name": "text", "path": "idx", "abs_weight": 1, "transform": "identity"}]}))
    assert training_chat_template(manifest) is None and training_chat_template(None) is None
