#!/usr/bin/env python3
"""Indexing throughput: ``fm9g index`` side by side with its anchors, on the make_corpus bench data.

Workload: the ``--scale bench`` corpus (``../shared/bench/make_corpus.py``) turned into records
the way the seed does it (pretrain.txt through convert_txt2jsonl, plus the Alpaca and medical-o1
records interleaved evenly), cut at line boundaries into a 20 MB and a 200 MB JSONL input.

Measured, each in its own process (peak memory = largest sum of PSS over the process tree):
* fm9g index with the corpus tokenizer (``--workers N``) and without a tokenizer;
* anchor (a): a straightforward single-process per-line indexer — ``json.loads`` +
  ``tokenizer.encode`` per line, offsets to the text index and HDF5 (the seed's way);
* anchor (b): the raw ``tokenizers`` batch-encode ceiling (``encode_batch_fast`` with rayon threads =
  the same cores, batches of 1000 and of 64; the faster counts) on the same texts, loaded before the
  clock starts;
* reference (c): a loop that only reads and ``json.loads`` the lines.
Times exclude interpreter start-up and imports for every contender. CPU seconds (process + reaped
children) are reported beside wall seconds: on a shared machine, tokens per CPU-second compare
the contenders' efficiency even when the wall clock does not. Usage::

    python benchmarks/index_bench.py --work /tmp/index_bench [--corpus DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

MAKE_CORPUS = Path(os.environ.get("FM9G_MAKE_CORPUS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "bench") / "make_corpus.py"
"""``../shared/bench/make_corpus.py`` beside the checkout, or ``$FM9G_MAKE_CORPUS_DIR``."""


# ---------------------------------------------------------------------------------------------- workload
def ensure_corpus(corpus: Path) -> Path:
    if not (corpus / "pretrain.txt").is_file():
        print(f"generating the bench corpus into {corpus} (~70 s, 2.3 GB RAM)", flush=True)
        subprocess.run([sys.executable, str(MAKE_CORPUS), str(corpus), "--scale", "bench"], check=True)
    return corpus


def build_records(corpus: Path, target: Path) -> Path:
    """All corpus records as JSONL: pretraining lines with the SFT records spread evenly among them."""
    if target.is_file():
        return target
    sft = []
    for row in json.loads((corpus / "alpaca_zh.json").read_text(encoding="utf-8")):
        prompt = row["instruction"] + ("\n" + row["input"] if row["input"].strip() else "")
        sft.append(json.dumps({"input": prompt, "output": row["output"]}, ensure_ascii=False) + "\n")
    for row in json.loads((corpus / "medical_o1.json").read_text(encoding="utf-8")):
        sft.append(json.dumps({"input": row["Question"], "output": row["Response"]}, ensure_ascii=False) + "\n")
    with open(corpus / "pretrain.txt", encoding="utf-8") as fin:
        pretrain_lines = sum(1 for line in fin if line.strip())
    every = max(1, pretrain_lines // max(1, len(sft)))
    temp = target.with_suffix(".tmp")
    with open(corpus / "pretrain.txt", encoding="utf-8") as fin, open(temp, "w", encoding="utf-8") as fout:
        count = 0
        for line in fin:
            if line.strip() == "":
                continue
            fout.write(json.dumps({"input": "", "output": line.strip()}, ensure_ascii=False) + "\n")
            count += 1
            if count % every == 0 and sft:
                fout.write(sft.pop())
        fout.writelines(sft)
    temp.rename(target)
    return target


def cut(source: Path, megabytes: int, target: Path) -> Path:
    """The first ``megabytes`` MB of ``source``, ending at a line boundary."""
    if target.is_file():
        return target
    limit = megabytes * 1_000_000
    with open(source, "rb") as fin, open(target, "wb") as fout:
        written = 0
        for line in fin:
            if written + len(line) > limit:
                break
            fout.write(line)
            written += len(line)
    return target


# ---------------------------------------------------------------------------------------------- contenders
class Clock:
    """Wall time and CPU time (this process + reaped children, i.e. pool workers) of a region."""

    def __enter__(self) -> "Clock":
        import resource

        self._resource = resource
        self._wall = time.perf_counter()
        self._cpu = self._cpu_now()
        return self

    def _cpu_now(self) -> float:
        children = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = self._cpu_now() - self._cpu


def run_fm9g(source: str, output: str, tokenizer: str | None, workers: int) -> dict:
    import shutil

    from fm9g.index.builder import BuildOptions, build_index
    from fm9g.tokenizers import load_tokenizer

    if tokenizer:
        load_tokenizer(tokenizer)  # imports (plugin registry) are start-up, not indexing
    shutil.rmtree(output, ignore_errors=True)
    with Clock() as clock:
        summary = build_index([source], output, BuildOptions(tokenizer=tokenizer, workers=workers, progress=False))
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
            "tokens": summary.meta["total_tokens"] if tokenizer else None, "lines": summary.meta["nlines"]}


def run_per_line(source: str, output: str, tokenizer_json: str) -> dict:
    """Anchor (a): the seed's way, one line at a time in one process."""
    import shutil

    import h5py
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_json)
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    clock = Clock().__enter__()
    offset, bounds, counts = 0, [0], []
    with open(source, "rb") as fin, open(os.path.join(output, "data.jsonl"), "wb") as fout, \
            open(os.path.join(output, "index"), "w") as ftxt:
        ftxt.write("0\n")
        for line in fin:
            record = json.loads(line)
            n_in = len(tokenizer.encode(record["input"], add_special_tokens=False).ids) if record["input"] else 0
            n_out = len(tokenizer.encode(record["output"], add_special_tokens=False).ids)
            counts.append((n_in, n_out))
            fout.write(line)
            offset += len(line)
            bounds.append(offset)
            ftxt.write(f"{offset}\n")
    with h5py.File(os.path.join(output, "index.h5"), "w") as h5:
        h5.create_dataset("index", data=bounds)
        h5.create_dataset("tokens", data=np.array(counts, dtype=np.int32))
    clock.__exit__()
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "tokens": int(sum(a + b for a, b in counts)),
            "lines": len(counts)}


