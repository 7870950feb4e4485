#!/usr/bin/env python
"""Training throughput: fm9g's torch and bmtrain backends against the strongest Hugging Face
configuration a competent transformers user would build, on the same samples in the same run.

Data: ChatML alpaca + medical-o1 records from ``make_corpus.py`` (SFT-like lengths), indexed and
mixed by fm9g (``fm9g.index.builder`` + ``MixtureStream``, the corpus's BPE tokenizer). fm9g trains
on its packed rows through the backends' own run-sequence steps (``TorchStrategy`` /
``BmtrainStrategy``: ``setup_model``, ``make_optimization``, the loop's ``Trainer.step`` with varlen
attention and the token-mean loss), configured by the train-config keys a user would set.

Sides (``--only`` takes a comma list of ``scenario:side``; default: every side of the ``--scenarios``):

* HF (``benchmarks/hf_sides.py``): ``hf`` — padded batches of ``--hf-batch`` (HF Trainer's default,
  the secondary anchor); ``hf-packed`` — the same packed rows padding-free (the
  ``DataCollatorWithFlattening`` layout), SDPA; ``hf-flex`` — flex attention; ``hf-fa2`` —
  flash_attention_2 (skipped where ``flash_attn`` does not import); ``hf-flex-liger`` — plus Liger's
  RMSNorm/RoPE/SwiGLU and fused linear cross-entropy; ``hf-flex-liger-compile`` — plus regional
  ``torch.compile``. Ratios are reported against the fastest HF side of the scenario.
* fm9g: ``torch``, ``bmtrain``, and ``torch-rows``/``bmtrain-rows`` (full 4096-token rows, no sample boundaries),
  each with optional ``+modifiers`` naming train-config levers: ``liger`` (``model.kernels``),
  ``chunk`` (``model.loss_chunk_tokens: 4096``), ``compile`` (``model.compile``), ``fp8``
  (``model.fp8``), ``adam8`` (the torch backend's ``optimizer: adamw_8bit``), e.g.
  ``full:torch+liger+chunk+compile``.

Scenarios: ``full`` — the 1.1B Llama shape (preset ``llama-1.1b``), rows of 4×4096; ``lora`` —
fm9g-7b + LoRA r=64 on all seven linears, rows of 2×4096; ``full7b`` — the fm9g-7b full fine-tune
(activation checkpointing, optimizer states on the GPU), 1×4096.

Reported per row: useful (non-padding) tokens/s, share of computed tokens that are useful, MFU
(model FLOPs of the useful tokens over ``--peak-tflops``: 6·N per token for full training, 4·N for
LoRA with a frozen base — N without the untied input embedding, a lookup — plus causal attention's
6·layers·hidden·n per token of an n-token sample, as in PaLM's and Megatron's MFU; recomputation is
not counted; fp8 rows are measured against the same bf16 peak), peak GPU memory.

Knobs for the fm9g sides: ``--kernels liger`` (``model.kernels`` for every fm9g side), ``--grad-accum K``
(K rows per optimizer step), ``--checkpoint-blocks N`` (with checkpointing: only the first N blocks
recompute, ``backend_options.checkpoint_blocks`` of either backend),
``--sweep K:N,K:N`` (several such points on one model, in order, stopping at the first that
runs out of memory), ``--profile`` (the step's phases and its top CUDA kernels).

    python benchmarks/train_bench.py --scenarios full         # GPU: every side of the 1.1B scenario
    python benchmarks/train_bench.py --only full:hf-flex-liger,full:torch+liger+chunk
    python benchmarks/train_bench.py --scenarios full7b       # the two bmtrain 7B rows
    python benchmarks/train_bench.py --quick                  # CPU smoke run, tiny presets (~1-2 min)
    python benchmarks/train_bench.py --only full7b:bmtrain-rows+liger --sweep 1:28,4:28,4:20,4:14
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

import torch

from hf_sides import HF_SIDES, packed_hf_batches, padded_batches, run_hf, unavailable
from train_sides import MODIFIERS, peak_gib, reset_memory, run_bmtrain, run_fm9g, split_side

_REPO = Path(__file__).resolve().parents[1]
for _candidate in (os.environ.get("FM9G_MAKE_CORPUS_DIR"), _REPO / "shared" / "bench", _REPO.parent / "shared" / "bench"):
    if _candidate and (Path(_candidate) / "make_corpus.py").is_file():
        sys.path.insert(0, str(_candidate))
        break

_HF = ("hf", "hf-packed", "hf-flex", "hf-fa2", "hf-flex-liger", "hf-flex-liger-compile")
SCENARIOS = {
    "full": dict(preset="llama-1.1b", lora=False, batch_size=4, max_length=4096, hf_batch=16,
                 sides=_HF + ("torch", "bmtrain")),
    "lora": dict(preset="fm9g-7b", lora=True, batch_size=2, max_length=4096, hf_batch=8,
                 sides=_HF + ("torch", "bmtrain")),
    "full7b": dict(preset="fm9g-7b", lora=False, batch_size=1, max_length=4096, hf_batch=4, use_checkpoint=True,
                   sides=("bmtrain", "bmtrain-rows", "torch-rows")),
}
QUICK = {
    "full": dict(preset="tiny-llama", lora=False, batch_size=2, max_length=512, hf_batch=4,
                 sides=("hf", "hf-packed", "torch", "bmtrain")),
    "lora": dict(preset="tiny-qwen2", lora=True, batch_size=2, max_length=512, hf_batch=4,
                 sides=("hf", "hf-packed", "torch", "bmtrain")),
    "full7b": dict(preset="tiny-qwen2", lora=False, batch_size=2, max_length=512, hf_batch=4, use_checkpoint=True,
                   sides=("bmtrain", "bmtrain-rows", "torch-rows")),
}
FM9G_SIDES = ("torch", "torch-rows", "bmtrain", "bmtrain-rows")
BMTRAIN_SIDES = ("bmtrain", "bmtrain-rows")


def prepare_data(work: Path, scale: str) -> Path:
    """make_corpus → records {input, output} → fm9g indexes → mix.json (ChatML, tokenizer hf:corpus)."""
    from fm9g.index.builder import BuildOptions, build_index

    corpus = work / f"corpus-{scale}"
    if not (corpus / "manifest.json").exists():
        from make_corpus import generate

        generate(corpus, scale=scale, seed=0)
    tokenizer = f"hf:{corpus / 'tokenizer'}"
    sources = {
        "alpaca": [{"input": r["instruction"] + ("\n" + r["input"] if r["input"] else ""), "output": r["output"]}
                   for r in json.loads((corpus / "alpaca_zh.json").read_text(encoding="utf-8"))],
        "medical": [{"input": r["Question"], "output": r["Response"]}
                    for r in json.loads((corpus / "medical_o1.json").read_text(encoding="utf-8"))],
    }
    for name, records in sources.items():
        if (work / "idx" / name / "meta.json").exists():
            continue
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        build_index([path], work / "idx" / name, BuildOptions(tokenizer=tokenizer, progress=False, force=True))
    manifest = {"tokenizer": tokenizer, "seed": 1, "datasets": [
        {"task_name": name, "path": f"idx/{name}", "abs_weight": 0.5, "transform": "chatml",
         "oversize_rule": "head"} for name in sources]}
    (work / "mix.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return work / "mix.json"


def packed_batches(manifest: Path, count: int, batch_size: int, max_length: int) -> list:
    from fm9g.mixer.stream import MixtureStream

    stream = MixtureStream.from_manifest(manifest, batch_size=batch_size, max_length=max_length)
    batches = []
    for batch in stream:
        batches.append(batch)
        if len(batches) == count:
            break
    stream.close()
    return batches


def samples_of(batches: list) -> list[tuple[list[int], list[int]]]:
    """The samples of packed rows in order (the padding tail, positions restarting at 0 past num_tokens, excluded)."""
    samples = []
    for batch in batches:
        cu = batch.cu_seqlens.tolist()
        for begin, end in zip(cu, cu[1:]):
            if begin < batch.num_tokens:
                samples.append((batch.input_ids[begin:end].tolist(), batch.targets[begin:end].tolist()))
    return samples


def full_rows(batches: list) -> list:
    """Rows of the same length and tokens as ``batches``, each one sequence (positions 0..L-1, no padding)."""
    import numpy as np

    from fm9g.mixer.packing import PackedBatch

    stream = np.concatenate([b.input_ids[:b.num_tokens] for b in batches] * 2).astype(np.int32)
    length = len(batches[0].input_ids)
    rows = []
    for index in range(len(batches)):
        ids = stream[index * length:(index + 1) * length + 1]
        rows.append(PackedBatch(index, ids[:-1].copy(), ids[1:].copy(), np.arange(length, dtype=np.int32),
                                np.zeros(length, np.int32), np.array([0, length], np.int32), length))
    return rows


def model_flops(result, lora: bool, layers: int, hidden: int) -> float:
    """Model FLOPs of the useful tokens (PaLM/Megatron MFU): (6|4)·N per token for the matmul weights
    (N without an untied input embedding, which is a lookup; 4·N for LoRA's frozen base: no weight
    gradients), and causal attention's 6·layers·hidden·n² per n-token sample (score and value
    matmuls, forward + backward, half of the square)."""
    return ((4 if lora else 6) * result["flop_params"] * result["useful"]
            + 6 * layers * hidden * result["squares"])


def summarize(name, side, result, lora, peak_tflops, shape):
    rate = result["useful"] / result["seconds"]
    mfu = model_flops(result, lora, *shape) / result["seconds"] / (peak_tflops * 1e12)
    row = dict(scenario=name, side=side, useful_tokens_per_s=rate, useful_share=result["useful"] / result["computed"],
               mfu=mfu, peak_gib=result["peak_gib"], seconds=result["seconds"], useful_tokens=result["useful"],
               params=result["params"])
    if "eval" in result:
        row["eval"] = dict(result["eval"], speedup=result["eval"]["tokens_per_s"] / rate,
                           cold_speedup=result["eval"]["cold_tokens_per_s"] / rate)
    return row


def _bmtrain_available() -> str | None:
    """``None`` when BMTrain rows can run here, else why not."""
    import importlib.util

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("bmtrain") is None:
        return "bmtrain is not installed (fm9g install-bmtrain)"
    return None


def _row_timed_out(signum, frame):
    raise TimeoutError("the row ran past --row-timeout")


def _known_side(scenario: dict, side: str) -> bool:
    """A scenario's side, or an fm9g side of it with modifiers (``torch+liger+chunk``)."""
    if side in scenario["sides"]:
        return True
    base, modifiers = split_side(side)
    return (base in scenario["sides"] and base in FM9G_SIDES and bool(modifiers)
            and all(m in MODIFIERS for m in modifiers) and len(set(modifiers)) == len(modifiers))


