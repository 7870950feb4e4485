#!/usr/bin/env python3
"""Mixing throughput and accuracy: fm9g's stream side by side with the Hugging Face datasets recipe.

Workload: the ``--scale bench`` corpus of ``../shared/bench/make_corpus.py`` (generated unless
``--corpus`` names one), prepared with fm9g's adapters (pretrain.txt → ``txt``, alpaca_zh.json →
``alpaca``, medical_o1.json → ``medical-o1``, all languages) and indexed. The mixture: pretrain 0.4
(identity), alpaca 0.3 and medical 0.3 (both the seed's ChatML template), max_length 4096,
batch_size 1, the corpus's byte-level BPE tokenizer, seed 42. Measured in one run:

* fm9g stream: packed (non-padding) tokens/s from ``MixtureStream`` over ``--samples`` samples,
  reading, transform, tokenization, masking and packing included (in-process with its default
  tokenizing thread, and 2 worker processes on a shorter run); realized token-share error after
  1k / 10k / 100k samples;
* tokenizer ceiling: ``tokenizers`` ``encode_batch_fast`` (rayon threads = the cores) over exactly
  the transformed texts a ``--short-samples`` stream run consumed, loaded before the clock starts;
  ``--repeats`` (stream, ceiling) pairs run back to back and the median pair's ratio is reported,
  since the machine may be shared. Rows the stream tokenized ahead but did not consume when it
  stopped count against the stream; the ceiling's tokens exclude the stream's one bos per sample;
* materialized mixture: tokens/s reading ``MaterializedStream`` batches (written by a separate,
  untimed stream run), against the same rows and dtypes saved once by HF ``save_to_disk`` and read
  back with ``load_from_disk(...).with_format("numpy")``, 1 and 64 rows a batch;
* Hugging Face baselines (``mix_bench_hf.py``): interleave first, then tokenize only the consumed
  rows — ``select`` + ``map(batched=True, num_proc=…)`` over the Arrow-loaded JSONL (cold cache; the
  JSON → Arrow load is untimed, like fm9g's index) or streaming ``IterableDataset.map`` over the
  interleaved JSON — with the same fast tokenizer called batched, template, masking and greedy
  packing; ``probabilities`` as example probabilities and length-corrected (weight / mean sample
  tokens, the seed's rule); the token-share error of each after 1k / 10k / 100k samples;
* resume state size in bytes for a 1k-row and a 1M-row dataset.

Usage::

    python benchmarks/mix_bench.py --work /tmp/mix_bench [--corpus DIR] [--samples 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import mix_bench_hf as hf

MAKE_CORPUS = Path(os.environ.get("FM9G_MAKE_CORPUS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "bench") / "make_corpus.py"
"""``../shared/bench/make_corpus.py`` beside the checkout, or ``$FM9G_MAKE_CORPUS_DIR``."""
WEIGHTS = {"pretrain": 0.4, "alpaca": 0.3, "medical": 0.3}
TEMPLATES = {"pretrain": "identity", "alpaca": "chatml", "medical": "chatml"}
MAX_LENGTH = 4096
CHECKPOINTS = (1_000, 10_000, 100_000)


def log(message: str) -> None:
    print(f"[mix_bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(corpus: Path, work: Path) -> Path:
    """fm9g prepare + fm9g index for the three sources; returns the manifest path."""
    from fm9g.cli import main as fm9g

    sources = {"pretrain": ("txt", "pretrain.txt", []), "alpaca": ("alpaca", "alpaca_zh.json", []),
               "medical": ("medical-o1", "medical_o1.json", ["--option", "language=all"])}
    for name, (adapter, file, extra) in sources.items():
        if (work / "idx" / name / "meta.json").is_file():
            continue
        assert fm9g(["prepare", "--adapter", adapter, "--input", str(corpus / file), "--output",
                     str(work / "prepared" / name), "--force", "--no-progress", *extra]) == 0
        assert fm9g(["index", "--input", str(work / "prepared" / name / "train.jsonl"), "--output",
                     str(work / "idx" / name), "--tokenizer", "byte", "--force"]) == 0
    manifest = {"version": 1, "seed": 42, "max_length": MAX_LENGTH, "batch_size": 1,
                "tokenizer": f"hf:{corpus / 'tokenizer'}",
                "datasets": [{"task_name": name, "path": f"idx/{name}", "abs_weight": weight,
                              "transform": TEMPLATES[name]} for name, weight in WEIGHTS.items()]}
    path = work / "mix.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def share_errors(tokens_at: dict[int, np.ndarray]) -> dict[str, float]:
    targets = np.array(list(WEIGHTS.values())) / sum(WEIGHTS.values())
    return {f"{n // 1000}k": float(100 * np.abs(tokens / tokens.sum() - targets).max()) for n, tokens in tokens_at.items()}


def run_fm9g(manifest: Path, samples: int, workers: int, output: Path | None = None) -> dict:
    from fm9g.mixer.materialized import MaterializedWriter
    from fm9g.mixer.report import MixRecorder
    from fm9g.mixer.stream import MixtureStream

    stream = MixtureStream.from_manifest(manifest, workers=workers)
    recorder = MixRecorder(stream.task_names, stream.tokenizer.bos_id)
    writer = MaterializedWriter(output, capacity=stream.capacity, force=True) if output else None
    tokens_at: dict[int, np.ndarray] = {}
    started = time.perf_counter()
    for batch in stream:
        recorder.add(batch)
        if writer:
            writer.add(batch)
        for checkpoint in CHECKPOINTS:
            if checkpoint not in tokens_at and recorder.total_samples >= checkpoint:
                tokens_at[checkpoint] = recorder.tokens.copy()
        if recorder.total_samples >= samples:
            break
    seconds = time.perf_counter() - started
    stream.close()
    progress = list(stream.progress)
    if writer:
        writer.finish(settings={"task_names": stream.task_names, "tokenizer": stream.tokenizer.spec,
                                "max_length": stream.max_length, "batch_size": stream.batch_size},
                      final_state=stream.state_dict(), report={})
    return {"workers": workers, "samples": recorder.total_samples, "tokens": recorder.total_tokens,
            "seconds": seconds, "tokens_per_s": recorder.total_tokens / seconds,
            "packing_efficiency": recorder.total_tokens / recorder.capacity,
            "share_error_pp": share_errors(tokens_at), "_progress": progress}


def consumed_texts(manifest: Path, progress: list) -> list[str]:
    """The transformed prompt and output texts of exactly the rows a stream run consumed (epoch 0)."""
    from fm9g.index.reader import IndexedDataset
    from fm9g.mixer.permutation import KeyedPermutation
    from fm9g.mixer.transforms import TransformRef, bind_transform

    texts: list[str] = []
    for state in progress:
        dataset = IndexedDataset(manifest.parent / "idx" / state.task_name)
        transform = bind_transform(TransformRef(name=TEMPLATES[state.task_name]), trust_scripts=False)
        rows = KeyedPermutation.for_epoch(len(dataset), 42, state.task_name, 0).take(np.arange(state.position))
        for record in dataset.read_many(rows.tolist()):
            result = transform(record, 0, None)
            texts += [result["input"], result["output"]]
    return texts


def tokenizer_ceiling(texts: list[str], corpus: Path) -> dict:
    """encode_batch_fast (rayon threads = the cores) over texts loaded before the clock starts."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(corpus / "tokenizer" / "tokenizer.json"))
    best = 0.0
    for batch in (1024, 128):
        started, tokens = time.perf_counter(), 0
        for begin in range(0, len(texts), batch):
            tokens += sum(len(e) for e in tokenizer.encode_batch_fast(texts[begin:begin + batch], add_special_tokens=False))
        best = max(best, tokens / (time.perf_counter() - started))
    return {"texts": len(texts), "tokens": tokens, "tokens_per_s": best}


