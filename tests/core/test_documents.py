"""JSON and YAML config documents: the same data, YAML 1.2 scalars, and errors that name the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fm9g.core.documents import problem_path, read_document
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.core.schemas import load_schema


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_json_give_the_same_data(tmp_path: Path) -> None:
    document = {"seed": 42, "lr": 1e-4, "ratio": 0.5, "flag": True, "none": None, "name": "no",
                "when": "2024-01-01", "list": [1, -2, 3.0e3], "nested": {"a": {"b": "x"}}}
    yaml_text = ("seed: 42\nlr: 1e-4\nratio: .5\nflag: true\nnone: null\nname: no\nwhen: 2024-01-01\n"
                 "list: [1, -2, 3.0e3]\nnested:\n  a:\n    b: x\n")
    from_yaml = read_document(_write(tmp_path / "c.yaml", yaml_text))
    from_json = read_document(_write(tmp_path / "c.json", json.dumps(document)))
    assert from_yaml.format == "yaml" and from_json.format == "json"
    assert from_yaml.data == from_json.data == document
    assert type(from_yaml.data["lr"]) is float and type(from_yaml.data["seed"]) is int  # PyYAML's 1.1 says '1e-4'
    assert read_document(_write(tmp_path / "c.YML", "a: [x]\n")).data == {"a": ["x"]}


def test_anchors_and_merge_keys_resolve_as_yaml_says(tmp_path: Path) -> None:
    text = "base: &base {lr: 0.1, seed: 1}\nrun:\n  <<: *base\n  seed: 2\n"
    document = read_document(_write(tmp_path / "a.yaml", text))
    assert document.data["run"] == {"lr": 0.1, "seed": 2}
    assert document.line(("run", "seed")) == 4 and document.line(("base",)) == 1


@pytest.mark.parametrize(("text", "where", "message"), [
    ("a: 1\nb: [1,\n", ":3:1", "invalid YAML"),
    ("lr: 1\nseed: 2\nlr: 3\n", ":3:1", "duplicate key 'lr' (first at line 1)"),
    ("x:\n  lr: .inf\n", ":2:7", ".inf is not a finite number"),
    ("lr: 1e999\n", ":1:5", "1e999 is not a finite number"),
    ("a: !!binary aGVsbG8=\n", ":1:4", "a !!binary value (bytes) has no JSON form"),
    ("1: x\n", ":1:1", "the key '1' is not a string"),
    ("a: &x [*x]\n", ":1:4", "recursive alias"),
    ("--- 1\n--- 2\n", ":2:1", "invalid YAML"),
])
def test_yaml_errors_name_file_line_and_column(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(Fm9gError) as caught:
        read_document(path)
    assert caught.value.where == f"{path}{where}"
    assert message in caught.value.message


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(Fm9gError, match="empty file, expected a YAML document"):
        read_document(_write(tmp_path / "empty.yaml", "# only a comment\n"))
    with pytest.raises(Fm9gError, match="file not found"):
        read_document(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes("a: é\n".encode("latin-1"))
    with pytest.raises(Fm9gError, match="not UTF-8"):
        read_document(tmp_path / "latin1.yaml")
    with pytest.raises(Fm9gError, match="invalid JSON") as caught:
        read_document(_write(tmp_path / "c.json", '{\n  "a": 1,\n}\n'))
    assert caught.value.where == f"{tmp_path / 'c.json'}:3:1"


def test_problems_get_the_line_of_their_json_path(tmp_path: Path) -> None:
    for name, text in (("m.yaml", "datasets:\n  - task_name: a\n    abs_weight: -1\n  - {task_name: b}\nseed: x\n"),
                       ("m.json", '{"datasets": [\n  {"task_name": "a",\n   "abs_weight": -1},\n'
                                  '  {"task_name": "b"}],\n "seed": "x"}\n')):
        document = read_document(_write(tmp_path / name, text))
        problems = ["$.datasets[0].abs_weight: -1 is less than the minimum of 0", "$.datasets[1]: needs 'path'",
                    "$.seed: 'x' is not of type 'integer'", "$.missing: not in the file", "no path at all"]
        located = document.locate(ValidationFailed(document.source, problems))
        assert located.lines == [3, 4, 5, None, None]
        assert str(located).splitlines()[0] == f"{document.source}:3: {problems[0]}"
        assert str(located).splitlines()[-1] == f"{document.source}: no path at all"
        other = ValidationFailed("elsewhere.json", problems)
        assert document.locate(other) is other  # about another file: no lines of this one


def test_an_overridden_key_has_no_line_of_the_file(tmp_path: Path) -> None:
    document = read_document(_write(tmp_path / "t.yaml", "model:\n  preset: x\nlr: 1\n"))
    document.forget(("model",))
    assert document.line(("model", "preset")) is None and document.line(("lr",)) == 3


def test_problem_paths_parse_every_form_the_messages_use() -> None:
    assert problem_path("$.datasets[10].transform.options: bad") == ("datasets", 10, "transform", "options")
    assert problem_path('$.length_distribute["4k-8k"]: -1') == ("length_distribute", "4k-8k")
    assert problem_path("$.learning-rate: unknown key") == ("learning-rate",)
    assert problem_path("$: must be an object") == ()
    assert problem_path("options.x: unknown") is None


def test_schema_command_prints_json_or_yaml() -> None:
    for fmt, parse in (("json", json.loads), ("yaml", yaml.safe_load)):
        result = subprocess.run([sys.executable, "-m", "fm9g", "schema", "train", "--format", fmt],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert parse(result.stdout) == load_schema("train")
