#!/usr/bin/env python
"""Training throughput: fm9g packed (varlen) batches vs Hugging Face padded batches, same samples.

Data: ChatML alpaca + medical-o1 records from ``make_corpus.py`` (SFT-like lengths), indexed and
mixed by fm9g (``fm9g.index.builder`` + ``MixtureStream``, the corpus's BPE tokenizer). fm9g trains
on the packed rows with its own step (``fm9g.backends.loop.train_step``: varlen attention, token-mean
loss). The baseline gets the *same samples in the same order* (cut out of the packed rows by
``cu_seqlens``), in batches of ``--hf-batch`` padded to the longest, trained the way HF Trainer does
(``labels=`` to the model, SDPA attention).

Reported per side: useful (non-padding) tokens/s, share of computed tokens that are useful, MFU
(model FLOPs of useful tokens: 6·N per token for full training, 4·N for LoRA with a frozen base,
over ``--peak-tflops``), peak GPU memory. Ratios fm9g / HF are printed at the end.

    python benchmarks/train_bench.py                 # GPU: 1.1B full + fm9g-7b LoRA r=64
    python benchmarks/train_bench.py --quick         # CPU smoke run, tiny presets (~1-2 min)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]
for _candidate in (os.environ.get("FM9G_MAKE_CORPUS_DIR"), _REPO / "shared" / "bench", _REPO.parent / "shared" / "bench"):
    if _candidate and (Path(_candidate) / "make_corpus.py").is_file():
        sys.path.insert(0, str(_candidate))
        break

SCENARIOS = {
    "full": dict(preset="llama-1.1b", lora=False, batch_size=4, max_length=4096, hf_batch=16),
    "lora": dict(preset="fm9g-7b", lora=True, batch_size=2, max_length=4096, hf_batch=8),
}
QUICK = {
    "full": dict(preset="tiny-llama", lora=False, batch_size=2, max_length=512, hf_batch=4),
    "lora": dict(preset="tiny-qwen2", lora=True, batch_size=2, max_length=512, hf_batch=4),
}


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
        "medical": [{"input": r["Question"], "output": r["Complex_CoT"] + "\n\n" + r["Response"]}
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


def padded_batches(samples, batch: int, pad_id: int, device) -> list[dict]:
    """HF-style: batches of ``batch`` samples padded to the longest; labels aligned to input_ids (HF shifts)."""
    out = []
    for start in range(0, len(samples) - batch + 1, batch):
        group = samples[start:start + batch]
        longest = max(len(s) for s, _ in group)
        ids = torch.full((batch, longest), pad_id, dtype=torch.long)
        labels = torch.full((batch, longest), -100, dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, (src, tgt) in enumerate(group):
            ids[row, :len(src)] = torch.tensor(src)
            labels[row, 1:len(src)] = torch.tensor(tgt[:-1])  # HF predicts labels[i+1] from position i
            mask[row, :len(src)] = 1
        out.append({"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device),
                    "useful": int(mask.sum()), "computed": batch * longest})
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def _timed(step_fn, items, warmup: int, device) -> tuple[float, int, int]:
    """Seconds, useful and computed tokens over ``items[warmup:]`` (the first ``warmup`` are not timed)."""
    for item in items[:warmup]:
        step_fn(item)
    _sync(device)
    start = time.perf_counter()
    useful = computed = 0
    for item in items[warmup:]:
        u, c = step_fn(item)
        useful, computed = useful + u, computed + c
    _sync(device)
    return time.perf_counter() - start, useful, computed


def run_fm9g(scenario, batches, device, warmup, use_checkpoint, vocab_size):
    from fm9g.backends.data import to_device
    from fm9g.backends.loop import train_step
    from fm9g.backends.models import build_model, parameter_counts
    from fm9g.backends.peft_engine import PeftEngine
    from fm9g.backends.torch_backend import TorchBackend

    _reset(device)
    model = build_model({"preset": scenario["preset"], "vocab_size": vocab_size}, seed=0, device=device)
    if scenario["lora"]:
        model = PeftEngine().apply(model, {"lora_r": 64, "lora_alpha": 32})
    config = {"model": {"dtype": "auto"}}
    TorchBackend._set_dtypes(model, config, device, scenario["lora"])
    if use_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = parameter_counts(model)[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    autocast = torch.bfloat16 if device.type == "cuda" else None
    model.train()

    def step(batch):
        train_step(model, optimizer, [to_device(batch, device)], lr=1e-5, clip_grad=1.0, task_names=["a", "b"],
                   autocast_dtype=autocast)
        return batch.num_tokens, len(batch.input_ids)

    seconds, useful, computed = _timed(step, batches, warmup, device)
    peak = _peak(device)
    del model, optimizer
    return dict(seconds=seconds, useful=useful, computed=computed, peak_gib=peak, params=params)


def run_hf(scenario, padded, device, warmup, use_checkpoint, vocab_size):
    from transformers import AutoModelForCausalLM

    from fm9g.backends.models import parameter_counts
    from fm9g.backends.presets import preset_config

    _reset(device)
    config = preset_config(scenario["preset"], vocab_size=vocab_size)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if scenario["lora"] and device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.use_cache = False
    if scenario["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    if use_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = parameter_counts(model)[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    model.train()

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch["useful"], batch["computed"]

    seconds, useful, computed = _timed(step, padded, warmup, device)
    peak = _peak(device)
    del model, optimizer
    return dict(seconds=seconds, useful=useful, computed=computed, peak_gib=peak, params=params)


def summarize(name, side, result, lora, peak_tflops):
    rate = result["useful"] / result["seconds"]
    flops_per_token = (4 if lora else 6) * result["params"]
    mfu = rate * flops_per_token / (peak_tflops * 1e12)
    return dict(scenario=name, side=side, useful_tokens_per_s=rate, useful_share=result["useful"] / result["computed"],
                mfu=mfu, peak_gib=result["peak_gib"], seconds=result["seconds"], useful_tokens=result["useful"],
                params=result["params"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run with tiny presets")
    parser.add_argument("--scenarios", default="full,lora", help="comma list of: full, lora")
    parser.add_argument("--work", default=os.environ.get("FM9G_BENCH_WORK", "/tmp/fm9g-train-bench"))
    parser.add_argument("--scale", default=None, help="make_corpus scale (default: small, tiny with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed fm9g steps (default 20, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 3, 1 with --quick)")
    parser.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing on both sides")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H200: 989)")
    parser.add_argument("--output", help="write the results as JSON here (default: $OUT/train_bench.json if OUT is set)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenarios = QUICK if args.quick else SCENARIOS
    steps = args.steps or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = prepare_data(work, args.scale or ("tiny" if args.quick else "small"))
    from fm9g.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(json.loads(manifest.read_text())["tokenizer"])
    pad_id = tokenizer.pad_id
    rows = []
    for name in args.scenarios.split(","):
        scenario = scenarios[name]
        batches = packed_batches(manifest, warmup + steps, scenario["batch_size"], scenario["max_length"])
        samples = samples_of(batches)
        padded = padded_batches(samples, scenario["hf_batch"], pad_id, device)
        print(f"[{name}] {scenario['preset']}{' + LoRA r=64' if scenario['lora'] else ''}: {len(samples)} samples, "
              f"mean {sum(len(s) for s, _ in samples) / len(samples):.0f} tokens; fm9g {len(batches)} packed rows "
              f"of {scenario['batch_size']}x{scenario['max_length']}, HF {len(padded)} padded batches of "
              f"{scenario['hf_batch']} ({device})", flush=True)
        from fm9g.backends.presets import preset_config

        vocab_size = max(preset_config(scenario["preset"]).vocab_size, tokenizer.vocab_size)
        mine = run_fm9g(scenario, batches, device, warmup, args.use_checkpoint, vocab_size)
        rows.append(summarize(name, "fm9g", mine, scenario["lora"], args.peak_tflops))
        hf_warmup = max(1, round(warmup * len(padded) / len(batches)))
        theirs = run_hf(scenario, padded, device, hf_warmup, args.use_checkpoint, vocab_size)
        rows.append(summarize(name, "hf", theirs, scenario["lora"], args.peak_tflops))
    print(f"\n{'scenario':8} {'side':5} {'useful tok/s':>13} {'useful %':>9} {'MFU %':>7} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['scenario']:8} {row['side']:5} {row['useful_tokens_per_s']:13,.0f} {100 * row['useful_share']:9.1f} "
              f"{100 * row['mfu']:7.2f} {row['peak_gib']:9.1f}")
    ratios = {}
    for name in args.scenarios.split(","):
        fm, hf = (next(r for r in rows if r["scenario"] == name and r["side"] == side) for side in ("fm9g", "hf"))
        ratios[name] = fm["useful_tokens_per_s"] / hf["useful_tokens_per_s"]
        print(f"{name}: fm9g / HF useful tokens/s = {ratios[name]:.2f}x; peak memory {fm['peak_gib']:.1f} vs "
              f"{hf['peak_gib']:.1f} GiB")
    output = args.output or (str(Path(os.environ["OUT"]) / "train_bench.json") if os.environ.get("OUT") else None)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "quick": args.quick,
                                            "rows": rows, "ratios": ratios}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
