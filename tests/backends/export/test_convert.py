"""``fm9g convert pt2hf`` / ``hf2pt``: seed names, exact round trips, clear errors on bad input."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _convert_helpers import logits, same_tokenizer, state_of, tiny_model, train_tiny_hf_tokenizer
from fm9g.backends.weights.names import hf_to_seed
from fm9g.cli import main
from fm9g.core.errors import Fm9gError


@pytest.fixture(scope="module")
def qwen() -> torch.nn.Module:
    return tiny_model("tiny-qwen2", seed=3)


@pytest.fixture
def seed_pt(tmp_path: Path, qwen) -> Path:
    """A seed-named bf16 .pt, as the seed's hgface_2_bmtrain.py writes (torch_dtype=bfloat16)."""
    path = tmp_path / "7b.pt"
    torch.save(hf_to_seed({k: v.to(torch.bfloat16) for k, v in qwen.state_dict().items()}), path)
    return path


def _assert_same_tensors(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert torch.equal(left[name], right[name]), name


def _cli_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_pt2hf_hf2pt_round_trip_is_bit_identical(tmp_path: Path, seed_pt: Path) -> None:
    hf_dir, back = tmp_path / "hf", tmp_path / "back.pt"
    assert main(["convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-qwen2", "--output", str(hf_dir)]) == 0
    assert sorted(p.name for p in hf_dir.iterdir()) == [".fm9g-output", "config.json", "generation_config.json", "model.safetensors"]
    assert main(["convert", "hf2pt", "--input", str(hf_dir), "--output", str(back)]) == 0
    original = torch.load(seed_pt, weights_only=True)
    _assert_same_tensors(original, torch.load(back, weights_only=True))
    again = tmp_path / "hf-again"
    assert main(["convert", "pt2hf", "--input", str(back), "--preset", "tiny-qwen2", "--output", str(again)]) == 0
    _assert_same_tensors(state_of(hf_dir), state_of(again))


def test_pt2hf_output_loads_and_matches_the_model(tmp_path: Path, qwen) -> None:
    seed_pt = tmp_path / "f32.pt"
    torch.save(hf_to_seed(qwen.state_dict()), seed_pt)
    out = tmp_path / "hf"
    assert main(["convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-qwen2", "--output", str(out),
                 "--tokenizer", "byte", "--max-shard-size", "40KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(qwen.state_dict())
    assert all((out / shard).is_file() for shard in index["weight_map"].values())
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(loaded), logits(qwen))
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_config_dir_gives_architecture_and_tokenizer_but_never_its_index(tmp_path: Path, seed_pt: Path, qwen) -> None:
    reference = tmp_path / "ckpt"
    qwen.save_pretrained(reference, max_shard_size="40KB")
    train_tiny_hf_tokenizer(reference)
    assert (reference / "model.safetensors.index.json").is_file()
    out = tmp_path / "hf"
    assert main(["convert", "pt2hf", "--input", str(seed_pt), "--config", str(reference), "--output", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith(".index.json") for n in names)
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert same_tokenizer(out / "tokenizer.json", reference / "tokenizer.json")
    reference_tokenizer = AutoTokenizer.from_pretrained(reference)
    assert AutoTokenizer.from_pretrained(out).encode("hello world") == \
        [reference_tokenizer.bos_token_id, *reference_tokenizer.encode("hello world")]  # BOS first, as trained
    AutoModelForCausalLM.from_pretrained(out)


def test_non_tensor_pickles_are_refused(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"input_embedding.weight": torch.zeros(2), "args": argparse.Namespace(lr=1)}, bad)
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(bad), "--preset", "tiny-qwen2",
                     "--output", str(tmp_path / "o"))
    assert "holds Python objects other than tensors" in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1
    bad_value = tmp_path / "step.pt"
    torch.save({"input_embedding.weight": torch.zeros(2), "step": 5}, bad_value)
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(bad_value), "--preset", "tiny-qwen2",
                     "--output", str(tmp_path / "o"))
    assert "entry 'step' holds a int, not a tensor" in err
    assert not (tmp_path / "o").exists()


def test_truncated_files_are_clear_errors(tmp_path: Path, seed_pt: Path, capsys) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(seed_pt.read_bytes()[:5000])
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(cut), "--preset", "tiny-qwen2",
                     "--output", str(tmp_path / "o"))
    assert "not a readable torch checkpoint" in err and "truncated or corrupt" in err
    hf_dir = tmp_path / "hf"
    assert main(["convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-qwen2", "--output", str(hf_dir)]) == 0
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = _cli_error(capsys, "convert", "hf2pt", "--input", str(hf_dir), "--output", str(tmp_path / "x.pt"))
    assert "cannot read safetensors file" in err and "model.safetensors" in err
    assert not (tmp_path / "x.pt").exists()


