"""``fm9g mix search`` on the bench corpus: K proxy runs, the fit's held-out rank correlation, and
the proposed mixture against the uniform and the natural (size-proportional) one at a larger run.

Usage::

    python benchmarks/search_bench.py --work bench-search [--scale tiny] [--runs 16] [--proxy-steps 20]
                                      [--full-steps 80] [--output search_bench.json]

Data: make_corpus's pretrain paragraphs, alpaca_zh and medical_o1 records, each split 80/20 (at least 4 rows held out) into
a training index (``idx/NAME``) and its held-out test split (``idx/NAME/test``, where fm9g train
finds it), tokenized with the corpus's BPE; a manifest of equal weights (ChatML for the two
instruction sets, which may make at most one epoch: ``--budget-tokens`` checks that at the full
run's size, where the small instruction sets would otherwise repeat). The target is the mean held-out loss of the two instruction sets
(``alpaca:0.5,medical:0.5``): pretrain is related text whose best share is not obvious.

Steps: ``fm9g mix search`` (real ``fm9g train`` proxies: tiny-llama, ``--proxy-steps``), a
LightGBM fit on the same runs for comparison, then three full runs of ``--full-steps`` (4× the
proxy's tokens by default) with the uniform, the natural and the proposed weights, each scored on
the same target from its last held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
for _candidate in (os.environ.get("FM9G_MAKE_CORPUS_DIR"), _REPO / "shared" / "bench", _REPO.parent / "shared" / "bench"):
    if _candidate and (Path(_candidate) / "make_corpus.py").is_file():
        sys.path.insert(0, str(_candidate))
        break

TARGET = "alpaca:0.5,medical:0.5"
HELD_OUT_SHARE = 0.2
HELD_OUT_ROWS = 4


def _records(corpus: Path) -> dict[str, list[dict]]:
    pretrain = [line.strip() for line in (corpus / "pretrain.txt").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    return {
        "pretrain": [{"input": "", "output": text} for text in pretrain],
        "alpaca": [{"input": r["instruction"] + ("\n" + r["input"] if r["input"] else ""), "output": r["output"]}
                   for r in json.loads((corpus / "alpaca_zh.json").read_text(encoding="utf-8"))],
        "medical": [{"input": r["Question"], "output": r["Response"]}
                    for r in json.loads((corpus / "medical_o1.json").read_text(encoding="utf-8"))],
    }


def prepare_data(work: Path, scale: str) -> Path:
    """make_corpus → records → 80/20 split → fm9g indexes (train and test split) → mix.json."""
    from fm9g.index.builder import BuildOptions, build_index

    corpus = work / f"corpus-{scale}"
    if not (corpus / "manifest.json").exists():
        from make_corpus import generate

        generate(corpus, scale=scale, seed=0)
    tokenizer = f"hf:{corpus / 'tokenizer'}"
    rng = np.random.default_rng(0)
    for name, records in _records(corpus).items():
        if (work / "idx" / name / "test" / "meta.json").exists():
            continue
        order = rng.permutation(len(records))
        held = max(HELD_OUT_ROWS, int(len(records) * HELD_OUT_SHARE))
        for split, rows, output in (("train", order[held:], work / "idx" / name),
                                    ("test", order[:held], work / "idx" / name / "test")):
            path = work / f"{name}.{split}.jsonl"
            path.write_text("".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in sorted(rows)),
                            encoding="utf-8")
            build_index([path], output, BuildOptions(tokenizer=tokenizer, progress=False, force=True))
    manifest = {"tokenizer": tokenizer, "seed": 1, "max_length": 256, "batch_size": 4, "datasets": [
        {"task_name": "pretrain", "path": "idx/pretrain", "abs_weight": 1.0, "transform": "identity",
         "oversize_rule": "segment"},
        {"task_name": "alpaca", "path": "idx/alpaca", "abs_weight": 1.0, "transform": "chatml", "oversize_rule": "head",
         "max_epochs": 1},
        {"task_name": "medical", "path": "idx/medical", "abs_weight": 1.0, "transform": "chatml",
         "oversize_rule": "head", "max_epochs": 1}]}
    (work / "mix.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return work / "mix.json"


def train_config(work: Path, name: str, manifest: Path, steps: int) -> Path:
    config = {"data": {"manifest": str(manifest)}, "model": {"preset": "tiny-llama"}, "save": str(work / name / "run"),
              "train_iters": steps, "save_iters": steps, "eval_iters": steps, "batch_size": 4, "max_length": 256,
              "lr": 3e-3, "lr_scheduler": "cosine", "warmup_iters": max(1, steps // 10), "seed": 1}
    path = work / f"{name}.json"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def fm9g(*args: str, cwd: Path) -> None:
    started = time.perf_counter()
    print("$ fm9g " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def full_run(work: Path, name: str, shares: dict[str, float], steps: int) -> dict:
    """Train ``steps`` steps on ``shares`` (from scratch) and score the last held-out evaluation."""
    import shutil

    from fm9g.mixer.manifest import load_manifest
    from fm9g.search.runs import manifest_document
    from fm9g.search.target import parse_target

    manifest = load_manifest(work / "mix.json")
    path = work / f"full-{name}.mix.json"
    document = manifest_document(manifest, shares)
    for entry in document["datasets"]:  # every mixture trains as given, repeating data where its weights ask for it
        entry.pop("max_epochs", None)
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    shutil.rmtree(work / f"full-{name}", ignore_errors=True)
    fm9g("train", "--config", str(train_config(work, f"full-{name}", path, steps)), cwd=work)
    record = [json.loads(line) for line in (work / f"full-{name}" / "run" / "eval_log.jsonl").read_text().splitlines()][-1]
    target = parse_target(TARGET, manifest.task_names, {}, manifest.task_names)
    return {"weights": shares, "target": target.value(record, where=name),
            "tasks": {task: value["loss"] for task, value in record["tasks"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-search"))
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--proxy-steps", type=int, default=20)
    parser.add_argument("--full-steps", type=int, default=80)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("search_bench.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: tiny models, and no spin-waiting on a busy machine
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = prepare_data(work, args.scale)
    train_config(work, "proxy", manifest, args.proxy_steps)
    fm9g("mix", "search", "--manifest", str(manifest), "--proxy", "proxy.json", "--target", TARGET, "--runs",
         str(args.runs), "--parallel", str(args.parallel), "--output", "search", "--confirm",
         "--budget-tokens", str(args.full_steps * 4 * 256), cwd=work)
    report = json.loads((work / "search" / "search_report.json").read_text())

    from fm9g.search import regression

    tasks = report["tasks"]
    weights = np.array([[run["weights"][task] for task in tasks] for run in report["runs"]])
    losses = np.array([run["target"] for run in report["runs"]])
    fits = {name: {key: value for key, value in regression.rank_correlation(name, weights, losses, seed=0).items()
                   if key != "out_of_fold_predictions"} for name in regression.REGRESSORS}
    mixtures = {"uniform": {task: round(1 / len(tasks), 6) for task in tasks},
                "natural": report["baselines"]["natural"]["weights"], "proposed": report["proposal"]["weights"]}
    full = {name: full_run(work, name, shares, args.full_steps) for name, shares in mixtures.items()}
    for name, result in full.items():
        result["predicted"] = (report["proposal"]["predicted"] if name == "proposed"
                               else report["baselines"][name]["predicted"])
    summary = {"target": TARGET, "runs": args.runs, "proxy_steps": args.proxy_steps, "full_steps": args.full_steps,
               "proxy_budget_tokens": report["space"]["budget_tokens"], "fit": fits, "search_fit": report["fit"]["spearman"],
               "best_run": report["best_run"], "confirm": report.get("confirm"), "full": full,
               "seconds": time.perf_counter() - started}
    args.output.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"\nfit on held-out runs: " + ", ".join(f"{name} Spearman {fit['spearman']:.3f} ({fit['folds']}-fold)"
                                                 for name, fit in fits.items()))
    if report.get("confirm"):
        print(f"proposal at proxy size: predicted {report['confirm']['predicted']:.4f}, "
              f"measured {report['confirm']['measured']:.4f}")
    print(f"\n| mixture ({args.full_steps} steps) | " + " | ".join(tasks) + f" | target {TARGET} | predicted |")
    print("|---|" + "---|" * (len(tasks) + 2))
    for name, result in full.items():
        print(f"| {name} | " + " | ".join(f"{result['weights'][task]:.3f}" for task in tasks)
              + f" | {result['target']:.4f} | {result['predicted']:.4f} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all; {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
