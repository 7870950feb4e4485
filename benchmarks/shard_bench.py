#!/usr/bin/env python3
"""Sharded indexing: N ``fm9g index --shard i/N`` processes over 1, 2, … P at a time, and the same
shards as Ray tasks on a local Ray cluster (its per-task overhead), on one machine.

Workload: a generated JSONL input (distinct zh/en records, ``--megabytes``, default 60) or ``--input``;
the tokenizer is ``--tokenizer`` (e.g. ``hf:/tmp/corpus/tokenizer``, the make_corpus BPE), else
none. Each shard task indexes with one worker process (``--workers 1``), so P tasks use P cores.

* processes: the N shard tasks as separate ``python -m fm9g index --shard i/N`` processes, at
  most P running at once (what a Slurm array on one node does), then the aggregate;
* ray: ``fm9g index --shards N --executor ray`` on ``ray.init(num_cpus=P)`` started beforehand
  (its start-up is reported apart); per-task overhead = wall × P / N − the tasks' mean own time;
* overhead: the same with ``--tiny-shards`` tasks of a 1 MB input, where the overhead dominates.

``--prepare``: ``fm9g prepare`` instead: one process vs ``--shards`` ``--shard i/N`` processes P at a
time (outputs checked equal), and the merge alone.

``--read``: reading instead of building. The input indexed once whole and once as ``--shards`` shards;
then the mixer's hot path (``read_records`` of 1000 random rows at a time) and ``fm9g mix``'s stream
(``MixtureStream`` of a one-dataset manifest, ``--samples`` packed samples, in this process) over
each, best of ``--repeats``.

Usage::

    python benchmarks/shard_bench.py --work /tmp/shard_bench --processes 1,2 --shards 8 [--tokenizer hf:DIR]
    python benchmarks/shard_bench.py --work /tmp/shard_bench --read --shards 16 [--tokenizer hf:DIR]
    python benchmarks/shard_bench.py --work /tmp/shard_bench --prepare --shards 4 --processes 1,2
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


def make_input(path: Path, megabytes: float) -> Path:
    if path.is_file() and path.stat().st_size >= megabytes * 1e6:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        row = 0
        while handle.tell() < megabytes * 1e6:
            text = ("这是一个很长的回答，" * (5 + row % 40)) if row % 3 else ("a fairly long answer " * (5 + row % 60))
            handle.write(json.dumps({"input": f"问题 {row}?", "output": f"{row}: {text}"}, ensure_ascii=False) + "\n")
            row += 1
    return path


def run_processes(source: Path, output: Path, shards: int, parallel: int, tokenizer: str | None) -> float:
    extra = ["--tokenizer", tokenizer] if tokenizer else []
    return run_tasks(lambda index: [sys.executable, "-m", "fm9g", "index", "--input", str(source), "--output",
                                    str(output), "--shard", f"{index}/{shards}", "--workers", "1", "--no-progress",
                                    *extra], output, shards, parallel)


def run_tasks(command, output: Path, shards: int, parallel: int) -> float:
    """Wall seconds of the ``shards`` processes ``command(index)``, at most ``parallel`` at once."""
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    waiting, running = list(range(shards)), []
    while waiting or running:
        while waiting and len(running) < parallel:
            running.append(subprocess.Popen(command(waiting.pop(0)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for process in list(running):
            if process.poll() is not None:
                running.remove(process)
                if process.returncode != 0:
                    raise SystemExit(process.stderr.read().decode())
        time.sleep(0.01)
    return time.perf_counter() - started


def prepare_speeds(source: Path, work: Path, shards: int, processes: list[int]) -> list[dict]:
    """``fm9g prepare --adapter jsonl --split test=0.05`` in one process, as ``shards`` ``--shard i/N``
    processes ``P`` at a time (the last one merges), and the merge alone (``finalize_prepare`` of
    shards built beforehand); the outputs are compared with the one-process ones."""
    from fm9g.prepare.shards import PrepareJob, build_planned, claim, finalize_prepare

    megabytes = source.stat().st_size / 1e6
    base = [sys.executable, "-m", "fm9g", "prepare", "--adapter", "jsonl", "--input", str(source),
            "--split", "test=0.05", "--no-progress"]
    one = work / "prepare-one"
    seconds = run_tasks(lambda _: [*base, "--output", str(one)], one, 1, 1)
    rows = [{"prepare": "one process", "seconds": seconds, "mb_per_s": megabytes / seconds}]
    print(f"prepare one process       {megabytes:,.0f} MB: {seconds:7.2f} s  {megabytes / seconds:7.1f} MB/s", flush=True)
    sharded = work / "prepare-sharded"
    for parallel in processes:
        seconds = run_tasks(lambda index: [*base, "--output", str(sharded), "--shard", f"{index}/{shards}"],
                            sharded, shards, parallel)
        for name in ("train.jsonl", "test.jsonl"):
            if (sharded / name).read_bytes() != (one / name).read_bytes():
                raise SystemExit(f"the sharded {name} differs from the one-process one")
        rows.append({"prepare": "shard processes", "parallel": parallel, "shards": shards, "seconds": seconds,
                     "mb_per_s": megabytes / seconds})
        print(f"prepare P={parallel:<3} {shards} shards of {megabytes:,.0f} MB: {seconds:7.2f} s  "
              f"{megabytes / seconds:7.1f} MB/s (merge included; outputs equal one process's)", flush=True)
    shutil.rmtree(sharded)
    job = PrepareJob(str(source), str(sharded), "jsonl", {}, 0.05, 3014, shards)
    plan = claim(job)
    for index in range(shards):
        build_planned(sharded, plan, index, False)
    started = time.perf_counter()
    finalize_prepare(sharded)
    seconds = time.perf_counter() - started
    rows.append({"prepare": "merge alone", "shards": shards, "seconds": seconds, "mb_per_s": megabytes / seconds})
    print(f"prepare merge of {shards} shards ({megabytes:,.0f} MB): {seconds:7.2f} s  {megabytes / seconds:7.1f} MB/s",
          flush=True)
    return rows


def run_ray(source: Path, output: Path, shards: int, tokenizer: str | None) -> tuple[float, float]:
    """(wall seconds, mean seconds a task spent building) on the already started Ray runtime."""
    from fm9g.index.builder import BuildOptions
    from fm9g.index.executors import build_all

    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    outcomes = build_all([source], output, shards, BuildOptions(tokenizer=tokenizer, workers=1, progress=False),
                         executor="ray")
    return time.perf_counter() - started, sum(outcome.seconds for outcome in outcomes) / len(outcomes)


def read_speeds(source: Path, work: Path, shards: int, tokenizer: str | None, samples: int, repeats: int) -> list[dict]:
    """Rows/s of ``read_records`` and samples/s and tokens/s of the mixture stream, one index vs sharded."""
    import numpy as np

    from fm9g.index.builder import BuildOptions, build_index
    from fm9g.index.executors import build_all
    from fm9g.mixer.sources import open_dataset, read_records
    from fm9g.mixer.stream import MixtureStream

    whole, sharded = work / "read-one", work / f"read-{shards}-shards"
    for directory in (whole, sharded):
        shutil.rmtree(directory, ignore_errors=True)
    build_index([source], whole, BuildOptions(tokenizer=tokenizer, progress=False))
    build_all([source], sharded, shards, BuildOptions(tokenizer=tokenizer, workers=1, progress=False))
    rows = []
    for name, directory in (("one index", whole), (f"{shards} shards", sharded)):
        dataset = open_dataset(directory)
        order = np.random.default_rng(0).permutation(len(dataset)).tolist()
        best_read = min(_timed(lambda: [read_records(dataset, order[b:b + 1000]) for b in range(0, len(order), 1000)])
                        for _ in range(repeats))
        manifest = work / f"{directory.name}.json"
        manifest.write_text(json.dumps({"max_length": 2048, "batch_size": 8, "tokenizer": tokenizer or "byte",
                                        "seed": 1, "datasets": [{"task_name": "t", "path": str(directory),
                                                                 "abs_weight": 1}]}))
        streamed = [_stream(MixtureStream, manifest, samples) for _ in range(repeats)]
        seconds, records, tokens = min(streamed)
        rows.append({"dataset": name, "rows": len(order), "read_rows_per_s": len(order) / best_read,
                     "samples": records, "stream_seconds": seconds, "samples_per_s": records / seconds,
                     "tokens_per_s": tokens / seconds})
        print(f"{name:>10}: read_records {len(order) / best_read:10,.0f} rows/s   mix stream {records / seconds:8,.0f} "
              f"samples/s {tokens / seconds / 1e6:6.2f} M tokens/s", flush=True)
    return rows


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _stream(stream_class, manifest: Path, samples: int) -> tuple[float, int, int]:
    """(seconds, records, tokens) for the first ``samples`` records packed by the manifest's stream (no workers)."""
    from fm9g.mixer.report import MixRecorder

    stream = stream_class.from_manifest(manifest, workers=0)
    recorder = MixRecorder(stream.task_names, stream.tokenizer.bos_id)
    started = time.perf_counter()
    try:
        for batch in stream:
            recorder.add(batch)
            if recorder.total_samples >= samples:
                break
    finally:
        stream.close()
    return time.perf_counter() - started, recorder.total_samples, recorder.total_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/shard_bench"))
    parser.add_argument("--input", type=Path, help="a JSONL input (default: a generated one of --megabytes)")
    parser.add_argument("--megabytes", type=float, default=60)
    parser.add_argument("--tokenizer")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--tiny-shards", type=int, default=32)
    parser.add_argument("--processes", default=",".join(str(p) for p in (1, 2, 4, 8, 16) if p <= len(os.sched_getaffinity(0))))
    parser.add_argument("--results", type=Path)
    parser.add_argument("--read", action="store_true", help="time reading one index vs the sharded one instead")
    parser.add_argument("--prepare", action="store_true",
                        help="time fm9g prepare in one process vs --shards shard processes (and the merge) instead")
    parser.add_argument("--samples", type=int, default=20_000, help="--read: packed samples of the mix stream")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = args.input or make_input(args.work / "input.jsonl", args.megabytes)
    if args.read or args.prepare:
        rows = (read_speeds(source, args.work, args.shards, args.tokenizer, args.samples, args.repeats) if args.read
                else prepare_speeds(source, args.work, args.shards, list(map(int, args.processes.split(",")))))
        if args.results:
            args.results.write_text(json.dumps(rows, indent=2))
        return 0
    tiny = make_input(args.work / "tiny.jsonl", 1)
    megabytes = source.stat().st_size / 1e6
    rows = []
    for parallel in map(int, args.processes.split(",")):
        seconds = run_processes(source, args.work / "out-processes", args.shards, parallel, args.tokenizer)
        rows.append({"executor": "processes", "parallel": parallel, "shards": args.shards, "seconds": seconds,
                     "mb_per_s": megabytes / seconds})
        print(f"processes  P={parallel:<3} {args.shards} shards of {megabytes:,.0f} MB: {seconds:7.2f} s  "
              f"{megabytes / seconds:7.1f} MB/s", flush=True)
    import ray

    for parallel in map(int, args.processes.split(",")):
        started = time.perf_counter()
        ray.init(num_cpus=parallel, log_to_driver=False, configure_logging=False)
        startup = time.perf_counter() - started
        try:
            seconds, own = run_ray(source, args.work / "out-ray", args.shards, args.tokenizer)
            tiny_seconds, tiny_own = run_ray(tiny, args.work / "out-tiny", args.tiny_shards, args.tokenizer)
        finally:
            ray.shutdown()
        overhead = tiny_seconds * parallel / args.tiny_shards - tiny_own
        rows.append({"executor": "ray", "parallel": parallel, "shards": args.shards, "seconds": seconds,
                     "mb_per_s": megabytes / seconds, "startup_s": startup, "task_overhead_s": overhead})
        print(f"ray        P={parallel:<3} {args.shards} shards of {megabytes:,.0f} MB: {seconds:7.2f} s  "
              f"{megabytes / seconds:7.1f} MB/s  (ray.init {startup:.1f} s; per task {overhead * 1000:.0f} ms "
              f"over its own {tiny_own * 1000:.0f} ms, from {args.tiny_shards} tasks of 1 MB)", flush=True)
    if args.results:
        args.results.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
