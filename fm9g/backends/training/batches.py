"""The training data a train config names, as a stream of packed batches on the training device.

``data.manifest`` is mixed on the fly by ``fm9g.mixer.stream.MixtureStream``; ``data.mixture`` (a
directory written by ``fm9g mix --output``) is read by ``fm9g.mixer.materialized.MaterializedStream``.
Rank r of W gets global batches b ≡ r (mod W); the stream's JSON state resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fm9g.mixer.materialized import MaterializedStream
from fm9g.mixer.stream import MixtureStream
from fm9g.tokenizers import load_tokenizer


@dataclass
class DeviceBatch:
    """One packed batch on the training device, shaped ``[1, batch_size*max_length]``."""

    index: int
    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    task_ids: torch.Tensor
    num_tokens: int


def to_device(batch: Any, device: torch.device) -> DeviceBatch:
    """A ``PackedBatch`` (numpy int32 fields) as int64 tensors on ``device``."""
    pin = device.type == "cuda"

    def tensor(array: np.ndarray) -> torch.Tensor:
        value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))[None, :]
        return value.pin_memory().to(device, non_blocking=True) if pin else value.to(device)

    return DeviceBatch(int(batch.index), tensor(batch.input_ids), tensor(batch.targets),
                       tensor(batch.position_ids), tensor(batch.task_ids), int(batch.num_tokens))


def open_stream(config: dict[str, Any], *, rank: int, world_size: int, state: dict | None) -> Any:
    """The stream for this rank, resumed from ``state`` when given."""
    data = config["data"]
    if "manifest" in data:
        tokenizer = load_tokenizer(config["tokenizer"]) if config["tokenizer"] else None
        return MixtureStream.from_manifest(
            data["manifest"], tokenizer=tokenizer, max_length=config["max_length"],
            batch_size=config["batch_size"], trust_scripts=config["trust_scripts"],
            rank=rank, world_size=world_size, state=state)
    return MaterializedStream(data["mixture"], rank=rank, world_size=world_size, state=state)


def stream_tokenizer(stream: Any, config: dict[str, Any]) -> Any:
    """The tokenizer the batches were made with: the stream's, else the configured one, else ``None``."""
    tokenizer = getattr(stream, "tokenizer", None)
    if tokenizer is None and config["tokenizer"]:
        tokenizer = load_tokenizer(config["tokenizer"])
    return tokenizer


def take(batches: Iterator[Any], count: int) -> list[Any] | None:
    """The next ``count`` batches, or ``None`` when the stream ends first."""
    taken = []
    for _ in range(count):
        try:
            taken.append(next(batches))
        except StopIteration:
            return None
    return taken
