"""The training loss of a packed batch, computed from logits (never by transformers).

Targets are the seed's pre-shifted targets: ``targets[i]`` is the token that should follow
``input_ids[i]``, -100 where nothing is trained. So there is no shift here (passing ``labels`` to a
transformers model would shift them a second time). The step loss is the sum of token losses over
the global batch divided by its number of target tokens; per-task sums come from ``task_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fm9g.mixer.samples import IGNORE_INDEX


@dataclass
class TokenLoss:
    """Summed token losses of one micro-batch; ``task_sum``/``task_count`` are indexed by task id."""

    total: torch.Tensor
    count: torch.Tensor
    task_sum: torch.Tensor
    task_count: torch.Tensor


def token_loss(logits: torch.Tensor, targets: torch.Tensor, task_ids: torch.Tensor, num_tasks: int) -> TokenLoss:
    """Cross-entropy summed over target tokens, in float32; per-task sums are detached."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1).long()
    per_token = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    trained = targets != IGNORE_INDEX
    tasks = task_ids.reshape(-1).long().clamp(min=0)
    weights = trained.to(per_token.dtype)
    task_sum = torch.zeros(num_tasks, dtype=torch.float64, device=logits.device)
    task_count = torch.zeros(num_tasks, dtype=torch.float64, device=logits.device)
    task_sum.index_add_(0, tasks, (per_token.detach() * weights).double())
    task_count.index_add_(0, tasks, weights.double())
    return TokenLoss(per_token.sum(), trained.sum(), task_sum, task_count)