def run_ceiling(source: str, tokenizer_json: str, batch_size: str = "1000") -> dict:
    """Anchor (b): tokenizers' batch encode over the same texts, all cores, texts preloaded."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_json)
    texts = []
    with open(source, "rb") as fin:
        for line in fin:
            record = json.loads(line)
            if record["input"]:
                texts.append(record["input"])
            texts.append(record["output"])
    tokens = 0
    with Clock() as clock:
        step = int(batch_size)
        for begin in range(0, len(texts), step):
            batch = tokenizer.encode_batch_fast(texts[begin:begin + step], add_special_tokens=False)
            tokens += sum(len(e) for e in batch)
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "tokens": tokens, "lines": None}


def run_parse_only(source: str) -> dict:
    """Reference (c): read and json.loads every line, nothing else."""
    lines = 0
    with Clock() as clock, open(source, "rb") as fin:
        for line in fin:
            json.loads(line)
            lines += 1
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "tokens": None, "lines": lines}


# ---------------------------------------------------------------------------------------------- measuring
def measure(arguments: list[str]) -> dict:
    """Run ``index_bench.py --child ...`` and poll the process tree's memory every 50 ms."""
    import psutil

    process = subprocess.Popen([sys.executable, __file__, "--child", *arguments], stdout=subprocess.PIPE, text=True)
    peak = {"tree_pss": 0, "main_rss": 0}
    done = threading.Event()

    def poll() -> None:
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                members = [parent] + parent.children(recursive=True)
                pss = 0
                for member in members:
                    try:
                        pss += member.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                peak["tree_pss"] = max(peak["tree_pss"], pss)
                peak["main_rss"] = max(peak["main_rss"], parent.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    wall = time.perf_counter()
    watcher.start()
    out, _ = process.communicate()
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"child {arguments} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_tree_pss_mb=peak["tree_pss"] / 1e6, peak_main_rss_mb=peak["main_rss"] / 1e6,
                  wall_seconds=time.perf_counter() - wall)
    return result


