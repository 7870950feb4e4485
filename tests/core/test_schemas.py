"""Schema validation: every problem, with its JSON path and a specific message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed
from fm9g.core.schemas import SCHEMA_NAMES, load_schema, read_json, schema_dir, schema_problems, validate


def test_every_schema_is_a_valid_2020_12_schema() -> None:
    import jsonschema

    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert (schema_dir() / f"{name}.schema.json").is_file()


def test_examples_are_valid(any_example) -> None:
    name, document = any_example
    assert schema_problems(document, name) == []
    validate(document, name, "doc.json")


def test_seed_manifest_negative_weight(example) -> None:
    manifest = example("mix")
    manifest[1]["abs_weight"] = -0.5
    assert schema_problems(manifest, "mix") == ["$[1].abs_weight: -0.5 is less than the minimum of 0"]
    with pytest.raises(ValidationFailed) as caught:
        validate(manifest, "mix", "mix.json")
    assert str(caught.value) == "mix.json: $[1].abs_weight: -0.5 is less than the minimum of 0"


def test_all_problems_at_once_in_document_order(example) -> None:
    manifest = example("mix", 1)
    manifest["datasets"] = [dict(manifest["datasets"][1], task_name=f"t{i}") for i in range(12)]
    manifest["datasets"][11]["abs_weight"] = "heavy"
    manifest["datasets"][2]["path"] = 7
    manifest["batch_size"] = 0
    assert schema_problems(manifest, "mix") == [
        "$.batch_size: 0 is less than the minimum of 1",
        "$.datasets[2].path: 7 is not of type 'string'",
        "$.datasets[11].abs_weight: 'heavy' is not of type 'number'",
    ]


def test_any_of_reports_the_meant_alternative(example) -> None:
    manifest = example("mix", 1)
    manifest["datasets"][0]["transform"] = {"name": 3}
    assert schema_problems(manifest, "mix") == ["$.datasets[0].transform.name: 3 is not of type 'string'"]
    manifest["datasets"][0]["transform"] = {"name": "chatml", "option": {}}
    assert schema_problems(manifest, "mix") == [
        "$.datasets[0].transform.option: unknown key 'option' (did you mean 'options'? known keys: name, options)"
    ]
    manifest["datasets"][0]["transform"] = 5
    assert schema_problems(manifest, "mix") == ["$.datasets[0].transform: 5 is not of type 'string' or 'object'"]
    manifest["datasets"][0]["transform"] = ""
    assert schema_problems(manifest, "mix") == ["$.datasets[0].transform: '' should be non-empty"]


def test_train_data_needs_exactly_one_source(example) -> None:
    config = example("train")
    config["data"] = {}
    assert schema_problems(config, "train") == ["$.data: needs exactly one of 'manifest' or 'mixture'"]
    config["data"] = {"manifest": "a.json", "mixture": "m/"}
    assert schema_problems(config, "train") == [
        "$.data: has both 'manifest' and 'mixture': give exactly one of 'manifest' or 'mixture'"
    ]
    config["data"] = {"manifest": 3}
    assert schema_problems(config, "train") == ["$.data.manifest: 3 is not of type 'string'"]
    config["data"] = {"manifest": "a.json"}
    config["model"] = {"dtype": "float32"}
    assert schema_problems(config, "train") == ["$.model: needs one of 'preset' or 'hf_path'"]


def test_unknown_keys_get_did_you_mean(example) -> None:
    config = example("train")
    config["learning_rate"] = 0.1
    config["train_iter"] = 5
    problems = schema_problems(config, "train")
    assert len(problems) == 2
    assert problems[0].startswith("$.learning_rate: unknown key 'learning_rate' (known keys: ")
    assert problems[1].startswith("$.train_iter: unknown key 'train_iter' (did you mean 'train_iters'?")


def test_odd_keys_are_bracketed_and_long_values_abbreviated(example) -> None:
    meta = example("meta")
    meta["length_distribute"]["4k-8k"] = -1
    assert schema_problems(meta, "meta") == ['$.length_distribute["4k-8k"]: -1 is less than the minimum of 0']
    problems = schema_problems(example("mix"), "train")
    root = [p for p in problems if p.startswith("$: ")]
    assert root and len(root[0]) < 160 and root[0].endswith("is not of type 'object'")


def test_unknown_schema_name_suggests() -> None:
    with pytest.raises(UnknownName, match="did you mean 'train'"):
        load_schema("trian")


def test_read_json_reports_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "mix.json"
    bad.write_text('[\n  {"task_name": "a",}\n]\n', encoding="utf-8")
    with pytest.raises(Fm9gError) as caught:
        read_json(bad)
    assert caught.value.where == f"{bad}:2:21"
    with pytest.raises(Fm9gError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(Fm9gError, match="empty file"):
        read_json(tmp_path / "empty.json")
    (tmp_path / "latin1.json").write_bytes('{"a": "é"}'.encode("latin-1"))
    with pytest.raises(Fm9gError, match="not UTF-8"):
        read_json(tmp_path / "latin1.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"nlines": 1}))
    assert read_json(good) == {"nlines": 1}