def _order(side: str) -> tuple[int, int]:
    """HF sides without Liger first (Liger patches transformers' RoPE function for the whole process,
    and these baselines must run on transformers' own layers), then the torch sides, HF with Liger
    (patched either way), BMTrain last (``bmt.init_distributed`` turns cuDNN off for the process)."""
    if side in HF_SIDES:
        return (0 if "-liger" not in side else 2, HF_SIDES.index(side))
    return (3 if split_side(side)[0] in BMTRAIN_SIDES else 1, 0)


def _plan(args, scenarios) -> list[tuple[str, str]]:
    """``(scenario, side)`` rows to run: ``--scenarios`` x their sides, or the ``--only`` list (which
    may add modifiers to the fm9g sides), in the order of :func:`_order`."""
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; known: {', '.join(scenarios)}")
    rows = [(name, side) for name in names for side in scenarios[name]["sides"]]
    if args.only:
        rows = []
        for item in (item.strip() for item in args.only.split(",") if item.strip()):
            name, _, side = item.partition(":")
            if name not in scenarios or not _known_side(scenarios[name], side):
                known = sorted(f"{n}:{s}" for n, sc in scenarios.items() for s in sc["sides"])
                raise SystemExit(f"unknown row {item!r}; known: {', '.join(known)}; fm9g sides take "
                                 f"+modifiers from: {', '.join(MODIFIERS)}")
            rows.append((name, side))
    return sorted(rows, key=lambda row: _order(row[1]))