def child(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "fm9g":
        source, output, tokenizer, workers = rest
        result = run_fm9g(source, output, tokenizer or None, int(workers))
    elif kind == "per-line":
        result = run_per_line(*rest)
    elif kind == "ceiling":
        result = run_ceiling(*rest)
    else:
        result = run_parse_only(*rest)
    print(json.dumps(result))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/index_bench"))
    parser.add_argument("--corpus", type=Path, help="existing make_corpus --scale bench output (default: WORK/corpus)")
    parser.add_argument("--sizes", default="20,200", help="input sizes in MB for fm9g (default 20,200)")
    parser.add_argument("--anchor-sizes", default="20", help="input sizes in MB for the anchors (default 20)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--results", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(args.corpus or args.work / "corpus")
    tokenizer_dir = corpus / "tokenizer"
    records = build_records(corpus, args.work / "records.jsonl")
    sizes = [int(s) for s in args.sizes.split(",")]
    anchor_sizes = [int(s) for s in args.anchor_sizes.split(",")]
    rows = []
    for size in sorted(set(sizes) | set(anchor_sizes)):
        source = cut(records, size, args.work / f"in_{size}mb.jsonl")
        nbytes = source.stat().st_size
        runs = []
        if size in sizes:
            runs += [("fm9g index --tokenizer hf", ["fm9g", str(source), str(args.work / "out"),
                                                    f"hf:{tokenizer_dir}", str(args.workers)]),
                     ("fm9g index (no tokenizer)", ["fm9g", str(source), str(args.work / "out"), "",
                                                    str(args.workers)])]
        if size in anchor_sizes:
            runs += [("(a) per-line indexer", ["per-line", str(source), str(args.work / "out_a"),
                                               str(tokenizer_dir / "tokenizer.json")]),
                     ("(b) tokenizers batch=1000", ["ceiling", str(source), str(tokenizer_dir / "tokenizer.json"),
                                                    "1000"]),
                     ("(b) tokenizers batch=64", ["ceiling", str(source), str(tokenizer_dir / "tokenizer.json"), "64"]),
                     ("(c) read + json.loads only", ["parse", str(source)])]
        for name, arguments in runs:
            result = measure(arguments)
            result.update(name=name, size_mb=size, input_bytes=nbytes,
                          mb_per_s=nbytes / 1e6 / result["seconds"],
                          tokens_per_s=result["tokens"] / result["seconds"] if result["tokens"] else None,
                          tokens_per_cpu_s=result["tokens"] / result["cpu_seconds"] if result["tokens"] else None)
            rows.append(result)
            tokens = f"{result['tokens_per_s'] / 1e3:8.0f}k tok/s" if result["tokens_per_s"] else " " * 14
            print(f"{size:4d} MB  {name:30s} {result['seconds']:7.2f} s (cpu {result['cpu_seconds']:7.2f} s) "
                  f"{result['mb_per_s']:8.1f} MB/s {tokens} "
                  f"peak PSS {result['peak_tree_pss_mb']:7.0f} MB (main RSS {result['peak_main_rss_mb']:.0f} MB)",
                  flush=True)
    print_ratios(rows)
    if args.results:
        args.results.write_text(json.dumps({"workers": args.workers, "rows": rows}, indent=2) + "\n")
    return 0


def print_ratios(rows: list[dict]) -> None:
    def find(name: str, size: int) -> dict | None:
        return next((r for r in rows if r["name"].startswith(name) and r["size_mb"] == size), None)

    for size in sorted({r["size_mb"] for r in rows}):
        fm9g, plain = find("fm9g index --tokenizer", size), find("fm9g index (no", size)
        per_line, parse = find("(a)", size), find("(c)", size)
        ceilings = [r for r in rows if r["name"].startswith("(b)") and r["size_mb"] == size]
        ceiling = max(ceilings, key=lambda r: r["tokens_per_s"]) if ceilings else None
        if fm9g and ceiling:
            best_cpu = max(r["tokens_per_cpu_s"] for r in ceilings)
            print(f"{size} MB: fm9g tokens/s = {fm9g['tokens_per_s'] / ceiling['tokens_per_s']:.0%} of the best tokenizer "
                  f"ceiling, {ceiling['name']} (target >= 90%); per CPU-second "
                  f"{fm9g['tokens_per_cpu_s'] / best_cpu:.0%} of the best")
        if fm9g and per_line:
            print(f"{size} MB: fm9g = {fm9g['mb_per_s'] / per_line['mb_per_s']:.2f}x the per-line indexer "
                  f"({fm9g['tokens_per_cpu_s'] / per_line['tokens_per_cpu_s']:.2f}x per CPU-second)")
        if plain and parse:
            print(f"{size} MB: fm9g without tokenizer = {plain['mb_per_s']:.0f} MB/s "
                  f"({plain['mb_per_s'] / parse['mb_per_s']:.2f}x read+parse only; target >= 100 MB/s)")
    sizes = sorted({r["size_mb"] for r in rows if r["name"].startswith("fm9g index --tokenizer")})
    if len(sizes) >= 2:
        small, large = (find("fm9g index --tokenizer", s) for s in (sizes[0], sizes[-1]))
        print(f"fm9g peak PSS {small['peak_tree_pss_mb']:.0f} MB at {sizes[0]} MB vs "
              f"{large['peak_tree_pss_mb']:.0f} MB at {sizes[-1]} MB")


if __name__ == "__main__":
    raise SystemExit(main())
