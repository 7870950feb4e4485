"""What a backend needs besides the train config: where to resume from, and how to talk to the user.

``fm9g train`` builds a :class:`RunContext`; backends call :meth:`print_header`, :meth:`progress`
and :meth:`message` (on rank 0 only) so that every backend looks the same on the terminal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import fm9g

    parts = [f"fm9g {fm9g.__version__}"]
    for name in ("torch", "transformers", "peft"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


@dataclass
class RunContext:
    """Resume point (a checkpoint directory or ``None``), output stream and progress-bar switch."""

    resume: Path | None = None
    config_path: Path | None = None
    show_progress: bool | None = None
    out: TextIO = field(default_factory=lambda: sys.stderr)
    stream_factory: Callable[..., Any] | None = None
    """``(config, rank=, world_size=, state=) -> stream``; default: the config's data (``data.open_stream``)."""

    def open_stream(self, config: dict[str, Any], *, rank: int, world_size: int) -> Any:
        """This rank's packed-batch stream, at the resume checkpoint's stream state when resuming."""
        from fm9g.backends.checkpoints import read_state_json
        from fm9g.backends.data import open_stream

        state = read_state_json(self.resume, "stream_state.json") if self.resume else None
        return (self.stream_factory or open_stream)(config, rank=rank, world_size=world_size, state=state)

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        from tqdm import tqdm

        tqdm.write(text, file=self.out)

    def progress(self, *, total: int, initial: int = 0) -> Any:
        """A tqdm bar over optimizer steps (shown on a terminal, or when ``show_progress`` is true)."""
        from tqdm import tqdm

        show = self.show_progress if self.show_progress is not None else self.out.isatty()
        return tqdm(total=total, initial=initial, desc="train", unit="step", file=self.out,
                    disable=not show, dynamic_ncols=True)

    def print_header(self, *, config: dict[str, Any], total_params: int, trainable_params: int, device: str,
                     world_size: int, task_names: list[str], tokenizer: Any, resumed_from: Path | None,
                     step: int, precision: str) -> None:
        """Versions, plugins, model size, trainable parameters and the data plan, before the first step."""
        model = config["model"]
        source = model.get("hf_path") or f"preset {model.get('preset')}"
        if model.get("seed_pt"):
            source += f" + seed weights {model['seed_pt']}"
        delta = config.get("delta")
        delta_text = (f"LoRA via {delta.get('engine', 'peft')} (r={delta['lora_r']}, alpha={delta['lora_alpha']}, "
                      f"layers {','.join(delta['lora_layer'])})" if delta else "none (full fine-tune)")
        accumulation = config.get("grad_accum", 1)
        batch_tokens = config["batch_size"] * config["max_length"]
        step_tokens = batch_tokens * world_size * accumulation
        data = config["data"].get("manifest") or config["data"].get("mixture")
        lines = [
            f"fm9g train — {_versions()}",
            f"  backend   {config.get('backend', 'torch')} on {device} × {world_size} process(es), {precision}",
            f"  model     {source}: {_human(total_params)} parameters, {_human(trainable_params)} trainable",
            f"  delta     {delta_text}",
            f"  tokenizer {getattr(tokenizer, 'spec', 'model default')} (vocab {getattr(tokenizer, 'vocab_size', '?')})",
            f"  data      {data}: tasks {', '.join(task_names)}",
            f"  plan      {config['train_iters']} steps × {world_size * accumulation} packed batches of "
            f"{config['batch_size']}×{config['max_length']} = {step_tokens:,} token slots/step "
            f"({_human(step_tokens * config['train_iters'])} in all)",
            f"  schedule  {config['lr_scheduler']} lr {config['lr']:g}, warmup {config['warmup_iters']}, "
            f"wd {config['weight_decay']}, clip {config['clip_grad']}",
            f"  save      {config['save']} every {config['save_iters'] or config['train_iters']} steps",
        ]
        if resumed_from is not None:
            lines.append(f"  resume    from {resumed_from} (step {step})")
        print("\n".join(lines), file=self.out, flush=True)
