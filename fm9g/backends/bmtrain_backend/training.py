"""The ``bmtrain`` backend's part of the run sequence (:class:`BmtrainStrategy`), imported on first use by
:mod:`fm9g.backends.bmtrain_backend.plugin`, whose docstring says what the backend does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fm9g.backends.bmtrain_backend import checkpoint as bmt_checkpoint
from fm9g.backends.bmtrain_backend.runtime import (BmtCollectives, BmtOptimization, import_bmtrain, init_bmtrain,
                                                   make_manager, make_optimizer, manager_state, restore_manager)
from fm9g.backends.training import run
from fm9g.backends.training.model import TrainingModel
from fm9g.backends.training.resume import ResumePoint
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


class BmtrainStrategy:
    """:class:`~fm9g.backends.training.run.BackendStrategy` for BMTrain ZeRO-3 (BMTrain started here)."""

    name = "bmtrain"

    def __init__(self, config: dict[str, Any]):
        torch_only = [key for key in ("compile", "fp8") if config["model"][key]]
        if torch_only:
            raise Fm9gError(f"model.{torch_only[0]} applies to the torch backend only",
                            where=f"train config: model.{torch_only[0]}", fix=f"use backend 'torch', or drop model.{torch_only[0]}")
        self.bmt = import_bmtrain()
        init_bmtrain(self.bmt, config["seed"])
        self.collectives = BmtCollectives(self.bmt)
        self.device = self.collectives.device
        self.param_dtype = torch.float32 if config["model"]["dtype"] == "float32" else torch.bfloat16

    def base_dtype(self, config: dict[str, Any]) -> torch.dtype:
        return self.param_dtype

    def prepare_model(self, model: torch.nn.Module) -> None:
        untie_embeddings(model)

    def setup_model(self, built: TrainingModel, config: dict[str, Any]) -> torch.nn.Module:
        cast_parameters(built.model, self.param_dtype)
        return wrap_model(self.bmt, built.model, use_checkpoint=config["use_checkpoint"],
                          checkpoint_blocks=config["backend_options"]["checkpoint_blocks"])

    def make_optimization(self, model: torch.nn.Module, config: dict[str, Any]) -> BmtOptimization:
        named = bmt_checkpoint.named_trainable(model)
        optimizer = make_optimizer(self.bmt, [p for _, p in named], offload=config["offload"], lr=config["lr"],
                                   weight_decay=config["weight_decay"])
        manager = make_manager(self.bmt, optimizer, config["backend_options"])
        return BmtOptimization(manager, optimizer, self.collectives, named)

    def restore_optimizer(self, optimization: BmtOptimization, resume: ResumePoint) -> None:
        saved = resume.optimizer()
        master_of = None if resume.backend == "bmtrain" else bmt_checkpoint.master_from_weights(resume)
        bmt_checkpoint.restore_optimizer(optimization.optimizer, optimization.named, saved, master_of)
        restore_manager(optimization.manager, saved.manager)

    def describe(self, config: dict[str, Any]) -> run.RunDescription:
        offload = "optimizer offloaded to CPU" if config["offload"] else "optimizer on GPU"
        precision = {torch.bfloat16: "bf16 params, fp32 master in the optimizer",
                     torch.float32: "fp32"}[self.param_dtype]
        return run.RunDescription(f"{self.device.type} (BMTrain ZeRO-3, {offload})", precision)

    def gather_weights(self, model: torch.nn.Module, optimization: BmtOptimization, *,
                       trainable_only: bool) -> dict[str, torch.Tensor] | None:
        torch.cuda.synchronize()
        weights = dict(bmt_checkpoint.gather_weights(
            model, optimization.optimizer, trainable_only=trainable_only, all_reduce=self.collectives.all_reduce,
            device=self.device, keep=self.collectives.is_main))
        return weights if self.collectives.is_main else None

    def save_optimizer(self, model: torch.nn.Module, optimization: BmtOptimization, staging: Path) -> Any:
        """Each rank writes its optimizer slices straight from the GPU (or host, with offload) into
        ``staging``, so no rank ever holds the whole state; rank 0 returns the small header."""
        comm = self.collectives
        partition = bmt_checkpoint.optimizer_partition(optimization.named, optimization.optimizer,
                                                       rank=comm.rank, world_size=comm.world_size)
        torch.save(partition, staging / bmt_checkpoint.optimizer_rank_file(comm.rank))
        if not comm.is_main:
            return None
        return bmt_checkpoint.optimizer_header(optimization.named, optimization.optimizer,
                                               world_size=comm.world_size, manager=manager_state(optimization.manager))


def train(config: dict[str, Any], context: run.RunContext) -> dict[str, Any]:
    """Train as the config says on this rank (BMTrain started here); the final state."""
    return run.train(config, context, BmtrainStrategy(config))
