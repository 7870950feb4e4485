"""The ``bmtrain`` backend: BMTrain ZeRO-3 (the seed's trainer) behind the same ``fm9g train``.

What it shares with the torch backend: the model (``models.build_model``: preset / HF dir / seed
``.pt``, fm9g's varlen attention), the data stream, the loop (``loop.run_loop``: token-mean loss,
per-task loss, grad accumulation, logging, save cadence), the schedule, the checkpoint layout and
the run header. What differs:

* Start-up: ``bmt.init_distributed(seed=...)`` (BMTrain's own NCCL communicator; torchrun's
  environment when ``fm9g train --nproc-per-node/--nnodes`` starts several processes).
* The model is built on the GPU in float32 (``build_model``: a preset's random init runs on the
  GPU — seconds even for the 7B), the delta is applied (PEFT **before** wrapping: the wrapper moves
  every parameter into per-block ZeRO storage, so modules added later would not be sharded),
  checkpoint weights are loaded, the model is cast to bf16 (``model.dtype: auto`` / ``bfloat16``;
  ``float32`` keeps fp32), then ``bmt.BMTrainModelWrapper`` turns each decoder layer into a ZeRO-3
  ``bmt.Block`` (activation-checkpointed iff ``use_checkpoint``). The blocks hand the decoder layer
  its ``position_ids`` as a named parameter of its forward (``Block.forward`` binds the layer's
  signature and forwards only those), and fm9g's attention derives sample boundaries from them.
  Tied embeddings are untied first (the wrapper would make two parameters of one anyway); the
  saved ``config.json`` then says ``tie_word_embeddings: false``.
* Optimizer: ``bmt.optim.AdamOffloadOptimizer`` when ``offload`` else ``bmt.optim.AdamOptimizer``
  (betas 0.9/0.95, eps 1e-8, the config's weight decay; float32 master weights of bf16
  parameters), driven by ``bmt.optim.OptimManager`` (loss scaling from ``backend_options``,
  ``clip_grad_norm``); fm9g's schedule sets the learning rate each step.
* Checkpoints: see :mod:`fm9g.backends.bmtrain_checkpoint` — same files as the torch backend
  (float32 master weights under HF names; LoRA in PEFT's format), optimizer state per rank.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch

import fm9g
from fm9g.backends import bmtrain_checkpoint as bmt_ckpt
from fm9g.backends import checkpoints as ckpt
from fm9g.backends.bmtrain_runtime import (BmtCollectives, BmtOptimization, import_bmtrain, init_bmtrain,
                                           make_manager, make_optimizer, manager_state, restore_manager)
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
        "loss_scale": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                       "description": "initial loss scale of OptimManager (null: no loss scaling, bf16's usual)"},
        "loss_scale_factor": {"type": "number", "exclusiveMinimum": 1, "default": 2,
                              "description": "factor the scale shrinks by on overflow and grows by when stable"},
        "loss_scale_steps": {"type": "integer", "minimum": 1, "default": 1024,
                             "description": "overflow-free steps before the scale grows"},
    },
    "additionalProperties": False,
}


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


def set_block_checkpointing(model: torch.nn.Module, block_class: type, enabled: bool) -> int:
    """Switch BMTrain's per-block activation checkpointing (``Block._use_checkpoint``); returns the block count."""
    blocks = [m for m in model.modules() if isinstance(m, block_class)]
    for block in blocks:
        block._use_checkpoint = enabled
    return len(blocks)


def wrap_model(bmt: Any, model: torch.nn.Module, *, use_checkpoint: bool) -> torch.nn.Module:
    """``bmt.BMTrainModelWrapper`` (every decoder layer a ZeRO-3 block), checkpointing set, train mode."""
    model = bmt.BMTrainModelWrapper(model)
    if not set_block_checkpointing(model, bmt.Block, use_checkpoint):
        raise Fm9gError("BMTrainModelWrapper found no decoder layers to turn into ZeRO blocks",
                        where="train config: model", fix="use a Llama/Qwen2-style causal LM (layers in a ModuleList)")
    model.train()
    torch.cuda.empty_cache()
    return model


