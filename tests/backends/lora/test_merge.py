"""LoRA merging: fm9g's ``W + alpha/r · B@A`` equals PEFT's ``merge_and_unload()``; seed LoRA checkpoints
(OpenDelta keys + a seed train config) merge into seed .pt files and HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from _convert_helpers import logits, peft_wrap, run_cli, state_of, tiny_model
from fm9g.backends.lora.merge import merge_lora_pairs, peft_scale, read_lora_config
from fm9g.backends.weights.names import (OPENDELTA_KEYS, PEFT_KEYS, convert_lora, hf_path_to_seed, hf_to_seed,
                                         lora_pairs)
from fm9g.cli import main
from fm9g.core.errors import Fm9gError

SEED_TARGETS = ["project_q", "project_k", "project_v", "w_0", "w_1", "w_out"]
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base():
    return tiny_model("tiny-qwen2", seed=5)


@pytest.fixture(scope="module")
def trained(base):
    """A PEFT LoRA model (r=4, alpha=8: scale 2) with non-zero A and B, and its merge by PEFT."""
    peft_model = peft_wrap(base, r=4, alpha=8.0, targets=HF_TARGETS)
    adapter = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    adapter = {k.replace(".default", ""): v for k, v in adapter.items()}
    expected_logits = logits(peft_model)
    merged = peft_model.merge_and_unload()
    return adapter, {k: v.detach().clone() for k, v in merged.state_dict().items()}, expected_logits


@pytest.fixture
def seed_lora(tmp_path: Path, trained) -> tuple[Path, Path]:
    """The seed's LoRA files: OpenDelta-keyed ``.pt`` and a ``7b_lora.json``-style train config."""
    adapter, _, _ = trained
    lora_pt = tmp_path / "fm9g_live_checkpoint-10.pt"
    torch.save(convert_lora(adapter, PEFT_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed, where="t"), lora_pt)
    config = tmp_path / "7b_lora.json"
    config.write_text(json.dumps({"finetune": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                               "lora_layer": json.dumps(SEED_TARGETS)}, "lr": 1e-4}))
    return lora_pt, config


def test_merge_equals_peft_merge_and_unload(base, trained) -> None:
    adapter, peft_merged, _ = trained
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    ours = merge_lora_pairs(base.state_dict(), lora_pairs(adapter, PEFT_KEYS, where="t"), peft_scale(config, where="t"), where="t")
    assert ours.keys() == peft_merged.keys()
    changed = 0
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-6, atol=1e-6)
        changed += not torch.equal(base.state_dict()[name], tensor)
    assert changed == 2 * len(HF_TARGETS)


def test_peft_scale_follows_rslora_and_patterns() -> None:
    scale = peft_scale({"r": 4, "lora_alpha": 8, "alpha_pattern": {"down_proj": 16},
                        "rank_pattern": {"down_proj": 2}}, where="t")
    assert scale("model.layers.0.self_attn.q_proj", 4) == 2.0
    assert scale("model.layers.0.mlp.down_proj", 2) == 8.0
    assert peft_scale({"r": 4, "lora_alpha": 8, "use_rslora": True}, where="t")("x", 4) == 4.0
    with pytest.raises(Fm9gError, match="rank 3 but adapter_config.json says r=4"):
        scale("model.layers.0.self_attn.q_proj", 3)
    with pytest.raises(Fm9gError, match="'use_dora' adapters are not supported"):
        peft_scale({"r": 4, "lora_alpha": 8, "use_dora": True}, where="t")


