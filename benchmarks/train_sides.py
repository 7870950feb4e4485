"""The sides of ``train_bench.py``: fm9g's torch and bmtrain steps and the Hugging Face baseline, each
timed over the same data (see the docstring of ``train_bench.py`` for what they measure)."""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

import torch


def sample_lengths(batch) -> list[int]:
    """The lengths of the samples in a packed row (the padding tail excluded)."""
    cu = batch.cu_seqlens.tolist()
    return [end - begin for begin, end in zip(cu, cu[1:]) if begin < batch.num_tokens]


def grouped(batches: list, accumulation: int) -> list[list]:
    """Consecutive rows in groups of ``accumulation`` (one optimizer step each); a short tail is dropped."""
    return [batches[i:i + accumulation] for i in range(0, len(batches) - accumulation + 1, accumulation)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def timed(step_fn, items, warmup: int, device) -> dict:
    """Seconds, useful and computed tokens, Σ sample length² over ``items[warmup:]`` (the first
    ``warmup`` are not timed); ``step_fn`` returns the three counts of its item."""
    for item in items[:warmup]:
        step_fn(item)
    _sync(device)
    start = time.perf_counter()
    useful = computed = squares = 0
    for item in items[warmup:]:
        u, c, q = step_fn(item)
        useful, computed, squares = useful + u, computed + c, squares + q
    _sync(device)
    return dict(seconds=time.perf_counter() - start, useful=useful, computed=computed, squares=squares)


def _row_counts(group: list) -> tuple[int, int, int]:
    """Useful tokens, computed tokens and Σ sample length² of a group of packed rows."""
    return (sum(b.num_tokens for b in group), sum(len(b.input_ids) for b in group),
            sum(n * n for b in group for n in sample_lengths(b)))


class _PhaseTimer:
    """Wraps an optimization object (``backward``/``clip``/``step``) to time clip and step apart
    from forward + backward (synchronizing the GPU around each: for ``--profile`` only)."""

    def __init__(self, inner, device):
        self.inner, self.device, self.times = inner, device, {"clip": 0.0, "step": 0.0}

    @property
    def scale(self):
        return self.inner.scale

    def backward(self, loss):
        self.inner.backward(loss)

    def _timed(self, name, fn, *args):
        _sync(self.device)
        start = time.perf_counter()
        value = fn(*args)
        _sync(self.device)
        self.times[name] += time.perf_counter() - start
        return value

    def clip(self, max_norm):
        return self._timed("clip", self.inner.clip, max_norm)

    def step(self, lr):
        return self._timed("step", self.inner.step, lr)


def _profile(step_fn, optimization, group, device, label: str, kernels: bool = True) -> None:
    """Print one step's phases (forward+backward / clip / optimizer step) and its top CUDA kernels."""
    from torch.profiler import ProfilerActivity, profile

    timer = _PhaseTimer(optimization, device)
    _sync(device)
    start = time.perf_counter()
    step_fn(group, timer)
    _sync(device)
    total = time.perf_counter() - start
    clip, step = timer.times["clip"], timer.times["step"]
    print(f"  [{label}] one step {total * 1e3:.0f} ms: forward+backward {(total - clip - step) * 1e3:.0f} ms, "
          f"clip {clip * 1e3:.0f} ms, optimizer step {step * 1e3:.0f} ms", flush=True)
    if not kernels:
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step_fn(group, optimization)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70), flush=True)


def train_mode(model, device, use_checkpoint: bool):
    """Checkpointing as asked, train mode, and the fused AdamW of the HF sides:
    ``(parameter count, trainable parameters, optimizer)``."""
    from fm9g.backends.models.build import parameter_counts

    if use_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    model.train()
    return parameter_counts(model)[0], trainable, optimizer


