"""The ``torch`` backend's part of the run sequence (:class:`TorchStrategy`), imported on first use by
:mod:`fm9g.backends.torch_backend.plugin`.

* CPU: float32 throughout. GPU: float32 master weights with bf16 autocast; with a delta, the frozen
  base weights are stored in bf16 (they need no master copy). ``model.dtype: bfloat16`` stores all
  weights in bf16.
* Several processes: ``fully_shard`` on every decoder layer and then the root (FSDP2), gloo on CPU
  and NCCL on GPUs. Rank r trains on global batches b ≡ r (mod W). Checkpoints hold full
  (unsharded) tensors, so a run can resume with another world size.
* AdamW (betas 0.9/0.95, eps 1e-8, the config's weight decay) on trainable parameters only, or
  torchao's AdamW8bit with the same settings (``backend_options.optimizer: adamw_8bit``).
* ``model.fp8`` (float8 linear layers) and ``model.compile`` (each decoder layer compiled): see
  :mod:`fm9g.backends.torch_backend.speed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fm9g.backends.torch_backend import speed
from fm9g.backends.training import run
from fm9g.backends.training.collectives import TorchDistributed
from fm9g.backends.training.loop import TorchOptimization
from fm9g.backends.training.model import TrainingModel
from fm9g.backends.training.resume import ResumePoint


def _state_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer, then the root (bf16 params, fp32 reduce on GPU)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
    layers = speed.decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def frozen_dtype(config: dict[str, Any], device: torch.device) -> torch.dtype:
    """The dtype the frozen (non-trainable) weights train in: see :func:`set_dtypes`."""
    dtype = config["model"]["dtype"]
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda" and config["delta"]):
        return torch.bfloat16
    return torch.float32


def set_dtypes(model: torch.nn.Module, config: dict[str, Any], device: torch.device) -> None:
    """``model.dtype: bfloat16``: every weight in bf16. ``auto`` on a GPU with a delta: the frozen
    base in bf16 (it needs no float32 master). Otherwise float32."""
    if config["model"]["dtype"] == "bfloat16":
        model.to(torch.bfloat16)
    elif frozen_dtype(config, device) == torch.bfloat16:
        for parameter in model.parameters():
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)


class TorchStrategy:
    """:class:`~fm9g.backends.training.run.BackendStrategy` for plain PyTorch (FSDP2 across processes)."""

    name = "torch"

    def __init__(self, config: dict[str, Any]):
        self.collectives = TorchDistributed()
        self.device = self.collectives.device
        deterministic = config["backend_options"]["deterministic"]
        if deterministic or (deterministic is None and self.device.type == "cpu"):
            torch.use_deterministic_algorithms(True, warn_only=True)
        speed.check_speed_options(config, self.device, self.collectives.world_size)

    def base_dtype(self, config: dict[str, Any]) -> torch.dtype:
        return frozen_dtype(config, self.device)

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Nothing: the torch backend trains the model as transformers builds it."""

    def setup_model(self, built: TrainingModel, config: dict[str, Any]) -> torch.nn.Module:
        model = built.model
        set_dtypes(model, config, self.device)
        if config["model"]["fp8"]:
            speed.convert_to_fp8(model)
        if config["use_checkpoint"]:
            speed.enable_checkpointing(model, config["backend_options"]["checkpoint_blocks"])
        if config["model"]["compile"]:
            speed.compile_layers(model)
        if self.collectives.world_size > 1:
            model = shard_model(model, self.device)
        model.train()
        return model

    def make_optimization(self, model: torch.nn.Module, config: dict[str, Any]) -> TorchOptimization:
        trainable = [p for p in model.parameters() if p.requires_grad]
        fused = (self.device.type == "cuda" and self.collectives.world_size == 1
                 and config["backend_options"]["fused_adamw"])
        optimizer = speed.make_optimizer(trainable, config, fused=fused)
        if config["backend_options"]["optimizer"] == "adamw_8bit":
            return speed.TensorLrOptimization(model, optimizer)
        return TorchOptimization(model, optimizer)

    def restore_optimizer(self, optimization: TorchOptimization, resume: ResumePoint) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state, packed = speed.split_packed_state(resume.torch_optimizer_state())
        set_optimizer_state_dict(optimization.model, optimization.optimizer, state,
                                 options=_state_options(full_state_dict=True))
        if isinstance(optimization, speed.TensorLrOptimization):
            speed.requantize_state(optimization.optimizer, dict(optimization.model.named_parameters()), packed)

    def describe(self, config: dict[str, Any]) -> run.RunDescription:
        autocast = torch.bfloat16 if self.device.type == "cuda" and config["model"]["dtype"] == "auto" else None
        precision = "bf16 autocast, fp32 master" if autocast else config["model"]["dtype"].replace("auto", "float32")
        if config["model"]["fp8"]:
            precision += ", float8 rowwise linear layers (torchao)"
        notes = ([f"'offload' applies to the bmtrain backend; torch keeps optimizer state on {self.device.type}"]
                 if config["offload"] else [])
        if config["model"]["compile"]:
            notes.append("model.compile: each decoder layer runs torch.compile'd (the first steps compile)")
        if config["backend_options"]["optimizer"] == "adamw_8bit":
            notes.append("optimizer: torchao AdamW8bit (8-bit moments; checkpoints hold them as float32 and as codes)")
        return run.RunDescription(str(self.device), precision, autocast, notes)

    def gather_weights(self, model: torch.nn.Module, optimization: TorchOptimization, *,
                       trainable_only: bool) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        weights = get_model_state_dict(model, options=_state_options(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
        return weights if self.collectives.is_main else None

    def save_optimizer(self, model: torch.nn.Module, optimization: TorchOptimization, staging: Path) -> Any:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(model, optimization.optimizer, options=_state_options(
            full_state_dict=True, cpu_offload=True))
        if not self.collectives.is_main:
            return None
        return speed.savable_state(state) if isinstance(optimization, speed.TensorLrOptimization) else state


def train(config: dict[str, Any], context: run.RunContext) -> dict[str, Any]:
    """Train as the config says on this process (one of the torchrun group, if any); the final state."""
    strategy = TorchStrategy(config)
    try:
        return run.train(config, context, strategy)
    finally:
        strategy.collectives.close()
