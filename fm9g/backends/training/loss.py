"""The training loss of a packed batch, computed by fm9g (never by transformers).

Targets are the seed's pre-shifted targets: ``targets[i]`` is the token that should follow
``input_ids[i]``, -100 where nothing is trained. So there is no shift here (passing ``labels`` to a
transformers model would shift them a second time). The step loss is the sum of token losses over
the global batch divided by its number of target tokens; per-task sums come from ``task_ids``.

The token losses come from the model's logits (:func:`token_loss`) or, when the model's output
embedding is a :class:`~fm9g.backends.training.fused_loss.FusedLossHead` (``model.loss_chunk_tokens``),
from the head itself, which never materializes the logits (:func:`batch_loss` picks the path).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fm9g.backends.training.batches import DeviceBatch
from fm9g.backends.training.fused_loss import find_fused_head
from fm9g.core.errors import Fm9gError
from fm9g.mixer.samples import IGNORE_INDEX


@dataclass
class TokenLoss:
    """Summed token losses of one micro-batch; ``task_sum``/``task_count`` are indexed by task id."""

    total: torch.Tensor
    count: torch.Tensor
    task_sum: torch.Tensor
    task_count: torch.Tensor


def summed_loss(total: torch.Tensor, per_token: torch.Tensor, targets: torch.Tensor, task_ids: torch.Tensor,
                num_tasks: int) -> TokenLoss:
    """The :class:`TokenLoss` of token losses ``per_token`` (any value where the target is ignored)
    whose sum over target tokens is ``total``; per-task sums are detached, in float64."""
    targets = targets.reshape(-1)
    trained = targets != IGNORE_INDEX
    tasks = task_ids.reshape(-1).long().clamp(min=0)
    weights = trained.double()
    task_sum = torch.zeros(num_tasks, dtype=torch.float64, device=per_token.device)
    task_count = torch.zeros(num_tasks, dtype=torch.float64, device=per_token.device)
    task_sum.index_add_(0, tasks, per_token.detach().reshape(-1).double() * weights)
    task_count.index_add_(0, tasks, weights)
    return TokenLoss(total, trained.sum(), task_sum, task_count)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, task_ids: torch.Tensor, num_tasks: int) -> TokenLoss:
    """Cross-entropy of ``logits`` summed over target tokens, in float32; per-task sums are detached."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    per_token = F.cross_entropy(logits, targets.reshape(-1).long(), ignore_index=IGNORE_INDEX, reduction="none")
    return summed_loss(per_token.sum(), per_token, targets, task_ids, num_tasks)


def batch_loss(model: torch.nn.Module, batch: DeviceBatch, num_tasks: int,
               autocast_dtype: torch.dtype | None = None) -> TokenLoss:
    """Forward ``batch`` through ``model`` (under ``autocast_dtype`` autocast if given) and take its
    :class:`TokenLoss`: through the model's fused loss head if it has one, else from the logits."""
    device = batch.input_ids.device
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    head = find_fused_head(model)
    fusing = head.computing_loss(batch.targets) if head is not None else contextlib.nullcontext()
    with fusing as fused, autocast:
        output = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    if fused is None:
        return token_loss(output, batch.targets, batch.task_ids, num_tasks)
    if fused.per_token is None or output.ndim != 0:
        raise Fm9gError(f"{type(model).__name__}'s forward did not return its fused loss head's loss as logits",
                        where="train config: model.loss_chunk_tokens",
                        fix="set model.loss_chunk_tokens to 0 for this model")
    return summed_loss(output, fused.per_token, batch.targets, batch.task_ids, num_tasks)
