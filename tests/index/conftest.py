"""Fixtures for the index tests: small record sets and tiny-corpus JSONL files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def records() -> list[dict]:
    """Mixed Chinese/English records, one with an extra field and one with an empty input."""
    return [
        {"input": "保持健康的三个提示。", "output": "以下是保持健康的三个提示：\n\n1. 保持身体活动。"},
        {"input": "", "output": "中国的首都是北京。"},
        {"input": "Translate: cat", "output": "猫", "source": "dict"},
        {"input": "What is 2+2?", "output": "4 is the answer, obviously."},
        {"input": "引号\"和\\反斜杠", "output": "emoji 😀 and tab\t"},
    ]


@pytest.fixture(scope="session")
def pretrain_jsonl(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus's pretrain.txt as the seed's convert_txt2jsonl.py writes it."""
    out = tmp_path_factory.mktemp("pretrain") / "pretrain.jsonl"
    with open(tiny_corpus / "pretrain.txt", encoding="utf-8") as fin, open(out, "w", encoding="utf-8") as fout:
        for line in fin:
            if line.strip() == "":
                continue
            fout.write(json.dumps({"input": "", "output": line.strip()}, ensure_ascii=False) + "\n")
    return out
