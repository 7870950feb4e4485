"""The ``bmtrain`` backend: BMTrain ZeRO-3 (the seed's trainer) behind the same ``fm9g train``.

What it shares with the torch backend: the whole run sequence (:mod:`fm9g.backends.training.run`:
the model — preset / HF dir / seed ``.pt`` with fm9g's varlen attention —, the data stream, the
loop with its token-mean and per-task loss, grad accumulation, logging and save cadence, the
schedule, the checkpoint layout and the run header). What differs
(:mod:`fm9g.backends.bmtrain_backend.training`):

* Start-up: ``bmt.init_distributed(seed=...)`` (BMTrain's own NCCL communicator; torchrun's
  environment when ``fm9g train --nproc-per-node/--nnodes`` starts several processes).
* The model is built on the GPU in float32 (``build_model``: a preset's random init runs on the
  GPU — seconds even for the 7B), the delta is applied (PEFT **before** wrapping: the wrapper moves
  every parameter into per-block ZeRO storage, so modules added later would not be sharded),
  checkpoint weights are loaded, the model is cast to bf16 (``model.dtype: auto`` / ``bfloat16``;
  ``float32`` keeps fp32), then ``bmt.BMTrainModelWrapper`` turns each decoder layer into a ZeRO-3
  ``bmt.Block`` (activation-checkpointed iff ``use_checkpoint``; ``backend_options.checkpoint_blocks``
  limits it to the first N blocks). The blocks hand the decoder layer
  its ``position_ids`` as a named parameter of its forward (``Block.forward`` binds the layer's
  signature and forwards only those), and fm9g's attention derives sample boundaries from them.
  Tied embeddings are untied first (the wrapper would make two parameters of one anyway); the
  saved ``config.json`` then says ``tie_word_embeddings: false``.
* Optimizer: ``bmt.optim.AdamOffloadOptimizer`` when ``offload`` else ``bmt.optim.AdamOptimizer``
  (betas 0.9/0.95, eps 1e-8, the config's weight decay; float32 master weights of bf16
  parameters), driven by ``bmt.optim.OptimManager`` (loss scaling from ``backend_options``,
  clipping in its Adam kernels); fm9g's schedule sets the learning rate each step.
* Checkpoints: see :mod:`fm9g.backends.bmtrain_backend.checkpoint` — same files as the torch backend
  (float32 master weights under HF names; LoRA in PEFT's format), optimizer state per rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fm9g

if TYPE_CHECKING:
    from fm9g.backends.training.run import RunContext

OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "loss_scale": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                       "description": "initial loss scale of OptimManager (null: no loss scaling, bf16's usual)"},
        "loss_scale_factor": {"type": "number", "exclusiveMinimum": 1, "default": 2,
                              "description": "factor the scale shrinks by on overflow and grows by when stable"},
        "loss_scale_steps": {"type": "integer", "minimum": 1, "default": 1024,
                             "description": "overflow-free steps before the scale grows"},
        "checkpoint_blocks": {"type": ["integer", "null"], "minimum": 0, "default": None,
                              "description": "with use_checkpoint: how many decoder blocks (the first ones) "
                                             "recompute their activations in backward; null: all. Fewer is "
                                             "faster and needs more GPU memory"},
    },
    "additionalProperties": False,
}


class BmtrainBackend:
    name = "bmtrain"
    description = "BMTrain ZeRO-3 (+ optimizer offload): the seed's trainer; torchrun across GPUs and nodes"
    options_schema = OPTIONS_SCHEMA

    def train(self, config: dict[str, Any], run: RunContext) -> dict[str, Any]:
        """Train as ``config`` says (see :mod:`fm9g.backends.bmtrain_backend.training`); the final step and checkpoint."""
        from fm9g.backends.bmtrain_backend import training

        return training.train(config, run)


@fm9g.hookimpl
def register_backends(register):
    register(BmtrainBackend())
