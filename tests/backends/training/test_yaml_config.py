"""Train configs in YAML: the same config as JSON, errors with their line, and a YAML run that trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend_helpers import run_fm9g
from fm9g.backends.training.checkpoints import read_manifest
from fm9g.backends.training.config import load_train_config
from fm9g.core.errors import ValidationFailed

BASE = {"data": {"manifest": "data/mix.json"}, "model": {"preset": "tiny-qwen2"}, "save": "runs/a", "train_iters": 5,
        "lr": 1e-4, "delta": {"lora_r": 4, "lora_layer": ["q_proj", "v_proj"]}}


def test_a_yaml_config_resolves_exactly_as_its_json_twin(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text(json.dumps(BASE), encoding="utf-8")
    (tmp_path / "train.yaml").write_text(
        "data: {manifest: data/mix.json}\nmodel:\n  preset: tiny-qwen2\nsave: runs/a\ntrain_iters: 5\n"
        "lr: 1e-4   # a number, as in JSON\ndelta:\n  lora_r: 4\n  lora_layer: [q_proj, v_proj]\n", encoding="utf-8")
    assert load_train_config(tmp_path / "train.yaml") == load_train_config(tmp_path / "train.json")


def test_yaml_config_problems_name_their_line_unless_an_override_set_the_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yml"
    path.write_text("data:\n  manifest: mix.json\nmodel:\n  preset: tiny-qwen2\n  prest: 1\nsave: run\n"
                    "train_iters: 5\nlr: -1\n", encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_train_config(path)
    assert str(caught.value).startswith(f"{path}:5: $.model.prest: unknown key (did you mean 'preset'?")
    path.write_text("data:\n  manifest: mix.json\nmodel:\n  preset: tiny-qwen2\nsave: run\ntrain_iters: 5\n"
                    "lr: -1\nwarmup_iters: 2\n", encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_train_config(path, ["warmup_iters=-3"])
    assert str(caught.value).splitlines() == [f"{path}:7: $.lr: -1 is less than or equal to the minimum of 0",
                                              f"{path}: $.warmup_iters: -3 is less than the minimum of 0"]


def test_a_yaml_config_over_a_yaml_manifest_trains(mixture: Path, tmp_path: Path) -> None:
    manifest = json.loads((mixture / "mix.json").read_text(encoding="utf-8"))
    for entry in manifest["datasets"]:
        entry["path"] = str(mixture / entry["path"])
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    (tmp_path / "train.yaml").write_text(
        "data:\n  manifest: mix.yaml\nmodel:\n  preset: tiny-llama\nsave: run\ntrain_iters: 2\nsave_iters: 2\n"
        "batch_size: 2\nmax_length: 128\nlr: 2e-3\n", encoding="utf-8")
    result = run_fm9g("train", "--config", str(tmp_path / "train.yaml"))
    assert result.returncode == 0, result.stderr
    recorded = read_manifest(tmp_path / "run" / "step-00000002")["config"]
    assert recorded["lr"] == 2e-3 and recorded["data"]["manifest"] == str(tmp_path / "mix.yaml")


def test_the_yaml_example_is_the_json_example() -> None:
    examples = Path(__file__).resolve().parents[3] / "examples"
    assert load_train_config(examples / "train.yaml") == load_train_config(examples / "train.json")
