"""Variable-length ("packed") causal attention, registered with transformers' ``AttentionInterface``.

A packed row holds several samples back to back; ``position_ids`` restart at 0 for each sample (the
padding tail is one more pseudo-sample). Attention must never cross a sample boundary. The
boundaries are derived from ``position_ids`` — which transformers hands to every attention function
in its kwargs — so they survive any wrapper that drops other keyword arguments (BMTrain's
``Block.forward`` passes on only the layer's named parameters).

* CPU (and any device without a varlen kernel): an exact block-diagonal causal boolean mask passed
  to transformers' own SDPA attention.
* CUDA: ``flash_attn.flash_attn_varlen_func`` when installed, else
  ``torch.nn.attention.varlen.varlen_attn`` (causal through ``window_size=(-1, 0)``; the signature
  is checked at runtime because it changed between torch releases).

Select it with ``config._attn_implementation = ATTENTION_NAME`` (:func:`fm9g.backends.models.build.build_model` does).
Because the name has no mask function, transformers builds no 4D mask of its own.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch

ATTENTION_NAME = "fm9g_varlen"


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of the sample it belongs to: a new sample starts where the position is 0."""
    return (position_ids == 0).cumsum(dim=-1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, 1, seq, seq]`` mask: token i sees token j iff same sample and j <= i."""
    docs = document_ids(position_ids)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    same_doc = docs[:, :, None] == docs[:, None, :]
    return (same_doc & causal)[:, None, :, :]


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens int32 [n+1], max_seqlen)`` of the flattened ``[batch, seq]`` position ids."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=False).reshape(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    total = torch.tensor([flat.numel()], dtype=starts.dtype, device=starts.device)
    cu_seqlens = torch.cat([starts, total]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return cu_seqlens, max_seqlen


class _BoundaryCache:
    """Boundaries of the last ``position_ids`` tensor: one host sync per forward, not one per layer.

    Every decoder layer receives the same ``position_ids`` object; holding a reference to it (and
    comparing identity) means a new batch can never be mistaken for the cached one.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.value: tuple[torch.Tensor, int] | None = None

    def get(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        if not self._same(position_ids):
            self.tensor, self.value = position_ids, cu_seqlens_from_position_ids(position_ids)
        return self.value

    def _same(self, other: torch.Tensor) -> bool:
        """The cached tensor itself, or a detached alias of it (activation checkpointing's recompute
        passes ``position_ids.detach()``): same memory, shape and strides. The cache keeps the
        cached tensor alive, so its memory cannot have been reused by another batch."""
        cached = self.tensor
        if cached is None or other is cached:
            return other is cached
        return (other.device == cached.device and other.data_ptr() == cached.data_ptr()
                and other.shape == cached.shape and other.stride() == cached.stride()
                and other.dtype == cached.dtype)


_boundaries = _BoundaryCache()


@lru_cache(maxsize=1)
def cuda_kernel() -> str:
    """Which varlen kernel CUDA uses here: ``flash_attn`` or ``torch_varlen`` (or ``sdpa_mask``)."""
    try:
        import flash_attn  # noqa: F401

        return "flash_attn"
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        return "torch_varlen"
    except ImportError:
        return "sdpa_mask"


@lru_cache(maxsize=1)
def _torch_varlen_causal_kwargs() -> dict[str, Any]:
    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:
        return {"window_size": (-1, 0)}
    if "is_causal" in parameters:
        return {"is_causal": True}
    raise RuntimeError("torch.nn.attention.varlen.varlen_attn has neither window_size nor is_causal")


def _varlen_cuda(module, query, key, value, scaling, dropout, cu_seqlens, max_seqlen):
    """Run a CUDA varlen kernel on ``[batch, heads, seq, dim]`` inputs; returns ``[batch, seq, heads, dim]``."""
    batch, heads, length, dim = query.shape
    dtype = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim).to(dtype) for t in (query, key, value))
    if cuda_kernel() == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                     dropout_p=dropout, softmax_scale=scaling, causal=True)
    else:
        from torch.nn.attention.varlen import varlen_attn

        if k.shape[1] != heads:
            groups = heads // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scaling,
                          **_torch_varlen_causal_kwargs())
    return out.reshape(batch, length, heads, dim).to(query.dtype)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered attention function (transformers' calling convention)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    original_position_ids = position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        # Not a packed training forward (generation with a cache, or an explicit mask): plain SDPA.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if position_ids.dim() == 1:
        position_ids = position_ids[None, :]
    position_ids = position_ids.expand(query.shape[0], -1)
    dropout = dropout if module.training else 0.0
    if query.is_cuda and cuda_kernel() != "sdpa_mask":
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        max_seqlen = kwargs.get("max_length_q")
        if cu_seqlens is None or max_seqlen is None:
            same_shape = original_position_ids.shape == position_ids.shape
            cu_seqlens, max_seqlen = _boundaries.get(original_position_ids if same_shape else position_ids)
        return _varlen_cuda(module, query, key, value, scaling, dropout, cu_seqlens, max_seqlen), None
    forwarded = {k: v for k, v in kwargs.items() if k not in ("position_ids", "is_causal")}
    return sdpa_attention_forward(module, query, key, value, block_causal_mask(position_ids),
                                  dropout=dropout, scaling=scaling, is_causal=False, **forwarded)


def register_varlen_attention() -> str:
    """Register :func:`varlen_attention_forward` under :data:`ATTENTION_NAME` (idempotent); return the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)
    return ATTENTION_NAME