def _ratios(rows) -> dict[str, float]:
    """Each fm9g side's useful tokens/s over the strongest (fastest) HF side of its scenario, and
    over HF's padded batches; its peak memory over the strongest HF side's; bmtrain mixture over full rows."""
    measured = [r for r in rows if "useful_tokens_per_s" in r]
    ratios = {}
    for name in dict.fromkeys(r["scenario"] for r in measured):
        hf = [r for r in measured if r["scenario"] == name and r["side"] in HF_SIDES]
        strongest = max(hf, key=lambda r: r["useful_tokens_per_s"], default=None)
        padded = next((r for r in hf if r["side"] == "hf"), None)
        by_side = {r["side"]: r for r in measured if r["scenario"] == name}
        for side, row in by_side.items():
            if side in HF_SIDES:
                continue
            if strongest is not None:
                ratios[f"{name}:{side}/{strongest['side']}"] = row["useful_tokens_per_s"] / strongest["useful_tokens_per_s"]
                if math.isfinite(row["peak_gib"]) and math.isfinite(strongest["peak_gib"]):
                    ratios[f"{name}:{side}/{strongest['side']} memory"] = row["peak_gib"] / strongest["peak_gib"]
            if padded is not None and padded is not strongest:
                ratios[f"{name}:{side}/hf"] = row["useful_tokens_per_s"] / padded["useful_tokens_per_s"]
        if "bmtrain" in by_side and "bmtrain-rows" in by_side:
            ratios[f"{name}:bmtrain/bmtrain-rows"] = (by_side["bmtrain"]["useful_tokens_per_s"]
                                                      / by_side["bmtrain-rows"]["useful_tokens_per_s"])
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run with tiny presets")
    parser.add_argument("--scenarios", default="full,lora,full7b", help="comma list of: full, lora, full7b")
    parser.add_argument("--only", default="", help="comma list of row ids, e.g. full:bmtrain,full:hf (see the docstring)")
    parser.add_argument("--work", default=os.environ.get("FM9G_BENCH_WORK", "/tmp/fm9g-train-bench"))
    parser.add_argument("--scale", default=None, help="make_corpus scale (default: small, tiny with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed fm9g steps (default 20, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 3, 1 with --quick)")
    parser.add_argument("--hf-batch", type=int, default=None,
                        help="the HF baseline's padded batch size for every scenario (default: the scenario's)")
    parser.add_argument("--use-checkpoint", action="store_true",
                        help="activation checkpointing on every side (full7b always checkpoints)")
    parser.add_argument("--grad-accum", type=int, default=1, help="fm9g sides: packed rows per optimizer step")
    parser.add_argument("--checkpoint-blocks", type=int, default=None,
                        help="fm9g sides with checkpointing: only the first N blocks recompute (default: all)")
    parser.add_argument("--sweep", default="",
                        help="fm9g sides: comma list of ACCUM:BLOCKS points (BLOCKS 'all' or a count) run on one "
                             "model in order; order them by growing memory (the first out-of-memory point ends it)")
    parser.add_argument("--kernels", choices=("hf", "liger"), default="hf",
                        help="fm9g sides: the train config's model.kernels (liger: fused RMSNorm/RoPE/SwiGLU, CUDA)")
    parser.add_argument("--no-eval", action="store_true",
                        help="torch side: skip timing held-out evaluation (fm9g's Evaluator) after training")
    parser.add_argument("--row-timeout", type=int, default=0,
                        help="seconds one row may take before it is recorded as failed and the next runs (0: no limit)")
    parser.add_argument("--profile", action="store_true", help="fm9g sides: time one step's phases and list its top kernels")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H200: 989)")
    parser.add_argument("--output", help="write the results as JSON here (default: $OUT/train_bench.json if OUT is set)")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _row_timed_out)
    args.sweep = [(int(a), None if b == "all" else int(b))
                  for a, b in (point.split(":") for point in args.sweep.split(",") if point)]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenarios = QUICK if args.quick else SCENARIOS
    plan = _plan(args, scenarios)
    steps = args.steps or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = prepare_data(work, args.scale or ("tiny" if args.quick else "small"))
    from fm9g.backends.models.presets import preset_config
    from fm9g.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(json.loads(manifest.read_text())["tokenizer"])
    args.manifest = None if args.no_eval else manifest
    output = args.output or (str(Path(os.environ["OUT"]) / "train_bench.json") if os.environ.get("OUT") else None)
    rows, data = [], {}
    bmtrain_missing = _bmtrain_available()
    for name, side in plan:
        scenario = dict(scenarios[name], **({"hf_batch": args.hf_batch} if args.hf_batch else {}))
        if name not in data:
            accumulation = max([args.grad_accum] + [a for a, _ in args.sweep])
            batches = packed_batches(manifest, (warmup + steps) * accumulation, scenario["batch_size"],
                                     scenario["max_length"])
            samples = samples_of(batches)
            padded = padded_batches(samples, scenario["hf_batch"], tokenizer.pad_id, device)
            data[name] = (batches, padded)
            print(f"[{name}] {scenario['preset']}{' + LoRA r=64' if scenario['lora'] else ''}: {len(samples)} samples, "
                  f"mean {sum(len(s) for s, _ in samples) / len(samples):.0f} tokens; fm9g {len(batches)} packed rows "
                  f"of {scenario['batch_size']}x{scenario['max_length']}, HF {len(padded)} padded batches of "
                  f"{scenario['hf_batch']} ({device})", flush=True)
        batches, padded = data[name]
        model_config = preset_config(scenario["preset"])
        vocab_size = max(model_config.vocab_size, tokenizer.vocab_size)
        shape = (model_config.num_hidden_layers, model_config.hidden_size)
        use_checkpoint = scenario.get("use_checkpoint", args.use_checkpoint)
        base = split_side(side)[0]
        missing = (bmtrain_missing if base in BMTRAIN_SIDES else unavailable(side, device) if side in HF_SIDES
                   else None)
        if missing:
            print(f"[{name}:{side}] skipped: {missing}", flush=True)
            rows.append(dict(scenario=name, side=side, skipped=missing))
            continue
        print(f"[{name}:{side}] running ...", flush=True)
        signal.alarm(args.row_timeout)
        try:
            if side == "hf":
                hf_warmup = min(max(1, round(warmup * args.grad_accum * len(padded) / len(batches))), len(padded) - 1)
                result = run_hf(side, scenario, padded, device, hf_warmup, use_checkpoint, vocab_size)
            elif side in HF_SIDES:
                result = run_hf(side, scenario, packed_hf_batches(batches, scenario["batch_size"], device), device, warmup, use_checkpoint,
                                vocab_size)
            else:
                rows_in = full_rows(batches) if base.endswith("-rows") else batches
                run_side = run_fm9g if base.startswith("torch") else run_bmtrain
                result = run_side(side, scenario, rows_in, device, warmup, use_checkpoint, vocab_size, args)
            for point in result if isinstance(result, list) else [result]:
                label = f"{side}[{point['label']}]" if isinstance(result, list) else side
                rows.append(summarize(name, label, point, scenario["lora"], args.peak_tflops, shape)
                            if "error" not in point else dict(scenario=name, side=label, error=point["error"],
                                                              peak_gib=point["peak_gib"]))
        except Exception as error:  # noqa: BLE001 - one row failing (e.g. out of memory) must not lose the others
            print(f"[{name}:{side}] FAILED: {type(error).__name__}: {str(error)[:400]}", flush=True)
            rows.append(dict(scenario=name, side=side, error=f"{type(error).__name__}: {str(error)[:400]}",
                             peak_gib=peak_gib(device)))
            reset_memory(device)
        finally:
            signal.alarm(0)
        done = rows[-1]
        if "useful_tokens_per_s" in done:
            print(f"[{name}:{side}] {done['useful_tokens_per_s']:,.0f} useful tokens/s, MFU {100 * done['mfu']:.1f}%, "
                  f"peak {done['peak_gib']:.1f} GiB", flush=True)
        if "eval" in done:
            evaluation = done["eval"]
            print(f"[{name}:{side}] held-out evaluation: {evaluation['tokens_per_s']:,.0f} tokens/s = "
                  f"{evaluation['speedup']:.2f}x the training step's (first evaluation {evaluation['cold_speedup']:.2f}x), "
                  f"peak {evaluation['peak_gib']:.1f} GiB (training {done['peak_gib']:.1f})", flush=True)
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "quick": args.quick,
                                                "rows": rows, "ratios": _ratios(rows)}, indent=2), encoding="utf-8")
    width = max([13] + [len(row["side"]) for row in rows])
    print(f"\n{'scenario':8} {'side':{width}} {'useful tok/s':>13} {'useful %':>9} {'MFU %':>7} {'peak GiB':>9}")
    for row in rows:
        if "useful_tokens_per_s" not in row:
            print(f"{row['scenario']:8} {row['side']:{width}} {row.get('error') or 'skipped: ' + row.get('skipped', '')}")
            continue
        print(f"{row['scenario']:8} {row['side']:{width}} {row['useful_tokens_per_s']:13,.0f} "
              f"{100 * row['useful_share']:9.1f} {100 * row['mfu']:7.2f} {row['peak_gib']:9.1f}")
    for key, value in _ratios(rows).items():
        print(f"{key}: {'peak memory' if key.endswith(' memory') else 'useful tokens/s'} ratio {value:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
