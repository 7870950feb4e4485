"""The ``torch`` backend: one process on CPU or a GPU, or many processes (torchrun) with FSDP2.

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
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import fm9g
from fm9g.backends import bmtrain_checkpoint
from fm9g.backends import checkpoints as ckpt
from fm9g.backends.data import open_stream, stream_tokenizer
from fm9g.backends.logging import RunLogger
from fm9g.backends.loop import TrainState, run_loop
from fm9g.backends.models import build_model, load_into, parameter_counts
from fm9g.backends.run_context import RunContext
from fm9g.backends.schedule import schedule_from_config
from fm9g.core.errors import Fm9gError

OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "fused_adamw": {"type": "boolean", "description": "fused AdamW kernel on CUDA (default: true)"},
        "deterministic": {"type": "boolean", "description": "torch.use_deterministic_algorithms (default: true on CPU)"},
    },
    "additionalProperties": False,
}


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


class TorchBackend:
    name = "torch"
    description = "PyTorch: one process on CPU/GPU, FSDP2 across processes (torchrun); packed varlen attention"
    options_schema = OPTIONS_SCHEMA

    def train(self, config: dict[str, Any], run: RunContext) -> dict[str, Any]:
        env = Distributed()
        try:
            return self._train(config, run, env)
        finally:
            env.close()

    def _train(self, config: dict[str, Any], run: RunContext, env: Distributed) -> dict[str, Any]:
        options = config.get("backend_options", {})
        device = env.device
        if options.get("deterministic", device.type == "cpu"):
            torch.use_deterministic_algorithms(True, warn_only=True)
        save_dir = Path(config["save"])
        manifest = ckpt.read_manifest(run.resume) if run.resume else None
        if manifest is None and ckpt.latest_checkpoint(save_dir) is not None:
            raise Fm9gError("the save directory already holds checkpoints", where=str(save_dir),
                            fix="resume with --resume auto, or choose another 'save' directory")
        if env.is_main:
            ckpt.remove_stale_temporaries(save_dir)
        stream_state = ckpt.read_state_json(run.resume, "stream_state.json") if run.resume else None
        stream = (run.stream_factory or open_stream)(config, rank=env.rank, world_size=env.world_size,
                                                     state=stream_state)
        tokenizer = stream_tokenizer(stream, config)
        task_names = list(stream.task_names)

        model = build_model(config["model"], seed=config["seed"], device=device,
                            vocab_size=getattr(tokenizer, "vocab_size", None))
        hf_config = model.config
        delta = config.get("delta")
        engine = None
        if delta:
            from fm9g.core.plugins import get_plugin

            engine = get_plugin("delta_engine", delta.get("engine", "peft"), where="train config: delta.engine")
            model = engine.apply(model, delta)
        if manifest is not None:
            if delta:
                engine.load(model, run.resume)
            else:
                load_into(model, ckpt.load_full_weights(run.resume), source=run.resume)
        self._set_dtypes(model, config, device, delta is not None)
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
            self._restore(model, optimizer, run.resume, env)
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
        logger = RunLogger(save_dir, resume_step=state.step, enabled=env.is_main)

        def save(current: TrainState) -> None:
            self._save(model, optimizer, stream, config, current, env, engine, hf_config, schedule)

        progress = run.progress(total=config["train_iters"], initial=state.step) if env.is_main else None
        try:
            state = run_loop(model=model, optimizer=optimizer, stream=stream, state=state, config=config,
                             task_names=task_names, schedule=schedule, device=device,
                             world_size=env.world_size, logger=logger, save=save, progress=progress,
                             autocast_dtype=autocast, inspect=run.message if env.is_main else None)
        finally:
            if progress is not None:
                progress.close()
            logger.close()
            if hasattr(stream, "close"):
                stream.close()
        latest = ckpt.latest_checkpoint(save_dir)
        return {"step": state.step, "tokens_seen": state.tokens_seen, "checkpoint": str(latest) if latest else None}

    @staticmethod
    def _set_dtypes(model: torch.nn.Module, config: dict[str, Any], device: torch.device, has_delta: bool) -> None:
        dtype = config["model"].get("dtype", "auto")
        if dtype == "bfloat16":
            model.to(torch.bfloat16)
        elif dtype == "auto" and device.type == "cuda" and has_delta:
            for parameter in model.parameters():
                if not parameter.requires_grad:
                    parameter.data = parameter.data.to(torch.bfloat16)

    @staticmethod
    def _restore(model, optimizer, directory: str | Path, env: Distributed) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        optimizer_state = ckpt.load_tensors(Path(directory) / "optimizer.pt")
        if bmtrain_checkpoint.is_partitioned(optimizer_state):  # written by the bmtrain backend
            optimizer_state = bmtrain_checkpoint.SavedOptimizer.open(directory).torch_state_dict()
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_state_options(full_state_dict=True))
        rng = ckpt.load_tensors(Path(directory) / "rng.pt")
        ranks = rng.get("ranks", [rng])
        if len(ranks) == env.world_size:
            ckpt.restore_rng_state(ranks[env.rank])
        else:
            torch.manual_seed(int(rng.get("seed", 0)) + env.rank)

    @staticmethod
    def _save(model, optimizer, stream, config, state: TrainState, env: Distributed, engine, hf_config,
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
            if lora:
                def write_weights(directory: Path) -> dict[str, str]:
                    return engine.save(model, directory, lora, state_dict=weights)
            else:
                def write_weights(directory: Path) -> dict[str, str]:
                    return ckpt.save_full_weights(weights, directory)
            ckpt.save_checkpoint(
                config["save"], step=state.step, tokens_seen=state.tokens_seen, config=config,
                weights="lora" if lora else "full", write_weights=write_weights,
                optimizer_state=optimizer_state, scheduler_state=schedule.state_dict(state.step),
                rng_state={"ranks": rng_states, "seed": config["seed"]}, stream_state=stream_states[-1],
                hf_config=hf_config, backend="torch")
        if env.world_size > 1:
            dist.barrier()


@fm9g.hookimpl
def register_backends(register):
    register(TorchBackend())
