"""The output projection and the cross-entropy fused, a chunk of tokens at a time (``model.loss_chunk_tokens``).

The plain path materializes the logits of every token of a micro-batch ([tokens, vocab] in the
compute dtype), their float32 copy and the softmax gradient: for 16k tokens × 32k–120k vocab that is
several GiB. Here the logits of ``N`` tokens at a time are computed (``h_c @ Wᵀ``, in the compute
dtype: bf16 under autocast, the weights' dtype otherwise), their float32 log-sum-exp and token
losses taken, and right away the gradient ``softmax − one-hot`` (zero rows for ignored targets)
turned into the gradient w.r.t. ``h_c`` and added to a float32 gradient w.r.t. ``W`` — as Liger
Kernel's fused linear cross-entropy does. The backward only scales those gradients by the incoming
(scalar) gradient of the loss sum.

Every wrapper fm9g trains through calls the whole model (PEFT, OpenDelta, FSDP2 ``fully_shard``,
BMTrain's ``BMTrainModelWrapper``), and the parameters are only whole inside its forward (FSDP2
unshards them in the root's pre-forward; BMTrain gathers a parameter outside its blocks each time
the module's attribute is read). So the fusion happens inside the forward: :class:`FusedLossHead`
replaces the model's output embedding, keeping its ``weight`` Parameter (state-dict names, tied
embeddings, checkpoints and exports are unchanged). Given the micro-batch's targets
(:meth:`FusedLossHead.computing_loss`), it returns the loss sum as the model's ``logits``; otherwise
it is the plain linear (generation and anything else that wants logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fm9g.core.errors import Fm9gError
from fm9g.mixer.samples import IGNORE_INDEX

WHERE = "train config: model.loss_chunk_tokens"


@dataclass
class ChunkedResult:
    """Per-token float32 losses (0 where ignored) and, when asked for, the unscaled gradients of their sum."""

    per_token: torch.Tensor
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    """Float32, whatever the weight's dtype: the chunks' contributions are added in float32."""


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                          compute_dtype: torch.dtype, *, grad_hidden: bool, grad_weight: bool) -> ChunkedResult:
    """Token losses of ``hidden [T, H] @ weight[V, H]ᵀ`` against ``targets [T]``, ``chunk_tokens`` rows at a time."""
    weight_c = weight.to(compute_dtype)
    per_token = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    d_hidden = torch.empty_like(hidden) if grad_hidden else None
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight else None
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = min(start + chunk_tokens, hidden.shape[0])
        hidden_c = hidden[start:end].to(compute_dtype)
        chunk_targets = targets[start:end]
        trained = chunk_targets != IGNORE_INDEX
        picked_ids = torch.where(trained, chunk_targets, 0)[:, None]
        logits = (hidden_c @ weight_c.T).float()
        log_norm = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, picked_ids)[:, 0]
        per_token[start:end] = torch.where(trained, log_norm - picked, 0.0)
        if d_hidden is None and d_weight is None:
            continue
        grad_logits = logits.sub_(log_norm[:, None]).exp_()  # the softmax, in the logits' storage
        grad_logits.scatter_add_(1, picked_ids, torch.full_like(picked[:, None], -1.0))
        grad_logits = grad_logits.mul_(trained[:, None]).to(compute_dtype)
        if d_hidden is not None:
            d_hidden[start:end] = grad_logits @ weight_c
        if d_weight is not None:
            d_weight += grad_logits.T @ hidden_c
    return ChunkedResult(per_token, d_hidden, d_weight)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """``(loss sum, per-token losses)`` of ``hidden @ weightᵀ`` against ``targets``; the gradients are
    computed in the forward, so the backward is one multiplication per input. It may run once (the
    stored gradients are scaled in place), which is all a training step asks of it."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                compute_dtype: torch.dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here
            result = chunked_cross_entropy(hidden, weight, targets, chunk_tokens, compute_dtype,
                                           grad_hidden=ctx.needs_input_grad[0], grad_weight=ctx.needs_input_grad[1])
        ctx.save_for_backward(result.grad_hidden, result.grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(result.per_token)
        return result.per_token.sum(), result.per_token

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_per_token: torch.Tensor | None):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_total)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


@dataclass
class FusedLoss:
    """What one forward with targets left behind: the detached per-token losses (``None`` until the head ran)."""

    targets: torch.Tensor
    per_token: torch.Tensor | None = None


class FusedLossHead(torch.nn.Module):
    """The output embedding (a bias-free linear) with the cross-entropy fused in; see the module docstring."""

    def __init__(self, head: torch.nn.Linear, chunk_tokens: int):
        super().__init__()
        self.weight = head.weight
        self.in_features, self.out_features = head.in_features, head.out_features
        self.chunk_tokens = chunk_tokens
        self._pending: FusedLoss | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, chunk_tokens={self.chunk_tokens}"

    @contextlib.contextmanager
    def computing_loss(self, targets: torch.Tensor) -> Iterator[FusedLoss]:
        """Within it, the next forward returns the loss sum against ``targets`` and leaves the
        per-token losses in the yielded :class:`FusedLoss`."""
        pending = FusedLoss(targets.reshape(-1).long())
        self._pending = pending
        try:
            yield pending
        finally:
            self._pending = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # read once: BMTrain's wrapper all-gathers the weight on every read
        pending = self._pending
        if pending is None:
            return F.linear(hidden, weight)
        flat = hidden.reshape(-1, hidden.shape[-1])
        if flat.shape[0] != pending.targets.numel() or pending.per_token is not None:
            raise Fm9gError(f"the fused loss head got {flat.shape[0]} hidden states for {pending.targets.numel()} "
                            f"targets{' a second time' if pending.per_token is not None else ''}", where=WHERE,
                            fix="set model.loss_chunk_tokens to 0 for a model whose forward does not end in one "
                                "output projection of every token")
        device = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            total, per_token = FusedLinearCrossEntropy.apply(flat, weight, pending.targets, self.chunk_tokens,
                                                             compute_dtype)
        else:
            per_token = chunked_cross_entropy(flat, weight, pending.targets, self.chunk_tokens, compute_dtype,
                                              grad_hidden=False, grad_weight=False).per_token
            total = per_token.sum()
        pending.per_token = per_token
        return total


def install_fused_head(model: torch.nn.Module, chunk_tokens: int) -> None:
    """Replace ``model``'s output embedding by a :class:`FusedLossHead` of ``chunk_tokens`` tokens (0: leave it)."""
    if chunk_tokens == 0:
        return
    if chunk_tokens < 0:
        raise Fm9gError(f"loss_chunk_tokens {chunk_tokens} is negative", where=WHERE,
                        fix="use 0 (the full logits) or a positive number of tokens, e.g. 4096")
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise Fm9gError(f"the fused loss needs the model's output embedding to be a bias-free nn.Linear, and "
                        f"{type(model).__name__}'s is {'missing' if head is None else type(head).__name__}",
                        where=WHERE, fix="set model.loss_chunk_tokens to 0 for this model")
    model.set_output_embeddings(FusedLossHead(head, chunk_tokens))


def find_fused_head(model: torch.nn.Module) -> FusedLossHead | None:
    """The :class:`FusedLossHead` inside ``model`` (through any wrapper), or ``None``."""
    return next((module for module in model.modules() if isinstance(module, FusedLossHead)), None)
