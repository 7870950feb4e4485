"""Held-out loss per task: the model in eval mode, without gradients, over every held-out batch.

The batches (:class:`fm9g.mixer.held_out.HeldOutBatches`) are numbered globally; they are taken
in groups of W (the number of ranks) and rank r evaluates the r-th batch of each group, so the
ranks see disjoint parts and all of them together every batch once. Each rank sums token losses
and target-token counts per task in float64, and one all-reduce adds the ranks' sums: the figures
are those of one process evaluating every batch (a token's loss does not depend on which rank
computes it, and packed samples never attend to each other). Every rank runs the same number of
forward passes — one per group, a padding-only batch where its group has none — because a sharded
model's forward is itself a collective.

The model's train/eval mode and the RNG states (CPU and the device) are restored afterwards, so a
run that evaluates trains exactly as one that does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from fm9g.backends.training.batches import to_device
from fm9g.backends.training.collectives import Collectives
from fm9g.backends.training.loss import batch_loss
from fm9g.core.errors import Fm9gError
from fm9g.mixer.held_out import HeldOutBatches, find_held_out
from fm9g.mixer.manifest import Manifest, load_manifest
from fm9g.mixer.packing import pack


def perplexity(loss: float) -> float | None:
    """``exp(loss)``; ``None`` where it is not a finite number (JSON has no infinity)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else None


class Evaluator:
    """Evaluates a model on a run's held-out batches; a collective (every rank calls it)."""

    def __init__(self, held_out: HeldOutBatches, collectives: Collectives, *,
                 autocast_dtype: torch.dtype | None = None):
        self.held_out, self.collectives, self.autocast_dtype = held_out, collectives, autocast_dtype
        self.task_names = held_out.plan.task_names

    def __call__(self, model: torch.nn.Module, step: int,
                 on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
        """The evaluation record of ``model`` at training step ``step`` (the same on every rank);
        ``on_batch(tokens)`` is called after each group of batches (a progress bar)."""
        comm, tasks = self.collectives, len(self.task_names)
        device = comm.device
        sums = torch.zeros(2 * tasks + 1, dtype=torch.float64, device=device)
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        forked = [torch.cuda.current_device()] if device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=forked, device_type=device.type):
                group: list[Any] = []
                for batch in self.held_out:
                    group.append(batch)
                    if len(group) == comm.world_size:
                        sums += self._forward(model, group, on_batch)
                        group = []
                if group:
                    sums += self._forward(model, group, on_batch)
        finally:
            model.train(was_training)
        totals = comm.all_reduce(sums).tolist()
        return self._record(step, totals[:tasks], totals[tasks:2 * tasks], int(totals[-1]),
                            time.perf_counter() - started)

    def _forward(self, model: torch.nn.Module, group: list[Any], on_batch: Callable[[int], None] | None) -> torch.Tensor:
        """This rank's batch of ``group`` (or a padding-only one): per-task loss sums and target
        counts, and its number of tokens."""
        comm, tasks = self.collectives, len(self.task_names)
        if comm.rank < len(group):
            batch = group[comm.rank]
        else:
            batch = pack(-1, [], self.held_out.capacity, self.held_out.tokenizer.pad_id)
        batch = to_device(batch, comm.device)
        losses = batch_loss(model, batch, tasks, self.autocast_dtype)
        if on_batch is not None:
            on_batch(sum(int(member.num_tokens) for member in group))
        tokens = torch.tensor([float(batch.num_tokens)], dtype=torch.float64, device=comm.device)
        return torch.cat([losses.task_sum, losses.task_count, tokens])

    def _record(self, step: int, task_sums: list[float], task_counts: list[float], tokens: int,
                seconds: float) -> dict[str, Any]:
        weights = self.held_out.plan.weights
        results: dict[str, Any] = {}
        for name, total, count in zip(self.task_names, task_sums, task_counts):
            counts = self.held_out.counts.get(name)
            if counts is None:
                continue
            loss = total / count if count else float("nan")
            results[name] = {"loss": loss if count else None, "perplexity": perplexity(loss),
                             "target_tokens": int(count), **counts.as_json()}
        evaluated = {name: task for name, task in results.items() if task["target_tokens"]}
        all_tokens = sum(task["target_tokens"] for task in evaluated.values())
        loss = sum(task["loss"] * task["target_tokens"] for task in evaluated.values()) / all_tokens \
            if all_tokens else None
        weight_sum = sum(weights[name] for name in evaluated)
        weighted = sum(weights[name] * task["loss"] for name, task in evaluated.items()) / weight_sum \
            if weight_sum > 0 else None
        return {"step": step, "loss": loss, "weighted_loss": weighted,
                "perplexity": perplexity(loss) if loss is not None else None, "target_tokens": all_tokens,
                "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9), "tasks": results}


def held_out_batches(config: dict[str, Any], tokenizer: Any, *, manifest: Manifest | None = None,
                     task_names: list[str] | None = None) -> HeldOutBatches:
    """The held-out batches a train config evaluates on: its tasks' held-out sets
    (:func:`fm9g.mixer.held_out.find_held_out`), packed as its training batches are.

    ``manifest`` is the training mixture (default: the config's ``data.manifest``) and
    ``task_names`` its tasks (default: the manifest's); a run on a materialized mixture has no
    manifest, and its ``eval.manifest`` entries then say where each task's held-out set is."""
    eval_path = (config.get("eval") or {}).get("manifest")
    eval_manifest = load_manifest(eval_path) if eval_path else None
    if manifest is None and config["data"].get("manifest"):
        manifest = load_manifest(config["data"]["manifest"])
    if manifest is None:  # a materialized mixture: the eval manifest's entries say everything
        if eval_manifest is None:
            raise Fm9gError("held-out evaluation needs to know where each task's held-out data is, and a "
                            "materialized mixture (data.mixture) does not say", where="train config: eval",
                            fix="name an eval manifest (eval.manifest: eval.json, one entry per task), or set eval_iters 0")
        manifest = replace(eval_manifest, datasets=tuple(replace(spec, eval_path=spec.path)
                                                         for spec in eval_manifest.datasets))
        eval_manifest = None
    if tokenizer is None:
        raise Fm9gError("held-out evaluation needs the training tokenizer", where="train config: tokenizer",
                        fix="set tokenizer to the one the mixture was made with")
    plan = find_held_out(manifest, eval_manifest=eval_manifest, tokenizer_fingerprint=tokenizer.fingerprint,
                         task_names=task_names)
    if not plan.sets:
        raise Fm9gError(f"no task has a held-out set ({'; '.join(plan.notes)})", where="train config: eval_iters",
                        fix="prepare with fm9g prepare --split test=0.05 and index train.jsonl (its test split is "
                            "indexed beside it), give datasets an eval_path or eval.manifest, or set eval_iters 0")
    return HeldOutBatches(plan, tokenizer=tokenizer, max_length=config["max_length"], batch_size=config["batch_size"],
                          seed=manifest.seed, max_target_tokens=config["eval_tokens"],
                          trust_scripts=config["trust_scripts"], source=manifest.source)
