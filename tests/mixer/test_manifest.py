"""Manifest loading: both forms, relative paths, meta.json statistics, every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer_helpers import numbered_records, write_seed_dataset
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.mixer.manifest import load_manifest, manifest_problems


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    for task, rows in (("medical", 12), ("alpaca", 20)):
        write_seed_dataset(tmp_path / "idx" / task, numbered_records(task, rows), meta={"avg_token_per_line": 351.0})
    return tmp_path


def seed_entry(task: str, **extra):
    return {"dataset_name": task, "task_name": task, "abs_weight": 0.5, "path": f"idx/{task}",
            "transforms": "chatml", "allow_repeat": True, **extra}


def test_seed_list_form_is_accepted_unchanged_with_default_settings(datasets):
    path = datasets / "mix.json"
    path.write_text(json.dumps([seed_entry("medical", nlines=12, ave_tokens_per_line=351, total_tokens=12 * 351 / 1e9),
                                seed_entry("alpaca", transforms="identity")]))
    manifest = load_manifest(path)
    assert manifest.form == "seed" and manifest.task_names == ["medical", "alpaca"]
    assert (manifest.seed, manifest.max_length, manifest.batch_size, manifest.tokenizer) == (42, 4096, 1, "byte")
    assert manifest.datasets[0].path == (datasets / "idx" / "medical").resolve()
    assert manifest.datasets[1].nlines == 20 and manifest.datasets[1].ave_tokens_per_line == 351.0
    assert manifest.warnings == ()
    assert manifest.with_overrides(max_length=128, seed=None).max_length == 128


def test_object_form_settings_and_transform_options(datasets):
    path = datasets / "sub" / "mix.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"seed": 7, "max_length": 256, "batch_size": 2, "datasets": [
        {"task_name": "m", "path": "../idx/medical", "abs_weight": 1,
         "transform": {"name": "chatml", "options": {"system": "Be brief."}}, "max_epochs": 2, "oversize_rule": "head"}]}))
    manifest = load_manifest(path)
    spec = manifest.datasets[0]
    assert (manifest.seed, manifest.max_length, manifest.batch_size) == (7, 256, 2)
    assert spec.transform.name == "chatml" and spec.transform.options == {"system": "Be brief."}
    assert (spec.max_epochs, spec.oversize_rule, spec.where) == (2, "head", "$.datasets[0]")


def test_every_problem_is_reported_at_once_with_json_paths(datasets):
    path = datasets / "mix.json"
    path.write_text(json.dumps([
        seed_entry("medical", abs_weight=-0.5),
        seed_entry("missing", path="idx/nowhere"),
        seed_entry("medical", transforms="chatm"),
        seed_entry("alpaca", transforms="scripts/none.py"),
    ]))
    with pytest.raises(ValidationFailed) as caught:
        load_manifest(path)
    problems = caught.value.problems
    assert "$[0].abs_weight: -0.5 is less than the minimum of 0" in problems
    assert f"$[1].path: directory does not exist: {(datasets / 'idx' / 'nowhere').resolve()}" in problems
    assert "$[2].task_name: duplicate task name 'medical' (first used at $[0])" in problems
    assert any(p.startswith("$[2].transforms: unknown transform 'chatm' (did you mean 'chatml'?") for p in problems)
    assert any(p.startswith("$[3].transforms: transform script does not exist") for p in problems)
    assert len(problems) == 5
    assert f"{path}:1: $[1].path: directory does not exist" in str(caught.value)  # JSON on one line: line 1


def test_zero_total_weight_bad_options_and_both_transform_keys(datasets):
    document = {"datasets": [
        {"task_name": "a", "path": "idx/medical", "abs_weight": 0, "transform": {"name": "chatml", "options": {"system": 3}}},
        {"task_name": "b", "path": "idx/alpaca", "abs_weight": 0, "transform": "identity", "transforms": "identity"},
    ]}
    problems = manifest_problems(document, datasets)
    assert "$.datasets[0].transform.options.system: 3 is not of type 'string'" in problems
    assert "$.datasets[1]: both 'transform' and 'transforms' are set; keep one" in problems
    assert any(p.startswith("$.datasets: the abs_weight values sum to 0") for p in problems)


def test_not_an_indexed_dataset_and_check_paths_off(datasets):
    (datasets / "plain").mkdir()
    document = [seed_entry("x", path="plain")]
    assert manifest_problems(document, datasets) == [
        f"$[0].path: not an indexed dataset (no data.jsonl): {(datasets / 'plain').resolve()} (build it with fm9g index)"]
    assert manifest_problems(document, datasets, check_paths=False) == []
    assert manifest_problems(document, None) == []


def test_meta_disagreement_warns_and_meta_wins(datasets):
    path = datasets / "mix.json"
    path.write_text(json.dumps([seed_entry("medical", nlines=17278, ave_tokens_per_line=204, total_tokens=0.0006)]))
    manifest = load_manifest(path)
    assert manifest.datasets[0].nlines == 12
    assert len(manifest.warnings) == 3
    assert manifest.warnings[0] == "$[0].nlines: the manifest says 17278 but meta.json says 12; using meta.json"
    assert manifest.warnings[1].startswith("$[0].ave_tokens_per_line: the manifest says 204 but meta.json says 351.0")


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text('[\n  {"task_name": "a",}\n]')
    with pytest.raises(Fm9gError, match=r"mix.json:2:"):
        load_manifest(path)


def test_wrong_types_are_schema_problems(datasets):
    problems = manifest_problems({"max_length": "long", "datasets": [{"task_name": 3, "path": "idx/medical", "abs_weight": "x"}]}, datasets)
    assert "$.max_length: 'long' is not of type 'integer'" in problems
    assert "$.datasets[0].task_name: 3 is not of type 'string'" in problems
    assert "$.datasets[0].abs_weight: 'x' is not of type 'number'" in problems


def test_weights_so_large_that_their_sum_overflows_are_refused(tmp_path):
    """Two weights of 1e308 sum to infinity: every target share became 0 and the report claimed a
    0.000 pp error for a 50 % mixture. The schema bounds a weight so the sum stays finite."""
    from fm9g.mixer.manifest import manifest_problems

    document = {"datasets": [{"task_name": "a", "path": "a", "abs_weight": 1e308},
                             {"task_name": "b", "path": "b", "abs_weight": 1e15}]}
    problems = manifest_problems(document, None)
    assert any(p.startswith("$.datasets[0].abs_weight: 1e+308 is greater than the maximum of 1000000000000000.0") for p in problems)
    assert not any("datasets[1]" in p for p in problems)


def test_the_seed_list_form_names_a_transform_plugin_with_options(tmp_path):
    from fm9g.mixer.manifest import manifest_from_document, manifest_problems

    document = [{"task_name": "a", "path": "a", "abs_weight": 1.0,
                 "transforms": {"name": "chatml", "options": {"system": "You are a doctor."}}}]
    assert manifest_problems(document, None) == []
    spec = manifest_from_document(document, tmp_path, "mix.json", check_paths=False).datasets[0]
    assert (spec.transform.name, spec.transform.options) == ("chatml", {"system": "You are a doctor."})
    bad = [{**document[0], "transforms": {"name": "chatml", "options": {"sistem": "x"}}}]
    assert any("sistem" in problem for problem in manifest_problems(bad, None))
