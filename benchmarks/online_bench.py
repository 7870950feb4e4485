#!/usr/bin/env python
"""Online reweighting beside fixed weights: the same model, data and steps, three ways of mixing.

Data: the bench corpus (``make_corpus.py``: pretrain text, Alpaca and medical-o1 records, its BPE
tokenizer) through the real pipeline — ``fm9g prepare --split test=0.05`` and ``fm9g index`` for
each source, so every task has an indexed held-out split. Runs (``fm9g train``, the tiny-llama
preset on the CPU, or ``--preset`` on a GPU), all evaluated every ``--eval-iters`` steps:

* ``fixed``  — the manifest's weights (uniform) throughout;
* ``doremi`` — ``mixing.online.method: doremi`` with the fixed run as the reference model (its final
  held-out losses), so weight goes to the tasks still furthest above what that model reached;
* ``odm``    — ``mixing.online.method: odm`` (multiplicative weights on training loss).

Reported: each run's final held-out loss per task, their mean and worst (DoReMi's objective is the
worst-case excess), the final weights; a plot of the weight curves. Numbers and the command go to
BENCHMARKS.md.

    python benchmarks/online_bench.py --work /tmp/fm9g-online --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SHARED = Path(os.environ.get("FM9G_MAKE_CORPUS_DIR", Path(__file__).resolve().parents[2] / "shared" / "bench"))


def fm9g(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"fm9g {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def prepare(work: Path, scale: str) -> Path:
    """Corpus → prepared records with a test split → indexes (held-out split at idx/NAME/test) → mix.json."""
    sys.path.insert(0, str(SHARED))
    from make_corpus import generate

    corpus = work / f"corpus-{scale}"
    if not (corpus / "manifest.json").exists():
        generate(corpus, scale=scale, seed=0)
    tokenizer = f"hf:{corpus / 'tokenizer'}"
    sources = {"pretrain": ("txt", "pretrain.txt", []), "alpaca": ("alpaca", "alpaca_zh.json", []),
               "medical": ("medical-o1", "medical_o1.json", [])}
    for name, (adapter, file, options) in sources.items():
        if (work / "idx" / name / "test" / "meta.json").exists():
            continue
        fm9g("prepare", "--adapter", adapter, "--input", str(corpus / file), "--output", f"prepared/{name}",
             "--split", "test=0.05", "--seed", "3014", "--force", *options, cwd=work)
        fm9g("index", "--input", f"prepared/{name}/train.jsonl", "--output", f"idx/{name}", "--tokenizer", tokenizer,
             "--force", "--no-progress", cwd=work)
    manifest = {"tokenizer": tokenizer, "seed": 1, "datasets": [
        {"task_name": "pretrain", "path": "idx/pretrain", "abs_weight": 1, "transform": "identity"},
        {"task_name": "alpaca", "path": "idx/alpaca", "abs_weight": 1, "transform": "chatml", "oversize_rule": "head"},
        {"task_name": "medical", "path": "idx/medical", "abs_weight": 1, "transform": "chatml", "oversize_rule": "head"}]}
    (work / "mix.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return work / "mix.json"


def train(work: Path, name: str, args: argparse.Namespace, mixing: dict | None) -> dict:
    config = {"data": {"manifest": "mix.json"}, "model": {"preset": args.preset}, "save": f"runs/{name}",
              "train_iters": args.steps, "save_iters": 0, "eval_iters": args.eval_iters, "batch_size": args.batch_size,
              "max_length": args.max_length, "lr": args.lr, "warmup_iters": 10, "seed": 7, "progress_seconds": 3600}
    if mixing:
        config["mixing"] = {"online": mixing}
    path = work / f"train_{name}.json"
    final_checkpoint = work / "runs" / name / f"step-{args.steps:08d}" / "checkpoint.json"
    if not (args.reuse and final_checkpoint.is_file() and path.is_file()
            and json.loads(path.read_text(encoding="utf-8")) == config):
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        shutil.rmtree(work / "runs" / name, ignore_errors=True)
        fm9g("train", "--config", str(path), cwd=work)
    evaluations = [json.loads(line) for line in (work / "runs" / name / "eval_log.jsonl").read_text().splitlines()]
    steps = [json.loads(line) for line in (work / "runs" / name / "train_log.jsonl").read_text().splitlines()]
    final = {task: value["loss"] for task, value in evaluations[-1]["tasks"].items()}
    return {"name": name, "final": final, "mean": sum(final.values()) / len(final), "worst": max(final.values()),
            "token_weighted": evaluations[-1]["loss"],
            "weights": [[r["step"], r.get("mixture_weights")] for r in steps if r.get("mixture_weights")],
            "config": config}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    online = [r for r in results if r["weights"]]
    figure, axes = plt.subplots(1, len(online), figsize=(6 * len(online), 4), squeeze=False)
    for axis, result in zip(axes[0], online):
        steps = [step for step, _ in result["weights"]]
        for task in result["weights"][0][1]:
            axis.plot(steps, [weights[task] for _, weights in result["weights"]], label=task)
        axis.set_title(f"{result['name']}: mixture weights")
        axis.set_xlabel("step")
        axis.set_ylim(0, 1)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/fm9g-online")
    parser.add_argument("--scale", default="tiny", help="make_corpus scale")
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--output", help="results JSON (default: WORK/online_bench.json)")
    parser.add_argument("--reuse", action="store_true", help="keep a run that finished with the same config")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.scale)
    bounds = {"smoothing": 0.1, "min_share": 0.1, "max_share": 0.8}
    results = [train(work, "fixed", args, None)]
    reference = str((work / "runs" / "fixed" / "eval_log.jsonl").resolve())
    results.append(train(work, "doremi", args, {"method": "doremi", "every": args.eval_iters, "step_size": 2.0,
                                                "reference_log": reference, **bounds}))
    results.append(train(work, "odm", args, {"method": "odm", "every": args.eval_iters, "step_size": 0.5, **bounds}))
    plot(results, work / "online_weights.png")
    output = Path(args.output or work / "online_bench.json")
    output.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tasks = list(results[0]["final"])
    print(f"{'run':8} " + " ".join(f"{t:>9}" for t in tasks) + f" {'mean':>8} {'worst':>8} {'token-w':>8}  final weights")
    for r in results:
        weights = r["weights"][-1][1] if r["weights"] else None
        print(f"{r['name']:8} " + " ".join(f"{r['final'][t]:9.4f}" for t in tasks)
              + f" {r['mean']:8.4f} {r['worst']:8.4f} {r['token_weighted']:8.4f}  "
              + (", ".join(f"{t} {w:.2f}" for t, w in weights.items()) if weights else "fixed (1/3 each)"))
    print(f"plot: {work / 'online_weights.png'}; results: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
