"""The bundled example train configs validate and train (on the test mixture, for two steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm9g.backends.training.config import load_train_config
from fm9g.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("name", ["train.json", "train_lora.json"])
def test_example_config_trains(name, mixture, tmp_path, capsys):
    config = load_train_config(EXAMPLES / name)
    assert config["data"]["manifest"] == str(EXAMPLES / "mix.json")
    assert config["model"]["preset"].startswith("tiny-")
    code = main(["train", "--config", str(EXAMPLES / name), f"data.manifest={mixture / 'mix.json'}",
                 f"save={tmp_path / 'run'}", "train_iters=2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "step-00000002" / "checkpoint.json").read_text())
    assert manifest["weights"] == ("lora" if config["delta"] else "full")


def test_the_7b_single_h200_recipe_validates(capsys):
    """examples/train_7b_h200.json (BENCHMARKS.md: MFU 42 % on one H200) is a valid bmtrain config."""
    config = load_train_config(EXAMPLES / "train_7b_h200.json")
    assert config["backend"] == "bmtrain" and config["model"]["kernels"] == "liger"
    assert main(["validate", str(EXAMPLES / "train_7b_h200.json")]) == 0, capsys.readouterr().err