def test_wrong_architecture_names_the_key(tmp_path: Path, seed_pt: Path, capsys, qwen) -> None:
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(seed_pt), "--preset", "fm9g-7b",
                     "--output", str(tmp_path / "o"))
    assert "'input_embedding.weight' has shape (512, 64) but preset fm9g-7b expects (73448, 3584)" in err
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-llama",
                     "--output", str(tmp_path / "o"))
    assert "unexpected key(s) for preset tiny-llama: 'encoder.layers.0.self_att.self_attention.project_k.bias'" in err
    partial = tmp_path / "partial.pt"
    state = hf_to_seed(qwen.state_dict())
    del state["encoder.layers.1.ffn.ffn.w_out.weight"]
    torch.save(state, partial)
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(partial), "--preset", "tiny-qwen2",
                     "--output", str(tmp_path / "o"))
    assert "missing key(s) for preset tiny-qwen2: 'encoder.layers.1.ffn.ffn.w_out.weight'" in err
    config_dir = tmp_path / "cfg"
    tiny_model("tiny-qwen2", intermediate_size=96).config.save_pretrained(config_dir)
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(seed_pt), "--config", str(config_dir),
                     "--output", str(tmp_path / "o"))
    assert "'encoder.layers.0.ffn.ffn.w_in.w_0.weight' has shape (176, 64)" in err and "(96, 64)" in err
    assert not (tmp_path / "o").exists()


def test_output_placement_and_force(tmp_path: Path, seed_pt: Path, capsys) -> None:
    hf_dir = tmp_path / "hf"
    args = ["convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-qwen2", "--output", str(hf_dir)]
    assert main(args) == 0
    err = _cli_error(capsys, "convert", "hf2pt", "--input", str(hf_dir), "--output", str(hf_dir / "7b.pt"))
    assert "lies inside the input" in err
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(seed_pt), "--config", str(hf_dir),
                     "--output", str(hf_dir / "sub"))
    assert "lies inside the input" in err
    err = _cli_error(capsys, "convert", "pt2hf", "--input", str(seed_pt), "--preset", "tiny-qwen2",
                     "--output", str(tmp_path), "--force")
    assert "lies inside the output" in err
    assert "output directory is not empty" in _cli_error(capsys, *args)
    (hf_dir / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00001-of-00009.safetensors"}}')
    (hf_dir / "model-00001-of-00009.safetensors").write_bytes(b"stale")
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in hf_dir.iterdir()) == [".fm9g-output", "config.json", "generation_config.json",
                                                       "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]
    foreign = tmp_path / "notes"  # --force replaces only what fm9g wrote
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    assert "only directories fm9g wrote" in _cli_error(capsys, *args[:-1], str(foreign), "--force")
    assert (foreign / "todo.txt").read_text() == "mine"
    pt_out = tmp_path / "out.pt"
    pt_out.write_bytes(b"old")
    assert "output exists" in _cli_error(capsys, "convert", "hf2pt", "--input", str(hf_dir), "--output", str(pt_out))
    assert main(["convert", "hf2pt", "--input", str(hf_dir), "--output", str(pt_out), "--force"]) == 0
    assert set(torch.load(pt_out, weights_only=True)) == set(torch.load(seed_pt, weights_only=True))


def test_preset_and_config_are_exclusive(tmp_path: Path, seed_pt: Path) -> None:
    from fm9g.backends.export.convert import convert_pt_to_hf

    with pytest.raises(Fm9gError, match="exactly one of --preset and --config"):
        convert_pt_to_hf(seed_pt, tmp_path / "o")
    with pytest.raises(Fm9gError, match="--lora-ckpt and --lora-config go together"):
        convert_pt_to_hf(seed_pt, tmp_path / "o", preset="tiny-qwen2", lora_ckpt=seed_pt)


def test_a_seed_pt_materializes_ready_to_run(tmp_path: Path, seed_pt: Path, qwen) -> None:
    from fm9g.backends.models.materialize import materialize_model
    from fm9g.backends.models.presets import preset_config
    from fm9g.backends.weights.files import load_seed_pt
    from fm9g.backends.weights.names import hf_name_to_seed, seed_to_hf

    model = materialize_model(preset_config("tiny-qwen2"), seed_to_hf(load_seed_pt(seed_pt)), where=str(seed_pt),
                              display=hf_name_to_seed)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    copy.deepcopy(qwen).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    assert torch.equal(logits(model), logits(reference))
