"""Mix manifests in YAML: the same manifest as its JSON twin, and problems that name their line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixer_helpers import numbered_records, write_seed_dataset
from fm9g.core.errors import ValidationFailed
from fm9g.mixer.manifest import load_manifest

MANIFEST = {"seed": 3, "max_length": 64, "tokenizer": "byte", "datasets": [
    {"task_name": "medical", "path": "idx/medical", "abs_weight": 0.25,
     "transform": {"name": "chatml", "options": {"system": "Be brief."}}, "max_epochs": 2},
    {"task_name": "alpaca", "path": "idx/alpaca", "abs_weight": 0.75, "transform": "fm9g"}]}


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    for task, rows in (("medical", 12), ("alpaca", 20)):
        write_seed_dataset(tmp_path / "idx" / task, numbered_records(task, rows))
    return tmp_path


def test_a_yaml_manifest_equals_its_json_twin(datasets: Path) -> None:
    (datasets / "mix.json").write_text(json.dumps(MANIFEST), encoding="utf-8")
    (datasets / "mix.yaml").write_text(yaml.safe_dump(MANIFEST, sort_keys=False), encoding="utf-8")
    from_json, from_yaml = load_manifest(datasets / "mix.json"), load_manifest(datasets / "mix.yaml")
    assert from_yaml.source.endswith("mix.yaml")
    assert {**from_yaml.as_json(), "source": None} == {**from_json.as_json(), "source": None}
    seed_form = [{"task_name": "medical", "path": "idx/medical", "abs_weight": 1, "transforms": "identity"}]
    (datasets / "seed.yml").write_text(yaml.safe_dump(seed_form), encoding="utf-8")
    assert load_manifest(datasets / "seed.yml").form == "seed"


def test_yaml_manifest_problems_give_json_path_and_line(datasets: Path) -> None:
    text = ("seed: 3\n"
            "datasets:\n"
            "  - task_name: medical\n"
            "    path: idx/medical\n"
            "    abs_weight: -1\n"
            "  - task_name: medical\n"
            "    path: idx/nowhere\n"
            "    abs_weight: 1\n"
            "    transform: chatmll\n")
    path = datasets / "mix.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_manifest(path)
    lines = str(caught.value).splitlines()
    assert f"{path}:5: $.datasets[0].abs_weight: -1 is less than the minimum of 0" in lines
    assert any(line.startswith(f"{path}:6: $.datasets[1].task_name: duplicate task name 'medical'") for line in lines)
    assert any(line.startswith(f"{path}:7: $.datasets[1].path: directory does not exist") for line in lines)
    assert any(line.startswith(f"{path}:9: $.datasets[1].transform: unknown transform 'chatmll'") for line in lines)
