"""What a run shows the user: the header, the progress bar, messages, and the step records.

:class:`RunOutput` prints (rank 0 only, so every backend looks the same on the terminal);
:class:`RunReport` is what the loop reports each step to: the metrics log
(:mod:`fm9g.backends.training.metrics`) and the progress bar.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from fm9g.backends.training.metrics import MetricsLog
from fm9g.backends.training.trackers import DEFAULT_REPORT_TO
from fm9g.core.progress import progress_bar

TRAIN_LINE = "step {n}/{total}: {raw_postfix} ETA {eta}"
"""The plain progress line of a run without a terminal: ``step 120/1000: loss 2.3456 lr 0.0003 52,100 tokens/s ETA 01:02:03``."""


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
class RunOutput:
    """The terminal (or log file) a run writes to; the progress bar shows on a terminal or when asked."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    show_progress: bool | None = None

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        tqdm.write(text, file=self.out)

    def progress(self, *, total: int, initial: int = 0, seconds: float | None = None) -> Any:
        """Progress over optimizer steps: tqdm's bar on a terminal (or when ``show_progress`` is true),
        else a plain line at most every ``seconds`` and at the last step (:func:`progress_bar`)."""
        return progress_bar(total=total, initial=initial, desc="train", unit="step", file=self.out,
                            bar=self.show_progress, seconds=seconds, line_format=TRAIN_LINE, end_line=True)

    def print_header(self, *, config: dict[str, Any], total_params: int, trainable_params: int, device: str,
                     world_size: int, task_names: list[str], tokenizer: Any, resumed_from: Path | None,
                     step: int, precision: str, held_out: list[str] | None = None) -> None:
        """Versions, plugins, model size, trainable parameters and the data plan, before the first step."""
        model = config["model"]
        source = model.get("hf_path") or f"preset {model.get('preset')}"
        if model.get("seed_pt"):
            source += f" + seed weights {model['seed_pt']}"
        delta = config["delta"]
        delta_text = (f"LoRA via {delta['engine']} (r={delta['lora_r']}, alpha={delta['lora_alpha']}, "
                      f"layers {','.join(delta['lora_layer'])})" if delta else "none (full fine-tune)")
        accumulation = config["grad_accum"]
        batch_tokens = config["batch_size"] * config["max_length"]
        step_tokens = batch_tokens * world_size * accumulation
        data = config["data"].get("manifest") or config["data"].get("mixture")
        lines = [
            f"fm9g train — {_versions()}",
            f"  backend   {config['backend']} on {device} × {world_size} process(es), {precision}",
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
        if held_out is not None:
            lines.append(f"  eval      every {config['eval_iters']} steps and at the end"
                         + (f", first {config['eval_tokens']:,} target tokens per task" if config["eval_tokens"] else ""))
            lines.extend(f"            {line}" for line in held_out)
        if resumed_from is not None:
            lines.append(f"  resume    from {resumed_from} (step {step})")
        print("\n".join(lines), file=self.out, flush=True)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluation_line(record: dict[str, Any]) -> str:
    """A held-out evaluation as one line: totals, then each task's loss (and perplexity)."""
    tasks = ", ".join(f"{name} {_loss(task['loss'])}" for name, task in record["tasks"].items())
    return (f"eval step {record['step']}: loss {_loss(record['loss'])} (mixture-weighted "
            f"{_loss(record['weighted_loss'])}) over {record['target_tokens']:,} target tokens | {tasks}")


class RunReport:
    """The loop's :class:`~fm9g.backends.training.loop.LoopReport` on rank 0: step records into the
    metrics log (TensorBoard + JSONL), the progress bar, messages. Closed however the run ends."""

    def __init__(self, output: RunOutput, save_dir: str | Path, *, train_iters: int, resume_step: int,
                 progress_seconds: float, config: dict[str, Any] | None = None,
                 mixture: dict[str, Any] | None = None):
        """``config`` (its ``report_to`` picks the trackers) and ``mixture`` go to the experiment trackers."""
        self.output = output
        report_to = (config or {}).get("report_to", DEFAULT_REPORT_TO)
        self.log = MetricsLog(save_dir, resume_step=resume_step, report_to=report_to, config=config, mixture=mixture)
        self.bar = output.progress(total=train_iters, initial=resume_step, seconds=progress_seconds)

    def step(self, record: dict[str, Any], *, log: bool) -> None:
        if log:
            self.log.log_step(record)
        self.bar.set_postfix_str(f"loss {record['loss']:.4f} lr {record['lr']:.3g} "
                                 f"{record['tokens_per_s']:,.0f} tokens/s", refresh=False)
        self.bar.update(1)

    def message(self, text: str) -> None:
        self.output.message(text)

    def evaluation(self, record: dict[str, Any]) -> None:
        self.log.log_eval(record)
        self.output.message(evaluation_line(record))

    def flush(self, step: int) -> None:
        self.log.flush(step)

    def close(self) -> None:
        self.bar.close()
        self.log.close()


class SilentReport:
    """The report of ranks other than 0: nothing is written or shown."""

    def step(self, record: dict[str, Any], *, log: bool) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def evaluation(self, record: dict[str, Any]) -> None:
        pass

    def flush(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass
