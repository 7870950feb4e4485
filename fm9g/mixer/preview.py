"""``fm9g mix --preview N``: samples exactly as the model will see them.

Each sample is shown as its prompt (tokens whose target is masked, -100: not trained on) and its
trained part, in different colours on a terminal; off a terminal the same text comes with plain
``[prompt]`` / ``[trained]`` labels so it survives logs and pipes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fm9g.mixer.packing import PackedBatch
from fm9g.mixer.samples import IGNORE_INDEX


@dataclass
class PreviewSample:
    task: str
    batch: int
    prompt: str
    trained: str
    prompt_tokens: int
    trained_tokens: int
    continued: bool


def preview_samples(batches: Iterable[PackedBatch], task_names: list[str], tokenizer: Any, count: int) -> list[PreviewSample]:
    """The first ``count`` packed pieces of ``batches``, decoded into prompt and trained text."""
    samples: list[PreviewSample] = []
    for batch in batches:
        bounds = batch.cu_seqlens.tolist()
        for begin, end in zip(bounds[:-1], bounds[1:]):
            if batch.task_ids[begin] < 0:
                continue
            ids = batch.input_ids[begin:end]
            trained_mask = batch.targets[begin:end] != IGNORE_INDEX
            first_trained = int(np.argmax(trained_mask)) if trained_mask.any() else len(ids)
            continued = int(ids[0]) != tokenizer.bos_id
            # input position i predicts targets[i]; the text of the trained part is the targets
            trained_ids = [t for t in batch.targets[begin:end].tolist() if t != IGNORE_INDEX]
            samples.append(PreviewSample(
                task=task_names[int(batch.task_ids[begin])], batch=batch.index,
                prompt=tokenizer.decode(ids[: first_trained + 1].tolist()),
                trained=tokenizer.decode(trained_ids),
                prompt_tokens=int(len(ids) - trained_mask.sum()), trained_tokens=int(trained_mask.sum()),
                continued=continued,
            ))
            if len(samples) >= count:
                return samples
    return samples


def print_preview(samples: list[PreviewSample], console: Any) -> None:
    """Coloured on a terminal (prompt dim cyan, trained green), labelled plain text otherwise."""
    from rich.text import Text

    coloured = console.is_terminal
    if coloured:
        console.print(Text("legend: ", style="dim") + Text("prompt (not trained)", style="cyan dim")
                      + Text(" · ") + Text("trained", style="green"))
    for number, sample in enumerate(samples, 1):
        header = (f"── sample {number} · task {sample.task} · batch {sample.batch} · {sample.prompt_tokens} prompt + "
                  f"{sample.trained_tokens} trained tokens" + (" · continues a segmented sample" if sample.continued else ""))
        if coloured:
            console.print(Text(header, style="bold"))
            text = Text()
            text.append(sample.prompt, style="cyan dim")
            text.append(sample.trained, style="green")
            text.append("⏎[eos]", style="bold green")
            console.print(text)
        else:
            console.print(header, highlight=False, markup=False)
            console.print(f"[prompt] {sample.prompt}", highlight=False, markup=False, soft_wrap=True)
            console.print(f"[trained] {sample.trained}", highlight=False, markup=False, soft_wrap=True)