def flop_parameters(model) -> int:
    """The parameters a token's matmuls use: all of them but an untied input embedding (a lookup)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


# A side's modifiers (``torch+liger+chunk``) and the train-config keys they set: each lever is the
# product's own option, so the benchmark measures what a user of that key gets.
MODIFIERS = {
    "liger": ("model", "kernels", "liger"),
    "chunk": ("model", "loss_chunk_tokens", 4096),
    "compile": ("model", "compile", True),
    "fp8": ("model", "fp8", True),
    "adam8": ("backend_options", "optimizer", "adamw_8bit"),
}


def split_side(side: str) -> tuple[str, list[str]]:
    """``"torch+liger+chunk"`` → ``("torch", ["liger", "chunk"])``."""
    base, *modifiers = side.split("+")
    return base, modifiers


def bench_config(backend: str, modifiers: list[str], scenario: dict, use_checkpoint: bool, vocab_size: int,
                 knobs) -> dict:
    """The train config of an fm9g side (schema and backend-option defaults filled, as ``fm9g train`` does)."""
    from fm9g.backends.training.config import fill_defaults
    from fm9g.core.plugins import get_plugin, validate_options

    config = {"model": {"preset": scenario["preset"], "vocab_size": vocab_size, "kernels": knobs.kernels},
              "backend": backend, "delta": {"engine": "peft", "lora_r": 64, "lora_alpha": 32} if scenario["lora"] else None,
              "lr": 1e-5, "weight_decay": 0.1, "clip_grad": 1.0, "seed": 0, "use_checkpoint": use_checkpoint,
              "batch_size": scenario["batch_size"], "max_length": scenario["max_length"],
              "save": str(Path(knobs.work) / "bench-save"),  # named only: build_side writes nothing there
              "backend_options": {"checkpoint_blocks": knobs.checkpoint_blocks}}
    for modifier in modifiers:
        section, key, value = MODIFIERS[modifier]
        config[section][key] = value
    fill_defaults(config)
    config["backend_options"] = validate_options(get_plugin("backend", backend), config["backend_options"],
                                                 where="train_bench")
    return config


def build_side(strategy, config: dict, vocab_size: int):
    """The model and optimization through the backend's own run-sequence steps. ``is_main=False``: a
    LoRA bench run must not write the 7B base weights into a save directory."""
    from fm9g.backends.models.build import parameter_counts
    from fm9g.backends.training.loop import Trainer
    from fm9g.backends.training.model import build_training_model

    built = build_training_model(config, device=strategy.device, vocab_size=vocab_size, resume=None, is_main=False,
                                 base_dtype=strategy.base_dtype(config), prepare=strategy.prepare_model)
    params, flops_n = parameter_counts(built.model)[0], flop_parameters(built.model)
    model = strategy.setup_model(built, config)
    optimization = strategy.make_optimization(model, config)
    trainer = Trainer(model, optimization, strategy.collectives, ["a", "b"], config["clip_grad"],
                      strategy.describe(config).autocast)
    return trainer, params, flops_n


def run_fm9g(side, scenario, batches, device, warmup, use_checkpoint, vocab_size, knobs):
    """The torch backend (``TorchStrategy``) with the side's modifiers, through the loop's ``Trainer``;
    one result per ``--sweep`` point (one point without it)."""
    from fm9g.backends.torch_backend import speed
    from fm9g.backends.torch_backend.training import TorchStrategy

    reset_memory(device)
    config = bench_config("torch", split_side(side)[1], scenario, use_checkpoint, vocab_size, knobs)
    strategy = TorchStrategy(config)
    trainer, params, flops_n = build_side(strategy, config, vocab_size)

    def set_blocks(blocks):
        return speed.enable_checkpointing(trainer.model, blocks) if use_checkpoint else 0

    results = sweep(trainer, batches, device, warmup, use_checkpoint, knobs, set_blocks,
                    dict(params=params, flop_params=flops_n), side)
    if getattr(knobs, "manifest", None) and "error" not in results[-1]:
        results[-1]["eval"] = time_evaluation(trainer.model, knobs.manifest, scenario, device, trainer.autocast_dtype,
                                              target_tokens=max(results[-1]["useful"], 1))
    return results if knobs.sweep else results[0]


def sweep(trainer, batches, device, warmup, use_checkpoint, knobs, set_blocks, extra: dict, side: str) -> list[dict]:
    """Time ``trainer`` at each ``--sweep`` point (rows per optimizer step, blocks that recompute; the
    one point of ``--grad-accum``/``--checkpoint-blocks`` without it), in order, stopping at the first
    that runs out of memory; ``set_blocks(N)`` switches checkpointing to the first N blocks."""
    from fm9g.backends.training.batches import to_device

    def step(group, timed_optimization=None):
        stepper = trainer if timed_optimization is None else dataclasses.replace(trainer, optimization=timed_optimization)
        stepper.step([to_device(b, device) for b in group], lr=1e-5)
        return _row_counts(group)

    results = []
    for accumulation, blocks in knobs.sweep or [(knobs.grad_accum, knobs.checkpoint_blocks)]:
        label = f"accum={accumulation},ckpt={'off' if not use_checkpoint else 'all' if blocks is None else blocks}"
        count = set_blocks(blocks)
        groups = grouped(batches, accumulation)
        reset_memory(device)
        try:
            result = timed(step, groups, warmup, device)
        except torch.OutOfMemoryError as error:
            print(f"  [{side} {label}] out of memory ({str(error)[:120]}); the sweep stops here", flush=True)
            results.append(dict(label=label, error=f"OutOfMemoryError at {label}", peak_gib=peak_gib(device)))
            break
        result.update(peak_gib=peak_gib(device), label=label, **extra)
        results.append(result)
        print(f"  [{side} {label}] {result['useful'] / result['seconds']:,.0f} useful tokens/s "
              f"({count} blocks recompute), peak {result['peak_gib']:.1f} GiB", flush=True)
        if knobs.profile:
            _profile(step, trainer.optimization, groups[-1], device, label, kernels=len(results) == 1)
    return results


def time_evaluation(model, manifest, scenario, device, autocast, *, target_tokens: int) -> dict:
    """fm9g's held-out evaluation (``Evaluator``, data preparation included) of the trained model on
    the mixture's datasets, about ``target_tokens`` target tokens of each: tokens/s of a first (cold)
    evaluation and of a second one (kernels warm, as for every evaluation of a run after its first;
    the training figures likewise leave out warm-up steps), and the peak GPU memory during them (the
    optimizer state stays allocated, as in a training run)."""
    from dataclasses import replace

    from fm9g.backends.training.collectives import TorchDistributed
    from fm9g.backends.training.evaluate import Evaluator
    from fm9g.mixer.held_out import HeldOutBatches, find_held_out
    from fm9g.mixer.manifest import load_manifest
    from fm9g.tokenizers import load_tokenizer

    mix = load_manifest(manifest)
    mix = replace(mix, datasets=tuple(replace(spec, eval_path=spec.path) for spec in mix.datasets))
    held = HeldOutBatches(find_held_out(mix), tokenizer=load_tokenizer(mix.tokenizer), seed=mix.seed,
                          max_length=scenario["max_length"], batch_size=scenario["batch_size"],
                          max_target_tokens=target_tokens)
    evaluator = Evaluator(held, TorchDistributed(), autocast_dtype=autocast)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cold = evaluator(model, 0)
    warm = evaluator(model, 0)
    _sync(device)
    return dict(tokens=warm["tokens"], seconds=warm["seconds"], tokens_per_s=warm["tokens_per_s"],
                cold_tokens_per_s=cold["tokens_per_s"], peak_gib=peak_gib(device), loss=warm["loss"])



def run_bmtrain(side, scenario, batches, device, warmup, use_checkpoint, vocab_size, knobs):
    """The bmtrain backend (``BmtrainStrategy``: ZeRO-3 blocks, ``BmtOptimization``) through the loop's
    ``Trainer``; one result per ``--sweep`` point (one point without it)."""
    from fm9g.backends.bmtrain_backend.training import BmtrainStrategy, set_block_checkpointing

    config = bench_config("bmtrain", split_side(side)[1], scenario, use_checkpoint, vocab_size, knobs)
    strategy = BmtrainStrategy(config)
    device = strategy.device
    reset_memory(device)
    started = time.perf_counter()
    trainer, params, flops_n = build_side(strategy, config, vocab_size)
    print(f"  bmtrain: model built on the GPU and wrapped in {time.perf_counter() - started:.1f} s", flush=True)

    def set_blocks(blocks):
        return set_block_checkpointing(trainer.model, strategy.bmt.Block, use_checkpoint, blocks)

    results = sweep(trainer, batches, device, warmup, use_checkpoint, knobs, set_blocks,
                    dict(params=params, flop_params=flops_n), side)
    return results if knobs.sweep else results[0]
