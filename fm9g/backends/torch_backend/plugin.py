"""The ``torch`` backend plugin: PyTorch on one process (CPU or a GPU) or many (torchrun, FSDP2).

This module is what the plugin registry imports, so it stays light: the backend's part of the run
(torch, transformers, FSDP) lives in :mod:`fm9g.backends.torch_backend.training`, imported on the
first :meth:`TorchBackend.train`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fm9g

if TYPE_CHECKING:
    from fm9g.backends.training.run import RunContext

OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "fused_adamw": {"type": "boolean", "default": True, "description": "fused AdamW kernel on one CUDA GPU"},
        "deterministic": {"type": ["boolean", "null"], "default": None,
                          "description": "torch.use_deterministic_algorithms; null: on CPU only"},
        "optimizer": {"enum": ["adamw", "adamw_8bit"], "default": "adamw",
                      "description": "adamw: torch AdamW; adamw_8bit: torchao AdamW8bit, 8-bit moments (a quarter of "
                                     "AdamW's state memory), one CUDA GPU, pip install 'fm9g[fp8]'"},
        "checkpoint_blocks": {"type": ["integer", "null"], "minimum": 0, "default": None,
                              "description": "with use_checkpoint: how many decoder layers (the first ones) "
                                             "recompute their activations in the backward; null: all"},
    },
    "additionalProperties": False,
}


class TorchBackend:
    name = "torch"
    description = "PyTorch: one process on CPU/GPU, FSDP2 across processes (torchrun); packed varlen attention"
    options_schema = OPTIONS_SCHEMA

    def train(self, config: dict[str, Any], run: RunContext) -> dict[str, Any]:
        """Train as ``config`` says (see :mod:`fm9g.backends.torch_backend.training`); the final step and checkpoint."""
        from fm9g.backends.torch_backend import training

        return training.train(config, run)


@fm9g.hookimpl
def register_backends(register):
    register(TorchBackend())
