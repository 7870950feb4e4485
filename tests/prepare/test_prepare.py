"""fm9g prepare: the seed's conversions byte for byte, the seed's split, reports, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_fm9g

from fm9g.cli import main
from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed
from fm9g.prepare.prepare import parse_split, prepare, split_indices


def _seed_txt2jsonl(text_path: Path) -> bytes:
    """The seed's convert_txt2jsonl.py (``cat pretrain.txt | python convert_txt2jsonl.py``)."""
    out = []
    with open(text_path, encoding="utf-8") as stdin:
        for line in stdin:
            if line.strip() == "":
                continue
            out.append(json.dumps({"input": "", "output": line.strip()}, ensure_ascii=False) + "\n")
    return "".join(out).encode()


def test_txt_matches_the_seed_script(tmp_path: Path, tiny_corpus: Path) -> None:
    result = run_fm9g("prepare", "--adapter", "txt", "--input", str(tiny_corpus / "pretrain.txt"),
                      "--output", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == _seed_txt2jsonl(tiny_corpus / "pretrain.txt")
    assert not (tmp_path / "out" / "test.jsonl").exists()
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["dropped"] == {"blank_line": report["items"] - report["kept"]} and report["dropped"]["blank_line"] > 0
    assert "blank_line" in result.stderr and f"prepared {report['kept']:,}" in result.stdout


def _seed_split(n: int, test_size: float, seed: int) -> tuple[list[int], list[int]]:
    """datasets.Dataset.train_test_split(test_size, seed) restated from its source."""
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test:n_test + n_train].tolist(), permutation[:n_test].tolist()


@pytest.mark.parametrize("n,test_size,seed", [(28, 0.05, 3014), (1000, 0.1, 7), (3, 0.5, 0)])
def test_split_follows_datasets_train_test_split(n: int, test_size: float, seed: int) -> None:
    train, test = split_indices(n, test_size, seed)
    assert (train.tolist(), test.tolist()) == _seed_split(n, test_size, seed)
    assert sorted(train.tolist() + test.tolist()) == list(range(n))


def test_split_matches_real_datasets_library(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": f"第{i}题", "input": "", "output": str(i)} for i in range(57)]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    split = datasets.Dataset.from_list(rows).train_test_split(test_size=0.05, seed=3014)
    prepare(raw, tmp_path / "out", "jsonl", {"map": {"input": "instruction"}}, test_size=0.05, seed=3014,
            progress=False)
    for name in ("train", "test"):
        got = [json.loads(line)["output"] for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]
        assert got == list(split[name]["output"])


def test_jsonl_map_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "qa.jsonl"
    rows = [{"question": "q1", "answer": "a1", "id": 1}, {"question": "q2", "answer": 2}, {"question": "q3"},
            [1, 2], {"question": "q5", "answer": "a5"}]
    raw.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    assert main(["prepare", "--adapter", "jsonl", "--input", str(raw), "--output", str(tmp_path / "o"),
                 "--map", "input=question,output=answer"]) == 0
    lines = (tmp_path / "o" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"id": 1, "input": "q1", "output": "a1"},
                                                   {"input": "q5", "output": "a5"}]
    report = json.loads((tmp_path / "o" / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["items"] == 5 and report["kept"] == 2
    assert report["dropped"] == {"invalid_json": 1, "missing_output": 1, "not_an_object": 1, "output_not_string": 1}
    assert report["options"] == {"map": {"input": "question", "output": "answer"}, "input_default": None}
    assert "qa.jsonl:6" in capsys.readouterr().err


def test_jsonl_where_an_array_was_expected_and_vice_versa(tmp_path: Path) -> None:
    rows = [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}]
    as_lines = tmp_path / "data.json"
    as_lines.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    as_array = tmp_path / "data.jsonl"
    as_array.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    for raw in (as_lines, as_array):
        out = tmp_path / f"o_{raw.suffix[1:]}"
        prepare(raw, out, "jsonl", progress=False)
        assert [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()] == rows


def test_options_are_validated_and_unknown_adapters_suggested(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "r.jsonl"
    raw.write_text('{"input": "", "output": "x"}\n', encoding="utf-8")
    with pytest.raises(ValidationFailed, match="map"):
        prepare(raw, tmp_path / "o", "jsonl", {"map": {"prompt": "q"}}, progress=False)
    with pytest.raises(UnknownName, match="did you mean 'jsonl'"):
        prepare(raw, tmp_path / "o", "jsnl", progress=False)
    assert main(["prepare", "--adapter", "txt", "--input", str(raw), "--output", str(tmp_path / "o"),
                 "--option", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_existing_outputs_need_force_and_failures_leave_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "r.txt"
    raw.write_text("one\ntwo\n", encoding="utf-8")
    prepare(raw, tmp_path / "o", "txt", progress=False)
    with pytest.raises(Fm9gError, match="already exists"):
        prepare(raw, tmp_path / "o", "txt", progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": "", "output": "x"}, {"input": ', encoding="utf-8")
    with pytest.raises(Fm9gError, match="bad.json:1"):
        prepare(bad, tmp_path / "o", "jsonl", force=True, progress=False)
    assert (tmp_path / "o" / "train.jsonl").read_text() == '{"input": "", "output": "one"}\n{"input": "", "output": "two"}\n'
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".fm9g-output", "prepare_report.json", "train.jsonl"]
    assert not [p for p in tmp_path.iterdir() if ".fm9g-tmp-" in p.name]


@pytest.mark.parametrize("text,expected", [("test=0.05", 0.05), ("0.2", 0.2), ("test=500", 500)])
def test_parse_split(text: str, expected: float) -> None:
    assert parse_split(text) == expected


@pytest.mark.parametrize("text", ["test=1.5", "train=0.9", "test=abc", "test=0"])
def test_parse_split_rejects(text: str) -> None:
    with pytest.raises(Fm9gError):
        parse_split(text)


def test_split_that_leaves_no_training_data(tmp_path: Path) -> None:
    raw = tmp_path / "r.txt"
    raw.write_text("one\n", encoding="utf-8")
    with pytest.raises(Fm9gError, match="no training records"):
        prepare(raw, tmp_path / "o", "txt", test_size=0.5, progress=False)


def test_empty_input(tmp_path: Path) -> None:
    raw = tmp_path / "empty.json"
    raw.write_bytes(b"")
    with pytest.raises(Fm9gError, match="no items"):
        prepare(raw, tmp_path / "o", "jsonl", progress=False)
