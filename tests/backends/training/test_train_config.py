"""Train config reading: dotted overrides, unknown keys with suggestions, relative paths, defaults."""

from __future__ import annotations

import json

import pytest

from fm9g.backends.training.config import load_train_config, parse_value
from fm9g.cli import main
from fm9g.core.errors import Fm9gError, ValidationFailed


def _write(path, document):
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


BASE = {"data": {"manifest": "data/mix.json"}, "model": {"preset": "tiny-qwen2"}, "save": "runs/a", "train_iters": 5}


def test_paths_resolve_against_the_config_file_and_defaults_fill(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_train_config(_write(tmp_path / "train.json", {**BASE, "tokenizer": "hf:tok"}))
    assert config["data"]["manifest"] == str(tmp_path / "data" / "mix.json")
    assert config["save"] == str(tmp_path / "runs" / "a")
    assert config["tokenizer"] == f"hf:{tmp_path / 'tok'}"
    assert config["lr_scheduler"] == "cosine" and config["weight_decay"] == 0.1 and config["clip_grad"] == 1.0
    assert config["backend"] == "torch" and config["delta"] is None


def test_resolved_config_and_its_hash_do_not_depend_on_the_cwd(tmp_path, monkeypatch):
    from fm9g.backends.training.checkpoints import config_hash

    (tmp_path / "a" / "b").mkdir(parents=True)
    _write(tmp_path / "a" / "train.json", {**BASE, "tokenizer": "sp:tok/sp.model",
                                           "model": {"preset": "tiny-llama", "seed_pt": "w/seed.pt"}})
    monkeypatch.chdir(tmp_path)
    from_root = load_train_config("a/train.json")
    monkeypatch.chdir(tmp_path / "a" / "b")
    from_below = load_train_config("../train.json")
    assert from_root == from_below and config_hash(from_root) == config_hash(from_below)
    assert from_root["model"]["seed_pt"] == str(tmp_path / "a" / "w" / "seed.pt")
    assert from_root["tokenizer"] == f"sp:{tmp_path / 'a' / 'tok' / 'sp.model'}"


def test_dotted_overrides_parse_json_and_create_delta(tmp_path):
    path = _write(tmp_path / "train.json", BASE)
    config = load_train_config(path, ["lr=1e-4", "delta.lora_r=8", "delta.lora_layer=[\"w_0\",\"q_proj\"]",
                                      "model.preset=tiny-llama", "save=elsewhere", "use_checkpoint=true"],
                               cwd=tmp_path / "cwd")
    assert config["lr"] == 1e-4 and config["use_checkpoint"] is True
    assert config["delta"]["lora_r"] == 8 and config["delta"]["lora_layer"] == ["w_0", "q_proj"]
    assert config["delta"]["lora_alpha"] == 32 and config["delta"]["engine"] == "peft"
    assert config["model"]["preset"] == "tiny-llama"
    assert config["save"] == str(tmp_path / "cwd" / "elsewhere")  # command-line paths: relative to the cwd
    assert parse_value("abc") == "abc" and parse_value("null") is None and parse_value("3") == 3


def test_overrides_reach_into_backend_options_which_the_backend_checks(tmp_path):
    from fm9g.core.plugins import get_plugin, validate_options

    path = _write(tmp_path / "train.json", {**BASE, "backend": "bmtrain"})
    config = load_train_config(path, ["backend_options.checkpoint_blocks=10", "backend_options.loss_scale=1024"])
    assert config["backend_options"] == {"checkpoint_blocks": 10, "loss_scale": 1024, "loss_scale_factor": 2,
                                         "loss_scale_steps": 1024}  # the backend's defaults filled in
    with pytest.raises(ValidationFailed, match="checkpoint_block: unknown option \\(did you mean 'checkpoint_blocks'"):
        load_train_config(path, ["backend_options.checkpoint_block=10"])
    assert validate_options(get_plugin("backend", "bmtrain"), config["backend_options"], where="t") == \
        config["backend_options"]


def test_unknown_keys_are_errors_with_suggestions(tmp_path):
    path = _write(tmp_path / "train.json", {**BASE, "lrr": 1e-3, "model": {"preset": "tiny-qwen2", "prest": 1}})
    with pytest.raises(ValidationFailed) as caught:
        load_train_config(path)
    text = str(caught.value)
    assert "$.lrr: unknown key (did you mean 'lr'?" in text
    assert "$.model.prest: unknown key (did you mean 'preset'?" in text
    with pytest.raises(Fm9gError, match="did you mean 'delta.lora_r'"):
        load_train_config(_write(tmp_path / "ok.json", BASE), ["delta.lora_rank=4"])
    with pytest.raises(Fm9gError, match="not KEY=VALUE"):
        load_train_config(_write(tmp_path / "ok.json", BASE), ["lr"])


def test_schema_violations_are_reported_together(tmp_path):
    path = _write(tmp_path / "train.json", {**BASE, "lr": -1, "lr_scheduler": "Cosine", "batch_size": "2"})
    with pytest.raises(ValidationFailed) as caught:
        load_train_config(path)
    assert len(caught.value.problems) == 3
    assert any(p.startswith("$.lr:") for p in caught.value.problems)


def test_cli_prints_one_line_errors(tmp_path, capsys):
    path = _write(tmp_path / "train.json", BASE)
    assert main(["train", "--config", str(path), "lr_sheduler=wsd"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'lr_sheduler'" in err and "did you mean 'lr_scheduler'" in err
    assert "Traceback" not in err
    (tmp_path / "broken.json").write_text('{"data": {,}', encoding="utf-8")
    assert main(["train", "--config", str(tmp_path / "broken.json")]) == 2
    assert "broken.json:1:" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "model.preset=tiny-gpt"]) == 2
    assert "unknown model preset 'tiny-gpt'" in capsys.readouterr().err
