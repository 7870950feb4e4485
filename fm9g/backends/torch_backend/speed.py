"""The torch backend's speed levers: ``model.compile``, ``model.fp8``, ``backend_options.optimizer``
and ``backend_options.checkpoint_blocks``.

* ``model.compile``: regional ``torch.compile`` — each decoder layer compiled in place, as torchtitan
  and torchtune do, so the graph is one layer's (compiled once and reused by every layer, whose
  parameters are graph inputs) and the embedding, head and loss stay eager. ``dynamic=None``: a
  size that changes between batches (the CUDA varlen path's longest sample) is made symbolic at
  its first change instead of recompiling for every new value.
* ``model.fp8``: torchao's float8 training on the linear layers, rowwise scaling
  (``Float8LinearConfig.from_recipe_name("rowwise")``); ``lm_head`` and any layer with a dimension
  that is not a multiple of 16 (what float8 matmuls need) stay in bf16. torchao's own filter also
  drops layers below its speed thresholds (N ≤ 2048, ...), which would leave a small model with no
  float8 layer at all, so the filter here keeps only the correctness conditions.
* ``optimizer: adamw_8bit``: torchao's ``AdamW8bit`` — moments in 8 bits with a per-256-value scale,
  a quarter of AdamW's state memory — on one CUDA GPU. Its checkpoints hold the moments
  dequantized to float32 (the same format as AdamW's, so any fm9g optimizer and either backend
  resumes them) and, beside them, the 8-bit codes and scales, from which AdamW8bit restores the
  state exactly.
* ``checkpoint_blocks: N`` with ``use_checkpoint``: only the first N decoder layers recompute their
  activations in the backward; the others keep them. Memory freed elsewhere (8-bit moments, the
  chunked loss) buys back recomputation a layer at a time — about a third of a layer's forward
  FLOPs each — the same trade as the bmtrain backend's key of that name.
"""

from __future__ import annotations

from typing import Any

import torch

from fm9g.backends.training.loop import TorchOptimization
from fm9g.core.errors import Fm9gError

OPTIMIZERS = ("adamw", "adamw_8bit")
TORCHAO_FIX = "install torchao on the GPU machine with `pip install 'fm9g[fp8]'`"
FP8_MIN_CAPABILITY = (8, 9)


def check_speed_options(config: dict[str, Any], device: torch.device, world_size: int) -> None:
    """Refuse, before the model is built, a lever this run cannot use (each a one-line error)."""
    if config["model"]["fp8"]:
        _check_fp8(config, device)
    if config["backend_options"]["optimizer"] == "adamw_8bit":
        _check_adamw_8bit(device, world_size)


def _import_torchao(what: str, where: str) -> None:
    try:
        import torchao.float8  # noqa: F401
        import torchao.optim  # noqa: F401
    except ImportError as error:
        raise Fm9gError(f"{what} needs torchao, which does not import ({error})", where=where,
                        fix=TORCHAO_FIX) from None


def _check_fp8(config: dict[str, Any], device: torch.device) -> None:
    where = "train config: model.fp8"
    if config["delta"]:
        raise Fm9gError("model.fp8 with a delta is not supported: the delta wraps the linear layers that fp8 "
                        "would replace, and that combination is untested", where=where,
                        fix="drop model.fp8 for a LoRA run, or train the full model in fp8")
    if device.type != "cuda":
        raise Fm9gError(f"float8 matmuls need a CUDA GPU with compute capability ≥ 8.9, and this run is on "
                        f"{device.type}", where=where, fix="drop model.fp8 to train here")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise Fm9gError(f"float8 matmuls need compute capability ≥ 8.9 (Ada, Hopper or newer); this GPU has "
                        f"{capability[0]}.{capability[1]}", where=where, fix="drop model.fp8 on this GPU")
    _import_torchao("model.fp8", where)


def _check_adamw_8bit(device: torch.device, world_size: int) -> None:
    where = "train config: backend_options.optimizer"
    if device.type != "cuda":
        raise Fm9gError(f"adamw_8bit (torchao) runs on CUDA GPUs only, and this run is on {device.type}",
                        where=where, fix="use optimizer 'adamw' to train here")
    if world_size > 1:
        raise Fm9gError(f"adamw_8bit is supported on one process, and this run has {world_size}: its state "
                        "under FSDP2 (8-bit tensors inside DTensors) is not checkpointed by fm9g",
                        where=where, fix="use optimizer 'adamw' with several processes")
    _import_torchao("optimizer adamw_8bit", where)


def fp8_layer_filter(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module`` (at ``name``) trains in float8: a linear layer, not the head, both dims multiples of 16."""
    if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] == "lm_head":
        return False
    out_features, in_features = module.weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


def convert_to_fp8(model: torch.nn.Module) -> int:
    """Swap the linear layers :func:`fp8_layer_filter` accepts for torchao's ``Float8Linear`` (rowwise); how many."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    convert_to_float8_training(model, module_filter_fn=fp8_layer_filter,
                               config=Float8LinearConfig.from_recipe_name("rowwise"))
    return sum(isinstance(module, Float8Linear) for module in model.modules())


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers (the modules whose class name ends with ``DecoderLayer``)."""
    return [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]


def enable_checkpointing(model: torch.nn.Module, blocks: int | None) -> int:
    """Activation checkpointing on the first ``blocks`` decoder layers (all when ``None``); how many.
    transformers checkpoints a layer whose ``gradient_checkpointing`` flag is set, so the flag is
    cleared on the layers past the first ``blocks``."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = blocks is None or index < blocks
    return sum(layer.gradient_checkpointing for layer in layers)


