"""The ``bmtrain`` backend's training run (imported on first use by :mod:`fm9g.backends.bmtrain_backend`,
whose docstring says what the backend does)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from fm9g.backends import bmtrain_checkpoint as bmt_ckpt
from fm9g.backends import checkpoints as ckpt
from fm9g.backends.bmtrain_runtime import (BmtCollectives, BmtOptimization, import_bmtrain, init_bmtrain,
                                           make_manager, make_optimizer, manager_state, restore_manager)
from fm9g.backends.data import stream_tokenizer
from fm9g.backends.loop import TrainState, run_training, training_result
from fm9g.backends.models import build_training_model, parameter_counts
from fm9g.backends.run_context import RunContext
from fm9g.backends.schedule import schedule_from_config
from fm9g.core.errors import Fm9gError


def untie_embeddings(model: torch.nn.Module) -> bool:
    """Give ``lm_head`` its own copy of a tied input embedding; True if it was tied."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embedding.weight:
        return False
    head.weight = torch.nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    model.config.tie_word_embeddings = False
    return True


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point parameters only: buffers such as RoPE's ``inv_freq`` stay float32
    (``model.to(bf16)`` would round them, and positions far into a row would drift)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)


def set_block_checkpointing(model: torch.nn.Module, block_class: type, enabled: bool,
                            limit: int | None = None) -> int:
    """Switch BMTrain's per-block activation checkpointing (``Block._use_checkpoint``) on for the
    first ``limit`` blocks (all when ``None``) and off for the rest; returns the block count.

    Blocks left out keep their activations until backward (measured on the fm9g-7b: ≈ 1.35 GiB per
    block and 4096-token row): faster steps for more memory, the trade ``backend_options.checkpoint_blocks`` sets.
    """
    blocks = [m for m in model.modules() if isinstance(m, block_class)]
    for index, block in enumerate(blocks):
        block._use_checkpoint = enabled and (limit is None or index < limit)
    return len(blocks)


def wrap_model(bmt: Any, model: torch.nn.Module, *, use_checkpoint: bool,
               checkpoint_blocks: int | None = None) -> torch.nn.Module:
    """``bmt.BMTrainModelWrapper`` (every decoder layer a ZeRO-3 block), checkpointing set, train mode."""
    model = bmt.BMTrainModelWrapper(model)
    if not set_block_checkpointing(model, bmt.Block, use_checkpoint, checkpoint_blocks):
        raise Fm9gError("BMTrainModelWrapper found no decoder layers to turn into ZeRO blocks",
                        where="train config: model", fix="use a Llama/Qwen2-style causal LM (layers in a ModuleList)")
    model.train()
    torch.cuda.empty_cache()
    return model


def train(config: dict[str, Any], run: RunContext) -> dict[str, Any]:
    """Train as the config says on this rank (BMTrain started here); the final state."""
    bmt = import_bmtrain()
    init_bmtrain(bmt, config["seed"])
    return _Run(bmt, config, run).train()


