"""``fm9g mix search`` on the bench corpus: K proxy runs, the fit's held-out rank correlation, and
the proposed mixture against the uniform and the natural (size-proportional) one at a larger run.

Usage (the GPU run BENCHMARKS.md quotes; every ``fm9g train`` picks CUDA when it is there)::

    python benchmarks/search_bench.py --work bench-search --corpus .benchdata/corpus-small --runs 16 --refine 8 \\
        --model small-llama --lr 1e-3 --parallel 8 --proxy-steps 100 --full-steps 500 --output OUT/search_bench.json

Data: a make_corpus output (``--corpus``; generated into ``WORK/corpus-SCALE`` when not given, which
needs ``wordfreq``): its pretrain paragraphs, alpaca_zh and medical_o1 records (question → response),
each split 80/20 into a training index (``idx/NAME``) and its held-out test split
(``idx/NAME/test``, where fm9g train finds it), tokenized with the corpus's BPE; a manifest of equal
weights (ChatML for the two instruction sets, which may make at most ``--max-epochs`` epochs at the
full run's size: ``--budget-tokens`` bounds the shares the search may propose by that).
The target is the mean held-out loss of the two instruction sets (``alpaca:0.5,medical:0.5``):
pretrain is related text (the same languages, more of it) whose best share is not obvious.

Steps: ``fm9g mix search`` (real ``fm9g train`` proxies of ``--proxy-steps``, ``--parallel`` at a
time, ``--refine`` more around the first proposal, plus the ``--confirm`` run; with ``--scale-data``
unless ``--no-scale-data``: each proxy trains on proxy steps / full steps of every dataset's rows,
so that it repeats data as the full run will), the fit's rank correlation for every installed regressor
(LightGBM is skipped, with a note, where it is not installed), then three full runs of
``--full-steps`` with the uniform, the natural and the proposed weights (``--parallel`` at a time),
each scored on the same target from its last held-out evaluation. Beside ``--output`` (the JSON)
it writes the search's report and plot (``search_report.json``, ``search.png``) and the summary
table (``search_bench.md``), which it also prints.
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

_REPO = Path(__file__).resolve().parents[1]
for _candidate in (os.environ.get("FM9G_MAKE_CORPUS_DIR"), _REPO / "shared" / "bench", _REPO.parent / "shared" / "bench"):
    if _candidate and (Path(_candidate) / "make_corpus.py").is_file():
        sys.path.insert(0, str(_candidate))
        break

TARGET = "alpaca:0.5,medical:0.5"
HELD_OUT_SHARE = 0.2
HELD_OUT_ROWS = 4
MIXTURES = ("uniform", "natural", "proposed")


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


def prepare_data(work: Path, corpus: Path, scale: str, *, max_epochs: int) -> Path:
    """make_corpus (unless ``corpus`` holds one) → records → 80/20 split → fm9g indexes (train and
    test split) → mix.json."""
    from fm9g.index.builder import BuildOptions, build_index

    if not (corpus / "pretrain.txt").exists():
        from make_corpus import generate

        generate(corpus, scale=scale, seed=0)
    tokenizer = f"hf:{corpus.resolve() / 'tokenizer'}"
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
    manifest = {"tokenizer": tokenizer, "seed": 1, "datasets": [
        {"task_name": "pretrain", "path": "idx/pretrain", "abs_weight": 1.0, "transform": "identity",
         "oversize_rule": "segment"},
        {"task_name": "alpaca", "path": "idx/alpaca", "abs_weight": 1.0, "transform": "chatml", "oversize_rule": "head",
         "max_epochs": max_epochs},
        {"task_name": "medical", "path": "idx/medical", "abs_weight": 1.0, "transform": "chatml",
         "oversize_rule": "head", "max_epochs": max_epochs}]}
    (work / "mix.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return work / "mix.json"


def train_config(work: Path, name: str, manifest: Path, steps: int, args: argparse.Namespace, seed: int = 1) -> Path:
    config = {"data": {"manifest": str(manifest)}, "model": {"preset": args.model}, "save": str(work / name / "run"),
              "train_iters": steps, "save_iters": steps, "eval_iters": steps, "eval_tokens": args.eval_tokens,
              "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr, "lr_scheduler": "cosine",
              "warmup_iters": max(1, steps // 10), "seed": seed}
    path = work / f"{name}.json"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def fm9g(*args: str, cwd: Path) -> None:
    started = time.perf_counter()
    print("$ fm9g " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def full_runs(work: Path, mixtures: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, dict]:
    """Train ``--full-steps`` on each mixture from scratch, once per training seed (``--full-seeds``;
    ``--parallel`` runs at a time), and score each run's last held-out evaluation on the target: a
    mixture's figure is the mean over its seeds, so that a margin can be set against the spread."""
    from fm9g.mixer.manifest import load_manifest
    from fm9g.search.runs import manifest_document
    from fm9g.search.target import parse_target

    manifest = load_manifest(work / "mix.json")
    target = parse_target(TARGET, manifest.task_names, {}, manifest.task_names)
    commands = {}
    for name, shares in mixtures.items():
        document = manifest_document(manifest, shares)
        for entry in document["datasets"]:  # every mixture trains as given: the JSON reports the epochs it made
            entry.pop("max_epochs", None)
        path = work / f"full-{name}.mix.json"
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")
        for seed in range(1, args.full_seeds + 1):
            run = f"full-{name}-seed{seed}"
            shutil.rmtree(work / run, ignore_errors=True)
            commands[run] = [sys.executable, "-m", "fm9g", "train", "--config",
                             str(train_config(work, run, path, args.full_steps, args, seed=seed))]
    waiting, running, seconds = list(commands), {}, {}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name = waiting.pop(0)
            print("$ " + " ".join(commands[name][2:]), flush=True)
            log = open(work / f"{name}.log", "w", encoding="utf-8")
            running[name] = (subprocess.Popen(commands[name], cwd=work, stdout=log, stderr=subprocess.STDOUT), log,
                             time.perf_counter())
        for name, (process, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[name]
            if process.returncode != 0:
                raise SystemExit(f"full run {name} failed (exit {process.returncode}): see {work / f'{name}.log'}")
            seconds[name] = time.perf_counter() - started
            print(f"  {name}: {seconds[name]:.0f} s", flush=True)
        time.sleep(0.2)
    results = {}
    for name, shares in mixtures.items():
        seeds = []
        for seed in range(1, args.full_seeds + 1):
            run = f"full-{name}-seed{seed}"
            record = json.loads((work / run / "run" / "eval_log.jsonl").read_text().splitlines()[-1])
            seeds.append({"target": target.value(record, where=run), "seconds": seconds[run],
                          "tasks": {task: value["loss"] for task, value in record["tasks"].items()}})
        results[name] = {"weights": shares, "target": float(np.mean([run["target"] for run in seeds])),
                         "target_by_seed": [run["target"] for run in seeds],
                         "tasks": {task: float(np.mean([run["tasks"][task] for run in seeds])) for task in seeds[0]["tasks"]},
                         "seconds": max(run["seconds"] for run in seeds)}
    return results


def fit_comparison(report: dict) -> dict[str, dict]:
    """Each regressor's k-fold rank correlation on the search's runs; a missing library is a note."""
    from fm9g.core.errors import Fm9gError
    from fm9g.search import regression

    tasks = report["tasks"]
    weights = np.array([[run["weights"][task] for task in tasks] for run in report["runs"]])
    losses = np.array([run["target"] for run in report["runs"]])
    fits = {}
    for name in regression.REGRESSORS:
        try:
            regression.check_available(name)
        except Fm9gError as error:
            fits[name] = {"skipped": str(error)}
            continue
        fit = regression.rank_correlation(name, weights, losses, seed=0)
        fits[name] = {key: value for key, value in fit.items() if key != "out_of_fold_predictions"}
    return fits


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def summary_lines(summary: dict, report: dict) -> list[str]:
    """The evidence as Markdown: fit quality, best proxy, confirm, and the full runs' table."""
    tasks, full = report["tasks"], summary["full"]
    lines = [f"device {summary['device']}; model {summary['model']}, lr {summary['lr']:g}; proxies: {summary['runs']} + "
             f"{summary['refine']} refine × {summary['proxy_steps']} steps"
             f"{' on scaled data ' + str(summary['proxy_rows']) if summary['scale_data'] else ''} "
             f"({summary['proxy_tokens']:,} tokens); full runs: {summary['full_steps']} steps "
             f"({summary['full_tokens']:,} tokens)", ""]
    for name, fit in summary["fit"].items():
        lines.append(f"- fit {name}: " + (f"skipped ({fit['skipped']})" if "skipped" in fit else
                                          f"Spearman ρ {fit['spearman']:.3f} on held-out runs ({fit['folds']}-fold, "
                                          f"p {fit['p_value']:.2g})"))
    if summary.get("first_proposal"):
        first = summary["first_proposal"]
        lines.append(f"- first proposal (from the {summary['runs']} runs): "
                     + " / ".join(f"{first['weights'][task]:.3f}" for task in tasks)
                     + f", predicted {first['predicted']:.4f}; then {summary['refine']} runs around it")
    lines.append(f"- best of the {len(report['runs'])} proxies: {report['best_run']['run']} "
                 f"{report['best_run']['target']:.4f}")
    if summary.get("confirm"):
        lines.append(f"- proposal at proxy size: predicted {summary['confirm']['predicted']:.4f}, measured "
                     f"{summary['confirm']['measured']:.4f}")
    lines += ["", f"| mixture ({summary['full_steps']} steps) | " + " / ".join(tasks) + " | epochs made | "
              f"target {TARGET} (mean of {summary['full_seeds']} seeds) | seeds | "
              + " | ".join(f"{task} loss" for task in tasks) + " | predicted |",
              "|---|---|---|---|---|" + "---|" * len(tasks) + "---|"]
    for name, result in full.items():
        lines.append(f"| {name} | " + " / ".join(f"{result['weights'][task]:.3f}" for task in tasks) + " | "
                     + " / ".join(f"{result['epochs'][task]:.2f}" for task in tasks)
                     + f" | {result['target']:.4f} | " + " / ".join(f"{value:.4f}" for value in result["target_by_seed"])
                     + " | " + " | ".join(f"{result['tasks'][task]:.4f}" for task in tasks)
                     + f" | {result['predicted']:.4f} |")
    margin = {name: full[name]["target"] - full["proposed"]["target"] for name in ("uniform", "natural")}
    lines += ["", "proposed below uniform by {uniform:+.4f}, below natural by {natural:+.4f} (means)".format(**margin)
              + "; every proposed seed below every seed of: "
              + (", ".join(name for name, beats in summary["proposed_beats_every_seed"].items() if beats) or "neither"),
              f"{summary['seconds']:.0f} s in all (data {summary['phase_seconds']['data']:.0f}, search "
              f"{summary['phase_seconds']['search']:.0f}, full runs {summary['phase_seconds']['full']:.0f})"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-search"))
    parser.add_argument("--corpus", type=Path, help="a make_corpus output (default: WORK/corpus-SCALE, generated)")
    parser.add_argument("--scale", default="small", choices=["tiny", "small"])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--refine", type=int, default=8,
                        help="proxy runs drawn around the first proposal before the final fit (fm9g mix search --refine)")
    parser.add_argument("--parallel", type=int, default=8, help="proxy (and full) runs at a time")
    parser.add_argument("--proxy-steps", type=int, default=100)
    parser.add_argument("--no-scale-data", dest="scale_data", action="store_false",
                        help="proxies train on whole datasets (default: fm9g mix search --scale-data, each dataset "
                             "cut to proxy steps / full steps of its rows)")
    parser.add_argument("--full-steps", type=int, default=500)
    parser.add_argument("--full-seeds", type=int, default=2,
                        help="training seeds per full-size mixture (the figure is their mean; default 2)")
    parser.add_argument("--model", default="tiny-llama", help="the preset of every run (proxy and full)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-epochs", type=int, default=4,
                        help="epochs alpaca and medical may make at the full run's size (bounds their shares)")
    parser.add_argument("--eval-tokens", type=int, default=0, help="held-out target tokens per task (0: all)")
    parser.add_argument("--output", type=Path, default=Path("search_bench.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: tiny models, many processes
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = prepare_data(work, args.corpus or work / f"corpus-{args.scale}", args.scale, max_epochs=args.max_epochs)
    data_done = time.perf_counter()
    step_tokens = args.batch_size * args.max_length
    train_config(work, "proxy", manifest, args.proxy_steps, args)
    fm9g("mix", "search", "--manifest", str(manifest), "--proxy", "proxy.json", "--target", TARGET, "--runs",
         str(args.runs), "--refine", str(args.refine), "--parallel", str(args.parallel), "--output", "search",
         "--confirm", "--force", *(["--scale-data"] if args.scale_data else []),
         "--budget-tokens", str(args.full_steps * step_tokens), cwd=work)
    search_done = time.perf_counter()
    report = json.loads((work / "search" / "search_report.json").read_text())
    tasks = report["tasks"]
    mixtures = {"uniform": {task: round(1 / len(tasks), 6) for task in tasks},
                "natural": report["baselines"]["natural"]["weights"], "proposed": report["proposal"]["weights"]}
    full = full_runs(work, mixtures, args)
    epoch_tokens = dict(zip(tasks, report["space"]["tokens_per_epoch"]))
    for name, result in full.items():
        result["predicted"] = (report["proposal"]["predicted"] if name == "proposed"
                               else report["baselines"][name]["predicted"])
        result["epochs"] = {task: result["weights"][task] * args.full_steps * step_tokens / epoch_tokens[task]
                            for task in tasks}
    finished = time.perf_counter()
    summary = {"target": TARGET, "device": device_name(), "model": args.model, "runs": args.runs, "refine": args.refine,
               "first_proposal": report.get("first_proposal"), "lr": args.lr,
               "scale_data": args.scale_data, "proxy_rows": report["settings"].get("proxy_rows"),
               "parallel": args.parallel, "proxy_steps": args.proxy_steps, "full_steps": args.full_steps,
               "proxy_tokens": args.proxy_steps * step_tokens, "full_tokens": args.full_steps * step_tokens,
               "full_seeds": args.full_seeds,
               "batch_size": args.batch_size, "max_length": args.max_length, "max_epochs": args.max_epochs,
               "space": report["space"], "fit": fit_comparison(report), "search_fit": report["fit"],
               "best_run": report["best_run"], "proposal": report["proposal"], "confirm": report.get("confirm"),
               "full": full, "proposed_beats": {name: full["proposed"]["target"] < full[name]["target"]
                                                for name in ("uniform", "natural")},
               "proposed_beats_every_seed": {name: max(full["proposed"]["target_by_seed"]) < min(full[name]["target_by_seed"])
                                             for name in ("uniform", "natural")},
               "seconds": finished - started, "phase_seconds": {"data": data_done - started,
                                                                "search": search_done - data_done,
                                                                "full": finished - search_done}}
    args.output.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    for name in ("search_report.json", "search.png"):
        shutil.copyfile(work / "search" / name, args.output.parent / name)
    lines = summary_lines(summary, report)
    (args.output.parent / "search_bench.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines) + f"\n\n{args.output} (+ search_report.json, search.png, search_bench.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
