"""The ``torch`` backend's training run (imported on first use by :mod:`fm9g.backends.torch_backend`).

* CPU: float32 throughout. GPU: float32 master weights with bf16 autocast; with a delta, the frozen
  base weights are stored in bf16 (they need no master copy). ``model.dtype: bfloat16`` stores all
  weights in bf16.
* Several processes: ``fully_shard`` on every decoder layer and then the root (FSDP2), gloo on CPU
  and NCCL on GPUs. Rank r trains on global batches b ≡ r (mod W). Checkpoints hold full
  (unsharded) tensors, so a run can resume with another world size.
* AdamW (betas 0.9/0.95, eps 1e-8, the config's weight decay) on trainable parameters only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fm9g.backends import bmtrain_checkpoint
from fm9g.backends import checkpoints as ckpt
from fm9g.backends.data import stream_tokenizer
from fm9g.backends.loop import TrainState, run_training, training_result
from fm9g.backends.models import TrainingModel, build_training_model, parameter_counts
from fm9g.backends.run_context import RunContext
from fm9g.backends.schedule import schedule_from_config


class Distributed:
    """Rank, world size and device of this process; starts the process group under torchrun."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


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
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def frozen_dtype(config: dict[str, Any], device: torch.device, has_delta: bool) -> torch.dtype:
    """The dtype the frozen (non-trainable) weights train in: see :func:`set_dtypes`."""
    dtype = config["model"].get("dtype", "auto")
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda" and has_delta):
        return torch.bfloat16
    return torch.float32


def set_dtypes(model: torch.nn.Module, config: dict[str, Any], device: torch.device, has_delta: bool) -> None:
    """``model.dtype: bfloat16``: every weight in bf16. ``auto`` on a GPU with a delta: the frozen
    base in bf16 (it needs no float32 master). Otherwise float32."""
    dtype = config["model"].get("dtype", "auto")
    if dtype == "bfloat16":
        model.to(torch.bfloat16)
    elif frozen_dtype(config, device, has_delta) == torch.bfloat16:
        for parameter in model.parameters():
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)


def train(config: dict[str, Any], run: RunContext) -> dict[str, Any]:
    """Train as the config says on this process (one of the torchrun group, if any); the final state."""
    env = Distributed()
    try:
        return _train(config, run, env)
    finally:
        env.close()


def _train(config: dict[str, Any], run: RunContext, env: Distributed) -> dict[str, Any]:
    options = config.get("backend_options", {})
    device = env.device
    if options.get("deterministic", device.type == "cpu"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    save_dir = Path(config["save"])
    manifest = ckpt.start_run(save_dir, run.resume, is_main=env.is_main)
    stream = run.open_stream(config, rank=env.rank, world_size=env.world_size)
    tokenizer = stream_tokenizer(stream, config)
    task_names = list(stream.task_names)

    has_delta = bool(config.get("delta"))
    built = build_training_model(config, device=device, vocab_size=getattr(tokenizer, "vocab_size", None),
                                 resume=run.resume, manifest=manifest, is_main=env.is_main,
                                 base_dtype=frozen_dtype(config, device, has_delta))
    model = built.model
    set_dtypes(model, config, device, has_delta)
    if config.get("use_checkpoint"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total_params, trainable_params = parameter_counts(model)
    if env.world_size > 1:
        model = shard_model(model, device)
    model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and env.world_size == 1 and options.get("fused_adamw", True)
    optimizer = torch.optim.AdamW(trainable, lr=config["lr"], betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=config["weight_decay"], fused=fused or None)
    state = TrainState()
    if manifest is not None:
        _restore(model, optimizer, run.resume, env)
        state = TrainState(step=manifest["step"], tokens_seen=manifest["tokens_seen"])
    else:
        torch.manual_seed(config["seed"] + env.rank)

    schedule = schedule_from_config(config)
    autocast = torch.bfloat16 if device.type == "cuda" and config["model"].get("dtype", "auto") == "auto" else None
    if env.is_main:
        run.print_header(config=config, total_params=total_params, trainable_params=trainable_params,
                         device=str(device), world_size=env.world_size, task_names=task_names,
                         tokenizer=tokenizer, resumed_from=run.resume, step=state.step,
                         precision="bf16 autocast, fp32 master" if autocast else str(next(model.parameters()).dtype))
        if config.get("offload"):
            run.message("note: 'offload' applies to the bmtrain backend; torch keeps optimizer state on "
                        f"{device.type}")

    def save(current: TrainState) -> None:
        _save(model, optimizer, stream, config, current, env, built, schedule)

    state = run_training(run, is_main=env.is_main, save_dir=save_dir, stream=stream, state=state, config=config,
                         model=model, optimizer=optimizer, task_names=task_names, schedule=schedule, device=device,
                         world_size=env.world_size, save=save, autocast_dtype=autocast)
    return training_result(state, save_dir)

def _restore(model, optimizer, directory: str | Path, env: Distributed) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    optimizer_state = ckpt.load_tensors(Path(directory) / "optimizer.pt")
    if bmtrain_checkpoint.is_partitioned(optimizer_state):  # written by the bmtrain backend
        optimizer_state = bmtrain_checkpoint.SavedOptimizer.open(directory).torch_state_dict()
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=_state_options(full_state_dict=True))
    ckpt.restore_rng(directory, rank=env.rank, world_size=env.world_size)


def _save(model, optimizer, stream, config, state: TrainState, env: Distributed, built: TrainingModel,
          schedule) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    lora = config.get("delta")
    weights = get_model_state_dict(model, options=_state_options(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=bool(lora)))
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_state_options(
        full_state_dict=True, cpu_offload=True))
    rng_states = env.gather(ckpt.capture_rng_state())
    stream_states = env.gather(stream.state_dict())
    if env.is_main:
        def write_weights(directory: Path) -> dict[str, str]:
            if lora:
                return built.engine.save(model, directory, lora, state_dict=weights)
            return ckpt.save_full_weights(weights, directory)

        ckpt.save_checkpoint(
            config["save"], step=state.step, tokens_seen=state.tokens_seen, config=config,
            weights="lora" if lora else "full", write_weights=write_weights,
            optimizer_state=optimizer_state, scheduler_state=schedule.state_dict(state.step),
            rng_state={"ranks": rng_states, "seed": config["seed"]}, stream_state=stream_states[-1],
            hf_config=built.hf_config, backend="torch", base_weights=built.base_weights)
    if env.world_size > 1:
        dist.barrier()
