"""Example documents of every schema, shared by the schema and validate-command tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

SEED_MIX = [
    {"dataset_name": "medical_o1_reasoning", "task_name": "medical_o1_reasoning", "abs_weight": 0.5,
     "path": "indexed_data/medical_train", "transforms": "./add_template.py", "allow_repeat": True,
     "nlines": 17278, "ave_tokens_per_line": 351, "total_tokens": 0.0006},
    {"dataset_name": "ralpaca_zh", "task_name": "ralpaca_zh", "abs_weight": 0.5,
     "path": "indexed_data/data_ralpaca_zh", "transforms": "./script_cpmc.py", "allow_repeat": True,
     "nlines": 48818, "ave_tokens_per_line": 204, "total_tokens": 0.001},
]
"""The seed guide's mix.json, unchanged except for relative paths."""

OBJECT_MIX = {
    "version": 1, "seed": 42, "max_length": 4096, "batch_size": 1, "tokenizer": "hf:./ckpt",
    "datasets": [
        {"task_name": "medical", "path": "idx/medical", "abs_weight": 0.5,
         "transform": {"name": "chatml", "options": {"system": "You are a helpful assistant."}},
         "allow_repeat": True, "max_epochs": 4, "oversize_rule": "segment"},
        {"task_name": "alpaca", "path": "idx/alpaca", "abs_weight": 0.5, "transform": "identity"},
    ],
}
"""An object-form manifest: global settings, a transform with options, epochs, an oversize rule."""

SEED_META = {
    "language": "zh", "nlines": 48818, "nbytes": 33836014,
    "length_distribute": {"less_4k": 48818, "4k-8k": 0, "8k-16k": 0, "16k-32k": 0, "32k-64k": 0,
                          "64k-128k": 0, "128k-256k": 0, "more_256k": 0},
    "avg_token_per_line": 204.21905649555583,
    "data_sample": {"input": "<用户>保持健康的三个提示。<AI>", "output": "以下是保持健康的三个提示：..."},
}
"""The seed guide's meta.json."""

TRAIN_CONFIG = {
    "data": {"manifest": "mix.json"}, "model": {"preset": "tiny-llama"}, "save": "runs/tiny",
    "tokenizer": "byte", "lr": 1e-4, "lr_scheduler": "wsd", "train_iters": 20, "batch_size": 2,
    "max_length": 256, "delta": {"lora_r": 8, "lora_alpha": 16, "lora_layer": ["q_proj", "v_proj"]},
}

CHECKPOINT = {
    "format_version": 1, "step": 20, "tokens_seen": 10240, "config_hash": "sha256:abc",
    "config": TRAIN_CONFIG, "backend": "torch", "weights": "lora",
    "files": {"adapter": "adapter_model.safetensors", "optimizer": "optimizer.pt"}, "fm9g_version": "0.1.0",
}

EXAMPLES: dict[str, list[Any]] = {
    "mix": [SEED_MIX, OBJECT_MIX],
    "meta": [SEED_META, {"nlines": 0}],
    "train": [TRAIN_CONFIG, {"data": {"mixture": "mixed/"}, "model": {"hf_path": "ckpt"}, "save": "r", "train_iters": 1}],
    "checkpoint": [CHECKPOINT],
}


@pytest.fixture
def example():
    """``example(schema, index=0)``: a deep copy of an example document, safe to mutate."""
    return lambda schema, index=0: copy.deepcopy(EXAMPLES[schema][index])


@pytest.fixture(params=[(name, index) for name, docs in EXAMPLES.items() for index in range(len(docs))],
                ids=lambda param: f"{param[0]}-{param[1]}")
def any_example(request) -> tuple[str, Any]:
    """Every example document, as ``(schema name, document)``."""
    name, index = request.param
    return name, copy.deepcopy(EXAMPLES[name][index])
