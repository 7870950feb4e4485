"""Fused Triton kernels for the decoder layers (``model.kernels: liger``).

transformers' own RMSNorm, rotary embedding and gated MLP run as chains of small element-wise
kernels with float32 intermediates; on the fm9g-7b shape they take about a third of a training
step's GPU time. Liger Kernel (``liger-kernel``, Triton) replaces each with one fused kernel of the
same arithmetic (RMSNorm in float32 with the Llama cast, rotate-half RoPE on the per-token cos/sin
that the model computes from ``position_ids`` — so packed rows keep their per-sample positions —
and SiLU·up), patched onto the model instance through Liger's own dispatcher. Its cross-entropy
kernels are not used: fm9g computes the token-mean and per-task losses itself (:mod:`fm9g.backends.training.loss`).

Liger patches transformers' module-level RoPE function of the model's family for the whole
process, which is why it is applied once per training process, to the model that process trains.
"""

from __future__ import annotations

import logging

import torch

from fm9g.core.errors import Fm9gError

KERNELS = ("hf", "liger")
LIGER_FIX = ("install it on the GPU machine with `pip install 'fm9g[liger]'` (liger-kernel and Triton), "
             "or set model.kernels to 'hf'")


def apply_kernels(model: torch.nn.Module, kernels: str, device: torch.device) -> None:
    """Put the chosen kernels into ``model`` (before any delta or wrapper): ``hf`` leaves it as it is."""
    if kernels == "hf":
        return
    if kernels != "liger":
        raise Fm9gError(f"unknown kernels {kernels!r}", where="train config: model.kernels",
                        fix=f"use one of: {', '.join(KERNELS)}")
    if device.type != "cuda":
        raise Fm9gError(f"Liger kernels run on CUDA GPUs only (Triton), and this run is on {device.type}",
                        where="train config: model.kernels", fix="set model.kernels to 'hf' to train here")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as error:
        raise Fm9gError(f"model.kernels is 'liger' but liger-kernel does not import ({error})",
                        where="train config: model.kernels", fix=LIGER_FIX) from None
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise Fm9gError(f"Liger Kernel has no kernels for model type {model_type!r}",
                        where="train config: model.kernels", fix="set model.kernels to 'hf' for this model")
    # On its first call Liger looks for optional alternatives to its Triton kernels (CuTe DSL, Ascend)
    # and logs a warning with install advice for each one missing; fm9g uses the Triton kernels.
    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