class _Run:
    """One training run on this rank (the state :meth:`BmtrainBackend.train` needs between phases)."""

    def __init__(self, bmt: Any, config: dict[str, Any], run: RunContext):
        self.bmt, self.config, self.run = bmt, config, run
        self.comm = BmtCollectives(bmt)
        self.rank, self.world_size = bmt.rank(), bmt.world_size()
        self.is_main = self.rank == 0
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.save_dir = Path(config["save"])
        self.lora = config.get("delta")

    def train(self) -> dict[str, Any]:
        config, run = self.config, self.run
        manifest = ckpt.start_run(self.save_dir, run.resume, is_main=self.is_main)
        self.comm.barrier()
        self.stream = run.open_stream(config, rank=self.rank, world_size=self.world_size)
        tokenizer = stream_tokenizer(self.stream, config)
        task_names = list(self.stream.task_names)

        model, total_params, trainable_params = self._build_model(manifest, getattr(tokenizer, "vocab_size", None))
        self.model = model
        self.named = bmt_ckpt.named_trainable(model)
        if not self.named:
            raise Fm9gError("the model has no trainable parameters", where="train config: delta")
        self.optimizer = make_optimizer(self.bmt, [p for _, p in self.named], offload=bool(config.get("offload")),
                                        lr=config["lr"], weight_decay=config["weight_decay"])
        self.manager = make_manager(self.bmt, self.optimizer, config.get("backend_options") or {})
        state = TrainState()
        if manifest is not None:
            self._restore(manifest)
            state = TrainState(step=manifest["step"], tokens_seen=manifest["tokens_seen"])
        else:
            torch.manual_seed(config["seed"] + self.rank)

        self.schedule = schedule_from_config(config)
        precision = {torch.bfloat16: "bf16 params, fp32 master in the optimizer",
                     torch.float32: "fp32"}.get(self.param_dtype, str(self.param_dtype))
        if self.is_main:
            offload = "optimizer offloaded to CPU" if config.get("offload") else "optimizer on GPU"
            run.print_header(config=config, total_params=total_params, trainable_params=trainable_params,
                             device=f"{self.device.type} (BMTrain ZeRO-3, {offload})", world_size=self.world_size,
                             task_names=task_names, tokenizer=tokenizer, resumed_from=run.resume, step=state.step,
                             precision=precision)
        state = run_training(run, is_main=self.is_main, save_dir=self.save_dir, stream=self.stream, state=state,
                             config=config, model=model, optimizer=self.optimizer, task_names=task_names,
                             schedule=self.schedule, device=self.device, world_size=self.world_size, save=self._save,
                             autocast_dtype=None, optimization=BmtOptimization(self.manager, self.optimizer, self.comm),
                             collectives=self.comm)
        self.comm.barrier()
        return training_result(state, self.save_dir)

    # ------------------------------------------------------------------ model

    def _build_model(self, manifest: dict | None, vocab_size: int | None) -> tuple[torch.nn.Module, int, int]:
        config = self.config
        self.param_dtype = torch.float32 if config["model"].get("dtype", "auto") == "float32" else torch.bfloat16
        self.built = build_training_model(config, device=self.device, vocab_size=vocab_size, resume=self.run.resume,
                                          manifest=manifest, is_main=self.is_main, base_dtype=self.param_dtype,
                                          prepare=untie_embeddings)
        model = self.built.model
        cast_parameters(model, self.param_dtype)
        total, trainable = parameter_counts(model)
        options = config.get("backend_options") or {}
        model = wrap_model(self.bmt, model, use_checkpoint=bool(config.get("use_checkpoint")),
                           checkpoint_blocks=options.get("checkpoint_blocks"))
        return model, total, trainable

    # ------------------------------------------------------------------ resume

    def _restore(self, manifest: dict[str, Any]) -> None:
        directory = Path(self.run.resume)
        saved = bmt_ckpt.SavedOptimizer.open(directory)
        master_of = None if manifest.get("backend") == "bmtrain" else bmt_ckpt.master_from_weights(
            directory, manifest["weights"])
        bmt_ckpt.restore_optimizer(self.optimizer, self.named, saved, master_of)
        restore_manager(self.manager, saved.manager)
        ckpt.restore_rng(directory, rank=self.rank, world_size=self.world_size)

    # ------------------------------------------------------------------ save (every rank)

    def _save(self, state: TrainState) -> None:
        torch.cuda.synchronize()
        weights = {name: tensor for name, tensor in bmt_ckpt.gather_weights(
            self.model, self.optimizer, trainable_only=bool(self.lora), all_reduce=self.comm.all_reduce,
            device=self.device, keep=self.is_main)}
        rng_states = self.comm.gather_objects(ckpt.capture_rng_state())
        stream_states = self.comm.gather_objects(self.stream.state_dict())
        staging = self.save_dir / f".tmp-{ckpt.step_dir_name(state.step)}-optimizer"
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.comm.barrier()
        torch.save(bmt_ckpt.optimizer_partition(self.named, self.optimizer, rank=self.rank,
                                                world_size=self.world_size),
                   staging / bmt_ckpt.rank_file(self.rank))
        self.comm.barrier()
        if self.is_main:
            self._write_checkpoint(state, weights, staging, rng_states, stream_states[-1])
        del weights
        self.comm.barrier()

    def _write_checkpoint(self, state: TrainState, weights: dict[str, torch.Tensor], staging: Path,
                          rng_states: list, stream_state: dict) -> None:
        def write_weights(directory: Path) -> dict[str, str]:
            if self.lora:
                files = self.built.engine.save(self.model, directory, self.lora, state_dict=weights)
                _check_adapter(directory / files["adapter"], expected=len(weights))
            else:
                files = ckpt.save_full_weights(weights, directory)
            for rank in range(self.world_size):
                name = bmt_ckpt.rank_file(rank)
                os.replace(staging / name, directory / name)
                files[f"optimizer_rank_{rank}"] = name
            staging.rmdir()
            return files

        header = bmt_ckpt.optimizer_header(self.named, self.optimizer, world_size=self.world_size,
                                           manager=manager_state(self.manager))
        ckpt.save_checkpoint(
            self.config["save"], step=state.step, tokens_seen=state.tokens_seen, config=self.config,
            weights="lora" if self.lora else "full", write_weights=write_weights, optimizer_state=header,
            scheduler_state=self.schedule.state_dict(state.step),
            rng_state={"ranks": rng_states, "seed": self.config["seed"]}, stream_state=stream_state,
            hf_config=self.built.hf_config, backend="bmtrain", base_weights=self.built.base_weights)


def _check_adapter(path: Path, *, expected: int) -> None:
    """The delta engine wrote every LoRA tensor (PEFT selects them by walking the wrapped model's modules)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        written = len(list(handle.keys()))
    if written != expected:
        raise Fm9gError(f"the adapter holds {written} of the {expected} LoRA tensors", where=str(path),
                        fix="report this: the delta engine did not recognise the BMTrain-wrapped LoRA modules")