def read_materialized(directory: Path) -> dict:
    from fm9g.mixer.materialized import MaterializedStream

    started, tokens, batches = time.perf_counter(), 0, 0
    for batch in MaterializedStream(directory):
        tokens += batch.num_tokens
        batches += 1
    seconds = time.perf_counter() - started
    return {"batches": batches, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def state_sizes(work: Path) -> dict:
    from fm9g.mixer.stream import MixtureStream

    sizes = {}
    for rows in (1_000, 1_000_000):
        directory = work / f"state_{rows}"
        if not (directory / "index").is_file():
            directory.mkdir(parents=True, exist_ok=True)
            lines = [f'{{"input": "", "output": "row {i}"}}\n'.encode() for i in range(rows)]
            (directory / "data.jsonl").write_bytes(b"".join(lines))
            offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines])])
            (directory / "index").write_text("\n".join(map(str, offsets.tolist())) + "\n")
        manifest = work / f"state_{rows}.json"
        manifest.write_text(json.dumps({"max_length": MAX_LENGTH, "datasets": [
            {"task_name": "rows", "path": str(directory), "abs_weight": 1.0}]}))
        stream = MixtureStream.from_manifest(manifest)
        for _ in zip(range(5), stream):
            pass
        sizes[rows] = len(json.dumps(stream.state_dict()).encode())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mix_bench"))
    parser.add_argument("--corpus", type=Path, help="an existing make_corpus --scale bench output")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--short-samples", type=int, default=20_000,
                        help="samples for the stream-vs-ceiling pairs and the workers/materialize runs")
    parser.add_argument("--hf-num-proc", default="2,1",
                        help="num_proc values for HF's map path with example probabilities (1: in-process, rayon "
                             "threads); the length-corrected map run uses the first")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved (stream, ceiling) pairs; the median ratio is reported (the machine is shared)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = (args.corpus or work / "corpus").resolve()
    if not (corpus / "pretrain.txt").is_file():
        log(f"generating the bench corpus into {corpus} (~70 s, 2.3 GB RAM)")
        subprocess.run([sys.executable, str(MAKE_CORPUS), str(corpus), "--scale", "bench"], check=True)
    log("prepare + index")
    started = time.perf_counter()
    manifest = prepare(corpus, work)
    results: dict = {"cores": os.cpu_count(), "prepare_index_seconds": time.perf_counter() - started}
    log(f"fm9g stream vs tokenizer ceiling, {args.short_samples} samples, {args.repeats} interleaved pairs")
    pairs = []
    for repeat in range(args.repeats):
        short = run_fm9g(manifest, args.short_samples, workers=0)
        progress = short.pop("_progress")
        if repeat == 0:
            texts = consumed_texts(manifest, progress)
        ceiling = tokenizer_ceiling(texts, corpus)
        pairs.append((short, ceiling))
        log(f"  pair {repeat + 1}: stream {short['tokens_per_s'] / 1e3:.0f}k tokens/s, ceiling "
            f"{ceiling['tokens_per_s'] / 1e3:.0f}k, ratio {short['tokens_per_s'] / ceiling['tokens_per_s']:.3f}")
    del texts
    pair_ratios = [short["tokens_per_s"] / ceiling["tokens_per_s"] for short, ceiling in pairs]
    median = sorted(range(len(pairs)), key=pair_ratios.__getitem__)[len(pairs) // 2]
    short, ceiling_result = pairs[median]
    results["fm9g_short"] = short
    results["fm9g_short_pairs"] = [{"stream_tokens_per_s": s["tokens_per_s"], "ceiling_tokens_per_s": c["tokens_per_s"],
                                    "ratio": r} for (s, c), r in zip(pairs, pair_ratios)]
    log(f"fm9g stream, {args.short_samples} samples, written as a materialized mixture (not timed)")
    run_fm9g(manifest, args.short_samples, workers=0, output=work / "materialized").pop("_progress")
    results["materialized_read"] = read_materialized(work / "materialized")
    shutil.rmtree(work / "materialized_arrow", ignore_errors=True)
    results["hf_materialized_read"] = {
        f"batch_{size}": hf.materialize_and_read(work / "materialized", work / "materialized_arrow", size)
        for size in (1, 64)}
    log(f"fm9g stream, {args.short_samples} samples, 2 worker processes")
    results["fm9g_workers2"] = run_fm9g(manifest, args.short_samples, workers=2)
    results["fm9g_workers2"].pop("_progress")
    log(f"fm9g stream, {args.samples} samples, in-process tokenization")
    results["fm9g"] = run_fm9g(manifest, args.samples, workers=0)
    results["fm9g"].pop("_progress")
    results["tokenizer_ceiling"] = ceiling_result
    names, weights = list(WEIGHTS), list(WEIGHTS.values())
    common = {"max_length": MAX_LENGTH, "checkpoints": CHECKPOINTS, "samples": args.samples}
    num_procs = [int(value) for value in args.hf_num_proc.split(",")]
    runs = [(f"hf_map_example_p_np{n}", False, n) for n in num_procs] + [("hf_map_corrected_p", True, num_procs[0])]
    for key, corrected, num_proc in runs:
        log(f"HF datasets, map path, cold, {'length-corrected' if corrected else 'example'} probabilities, "
            f"num_proc={num_proc}")
        results[key] = hf.run_map(work, corpus, work / "hf_cache", names, weights, corrected=corrected,
                                  num_proc=num_proc, **common)
    log("HF datasets, streaming path, length-corrected probabilities")
    results["hf_streaming_corrected_p"] = hf.run_streaming(
        work, corpus, work / "hf_cache", names, weights,
        probabilities=results["hf_map_corrected_p"]["probabilities"], **common)
    results["state_bytes"] = state_sizes(work)
    fm9g_rate = results["fm9g"]["tokens_per_s"]
    hf_keys = [key for key, _, _ in runs] + ["hf_streaming_corrected_p"]
    best_hf = max(hf_keys, key=lambda key: results[key]["tokens_per_s"])
    results["ratios"] = {
        "fm9g_short_vs_tokenizer_ceiling_same_texts": pair_ratios[median],
        "fm9g_vs_tokenizer_ceiling": fm9g_rate / results["tokenizer_ceiling"]["tokens_per_s"],
        **{f"fm9g_vs_{key}": fm9g_rate / results[key]["tokens_per_s"] for key in hf_keys},
        "best_hf": best_hf,
        "fm9g_vs_best_hf": fm9g_rate / results[best_hf]["tokens_per_s"],
        "fm9g_workers2_vs_best_hf": results["fm9g_workers2"]["tokens_per_s"] / results[best_hf]["tokens_per_s"],
        **{f"materialized_vs_hf_arrow_{key}": results["materialized_read"]["tokens_per_s"] / read["tokens_per_s"]
           for key, read in results["hf_materialized_read"].items()},
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
