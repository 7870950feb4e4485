"""Builders for the conversion/export tests: tiny real models, seed .pt files and training checkpoints
laid out exactly as fm9g train writes them (written here, independent of the trainer)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fm9g.backends.models.presets import preset_config

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_IDS = torch.tensor([[1, 108, 105, 112, 112, 115, 36, 123, 115, 118, 112, 104]])


def tiny_model(preset: str = "tiny-qwen2", seed: int = 0, **overrides: Any):
    """A randomly initialised tiny causal LM (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(preset_config(preset, **overrides)).eval()


def logits(model, ids: torch.Tensor = PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """``fm9g ARGV`` as a real subprocess (captured output)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "fm9g", *argv], capture_output=True, text=True, env=env, timeout=300)


def train_config(model_block: dict[str, Any], tokenizer: str | None = "byte", delta: dict | None = None) -> dict:
    """A resolved train config as the trainer would record it in checkpoint.json."""
    config = {"data": {"mixture": "/data/mixed"}, "model": model_block, "tokenizer": tokenizer,
              "save": "/runs/x", "train_iters": 10, "lr": 1e-4}
    if delta is not None:
        config["delta"] = delta
    return config


def _write_manifest(directory: Path, *, config: dict, weights: str, files: dict[str, str], step: int) -> None:
    (directory / "scheduler.json").write_text("{}\n")
    (directory / "stream_state.json").write_text("{}\n")
    files = {**files, "scheduler": "scheduler.json", "stream_state": "stream_state.json", "hf_config": "config.json"}
    manifest = {"format_version": 1, "step": step, "tokens_seen": 1234, "config_hash": "0" * 64, "config": config,
                "backend": "torch", "weights": weights, "files": files, "fm9g_version": "0.1.0"}
    (directory / "checkpoint.json").write_text(json.dumps(manifest, indent=2))


def write_full_checkpoint(run_dir: Path, model, *, config: dict, step: int = 10) -> Path:
    """``run_dir/step-NNNNNNNN/`` with ``model.safetensors`` (float32, HF names), config.json, checkpoint.json."""
    directory = run_dir / f"step-{step:08d}"
    directory.mkdir(parents=True)
    state = {name: tensor.detach().float().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model.config.to_json_file(directory / "config.json")
    _write_manifest(directory, config=config, weights="full", files={"weights": "model.safetensors"}, step=step)
    return directory


def peft_wrap(base_model, *, r: int = 4, alpha: float = 8.0, targets: list[str] | None = None, seed: int = 1):
    """A PEFT LoRA model around a deep copy of ``base_model`` with non-zero A and B (as after training)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora_config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or LORA_TARGETS, lora_dropout=0.0,
                             init_lora_weights=False, task_type="CAUSAL_LM")
    return get_peft_model(copy.deepcopy(base_model), lora_config).eval()


def write_lora_checkpoint(run_dir: Path, peft_model, *, config: dict, step: int = 10) -> Path:
    """``run_dir/step-NNNNNNNN/`` with PEFT's adapter files (``save_pretrained``), config.json, checkpoint.json."""
    directory = run_dir / f"step-{step:08d}"
    directory.mkdir(parents=True)
    peft_model.save_pretrained(directory)
    peft_model.get_base_model().config.to_json_file(directory / "config.json")
    _write_manifest(directory, config=config, weights="lora", step=step,
                    files={"adapter": "adapter_model.safetensors", "adapter_config": "adapter_config.json"})
    return directory


def train_tiny_hf_tokenizer(directory: Path) -> Path:
    """A small byte-level BPE tokenizer directory (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


def state_of(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF output directory (single file or shards)."""
    from fm9g.backends.weights.files import load_hf_state_dict

    return load_hf_state_dict(directory)


def same_tokenizer(exported: Path, source: Path) -> bool:
    """``exported`` is ``source``'s tokenizer.json with the same vocabulary, merges and special tokens
    (export may add a post-processor that puts BOS first, as training samples begin)."""
    a, b = json.loads(exported.read_text()), json.loads(source.read_text())
    return all(a[key] == b[key] for key in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder"))
