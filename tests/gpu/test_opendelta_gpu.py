"""The ``opendelta`` delta engine on CUDA with bf16, as the torch backend runs LoRA on a GPU.

Skips without CUDA. Needs OpenDelta (``scripts/install_opendelta.sh``).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

OPTIONS = {"method": "lora", "lora_layer": ["project_q", "project_k", "project_v", "attention_out", "w_0", "w_1",
                                            "w_out"], "lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0}


def tiny_model():
    from transformers import AutoModelForCausalLM

    from fm9g.backends.models.presets import preset_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(preset_config("tiny-llama"), dtype=torch.float32)


def nonzero_lora(model, engine):
    """B starts at zero; give it values so a step moves A too."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in engine.trainable_state_dict(model).items():
            parameter.copy_(torch.randn(parameter.shape, generator=generator).to(parameter) * 0.05)


def lora_step(model, engine, batch, *, autocast: bool) -> tuple[float, dict[str, torch.Tensor]]:
    before = {name: tensor.clone() for name, tensor in engine.trainable_state_dict(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    after = engine.trainable_state_dict(model)
    return loss.item(), {name: (after[name].float() - before[name].float()).abs().max() for name in before}


def test_lora_step_bf16_autocast_frozen_base_in_bf16():
    """The torch backend's GPU recipe: frozen base weights bf16, LoRA fp32, bf16 autocast."""
    from fm9g.backends.lora.opendelta_engine import OpenDeltaEngine

    engine = OpenDeltaEngine()
    model = engine.apply(tiny_model().cuda(), OPTIONS)
    for parameter in model.parameters():
        if not parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)
    nonzero_lora(model, engine)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    batch = torch.randint(4, 512, (4, 128), device="cuda")
    loss, moved = lora_step(model, engine, batch, autocast=True)
    assert torch.isfinite(torch.tensor(loss)) and 5.0 < loss < 8.0
    assert len(moved) == 2 * 7 * 2 and all(delta > 0 for delta in moved.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    print(f"opendelta LoRA step on {torch.cuda.get_device_name()}: bf16 autocast loss {loss:.4f}")


def test_lora_step_all_bf16_matches_peft():
    """Whole model in bf16 (``model.dtype: bfloat16``): same loss as the peft engine, LoRA tensors in bf16."""
    from fm9g.backends.lora.opendelta_engine import OpenDeltaEngine
    from fm9g.backends.lora.peft_engine import PeftEngine

    engine = OpenDeltaEngine()
    base = tiny_model()
    model = engine.apply(copy.deepcopy(base), OPTIONS).cuda().to(torch.bfloat16)
    nonzero_lora(model, engine)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    peft_model = PeftEngine().apply(copy.deepcopy(base), OPTIONS).cuda().to(torch.bfloat16)
    peft_parameters = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, tensor in engine.trainable_state_dict(model).items():
            linear, part = name.rsplit(".lora.", 1)
            peft_parameters[f"base_model.model.{linear}.{part}.default.weight"].copy_(tensor)
    batch = torch.randint(4, 512, (4, 128), device="cuda")
    with torch.no_grad():
        peft_loss = float(peft_model(input_ids=batch, labels=batch).loss)
    loss, moved = lora_step(model, engine, batch, autocast=False)
    assert abs(loss - peft_loss) < 2e-2 * abs(peft_loss)
    assert all(delta > 0 for delta in moved.values())
    print(f"opendelta bf16 loss {loss:.4f}, peft bf16 loss {peft_loss:.4f}")