class BmtrainBackend:
    name = "bmtrain"
    description = "BMTrain ZeRO-3 (+ optimizer offload): the seed's trainer; torchrun across GPUs and nodes"
    options_schema = OPTIONS_SCHEMA

    def train(self, config: dict[str, Any], run: RunContext) -> dict[str, Any]:
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
        self.engine = None

    def train(self) -> dict[str, Any]:
        config, run = self.config, self.run
        manifest = ckpt.read_manifest(run.resume) if run.resume else None
        if manifest is None and ckpt.latest_checkpoint(self.save_dir) is not None:
            raise Fm9gError("the save directory already holds checkpoints", where=str(self.save_dir),
                            fix="resume with --resume auto, or choose another 'save' directory")
        if self.is_main:
            ckpt.remove_stale_temporaries(self.save_dir)
        self.comm.barrier()
        stream_state = ckpt.read_state_json(run.resume, "stream_state.json") if run.resume else None
        self.stream = (run.stream_factory or open_stream)(config, rank=self.rank, world_size=self.world_size,
                                                          state=stream_state)
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
        logger = RunLogger(self.save_dir, resume_step=state.step, enabled=self.is_main)
        progress = run.progress(total=config["train_iters"], initial=state.step) if self.is_main else None
        try:
            state = run_loop(model=model, optimizer=self.optimizer, stream=self.stream, state=state, config=config,
                             task_names=task_names, schedule=self.schedule, device=self.device,
                             world_size=self.world_size, logger=logger, save=self._save, progress=progress,
                             autocast_dtype=None, inspect=run.message if self.is_main else None,
                             optimization=BmtOptimization(self.manager, self.optimizer), collectives=self.comm)
        finally:
            if progress is not None:
                progress.close()
            logger.close()
            if hasattr(self.stream, "close"):
                self.stream.close()
        self.comm.barrier()
        latest = ckpt.latest_checkpoint(self.save_dir)
        return {"step": state.step, "tokens_seen": state.tokens_seen, "checkpoint": str(latest) if latest else None}

    # ------------------------------------------------------------------ model

    def _build_model(self, manifest: dict | None, vocab_size: int | None) -> tuple[torch.nn.Module, int, int]:
        config = self.config
        model = build_model(config["model"], seed=config["seed"], device=self.device, vocab_size=vocab_size)
        untie_embeddings(model)
        self.hf_config = copy.deepcopy(model.config)
        if self.lora:
            from fm9g.core.plugins import get_plugin

            self.engine = get_plugin("delta_engine", self.lora.get("engine", "peft"), where="train config: delta.engine")
            model = self.engine.apply(model, self.lora)
        if manifest is not None:
            if self.lora:
                self.engine.load(model, self.run.resume)
            else:
                load_into(model, ckpt.load_full_weights(self.run.resume), source=self.run.resume)
        self.param_dtype = torch.float32 if config["model"].get("dtype", "auto") == "float32" else torch.bfloat16
        cast_parameters(model, self.param_dtype)
        total, trainable = parameter_counts(model)
        model = wrap_model(self.bmt, model, use_checkpoint=bool(config.get("use_checkpoint")))
        return model, total, trainable

    # ------------------------------------------------------------------ resume

    def _restore(self, manifest: dict[str, Any]) -> None:
        directory = Path(self.run.resume)
        saved = bmt_ckpt.SavedOptimizer.open(directory)
        master_of = None if manifest.get("backend") == "bmtrain" else bmt_ckpt.master_from_weights(
            directory, manifest["weights"])
        bmt_ckpt.restore_optimizer(self.optimizer, self.named, saved, master_of)
        restore_manager(self.manager, saved.manager)
        rng = ckpt.load_tensors(directory / "rng.pt")
        ranks = rng.get("ranks", [rng])
        if len(ranks) == self.world_size:
            ckpt.restore_rng_state(ranks[self.rank])
        else:
            torch.manual_seed(int(rng.get("seed", 0)) + self.rank)

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
                files = self.engine.save(self.model, directory, self.lora, state_dict=weights)
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
            hf_config=self.hf_config, backend="bmtrain")


def _check_adapter(path: Path, *, expected: int) -> None:
    """The delta engine wrote every LoRA tensor (PEFT selects them by walking the wrapped model's modules)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        written = len(list(handle.keys()))
    if written != expected:
        raise Fm9gError(f"the adapter holds {written} of the {expected} LoRA tensors", where=str(path),
                        fix="report this: the delta engine did not recognise the BMTrain-wrapped LoRA modules")


@fm9g.hookimpl
def register_backends(register):
    register(BmtrainBackend())