def compile_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` each decoder layer in place (``dynamic=None``: see the module docstring); how many."""
    layers = decoder_layers(model)
    if not layers:
        raise Fm9gError(f"model.compile found no decoder layers in {type(model).__name__}",
                        where="train config: model.compile", fix="drop model.compile for this model")
    for layer in layers:
        layer.compile(dynamic=None)
    return len(layers)


def make_optimizer(parameters: list[torch.nn.Parameter], config: dict[str, Any], *,
                   fused: bool) -> torch.optim.Optimizer:
    """The run's optimizer: AdamW or torchao's AdamW8bit, both betas 0.9/0.95, eps 1e-8, the config's weight decay."""
    settings = {"lr": config["lr"], "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": config["weight_decay"]}
    if config["backend_options"]["optimizer"] == "adamw_8bit":
        from torchao.optim import AdamW8bit

        return AdamW8bit(parameters, **settings)
    return torch.optim.AdamW(parameters, fused=fused or None, **settings)


class TensorLrOptimization(TorchOptimization):
    """:class:`TorchOptimization` for torchao's optimizers, which hold the learning rate as a tensor
    (their compiled update takes it as an input, so a new rate does not recompile) and refuse a float."""

    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = torch.tensor(lr, dtype=torch.float32)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


PACKED_KEYS = ("codes", "scale")
"""What of an 8-bit moment is saved besides its float32 value: ``<moment>_8bit_codes`` and ``_8bit_scale``."""


def is_quantized_state(value: Any) -> bool:
    """A torchao low-bit optimizer state (a tensor subclass with ``dequantize``)."""
    return isinstance(value, torch.Tensor) and type(value) is not torch.Tensor and hasattr(value, "dequantize")


def savable_state(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (``get_optimizer_state_dict``'s) in plain tensors: each 8-bit moment as float32
    under its own key (AdamW's format, which ``weights_only`` loading, any fm9g optimizer and the
    bmtrain backend read) and its codes and block scales beside it, from which AdamW8bit restores
    the very state it saved (quantizing the float32 values again would not: the signed code table
    has +1 but no -1, so a block whose largest magnitude is negative gets another scale)."""
    state = {}
    for name, entry in state_dict["state"].items():
        saved = {}
        for key, value in entry.items():
            if is_quantized_state(value):
                saved[key] = value.dequantize().float()
                saved.update({f"{key}_8bit_{part}": getattr(value, part) for part in PACKED_KEYS})
            else:
                saved[key] = value
        state[name] = saved
    groups = [{key: (float(value) if key == "lr" and isinstance(value, torch.Tensor) else value)
               for key, value in group.items()} for group in state_dict["param_groups"]]
    return {"state": state, "param_groups": groups}


def split_packed_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], dict]]:
    """A saved state without the 8-bit parts (what ``set_optimizer_state_dict`` loads into any
    optimizer), and the parts by ``(parameter name, moment)``."""
    state, packed = {}, {}
    for name, entry in state_dict["state"].items():
        state[name] = {}
        for key, value in entry.items():
            moment, marker, part = key.partition("_8bit_")
            if marker and part in PACKED_KEYS:
                packed.setdefault((name, moment), {})[part] = value
            else:
                state[name][key] = value
    return {**state_dict, "state": state}, packed


def requantize_state(optimizer: torch.optim.Optimizer, parameters: dict[str, torch.nn.Parameter],
                     packed: dict[tuple[str, str], dict]) -> int:
    """After loading float32 moments into torchao's AdamW8bit, put each back into the 8-bit buffer the
    optimizer makes for its parameter — from its saved codes and scales, exactly, or (a checkpoint of
    plain AdamW) by quantizing the float32 values; parameters too small to quantize keep plain
    tensors. ``parameters``: the model's by name, the names the state is saved under. How many."""
    quantized, unused = 0, set(packed)
    for name, parameter in parameters.items():
        state = optimizer.state.get(parameter, {})
        for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            if key not in state or is_quantized_state(state[key]):
                continue
            buffer = optimizer._new_buffer(parameter, signed)
            if not is_quantized_state(buffer):
                continue
            parts = packed.get((name, key))
            unused.discard((name, key))
            if parts is None:
                buffer.copy_(state[key].to(parameter.device))
            else:
                for part in PACKED_KEYS:
                    target, saved = getattr(buffer, part), parts[part]
                    if target.shape != saved.shape:
                        raise Fm9gError(f"the saved 8-bit {key} of '{name}' has {part} of shape {tuple(saved.shape)}, "
                                        f"and AdamW8bit makes {tuple(target.shape)}", where="optimizer.pt",
                                        fix="resume with the torchao release the checkpoint was written with")
                    target.copy_(saved)
            state[key] = buffer
            quantized += 1
    if unused:
        name, key = sorted(unused)[0]
        raise Fm9gError(f"the checkpoint holds an 8-bit {key} for '{name}', which this model's AdamW8bit state "
                        f"does not take ({len(unused)} such moment(s))", where="optimizer.pt",
                        fix="resume with the model the checkpoint was trained with")
    return quantized
