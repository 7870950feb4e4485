"""``fm9g mix --preview N`` and ``--preview-tokens N``: samples exactly as the model will see them.

``--preview`` shows each sample as runs of masked tokens (target -100: not trained on) and trained
tokens, in different colours on a terminal — a conversation alternates between them turn by turn;
off a terminal the same runs come with plain ``[prompt]`` / ``[trained]`` labels so they survive
logs and pipes. ``--preview-tokens`` lists the first tokens of the first packed batch one per line:
position, id, the token's text, its label (the pre-shifted target: the id the position predicts,
or -100), BOS/EOS, and a line where each packed sample begins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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
    runs: list[tuple[str, bool]] = field(default_factory=list)
    """The sample's text as it is read: ``(text, trained)`` runs (a token is trained when it is the
    target of the position before it); ``trained`` above is all trained runs joined."""
    eos_trained: bool = False


def _runs(ids: np.ndarray, targets: np.ndarray, tokenizer: Any) -> tuple[list[tuple[str, bool]], bool]:
    """The piece's tokens grouped into masked/trained runs, decoded; and whether its last target is
    a trained EOS (shown as a marker: EOS is never an input token of the piece)."""
    trained = targets != IGNORE_INDEX
    flags = np.concatenate(([False], trained[:-1]))
    eos_trained = bool(trained[-1]) and int(targets[-1]) == tokenizer.eos_id
    runs: list[tuple[str, bool]] = []
    start = 0
    for end in [*np.flatnonzero(np.diff(flags.astype(np.int8))) + 1, len(ids)]:
        runs.append((tokenizer.decode(ids[start:end].tolist()), bool(flags[start])))
        start = int(end)
    if trained[-1] and not eos_trained:
        runs.append((tokenizer.decode([int(targets[-1])]), True))
    return runs, eos_trained


def preview_samples(batches: Iterable[PackedBatch], task_names: list[str], tokenizer: Any, count: int) -> list[PreviewSample]:
    """The first ``count`` packed pieces of ``batches``, decoded into masked and trained runs."""
    samples: list[PreviewSample] = []
    for batch in batches:
        bounds = batch.cu_seqlens.tolist()
        for begin, end in zip(bounds[:-1], bounds[1:]):
            if batch.task_ids[begin] < 0:
                continue
            ids = batch.input_ids[begin:end]
            targets = batch.targets[begin:end]
            trained_mask = targets != IGNORE_INDEX
            first_trained = int(np.argmax(trained_mask)) if trained_mask.any() else len(ids)
            runs, eos_trained = _runs(ids, targets, tokenizer)
            # input position i predicts targets[i]; the text of the trained part is the targets
            trained_ids = [t for t in targets.tolist() if t != IGNORE_INDEX]
            samples.append(PreviewSample(
                task=task_names[int(batch.task_ids[begin])], batch=batch.index,
                prompt=tokenizer.decode(ids[: first_trained + 1].tolist()),
                trained=tokenizer.decode(trained_ids),
                prompt_tokens=int(len(ids) - trained_mask.sum()), trained_tokens=int(trained_mask.sum()),
                continued=int(ids[0]) != tokenizer.bos_id, runs=runs, eos_trained=eos_trained,
            ))
            if len(samples) >= count:
                return samples
    return samples


def print_preview(samples: list[PreviewSample], console: Any) -> None:
    """Coloured on a terminal (masked dim cyan, trained green), labelled plain text otherwise."""
    from rich.text import Text

    coloured = console.is_terminal
    if coloured:
        console.print(Text("legend: ", style="dim") + Text("prompt (not trained)", style="cyan dim")
                      + Text(" · ") + Text("trained", style="green"))
    for number, sample in enumerate(samples, 1):
        turns = sum(1 for _, trained in sample.runs if trained)
        header = (f"── sample {number} · task {sample.task} · batch {sample.batch} · {sample.prompt_tokens} prompt + "
                  f"{sample.trained_tokens} trained tokens" + (f" in {turns} runs" if turns > 1 else "")
                  + (" · continues a segmented sample" if sample.continued else ""))
        if coloured:
            console.print(Text(header, style="bold"))
            text = Text()
            for part, trained in sample.runs:
                text.append(part, style="green" if trained else "cyan dim")
            if sample.eos_trained:
                text.append("⏎[eos]", style="bold green")
            console.print(text)
        else:
            console.print(header, highlight=False, markup=False)
            for part, trained in sample.runs:
                label = "[trained]" if trained else "[prompt]"
                console.print(f"{label} {part}", highlight=False, markup=False, soft_wrap=True)
            if sample.eos_trained:
                console.print("[trained] [eos]", highlight=False, markup=False)


@dataclass
class TokenRow:
    position: int
    token_id: int
    text: str
    label: int
    task: str | None
    sample_start: bool
    note: str


def preview_tokens(batch: PackedBatch, task_names: list[str], tokenizer: Any, count: int) -> list[TokenRow]:
    """The first ``count`` positions of a packed batch, one :class:`TokenRow` each."""
    starts = set(batch.cu_seqlens.tolist()[:-1])
    rows = []
    for position in range(min(count, len(batch.input_ids))):
        token, label, task = int(batch.input_ids[position]), int(batch.targets[position]), int(batch.task_ids[position])
        notes = []
        if task < 0:
            notes.append("padding")
        elif token == tokenizer.bos_id:
            notes.append("BOS")
        if label == tokenizer.eos_id and task >= 0:
            notes.append("predicts EOS")
        rows.append(TokenRow(position, token, tokenizer.decode([token]), label,
                             task_names[task] if task >= 0 else None, position in starts, ", ".join(notes)))
    return rows


def print_token_preview(rows: list[TokenRow], console: Any) -> None:
    """One line per position; a rule where a packed sample begins; trained labels in green."""
    from rich.text import Text

    console.print(Text("position      id  token                 label  (label -100: not trained)", style="bold"))
    for row in rows:
        if row.sample_start:
            console.print(Text(f"── sample · task {row.task or 'padding'} " + "─" * 30, style="dim"))
        trained = row.label != IGNORE_INDEX
        line = Text(f"{row.position:8d} {row.token_id:7d}  {row.text!r:<20.20} ")
        line.append(f"{row.label:6d}", style="green" if trained else "cyan dim")
        if row.note:
            line.append(f"  {row.note}", style="yellow")
        console.print(line, highlight=False)