def test_lora_config_reader_accepts_seed_and_plain_forms(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"finetune": {"lora_r": 64, "lora_alpha": 32,
                                             "lora_layer": '["project_q", "w_out"]'}}))
    hyper = read_lora_config(seed)
    assert (hyper.lora_r, hyper.lora_alpha, hyper.scale, hyper.lora_layer) == (64, 32.0, 0.5, ("project_q", "w_out"))
    plain = tmp_path / "plain.json"
    plain.write_text('{"lora_r": 16, "lora_alpha": 32}')
    assert read_lora_config(plain).scale == 2.0
    fm9g_config = tmp_path / "train.json"
    fm9g_config.write_text('{"delta": {"lora_r": 8, "lora_alpha": 4}}')
    assert read_lora_config(fm9g_config).scale == 0.5
    broken = tmp_path / "broken.json"
    broken.write_text('{"finetune": {"lora_alpha": 32}}')
    with pytest.raises(Fm9gError, match=r"\$\.finetune\.lora_r is missing"):
        read_lora_config(broken)
    broken.write_text('{"lora_r": 0, "lora_alpha": 32}')
    with pytest.raises(Fm9gError, match=r"\$\.lora_r: 0 is not a positive integer"):
        read_lora_config(broken)


def test_pt2hf_merges_a_seed_lora_like_bmtrain_2_hgface(tmp_path: Path, base, trained, seed_lora) -> None:
    _, peft_merged, expected_logits = trained
    lora_pt, lora_config = seed_lora
    base_pt = tmp_path / "7b.pt"
    torch.save(hf_to_seed(base.state_dict()), base_pt)
    out = tmp_path / "hf-lora"
    done = run_cli("convert", "pt2hf", "--input", str(base_pt), "--preset", "tiny-qwen2", "--output", str(out),
                   "--lora-ckpt", str(lora_pt), "--lora-config", str(lora_config))
    assert done.returncode == 0, done.stderr
    merged = state_of(out)
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded), expected_logits, rtol=1e-5, atol=1e-5)


def test_merge_lora_into_seed_pt_and_hf_dir(tmp_path: Path, base, trained, seed_lora) -> None:
    _, peft_merged, _ = trained
    lora_pt, lora_config = seed_lora
    base_pt = tmp_path / "7b.pt"
    torch.save(hf_to_seed(base.state_dict()), base_pt)
    merged_pt = tmp_path / "merged.pt"
    assert main(["convert", "merge-lora", "--base", str(base_pt), "--lora-ckpt", str(lora_pt),
                 "--lora-config", str(lora_config), "--output", str(merged_pt)]) == 0
    merged_seed = torch.load(merged_pt, weights_only=True)
    for name, tensor in hf_to_seed(peft_merged).items():
        torch.testing.assert_close(merged_seed[name], tensor, rtol=1e-6, atol=1e-6)
    base_dir = tmp_path / "base-hf"
    base.save_pretrained(base_dir)
    merged_dir = tmp_path / "merged-hf"
    assert main(["convert", "merge-lora", "--base", str(base_dir), "--lora-ckpt", str(lora_pt),
                 "--lora-config", str(lora_config), "--output", str(merged_dir)]) == 0
    merged_hf = state_of(merged_dir)
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(merged_hf[name], tensor, rtol=1e-6, atol=1e-6)


def test_seed_lora_errors_name_the_problem(tmp_path: Path, base, seed_lora, capsys) -> None:
    lora_pt, lora_config = seed_lora
    base_pt = tmp_path / "7b.pt"
    torch.save(hf_to_seed(base.state_dict()), base_pt)
    wrong_rank = tmp_path / "r8.json"
    wrong_rank.write_text('{"finetune": {"lora_r": 8, "lora_alpha": 8}}')
    argv = ["convert", "merge-lora", "--base", str(base_pt), "--lora-ckpt", str(lora_pt), "--output",
            str(tmp_path / "m.pt")]
    assert main([*argv, "--lora-config", str(wrong_rank)]) == 2
    assert "has rank 4 but the LoRA config says lora_r=8" in capsys.readouterr().err
    other = tiny_model("tiny-qwen2", intermediate_size=96)
    other_pt = tmp_path / "other.pt"
    torch.save(hf_to_seed(other.state_dict()), other_pt)
    argv[3] = str(other_pt)
    assert main([*argv, "--lora-config", str(lora_config)]) == 2
    err = capsys.readouterr().err
    assert "LoRA for 'encoder.layers.0.ffn.ffn.w_in.w_0.weight' gives shape (176, 64)" in err
    assert not (tmp_path / "m.pt").exists()
