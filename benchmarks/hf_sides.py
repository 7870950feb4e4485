"""The Hugging Face sides of ``train_bench.py``: a plain transformers model trained the way a competent
user of transformers would train it, on the same samples as fm9g.

* ``hf`` — HF Trainer's default: batches of ``hf_batch`` samples padded to the longest, SDPA.
* ``hf-packed`` — padding-free packing, the layout ``DataCollatorWithFlattening`` produces, on
  fm9g's own packed rows (``batch_size × max_length``): ``position_ids`` restarting at 0 per
  sample, no attention mask (transformers builds the block-diagonal mask from the position ids);
  SDPA.
* ``hf-flex`` / ``hf-fa2`` — the same rows with ``flex_attention`` / ``flash_attention_2`` (the
  latter only where ``flash_attn`` imports).
* ``-liger`` — plus Liger Kernel on the instance: RMSNorm, RoPE, SwiGLU and its fused linear
  cross-entropy (no logits materialized), ``-compile`` — plus regional ``torch.compile`` of each decoder
  layer.

Every side uses the same fused AdamW, bf16 autocast over float32 master weights (bf16 weights with
LoRA), gradient clipping at 1.0, one optimizer step per batch.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from train_sides import flop_parameters, peak_gib, reset_memory, timed, train_mode

HF_SIDES = ("hf", "hf-packed", "hf-flex", "hf-fa2", "hf-flex-liger", "hf-flex-liger-compile")
ATTENTION = {"hf": "sdpa", "hf-packed": "sdpa", "hf-flex": "flex_attention", "hf-fa2": "flash_attention_2"}


def attention_of(side: str) -> str:
    """The transformers attention implementation of an HF side (its name before ``-liger``)."""
    return ATTENTION[side.split("-liger")[0]]


def unavailable(side: str, device: torch.device) -> str | None:
    """Why an HF side cannot run here (``None``: it can)."""
    if attention_of(side) == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed"
    if "-liger" in side and (device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None):
        return "Liger Kernel needs CUDA and liger-kernel"
    return None


def padded_batches(samples, batch: int, pad_id: int, device) -> list[dict]:
    """HF Trainer's default: batches of ``batch`` samples padded to the longest; labels aligned to
    input_ids (transformers shifts them)."""
    out = []
    for start in range(0, len(samples) - batch + 1, batch):
        group = samples[start:start + batch]
        longest = max(len(s) for s, _ in group)
        ids = torch.full((batch, longest), pad_id, dtype=torch.long)
        labels = torch.full((batch, longest), -100, dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, (src, tgt) in enumerate(group):
            ids[row, :len(src)] = torch.tensor(src)
            labels[row, 1:len(src)] = torch.tensor(tgt[:-1])  # HF predicts labels[i+1] from position i
            mask[row, :len(src)] = 1
        out.append({"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device),
                    "useful": int(mask.sum()), "computed": batch * longest,
                    "squares": sum(len(s) ** 2 for s, _ in group)})
    return out


def packed_hf_batches(batches: list, rows: int, device) -> list[dict]:
    """fm9g's packed rows handed to transformers padding-free: ``input_ids`` and ``position_ids``
    restarting at 0 per sample, no attention mask, labels shifted the transformers way.

    fm9g's targets are pre-shifted (``targets[i]`` follows token i), so transformers' labels are the
    targets moved one to the right: the loss of every position is the one fm9g trains, except each
    row's last token (its target is the padding tail's −100, or one token a row). fm9g trains each
    global batch as one row of ``batch_size × max_length``; HF gets it as ``rows`` rows of
    ``max_length`` (a sample crossing a row end is cut in two there, which only spares HF attention
    work): one row of 16k tokens sent transformers' flex attention into minutes of recompiling.
    """
    out = []
    for batch in batches:
        ids = torch.as_tensor(batch.input_ids, dtype=torch.long).reshape(rows, -1)
        positions = torch.as_tensor(batch.position_ids, dtype=torch.long).reshape(ids.shape)
        targets = torch.as_tensor(batch.targets, dtype=torch.long).reshape(ids.shape)
        labels = torch.cat([torch.full((ids.shape[0], 1), -100, dtype=torch.long), targets[:, :-1]], dim=1)
        cu = batch.cu_seqlens.tolist()
        lengths = [end - begin for begin, end in zip(cu, cu[1:])]
        out.append({"input_ids": ids.to(device), "position_ids": positions.to(device), "labels": labels.to(device),
                    "useful": int(batch.num_tokens), "computed": ids.numel(),
                    "squares": sum(n * n for n, begin in zip(lengths, cu) if begin < batch.num_tokens)})
    return out


def check_transformers_layers(model) -> None:
    """A side without ``-liger`` must run on transformers' own modules and RoPE, not on kernels patched in earlier."""
    family = importlib.import_module(type(model).__module__)
    foreign = {type(m).__module__ for m in model.modules() if not type(m).__module__.startswith(("transformers", "torch"))}
    rope = getattr(family, "apply_rotary_pos_emb", None)
    if rope is not None and not rope.__module__.startswith("transformers"):
        foreign.add(rope.__module__)
    if foreign:
        raise RuntimeError(f"the HF baseline would run patched layers from {sorted(foreign)}")


def _apply_liger(model) -> None:
    import logging

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=True)


def run_hf(side, scenario, items, device, warmup, use_checkpoint, vocab_size) -> dict:
    """Train a transformers model of the scenario's preset on ``items`` (padded or flattened batches)."""
    from transformers import AutoModelForCausalLM

    from fm9g.backends.models.presets import preset_config

    reset_memory(device)
    config = preset_config(scenario["preset"], vocab_size=vocab_size)
    config._attn_implementation = attention_of(side)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if scenario["lora"] and device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.use_cache = False
    if "-liger" in side:
        _apply_liger(model)
    else:
        check_transformers_layers(model)
    if side.endswith("-compile"):
        for layer in model.model.layers:
            layer.compile()
    flops_n = flop_parameters(model)
    if scenario["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    params, trainable, optimizer = train_mode(model, device, use_checkpoint)
    inputs = ("input_ids", "labels", "attention_mask" if side == "hf" else "position_ids")

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**{key: batch[key] for key in inputs}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch["useful"], batch["computed"], batch["squares"]

    result = timed(step, items, warmup, device)
    result.update(peak_gib=peak_gib(device), params=params, flop_params=flops_n)
    return result
