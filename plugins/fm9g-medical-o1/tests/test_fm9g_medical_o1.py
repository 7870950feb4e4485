"""fm9g-medical-o1: the seed's medical-o1 conversion (fields, is_chinese filter, split), CoT option."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fm9g.core.errors import ValidationFailed
from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Skipped
from fm9g.prepare.prepare import prepare
from fm9g_medical_o1 import MedicalO1Adapter, is_chinese


def _seed_is_chinese(strs: str) -> bool:
    """The guide's is_chinese, verbatim in logic."""
    chines_count = 0
    for _char in strs:
        if "\u4e00" <= _char <= "\u9fa5":
            chines_count += 1
    return chines_count / len(strs) > 0.5


def _seed_conversion(rows: list[dict], test_size: float, seed: int) -> dict[str, bytes]:
    """The guide's prepare_data.py with datasets' train_test_split restated (ceil, default_rng permutation)."""
    n = len(rows)
    n_test = math.ceil(test_size * n)
    permutation = np.random.default_rng(seed).permutation(n)
    splits = {"test": permutation[:n_test], "train": permutation[n_test:]}
    out = {}
    for name, indices in splits.items():
        lines = []
        for i in indices:
            sample = rows[i]
            if _seed_is_chinese(sample["Question"]):
                lines.append(json.dumps({"input": sample["Question"], "output": sample["Response"]},
                                        ensure_ascii=False) + "\n")
        out[name] = "".join(lines).encode()
    return out


def test_registered_through_the_entry_point() -> None:
    info = registry().info("adapter", "medical-o1")
    assert info.distribution == "fm9g-medical-o1" and info.version == "0.1.0"


@pytest.mark.parametrize("text", ["根据以下症状判断证型", "What is the diagnosis?", "心悸 palpitations and 多汗",
                                  "中文中文abc", "中文ab", "a"])
def test_is_chinese_matches_the_seed(text: str) -> None:
    assert is_chinese(text) == _seed_is_chinese(text)


def _rows(n: int) -> list[dict]:
    """medical-o1-shaped rows whose questions range from all-English to all-Chinese."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        chinese = int(rng.integers(0, 12))
        question = "症状" * chinese + " fever" * int(rng.integers(0, 12)) + f"？{i}"
        rows.append({"Question": question, "Complex_CoT": f"思考 {i}\n\n再想想。", "Response": f"回答\"{i}\" 😀"})
    return rows


def test_reproduces_the_seed_script_byte_for_byte(tmp_path: Path) -> None:
    rows = _rows(97)
    raw = tmp_path / "medical_o1_sft_Chinese.json"
    raw.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    expected = _seed_conversion(rows, 0.05, 3014)
    result = prepare(raw, tmp_path / "out", "medical-o1", {"language": "zh"}, test_size=0.05, seed=3014,
                     progress=False)
    for name in ("train", "test"):
        assert (tmp_path / "out" / f"{name}.jsonl").read_bytes() == expected[name]
    english = sum(not _seed_is_chinese(r["Question"]) for r in rows)
    assert english > 0 and result.report["dropped"] == {"not_zh": english}


def test_language_and_cot_options() -> None:
    zh = {"Question": "头痛怎么办？", "Complex_CoT": "先想想。", "Response": "多休息。"}
    en = {"Question": "What causes a headache?", "Complex_CoT": "Think.", "Response": "Stress."}
    assert MedicalO1Adapter.convert(zh, "en") == Skipped("not_en")
    assert MedicalO1Adapter.convert(en, "zh") == Skipped("not_zh")
    assert MedicalO1Adapter.convert(en, "all") == {"input": en["Question"], "output": "Stress."}
    assert MedicalO1Adapter.convert(zh, "zh", include_cot=True) == {"input": zh["Question"],
                                                                    "output": "先想想。\n\n多休息。"}
    assert MedicalO1Adapter.convert({"Question": "q", "Response": "r"}, include_cot=True) == Skipped("missing_Complex_CoT")
    assert MedicalO1Adapter.convert({"Question": "q"}) == Skipped("missing_Response")
    assert MedicalO1Adapter.convert({"Question": 3, "Response": "r"}) == Skipped("Question_not_string")
    assert MedicalO1Adapter.convert({"Question": "", "Response": "r"}, "zh") == Skipped("not_zh")


def test_options_schema() -> None:
    adapter = registry().get("adapter", "medical-o1")
    assert validate_options(adapter, {}, where="t") == {"language": "all", "include_cot": False, "cot_separator": "\n\n"}
    with pytest.raises(ValidationFailed, match="language"):
        validate_options(adapter, {"language": "fr"}, where="t")
    with pytest.raises(ValidationFailed):
        validate_options(adapter, {"include_cot": "yes"}, where="t")


def test_an_empty_response_is_dropped_with_its_reason(tmp_path: Path) -> None:
    assert MedicalO1Adapter.convert({"Question": "q", "Response": " \n"}) == Skipped("empty_Response")
    raw = tmp_path / "medical.json"
    raw.write_text(json.dumps([{"Question": "q1", "Response": ""}, {"Question": "q2", "Response": "answer"}]))
    result = prepare(raw, tmp_path / "out", "medical-o1", {}, progress=False)
    assert result.report["kept"] == 1 and result.report["dropped"] == {"empty_Response": 1}
